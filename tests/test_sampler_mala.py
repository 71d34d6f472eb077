"""MALA passes the sampler contract, and its Metropolis test removes Langevin's step-size bias."""

import math

import pytest
from seaflow.testing.samplers import TARGETS, SamplerContract, check_gaussian_moments, run_sampler, one_thread  # noqa: F401  (one_thread: autouse)

from seaflow.samplers import MALA, Langevin


class TestMALA(SamplerContract):
    sampler_class = MALA
    has_accept = True
    accept_range = (0.5, 0.99)

    def step_size_for(self, target):
        # the usual MALA scaling: eta proportional to d^(-1/3) keeps the acceptance rate steady
        return target.dim ** (-1 / 3) / target.lambda_max

    def num_steps_for(self, target):
        return math.ceil(8 / (self.step_size_for(target) * target.lambda_min))


def test_metropolis_removes_the_discretisation_bias():
    """At eta * lambda_max = 1 unadjusted Langevin doubles the stiffest variance; MALA stays exact."""
    target = TARGETS["anisotropic-10d"]
    eta = 1.0 / target.lambda_max
    steps = math.ceil(8 / (eta * target.lambda_min))
    start = target.start(2000)
    exact, history, _ = run_sampler(MALA(eta), target.energy, start, steps)
    check_gaussian_moments(exact, target)
    assert 0.3 < float(history["accept"].mean()) < 0.95
    biased, _, _ = run_sampler(Langevin(eta), target.energy, start, steps)
    with pytest.raises(AssertionError, match="covariance|variance"):
        check_gaussian_moments(biased, target)


def test_huge_steps_are_rejected_not_accepted():
    target = TARGETS["anisotropic-10d"]
    start = target.start(64)
    x, history, _ = run_sampler(MALA(50.0 / target.lambda_max), target.energy, start, 5)
    assert float(history["accept"].mean()) < 0.05
    assert x.isfinite().all()
