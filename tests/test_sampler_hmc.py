"""HMC passes the sampler contract; its leapfrog integrator is second order and conserves H."""

import math

import torch
from seaflow.testing.samplers import TARGETS, SamplerContract, run_sampler, one_thread  # noqa: F401  (one_thread: autouse)

from seaflow.samplers import HMC


class TestHMC(SamplerContract):
    sampler_class = HMC
    has_accept = True
    accept_range = (0.6, 0.999)
    sampler_kwargs = {"jitter": 0.5}

    def make_sampler(self, step_size, noise_scale=1.0, target=None, **overrides):
        # about one radian of the slowest direction per trajectory
        leapfrog = 5 if target is None else math.ceil(1.2 / (self.base_step(target) * math.sqrt(target.lambda_min)))
        return HMC(step_size, leapfrog_steps=leapfrog, noise_scale=noise_scale, **{**self.sampler_kwargs, **overrides})

    @staticmethod
    def base_step(target):
        # leapfrog is stable for epsilon * sqrt(lambda_max) < 2; the d^(-1/4) scaling keeps acceptance steady
        return target.dim ** (-1 / 4) / math.sqrt(target.lambda_max)

    def step_size_for(self, target):
        return self.base_step(target)

    def num_steps_for(self, target):
        return 30

    def optimiser_for(self, target):
        return self.make_sampler(self.base_step(target), noise_scale=0.0, target=target), 150


def _energy_error(step_size, target, leapfrog):
    sampler = HMC(step_size, leapfrog_steps=leapfrog, noise_scale=1.0)
    start = target.start(256).double() + torch.randn(256, target.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _, history, _ = run_sampler(sampler, target.energy, start, 1, seed=0)
    return history["hamiltonian_error"].abs().max().item(), history["accept"].mean().item()


def test_tiny_steps_conserve_the_hamiltonian():
    """|H_end - H_start| shrinks like epsilon^2 at a fixed trajectory length (leapfrog is second order)."""
    target = TARGETS["anisotropic-10d"]
    unit = 1 / math.sqrt(target.lambda_max)
    coarse, _ = _energy_error(0.02 * unit, target, 50)
    fine, accept = _energy_error(0.01 * unit, target, 100)
    assert fine < 1e-3 and accept > 0.999
    assert 3.5 < coarse / fine < 4.5, f"energy error ratio {coarse / fine:.2f} for half the step, expected ~4"


def test_unadjusted_hmc_takes_every_end_point():
    target = TARGETS["anisotropic-10d"]
    sampler = HMC(0.1, leapfrog_steps=3, metropolis=False)
    start = target.start(8)
    x, history, evaluations = run_sampler(sampler, target.energy, start, 4)
    assert "accept" not in history and "hamiltonian_error" in history
    assert evaluations == 1 + 4 * 3


def test_one_leapfrog_step_is_mala():
    """HMC with one leapfrog step proposes exactly MALA's move with eta = epsilon^2 / (2 m)."""
    from seaflow.samplers import MALA

    target = TARGETS["anisotropic-10d"]
    start = target.start(16).double()
    epsilon, mass = 0.3, 2.0
    hmc, _, _ = run_sampler(HMC(epsilon, leapfrog_steps=1, mass=mass, metropolis=False), target.energy, start, 1, seed=4)
    generator = torch.Generator().manual_seed(4)
    noise = torch.randn(start.shape, generator=generator, dtype=start.dtype)
    eta = epsilon ** 2 / (2 * mass)
    expected = start - eta * target.energy_fn(start)[1] + math.sqrt(2 * eta) * noise
    torch.testing.assert_close(hmc, expected)
    assert MALA  # same proposal family; MALA's own tests cover its accept/reject
