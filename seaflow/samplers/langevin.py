"""Unadjusted Langevin dynamics, SEA's default sampler."""

from __future__ import annotations


import torch

from seaflow.samplers.base import EnergyFn, Sampler, SamplerOutput, SamplerState
from seaflow.samplers.schedules import Schedule, resolve


class Langevin(Sampler):
    """``x <- x - eta * grad E(x) + sqrt(2 * eta) * noise_scale * eps``, ``eps ~ N(0, I)``.

    With ``noise_scale = 1`` the chain samples ``exp(-E)`` (up to discretisation error of
    order ``eta``); ``noise_scale = 0`` is plain gradient descent (the paper's "w/o noise"
    ablation); values in between sample a tempered target ``exp(-E / noise_scale**2)``.

    Args:
        step_size: eta, a float or a :class:`Schedule` (multiplier over the run).
        noise_scale: multiplier on the injected noise, a float or a schedule.
    """

    def __init__(self, step_size: float | Schedule = 0.1, noise_scale: float | Schedule = 1.0):
        if not isinstance(step_size, Schedule) and not step_size > 0:
            raise ValueError(f"Langevin step_size must be > 0, got {step_size}")
        if not isinstance(noise_scale, Schedule) and not noise_scale >= 0:
            raise ValueError(f"Langevin noise_scale must be >= 0, got {noise_scale}")
        self.step_size = step_size
        self.noise_scale = noise_scale

    def step(
        self,
        x: torch.Tensor,
        energy_fn: EnergyFn,
        state: SamplerState,
        generator: torch.Generator | None = None,
    ) -> SamplerOutput:
        energy, grad = energy_fn(x)
        eta = resolve(self.step_size, state.progress) * self.per_chain(state.step_scale, x)
        noise = resolve(self.noise_scale, state.progress)
        new_x = x - eta * grad
        if noise > 0:
            new_x = new_x + torch.sqrt(2 * eta) * noise * self.noise_like(x, generator)
        state.iteration += 1
        return SamplerOutput(
            sample=new_x,
            state=state,
            diagnostics={"energy": energy.detach(), "grad_norm": self.grad_norm(grad)},
            evaluations=1,
        )
