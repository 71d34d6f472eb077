"""Discrete Langevin proposal (DLP / DMALA): gradient-informed moves between token sequences."""

from __future__ import annotations

import torch

from seaflow import rng
from seaflow.checks import require
from seaflow.samplers.base import EnergyFn, Sampler, SamplerOutput, SamplerState
from seaflow.schedules import Schedule


class DiscreteLangevin(Sampler):
    """Langevin-like moves on categorical variables (Zhang, Liu & Liu 2022), optionally Metropolis-adjusted.

    The state ``x`` of shape ``(chains, ..., V)`` is read as one categorical variable per
    position: its token is ``argmax`` over the last dimension. ``energy_fn`` must return
    the exact energy of those tokens and the gradient with respect to their one-hot
    encoding, ``g = dE/dp`` (in SEA: the :class:`~seaflow.relaxations.OneHot` relaxation).
    With temperature ``T = noise_scale**2`` and step size ``a``, every position ``i``
    independently proposes token ``v`` with probability

        q_i(v | x) ∝ exp(-(g_i[v] - g_i[x_i]) / (2 T) - 1[v != x_i] / a),

    the first-order estimate of half the change in ``-E / T`` from flipping position ``i``
    to ``v``, minus a cost per changed position: small ``a`` changes few positions per
    step, large ``a`` many. With ``metropolis`` (default) each chain accepts the proposal
    ``x'`` with probability

        min(1, exp(-(E(x') - E(x)) / T) * q(x | x') / q(x' | x)),

    where the reverse proposal uses the gradient at ``x'``; the chain then samples
    ``exp(-E / T)`` over token sequences exactly, whatever ``a``. Without it the move is
    the unadjusted DLP (biased for ``a > 0``, like unadjusted Langevin).

    The new state rewrites only the positions that changed, as ``scale * one_hot(token)``
    (zero elsewhere), so ``argmax`` is the new token; unchanged positions keep their values.

    ``proposal_temperature`` (default: ``T``) replaces ``T`` in the proposal only. The
    Metropolis test stays exact with any value, so it separates how sharply the proposal
    follows the gradient from the temperature of the target. Optimisation mode
    (``noise_scale = 0``): with the default the proposal is its zero-temperature limit
    (each position takes its lowest-gradient token if that is below the current one's;
    deterministic, so a rejected greedy move stays rejected), with a positive
    ``proposal_temperature`` it is a random gradient-informed move; either way, with
    ``metropolis`` a chain accepts only moves that do not raise the energy.

    If ``energy_fn.allowed`` is a boolean mask (SEA's ``restrict_top_k``), disallowed
    tokens are never proposed (the current token always may be kept).

    Cost: one gradient evaluation per step with ``metropolis`` (at the proposal; the current
    point's energy and gradient are cached), and one without it (at the current point).
    Diagnostics: ``flips`` (positions the proposal changes) and, with ``metropolis``,
    ``accept`` and ``accept_prob``.

    Args:
        step_size: ``a``, a float or a schedule; multiplied per chain by ``state.step_scale``
            (a chain with step 0 never moves).
        noise_scale: square root of the target temperature, a float or a schedule; 0 is the
            optimisation mode.
        metropolis: apply the Metropolis-Hastings test (DMALA); false gives the unadjusted DLP.
        proposal_temperature: the temperature in the proposal, a float or a schedule; ``None``
            uses ``noise_scale**2``.
        scale: the value written at a changed position's new token.
    """

    needs_one_hot_gradient = True

    def __init__(
        self,
        step_size: float | Schedule = 1.0,
        noise_scale: float | Schedule = 1.0,
        metropolis: bool = True,
        proposal_temperature: float | Schedule | None = None,
        scale: float = 10.0,
    ):
        self.step_size = self.check_rate("step_size", step_size, allow_zero=False)
        self.noise_scale = self.check_rate("noise_scale", noise_scale, allow_zero=True)
        if proposal_temperature is not None:
            self.check_rate("proposal_temperature", proposal_temperature, allow_zero=True)
        require(isinstance(scale, (int, float)) and scale > 0 and scale != float("inf"), "DiscreteLangevin scale", scale,
                "a finite number > 0 (the new token's logit)")
        self.metropolis_test = bool(metropolis)
        self.proposal_temperature = proposal_temperature
        self.scale = float(scale)

    # -- the proposal ------------------------------------------------------------------------

    def proposal_log_probs(
        self, grad: torch.Tensor, tokens: torch.Tensor, step: torch.Tensor, temperature: float, allowed: torch.Tensor | None
    ) -> torch.Tensor:
        """``log q_i(v | x)`` of shape ``grad.shape`` for a positive proposal temperature.

        ``tokens`` holds the current tokens ``(chains, ...)``, ``step`` the per-chain step size.
        """
        index = tokens.unsqueeze(-1)
        logits = (grad - grad.gather(-1, index)).mul_(-0.5 / temperature)
        logits.sub_(self.per_chain(1.0 / step, grad))  # step 0 -> inf: only the current token remains
        if allowed is not None:
            logits.masked_fill_(~allowed, float("-inf"))
        logits.scatter_(-1, index, 0.0)  # staying is always possible
        return torch.log_softmax(logits, dim=-1)

    @staticmethod
    def greedy(grad: torch.Tensor, tokens: torch.Tensor, step: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        """The zero-temperature proposal: per position the lowest-gradient token if it is strictly
        below the current one's (ties and chains with step 0 keep the current token)."""
        delta = grad - grad.gather(-1, tokens.unsqueeze(-1))
        if allowed is not None:
            delta = delta.masked_fill(~allowed, float("inf"))
        best_delta, best = delta.min(dim=-1)
        moving = (best_delta < 0) & Sampler.per_chain(step > 0, best)
        return torch.where(moving, best, tokens)

    def log_q(self, grad, tokens, to_tokens, step, temperature, allowed) -> torch.Tensor:
        """Per-chain ``log q(to_tokens | tokens)`` under the gradient ``grad`` at ``tokens``."""
        if temperature > 0:
            log_probs = self.proposal_log_probs(grad, tokens, step, temperature, allowed)
            return self.sum_per_chain(log_probs.gather(-1, to_tokens.unsqueeze(-1)).squeeze(-1))
        # a deterministic proposal: probability 1 for the greedy move, 0 for anything else
        hit = (self.greedy(grad, tokens, step, allowed) == to_tokens).flatten(1).all(1)
        return torch.where(hit, 0.0, float("-inf")).to(grad.dtype)

    def propose(self, grad, tokens, step, temperature, allowed, generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(proposed tokens, per-chain log q(proposed | current) or None at temperature 0)``."""
        if temperature <= 0:
            return self.greedy(grad, tokens, step, allowed), None
        log_probs = self.proposal_log_probs(grad, tokens, step, temperature, allowed)
        proposed = self.draw(log_probs, tokens, generator)
        log_forward = self.sum_per_chain(log_probs.gather(-1, proposed.unsqueeze(-1)).squeeze(-1))
        return proposed, log_forward

    @staticmethod
    def draw(log_probs: torch.Tensor, tokens: torch.Tensor, generator) -> torch.Tensor:
        """One token per position from ``exp(log_probs)`` by inverse-CDF sampling (one uniform each)."""
        cdf = log_probs.double().exp_().cumsum_(dim=-1)
        uniform = rng.rand((*tokens.shape, 1), generator, device=log_probs.device, dtype=cdf.dtype)
        drawn = torch.searchsorted(cdf, uniform * cdf[..., -1:], right=True).clamp_max_(log_probs.shape[-1] - 1)
        # a draw on a zero-probability token can only come from rounding at the very end of the CDF
        possible = torch.isfinite(log_probs.gather(-1, drawn))
        return torch.where(possible, drawn, tokens.unsqueeze(-1)).squeeze(-1)

    def rewrite(self, x: torch.Tensor, tokens: torch.Tensor, proposed: torch.Tensor) -> torch.Tensor:
        """``x`` with every changed position replaced by ``scale * one_hot(proposed)``."""
        changed = (proposed != tokens).unsqueeze(-1)
        if not bool(changed.any()):
            return x
        one_hot = torch.zeros_like(x).scatter_(-1, proposed.unsqueeze(-1), self.scale)
        return torch.where(changed, one_hot, x)

    # -- context -------------------------------------------------------------------------------

    def allowed_mask(self, energy_fn: EnergyFn, x: torch.Tensor) -> torch.Tensor | None:
        """``energy_fn.allowed`` broadcast to ``x`` (``None`` when there is no restriction)."""
        allowed = energy_fn.allowed
        if allowed is None:
            return None
        if not isinstance(allowed, torch.Tensor) or allowed.dtype != torch.bool:
            raise ValueError(
                f"DiscreteLangevin needs energy_fn.allowed to be a boolean tensor, got "
                f"{getattr(allowed, 'dtype', type(allowed).__name__)}; build it with Relaxation.top_k_mask"
            )
        try:
            return allowed.to(x.device).expand(x.shape)
        except RuntimeError:
            raise ValueError(
                f"energy_fn.allowed of shape {tuple(allowed.shape)} does not broadcast to the state's shape "
                f"{tuple(x.shape)}; it must be broadcastable to (chains, ..., vocab)"
            ) from None

    # -- the step ------------------------------------------------------------------------------

    def step(self, x: torch.Tensor, energy_fn: EnergyFn, state: SamplerState, generator: torch.Generator | None = None) -> SamplerOutput:
        if x.dim() < 2:
            raise ValueError(
                f"DiscreteLangevin reads the last dimension of the state as categories and needs a state of shape "
                f"(chains, ..., categories), got shape {tuple(x.shape)}"
            )
        if self.metropolis_test:
            start, evaluations = self.energy_at(x, energy_fn, state)
        else:
            start, evaluations = energy_fn(x), 1
        step = self.chain_step(self.scheduled("step_size", self.step_size, state), state, x)
        noise = self.scheduled("noise_scale", self.noise_scale, state)
        temperature = noise * noise
        proposal_temperature = temperature if self.proposal_temperature is None else self.scheduled(
            "proposal_temperature", self.proposal_temperature, state
        )
        allowed = self.allowed_mask(energy_fn, x)
        tokens = x.argmax(dim=-1)
        proposed_tokens, log_forward = self.propose(start.grad, tokens, step, proposal_temperature, allowed, generator)
        proposal = self.rewrite(x, tokens, proposed_tokens)
        diagnostics = {"flips": self.sum_per_chain((proposed_tokens != tokens).to(x.dtype))}

        if self.metropolis_test:
            proposed = energy_fn(proposal)
            evaluations += 1
            log_ratio = None
            if temperature > 0:
                if log_forward is None:  # deterministic proposal
                    log_forward = torch.zeros_like(start.energy)
                log_backward = self.log_q(proposed.grad, proposed_tokens, tokens, step, proposal_temperature, allowed)
                log_ratio = -(proposed.energy - start.energy) / temperature + log_backward - log_forward
            kept, accept, probability = self.accept_or_keep(state, start, proposed, log_ratio, generator)
            proposal = kept.point
            diagnostics["accept"] = accept.to(x.dtype)
            diagnostics["accept_prob"] = probability.detach().to(x.dtype)
        return SamplerOutput(sample=proposal, start=start, diagnostics=diagnostics, evaluations=evaluations)
