"""AdaptiveLangevin passes the sampler contract as pSGLD and with step-size adaptation."""

import math

import torch
from seaflow.testing.samplers import TARGETS, SamplerContract, run_sampler, one_thread  # noqa: F401  (one_thread: autouse)

from seaflow.samplers import AdaptiveLangevin, FunctionEnergy, Langevin


def preconditioned_spectrum(target):
    """Extreme eigenvalues of G^1/2 A G^1/2 with the limit preconditioner G = diag(A)^-1/2
    (under the target E[g_i^2] = A_ii)."""
    scale = torch.diagonal(target.precision) ** -0.25
    spectrum = torch.linalg.eigvalsh(scale[:, None] * target.precision * scale[None, :])
    return float(spectrum[0]), float(spectrum[-1])


class TestAdaptiveLangevinPSGLD(SamplerContract):
    """Diagonal RMSprop preconditioner adapted over the first half of the run, then frozen."""

    sampler_class = AdaptiveLangevin
    sampler_kwargs = {"beta": 0.99, "adapt_until": 0.5}
    relative_step = 0.1

    def step_size_for(self, target):
        return self.relative_step / preconditioned_spectrum(target)[1]

    def num_steps_for(self, target):
        # the first half adapts (burn-in), the second half runs with the frozen preconditioner
        return 2 * math.ceil(6 / (self.step_size_for(target) * preconditioned_spectrum(target)[0]))

    def relative_bias(self, target):
        # unadjusted: eta * lambda / 2 at the limit preconditioner, doubled because each chain
        # freezes its own noisy estimate of it
        return self.relative_step

    def optimiser_for(self, target):
        # RMSprop with a constant rate hovers around the minimum; a decaying rate lands on it
        from seaflow.schedules import Linear

        return self.make_sampler(Linear(0.05, 0.0), noise_scale=0.0, beta=0.9, adapt_until=1.0), 1500


class TestAdaptiveLangevinTargetAccept(SamplerContract):
    """Metropolis-corrected with per-chain step adaptation towards 57.4% acceptance."""

    sampler_class = AdaptiveLangevin
    sampler_kwargs = {"beta": 0.99, "adapt_until": 0.5, "target_accept": 0.574}
    has_accept = True
    accept_range = (0.35, 0.95)

    def step_size_for(self, target):
        return 0.3 / preconditioned_spectrum(target)[1]

    def num_steps_for(self, target):
        return max(300, 2 * math.ceil(6 / (self.step_size_for(target) * preconditioned_spectrum(target)[0])))

    def optimiser_for(self, target):
        return self.make_sampler(0.05, noise_scale=0.0), 1500


def test_step_adaptation_reaches_the_target_acceptance():
    target = TARGETS["anisotropic-10d"]
    for start_step in (0.01, 3.0):  # far too small and far too large
        sampler = AdaptiveLangevin(start_step / target.lambda_max, preconditioner="none", target_accept=0.574)
        _, history, _ = run_sampler(sampler, target.energy, target.start(512), 400)
        rate = float(history["accept"][-100:].mean())
        assert abs(rate - 0.574) < 0.08, f"start step {start_step}: acceptance {rate:.3f}"


def test_preconditioner_tracks_gradient_scale():
    """On variances 0.1 .. 10 the squared-gradient average follows E[g_i^2] = 1 / var_i (somewhat
    above it: while G adapts it depends on the current point, which widens the chains; hence
    the freeze), which takes the square root of the conditioning: the budget that leaves plain
    Langevin (at the same stiffest-direction step) far from the widest variance suffices for pSGLD."""
    variances = torch.logspace(-1, 1, 6)

    def gaussian(x):
        return 0.5 * (x ** 2 / variances).sum(-1), x / variances

    energy_fn = FunctionEnergy(gaussian)

    start = torch.ones(512, 6) * variances.sqrt() * 3
    steps = 1200
    eta = 0.1 * variances.min().sqrt().item()  # 0.1 / sqrt(lambda_max)
    sampler = AdaptiveLangevin(eta, beta=0.99, adapt_until=0.75)
    generator = torch.Generator().manual_seed(0)
    x, state = start, sampler.init_state(start, steps)
    for _ in range(steps):
        x = sampler.step(x, energy_fn, state, generator).sample
        state.iteration += 1
    relative_moment = state.cache["second_moment"].mean(0) * variances
    assert torch.all((relative_moment > 0.9) & (relative_moment < 1.6)), relative_moment
    ratio = x.var(0) / variances
    assert torch.all((ratio > 0.75) & (ratio < 1.3)), ratio
    assert torch.all(x.mean(0).abs() / variances.sqrt() < 0.2)  # sampling error ~0.044
    plain, _, _ = run_sampler(Langevin(0.1 * variances.min().item()), energy_fn, start, steps)
    assert plain.mean(0)[-1] / variances[-1].sqrt() > 0.5  # still remembers the start (3 sd out)


def test_scalar_and_no_preconditioner():
    target = TARGETS["anisotropic-10d"]
    for mode in ("scalar", "none"):
        sampler = AdaptiveLangevin(0.01, preconditioner=mode)
        x, history, _ = run_sampler(sampler, target.energy, target.start(4), 3)
        assert x.shape == (4, 10) and history["step_size"].shape == (3, 4)
