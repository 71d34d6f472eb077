"""Hamiltonian Monte Carlo with leapfrog integration."""

from __future__ import annotations

import math

import torch

from seaflow import rng
from seaflow.checks import require
from seaflow.samplers.base import EnergyFn, Sampler, SamplerOutput, SamplerState
from seaflow.schedules import Schedule


class HMC(Sampler):
    """Hamiltonian Monte Carlo: fresh momenta, ``leapfrog_steps`` leapfrog steps, Metropolis test.

    With temperature ``T = noise_scale**2`` and Hamiltonian ``H(x, p) = E(x) + |p|^2 / (2 m)``,
    each step draws ``p ~ N(0, m T I)`` (momentum resampled every iteration), integrates
    Hamilton's equations with the leapfrog scheme (step ``epsilon``)

        p <- p - epsilon/2 * grad E(x);  x <- x + epsilon * p / m;  p <- p - epsilon/2 * grad E(x)

    and, with ``metropolis=True``, accepts the end point per chain with probability
    ``min(1, exp(-(H_end - H_start) / T))``, which makes ``exp(-E / T)`` the exact target.
    Without the correction the end point is always taken (an unadjusted sampler, biased
    by the integration error). One leapfrog step (``leapfrog_steps=1``) is MALA with
    ``eta = epsilon**2 / (2 m)``; more steps travel further per Metropolis test.

    Optimisation mode (``noise_scale = 0``): the momenta start at zero, so the trajectory
    rolls downhill from rest; with ``metropolis=True`` a chain keeps the end point only if
    its energy is not higher (the zero-temperature limit), so the energy never goes up.

    Cost: ``leapfrog_steps`` gradient evaluations per step (plus one on the first step);
    the energy and gradient of the current point are cached.

    Diagnostics: ``hamiltonian_error``
    (``H_end - H_start``, near zero for an accurate integration), and with
    ``metropolis=True`` ``accept`` and ``accept_prob``.

    Args:
        step_size: leapfrog step epsilon, a float or a schedule; multiplied per chain by
            ``state.step_scale``.
        leapfrog_steps: leapfrog steps per iteration (>= 1).
        mass: scalar mass m (> 0) of the kinetic energy.
        noise_scale: sqrt of the temperature, a float or a schedule; 0 is the optimisation mode.
        metropolis: apply the Metropolis correction.
        jitter: each chain's step is drawn uniformly from ``epsilon * [1 - jitter, 1 + jitter]``
            every iteration (0 <= jitter < 1). A fixed trajectory length can be close to a
            period of some direction of the energy, which then never mixes; random lengths
            avoid that resonance (Neal 2011).
    """

    def __init__(
        self,
        step_size: float | Schedule = 0.1,
        leapfrog_steps: int = 5,
        mass: float = 1.0,
        noise_scale: float | Schedule = 1.0,
        metropolis: bool = True,
        jitter: float = 0.0,
    ):
        self.step_size = self.check_rate("step_size", step_size, allow_zero=False)
        self.noise_scale = self.check_rate("noise_scale", noise_scale, allow_zero=True)
        require(isinstance(leapfrog_steps, int) and leapfrog_steps >= 1, "HMC leapfrog_steps", leapfrog_steps, "an integer >= 1")
        require(isinstance(mass, (int, float)) and mass > 0 and math.isfinite(mass), "HMC mass", mass, "a finite number > 0")
        require(0 <= jitter < 1, "HMC jitter", jitter, "in [0, 1)")
        self.jitter = jitter
        self.leapfrog_steps = leapfrog_steps
        self.mass = float(mass)
        self.metropolis_correction = metropolis

    def step(self, x: torch.Tensor, energy_fn: EnergyFn, state: SamplerState, generator: torch.Generator | None = None) -> SamplerOutput:
        start, evaluations = self.energy_at(x, energy_fn, state)
        epsilon = self.chain_step(self.scheduled("step_size", self.step_size, state), state, x)
        if self.jitter > 0:
            uniform = rng.rand(epsilon.shape, generator, device=x.device, dtype=x.dtype)
            epsilon = epsilon * (1 + self.jitter * (2 * uniform - 1))
        epsilon = self.per_chain(epsilon, x)
        noise = self.scheduled("noise_scale", self.noise_scale, state)
        temperature = noise * noise
        mass = self.mass

        momentum0 = math.sqrt(mass * temperature) * self.noise_like(x, generator) if noise > 0 else torch.zeros_like(x)
        position, end = x, start
        momentum = momentum0 - 0.5 * epsilon * start.grad
        for leap in range(self.leapfrog_steps):
            position = position + epsilon * momentum / mass
            end = energy_fn(position)
            evaluations += 1
            if leap < self.leapfrog_steps - 1:
                momentum = momentum - epsilon * end.grad
        momentum = momentum - 0.5 * epsilon * end.grad

        kinetic0 = self.sum_per_chain(momentum0 ** 2) / (2 * mass)
        kinetic = self.sum_per_chain(momentum ** 2) / (2 * mass)
        hamiltonian_error = (end.energy + kinetic) - (start.energy + kinetic0)
        diagnostics = {}
        if self.metropolis_correction:
            log_ratio = -hamiltonian_error / temperature if temperature > 0 else None
            end, accept, probability = self.accept_or_keep(state, start, end, log_ratio, generator)
            diagnostics.update(accept=accept.to(x.dtype), accept_prob=probability.detach())
        else:
            self.remember(state, end)  # end.point is position
        diagnostics["hamiltonian_error"] = hamiltonian_error.detach()
        return SamplerOutput(sample=end.point, start=start, diagnostics=diagnostics, evaluations=evaluations)
