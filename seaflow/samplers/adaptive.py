"""Adaptive Langevin: an RMSprop preconditioner (pSGLD) and step-size adaptation."""

from __future__ import annotations

import math
from typing import Literal

import torch

from seaflow.checks import require, require_one_of
from seaflow.samplers.base import EnergyFn, Sampler, SamplerOutput, SamplerState
from seaflow.schedules import Schedule


class AdaptiveLangevin(Sampler):
    """Langevin dynamics that adapts two things to the energy it meets.

    1. **Preconditioner** (``preconditioner``), as in preconditioned SGLD (pSGLD, Li et al.
       2016): a running average of squared gradients ``V <- beta V + (1 - beta) g^2`` gives
       ``G = 1 / (epsilon + sqrt(V))`` and the step

           x <- x - eta * G * g + sqrt(2 * eta * G) * noise_scale * eps.

       Why: the logits' gradients differ by orders of magnitude between positions, tokens
       and reward weights ``alpha``; with ``G`` the step is measured in units of the
       gradient's own typical size (RMSprop's learning rate), so one ``step_size`` suits very
       different energies. ``"diagonal"`` keeps one ``V`` per coordinate, ``"scalar"`` one
       per chain (the mean square over the chain: a per-chain step normalised by the gradient
       size, noise spread evenly), ``"none"`` disables it. ``epsilon`` caps the
       preconditioner at ``1 / epsilon``: coordinates with near-zero gradient (e.g. tokens the
       relaxation gives almost no probability) otherwise receive huge noise. As in pSGLD the
       correction term of a position-dependent ``G`` is dropped; the sampler is exact (up to
       discretisation) once ``G`` stops changing, see ``adapt_until``.

    2. **Step size** (``target_accept``, optional): each proposal is Metropolis-corrected as
       in MALA (with the preconditioned Gaussian proposal) and every chain adapts its own
       multiplier on ``eta`` by Robbins-Monro on the log scale,
       ``log s <- log s + adaptation_rate * (t + 1)^-0.6 * (accept_prob - target_accept)``:
       too many rejections shrink the step, too few grow it. Why: the best step for a chain
       is unknown in advance and differs between prompts; a target acceptance (0.574 is
       asymptotically optimal for MALA) finds it per chain without tuning. In the optimisation
       mode the test accepts exactly the steps that do not raise the energy, so the rate
       then tracks the fraction of energy-decreasing steps.

    Both adaptations run while ``state.progress < adapt_until`` and are frozen afterwards.
    Adaptation that never stops breaks the Markov property, so for sampling (as opposed to
    optimising) set ``adapt_until`` < 1 and discard the adaptation phase as burn-in.

    Optimisation mode (``noise_scale = 0``): RMSprop on the energy (with ``target_accept``:
    energy-decreasing steps only, and an adapted step size).

    Cost: one gradient evaluation per step (at the current point without ``target_accept``,
    at the proposal with it; the current point's values are then cached).

    Diagnostics: ``step_size`` (the per-chain
    ``eta`` after adaptation and ``state.step_scale``), and with ``target_accept``
    ``accept`` and ``accept_prob``.

    Args:
        step_size: base eta, a float or a schedule; multiplied per chain by ``state.step_scale``
            and the adapted multiplier.
        noise_scale: sqrt of the temperature, a float or a schedule; 0 is the optimisation mode.
        preconditioner: ``diagonal``, ``scalar`` or ``none``.
        beta: decay of the squared-gradient average (0 <= beta < 1); about ``1 / (1 - beta)``
            steps are remembered.
        epsilon: added to ``sqrt(V)``; bounds the preconditioner by ``1 / epsilon``.
        target_accept: acceptance rate to adapt the step towards (in (0, 1)); ``None`` gives
            pSGLD without accept/reject and without step adaptation.
        adaptation_rate: initial gain of the step-size adaptation (> 0).
        adapt_until: fraction of the run (in [0, 1]) after which both adaptations freeze.
    """

    def __init__(
        self,
        step_size: float | Schedule = 0.1,
        noise_scale: float | Schedule = 1.0,
        preconditioner: Literal["diagonal", "scalar", "none"] = "diagonal",
        beta: float = 0.9,
        epsilon: float = 1e-3,
        target_accept: float | None = None,
        adaptation_rate: float = 1.0,
        adapt_until: float = 1.0,
    ):
        self.step_size = self.check_rate("step_size", step_size, allow_zero=False)
        self.noise_scale = self.check_rate("noise_scale", noise_scale, allow_zero=True)
        require_one_of("AdaptiveLangevin preconditioner", preconditioner, ("diagonal", "scalar", "none"))
        require(0 <= beta < 1, "AdaptiveLangevin beta", beta, "in [0, 1)")
        require(epsilon > 0 and math.isfinite(epsilon), "AdaptiveLangevin epsilon", epsilon, "a finite number > 0")
        require(target_accept is None or 0 < target_accept < 1, "AdaptiveLangevin target_accept", target_accept, "in (0, 1) or None")
        require(adaptation_rate > 0 and math.isfinite(adaptation_rate), "AdaptiveLangevin adaptation_rate", adaptation_rate,
                "a finite number > 0")
        require(0 <= adapt_until <= 1, "AdaptiveLangevin adapt_until", adapt_until, "in [0, 1]")
        self.preconditioner = preconditioner
        self.beta = beta
        self.epsilon = epsilon
        self.target_accept = target_accept
        self.adaptation_rate = adaptation_rate
        self.adapt_until = adapt_until

    def init_state(self, x: torch.Tensor, num_steps: int) -> SamplerState:
        state = super().init_state(x, num_steps)
        state.cache["log_step"] = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        return state

    def _precondition(self, grad: torch.Tensor, state: SamplerState, adapting: bool) -> torch.Tensor:
        """Update the squared-gradient average (while adapting) and return G, broadcastable to ``grad``."""
        if self.preconditioner == "none":
            return torch.ones((grad.shape[0],) + (1,) * (grad.dim() - 1), dtype=grad.dtype, device=grad.device)
        square = grad.detach() ** 2
        if self.preconditioner == "scalar":
            square = self.per_chain(square.flatten(1).mean(1), grad)
        average = state.cache.get("second_moment")
        if average is None:
            average = square  # start from the first gradient instead of a biased zero
        elif adapting:
            average = self.beta * average + (1 - self.beta) * square
        state.cache["second_moment"] = average
        return 1.0 / (self.epsilon + average.sqrt())

    def step(self, x: torch.Tensor, energy_fn: EnergyFn, state: SamplerState, generator: torch.Generator | None = None) -> SamplerOutput:
        metropolis = self.target_accept is not None
        start, evaluations = self.energy_at(x, energy_fn, state) if metropolis else (energy_fn(x), 1)
        adapting = state.progress < self.adapt_until
        log_step = state.cache.get("log_step")
        if log_step is None:
            log_step = state.cache["log_step"] = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        eta_chain = self.chain_step(self.scheduled("step_size", self.step_size, state), state, x) * log_step.exp()
        eta = self.per_chain(eta_chain, x)
        noise = self.scheduled("noise_scale", self.noise_scale, state)
        temperature = noise * noise
        precondition = self._precondition(start.grad, state, adapting)

        mean = x - eta * precondition * start.grad
        proposal = mean
        if noise > 0:
            proposal = mean + torch.sqrt(2 * eta * precondition * temperature) * self.noise_like(x, generator)
        diagnostics = {}
        if metropolis:
            proposed = energy_fn(proposal)
            evaluations += 1
            log_ratio = None
            if temperature > 0:
                variance = (4 * eta * precondition * temperature).clamp_min(torch.finfo(x.dtype).tiny)
                log_forward = -self.sum_per_chain((proposal - mean) ** 2 / variance)
                backward_mean = proposal - eta * precondition * proposed.grad
                log_backward = -self.sum_per_chain((x - backward_mean) ** 2 / variance)
                log_ratio = -(proposed.energy - start.energy) / temperature + log_backward - log_forward
            kept, accept, probability = self.accept_or_keep(state, start, proposed, log_ratio, generator)
            proposal = kept.point
            if adapting:
                gain = self.adaptation_rate / (state.iteration + 1) ** 0.6
                state.cache["log_step"] = log_step + gain * (probability.to(x.dtype) - self.target_accept)
            diagnostics.update(accept=accept.to(x.dtype), accept_prob=probability.detach())
        diagnostics["step_size"] = eta_chain.detach()
        return SamplerOutput(sample=proposal, start=start, diagnostics=diagnostics, evaluations=evaluations)
