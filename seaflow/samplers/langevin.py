"""Unadjusted Langevin dynamics, SEA's default sampler."""

from __future__ import annotations

import torch

from seaflow.samplers.base import EnergyFn, Sampler, SamplerOutput, SamplerState
from seaflow.schedules import Schedule


class Langevin(Sampler):
    """``x <- x - eta * grad E(x) + sqrt(2 * eta) * noise_scale * eps``, ``eps ~ N(0, I)``.

    With ``noise_scale = 1`` the chain samples ``exp(-E)`` up to a discretisation error of
    order ``eta`` (no accept/reject step corrects it; see :class:`~seaflow.samplers.MALA`);
    ``noise_scale = 0`` is plain gradient descent (the paper's "w/o noise" ablation, the
    optimisation mode); values in between sample the tempered target
    ``exp(-E / noise_scale**2)``. One gradient evaluation per step.

    Args:
        step_size: eta, a float or a :class:`~seaflow.samplers.Schedule` giving eta over
            the run. The caller's per-chain ``state.step_scale`` multiplies it.
        noise_scale: multiplier on the injected noise, a float or a schedule.
    """

    def __init__(self, step_size: float | Schedule = 0.1, noise_scale: float | Schedule = 1.0):
        self.step_size = self.check_rate("step_size", step_size, allow_zero=False)
        self.noise_scale = self.check_rate("noise_scale", noise_scale, allow_zero=True)

    def step(self, x: torch.Tensor, energy_fn: EnergyFn, state: SamplerState, generator: torch.Generator | None = None) -> SamplerOutput:
        start = energy_fn(x)
        eta = self.per_chain(self.chain_step(self.scheduled("step_size", self.step_size, state), state, x), x)
        noise = self.scheduled("noise_scale", self.noise_scale, state)
        new_x = x - eta * start.grad
        if noise > 0:
            new_x = new_x + torch.sqrt(2 * eta) * noise * self.noise_like(x, generator)
        return SamplerOutput(sample=new_x, start=start)
