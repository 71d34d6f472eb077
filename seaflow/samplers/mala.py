"""Metropolis-adjusted Langevin algorithm (MALA)."""

from __future__ import annotations

import torch

from seaflow.samplers.base import EnergyFn, Sampler, SamplerOutput, SamplerState
from seaflow.schedules import Schedule


class MALA(Sampler):
    """A Langevin proposal followed by a per-chain Metropolis-Hastings accept/reject.

    With temperature ``T = noise_scale**2`` the proposal is

        x' = x - eta * grad E(x) + sqrt(2 * eta * T) * eps,    eps ~ N(0, I),

    i.e. ``q(x' | x) = N(x - eta * grad E(x), 2 * eta * T * I)``, and each chain accepts
    with probability

        min(1, exp(-(E(x') - E(x)) / T) * q(x | x') / q(x' | x)).

    The chain then targets ``exp(-E / T)`` exactly, whatever the step size: the
    discretisation bias of :class:`~seaflow.samplers.Langevin` is traded for rejections
    (aim for an acceptance rate around 0.5-0.8; 0.574 is the asymptotically optimal rate).

    Optimisation mode (``noise_scale = 0``): the proposal is a gradient step and a chain
    accepts it only when the energy does not increase (the zero-temperature limit of the
    Metropolis test), so the energy never goes up.

    Cost: one gradient evaluation per step (at the proposal); the energy and gradient of
    the current point are cached from the step that accepted it.

    Stochastic energies (e.g. a :class:`~seaflow.relaxations.GumbelSoftmax` relaxation) make
    the test approximate: the cached energy of the current point is a single noisy draw.

    Diagnostics: ``accept`` (1/0 per chain)
    and ``accept_prob`` (the Metropolis probability).

    Args:
        step_size: eta, a float or a schedule; multiplied per chain by ``state.step_scale``.
        noise_scale: sqrt of the temperature, a float or a schedule; 0 is the optimisation mode.
    """

    def __init__(self, step_size: float | Schedule = 0.1, noise_scale: float | Schedule = 1.0):
        self.step_size = self.check_rate("step_size", step_size, allow_zero=False)
        self.noise_scale = self.check_rate("noise_scale", noise_scale, allow_zero=True)

    def step(self, x: torch.Tensor, energy_fn: EnergyFn, state: SamplerState, generator: torch.Generator | None = None) -> SamplerOutput:
        start, evaluations = self.energy_at(x, energy_fn, state)
        eta_chain = self.chain_step(self.scheduled("step_size", self.step_size, state), state, x)
        eta = self.per_chain(eta_chain, x)
        noise = self.scheduled("noise_scale", self.noise_scale, state)
        temperature = noise * noise

        mean = x - eta * start.grad
        proposal = mean + torch.sqrt(2 * eta * temperature) * self.noise_like(x, generator) if noise > 0 else mean
        proposed = energy_fn(proposal)
        evaluations += 1

        log_ratio = None
        if temperature > 0:
            # log q(x'|x) and log q(x|x') up to the same constant; chains with eta = 0 do not
            # move (x' = x), and the clamp keeps their 0 / 0 at 0
            variance = (4 * eta_chain * temperature).clamp_min(torch.finfo(x.dtype).tiny)
            log_forward = -self.sum_per_chain((proposal - mean) ** 2) / variance
            log_backward = -self.sum_per_chain((x - (proposal - eta * proposed.grad)) ** 2) / variance
            log_ratio = -(proposed.energy - start.energy) / temperature + log_backward - log_forward
        kept, accept, probability = self.accept_or_keep(state, start, proposed, log_ratio, generator)
        return SamplerOutput(
            sample=kept.point,
            start=start,
            diagnostics={"accept": accept.to(x.dtype), "accept_prob": probability.detach()},
            evaluations=evaluations,
        )
