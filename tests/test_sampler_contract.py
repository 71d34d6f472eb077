"""The contract suite itself: it must fail for samplers that are wrong in known ways."""

import math

import pytest
import torch
from seaflow.testing.samplers import TARGETS, check_gaussian_moments, one_thread, run_sampler  # noqa: F401  (one_thread: autouse)
import test_sampler_langevin  # module imports: importing the classes would collect them twice
import test_sampler_mala

from seaflow.samplers import MALA, Langevin


class _ScaledNoiseLangevin(Langevin):
    """Langevin whose noise is ``factor`` times too large (a classic sqrt(2) / 2 slip)."""

    factor = 2.0

    def noise_like(self, x, generator):
        return self.factor * super().noise_like(x, generator)


class _SlightlyNoisyLangevin(_ScaledNoiseLangevin):
    factor = 1.2


class _NoHastingsMALA(MALA):
    """MALA that forgets the proposal ratio q(x|x')/q(x'|x) (a Metropolis test for a symmetric proposal)."""

    def accept_or_keep(self, state, current, proposed, log_ratio, generator):
        energy_part = -(proposed.energy - current.energy) / self.noise_scale ** 2
        return super().accept_or_keep(state, current, proposed, energy_part, generator)


class _IgnoresStepScale(Langevin):
    def step(self, x, energy_fn, state, generator=None):
        state.step_scale = torch.ones_like(state.step_scale)
        return super().step(x, energy_fn, state, generator)


class _UnderReportsEvaluations(MALA):
    def step(self, x, energy_fn, state, generator=None):
        out = super().step(x, energy_fn, state, generator)
        out.evaluations = 1 if out.evaluations == 2 else out.evaluations  # forgets the first point
        return out


class _GlobalRandomness(Langevin):
    def noise_like(self, x, generator):
        return torch.randn(x.shape, dtype=x.dtype)  # ignores the generator


def _contract(base, sampler_class):
    contract = base()
    contract.sampler_class = sampler_class
    return contract


@pytest.mark.parametrize("target_name", list(TARGETS))
def test_doubled_noise_fails_the_moment_checks(target_name):
    contract = _contract(test_sampler_langevin.TestLangevin, _ScaledNoiseLangevin)
    with pytest.raises(AssertionError, match="off target"):
        contract.check_sampling(TARGETS[target_name])


@pytest.mark.parametrize("target_name", ["isotropic-2d", "anisotropic-10d", "correlated-100d"])
def test_noise_twenty_percent_too_large_fails(target_name):
    contract = _contract(test_sampler_langevin.TestLangevin, _SlightlyNoisyLangevin)
    with pytest.raises(AssertionError, match="off target"):
        contract.check_sampling(TARGETS[target_name])


def test_mala_without_hastings_ratio_fails():
    target = TARGETS["anisotropic-10d"]
    eta = 1.0 / target.lambda_max
    steps = math.ceil(8 / (eta * target.lambda_min))
    start = target.start(2000)
    exact, _, _ = run_sampler(MALA(eta), target.energy, start, steps)
    check_gaussian_moments(exact, target)
    wrong, _, _ = run_sampler(_NoHastingsMALA(eta), target.energy, start, steps)
    with pytest.raises(AssertionError, match="off target"):
        check_gaussian_moments(wrong, target)


def test_ignoring_step_scale_fails():
    with pytest.raises(AssertionError, match="step_scale 0"):
        _contract(test_sampler_langevin.TestLangevin, _IgnoresStepScale).test_step_scale_is_per_chain()


def test_miscounted_evaluations_fail():
    with pytest.raises(AssertionError, match="gradient evaluations"):
        _contract(test_sampler_mala.TestMALA, _UnderReportsEvaluations).test_diagnostics_and_evaluation_count()


def test_randomness_outside_the_generator_fails():
    with pytest.raises(AssertionError):
        _contract(test_sampler_langevin.TestLangevin, _GlobalRandomness).test_same_seed_same_trajectory()
