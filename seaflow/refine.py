"""The SEA refinement loop and the helpers around it, free of Lightning.

``SEA.predict_step`` (seaflow/methods/sea.py) strings these together:

1. :func:`initial_logits` - logits that decode (argmax) exactly to the policy's samples;
2. :class:`EnergyFunction` + :func:`refine` - T sampler steps on
   ``E(y) = -w_ref * log pi_ref(relax(y) | x) - alpha * r(x, relax(y))``;
3. decoding (argmax or guided, :mod:`seaflow.generation`) and discrete scoring.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from seaflow import rng
from seaflow.energies.base import Reward, ResponseBatch
from seaflow.energies.reference import ReferenceLogLikelihood
from seaflow.relaxations.base import Relaxation
from seaflow.samplers.base import Evaluation, Sampler, SamplerState


def initial_logits(
    tokens: torch.Tensor,
    reference_logits: torch.Tensor | None,
    vocab_size: int,
    margin: float = 1.0,
    scale: float = 10.0,
) -> torch.Tensor:
    """Logits ``(B, L, V)`` whose argmax is exactly ``tokens`` ``(B, L)``.

    With ``reference_logits`` (the policy's teacher-forced logits on the sample), ``y`` is
    their log-softmax with the sampled token lifted to ``margin`` above the best other
    token: argmax equals the sample, and the softmax surrogate still ranks the alternatives
    the way the policy does. (The raw teacher-forced logits would decode to the policy's
    greedy choices instead of the sample.) Without them, ``y = scale * one_hot(tokens)``.
    """
    if reference_logits is None:
        y = torch.zeros(*tokens.shape, vocab_size, device=tokens.device)
        return y.scatter_(-1, tokens.unsqueeze(-1), scale)
    y = torch.log_softmax(reference_logits.float(), dim=-1)
    others = y.scatter(-1, tokens.unsqueeze(-1), float("-inf")).amax(-1, keepdim=True)
    return y.scatter(-1, tokens.unsqueeze(-1), others + margin)


def random_logits(shape: tuple[int, ...], scale: float, generator: torch.Generator | None, device) -> torch.Tensor:
    """The paper's random initialisation: ``y ~ N(0, scale^2)`` independently per entry."""
    return rng.randn(shape, generator, device=device) * scale


class EnergyFunction:
    """``y -> Evaluation(y, E(y), dE/dy, parts)`` for a batch, with the batch-constant work done once.

    ``parts`` holds the per-row ``reward`` and ``reference`` log-likelihood behind the energy
    (for the trace). Terms whose weight is zero are not evaluated (the paper's "w/o reward"
    and "w/o reference" ablations), and their part is absent. ``allowed`` is the top-k mask
    (or ``None``), the one thing a sampler may read besides the evaluations (:class:`EnergyFn`).
    """

    def __init__(
        self,
        batch: ResponseBatch,
        relaxation: Relaxation,
        reward: Reward | None,
        reference: ReferenceLogLikelihood | None,
        alpha: float,
        reference_weight: float,
        generator: torch.Generator | None = None,
        allowed: torch.Tensor | None = None,
    ):
        self.relaxation = relaxation
        self.reward = reward if (reward is not None and alpha != 0) else None
        self.reference = reference if (reference is not None and reference_weight != 0) else None
        if self.reward is None and self.reference is None:
            raise ValueError("the energy has no term: set alpha != 0 with a reward, or reference_weight != 0")
        self.alpha = alpha
        self.reference_weight = reference_weight
        self.generator = generator
        self.allowed = allowed
        self.reward_state = self.reward.prepare(batch) if self.reward is not None else None
        self.reference_state = self.reference.prepare(batch) if self.reference is not None else None
        self.evaluations = 0
        self.best_energy: torch.Tensor | None = None
        self.best_tokens: torch.Tensor | None = None

    def parts(self, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """The energy at ``y``, its terms, and the relaxed tokens the models saw."""
        probs = self.relaxation(y, generator=self.generator, allowed=self.allowed)
        energy = torch.zeros(y.shape[0], device=y.device)
        parts = {}
        if self.reward is not None:
            parts["reward"] = self.reward.value(self.reward_state, probs)
            energy = energy - self.alpha * parts["reward"]
        if self.reference is not None:
            parts["reference"] = self.reference.value(self.reference_state, probs)
            energy = energy - self.reference_weight * parts["reference"]
        return energy, parts, probs

    def __call__(self, y: torch.Tensor) -> Evaluation:
        with torch.enable_grad():
            leaf = y.detach().requires_grad_(True)
            energy, parts, probs = self.parts(leaf)
            (grad,) = torch.autograd.grad(energy.sum(), leaf)
        self.evaluations += 1
        energy = energy.detach()
        self._track_best(energy, probs.detach())
        return Evaluation(y, energy, grad, {name: value.detach() for name, value in parts.items()})

    @torch.no_grad()
    def track(self, y: torch.Tensor) -> None:
        """Count ``y`` as a visited state for best-state tracking, without a gradient (e.g. the final iterate)."""
        energy, _, probs = self.parts(y)
        self._track_best(energy, probs)

    def _track_best(self, energy: torch.Tensor, probs: torch.Tensor) -> None:
        """Keep, per row, the tokens of the lowest-energy state seen so far.

        Exact when the models saw one-hot tokens (straight-through, hard Gumbel-softmax):
        the relaxed energy is then the discrete energy of those tokens. With a soft forward
        there are no tokens to keep, and nothing is tracked.
        """
        values, tokens = probs.max(dim=-1)
        if not bool((values == 1).all()):
            return
        # a non-finite energy (a numerical fault, see ChainHealth) never counts as the best
        energy = torch.where(torch.isfinite(energy), energy, float("inf"))
        if self.best_energy is None:
            self.best_energy, self.best_tokens = energy.clone(), tokens.clone()
            return
        better = energy < self.best_energy
        self.best_energy = torch.where(better, energy, self.best_energy)
        self.best_tokens = torch.where(better.unsqueeze(1), tokens, self.best_tokens)


@dataclass
class Trace:
    """Per-iteration diagnostics, each a list (one entry per step) of per-row tensors.

    ``faults`` and ``dropped`` are the numerical-fault log of the run (see :class:`ChainHealth`).
    """

    records: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    faults: list[dict[str, int | str]] = field(default_factory=list)
    dropped: torch.Tensor | None = None

    def add(self, **values: torch.Tensor | None) -> None:
        for name, value in values.items():
            if value is not None:
                self.records.setdefault(name, []).append(value.detach().float().cpu())

    def stacked(self) -> dict[str, torch.Tensor]:
        """``name -> (steps, B)``."""
        return {name: torch.stack(values) for name, values in self.records.items()}


class ChainHealth:
    """Per-chain numerical fault handling for :func:`refine`.

    A step *faults* for a chain when the energy or the gradient norm at the point it started
    from, or the new sample, is not finite. The chain then goes back to its *anchor* (the
    last point whose energy and gradient were finite), its ``state.step_scale`` is
    multiplied by ``shrink`` and its sampler cache entries are restored; the event is logged
    as ``{"chain", "iteration", "action": "rollback"}``. After ``max_faults`` faults in a row
    the chain is *dropped* (``"action": "dropped"``): frozen at its anchor for the rest of
    the run. Chains do not interact, so the others continue exactly as without the fault.
    """

    def __init__(self, y: torch.Tensor, max_faults: int = 3, shrink: float = 0.5):
        if max_faults < 1 or not 0 < shrink < 1:
            raise ValueError(f"max_faults must be >= 1 and shrink in (0, 1), got {max_faults} and {shrink}")
        self.max_faults, self.shrink = max_faults, shrink
        self.anchor = y
        self.streak = torch.zeros(y.shape[0], dtype=torch.long, device=y.device)
        self.dropped = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
        self.events: list[dict[str, int | str]] = []

    def after_step(self, iteration: int, y: torch.Tensor, sample: torch.Tensor, point_ok: torch.Tensor,
                   state: SamplerState, cache_before: dict) -> torch.Tensor:
        """The point each chain continues from: the new ``sample``, or its anchor after a fault.

        ``point_ok`` says per chain whether the energy and gradient at ``y`` were finite.
        """
        fault = (~point_ok | ~torch.isfinite(sample).flatten(1).all(1)) & ~self.dropped
        if bool(point_ok.all()):
            self.anchor = y  # the common case costs no copy
        else:
            self.anchor = torch.where(Sampler.per_chain(point_ok, y), y, self.anchor)
        self.streak = torch.where(fault, self.streak + 1, torch.zeros_like(self.streak))
        hold = fault | self.dropped
        if not bool(hold.any()):
            return sample
        drop = fault & (self.streak >= self.max_faults)
        for chain in fault.nonzero().flatten().tolist():
            self.events.append({"chain": chain, "iteration": iteration, "action": "dropped" if drop[chain] else "rollback"})
        self.dropped |= drop
        scale = state.step_scale if state.step_scale is not None else torch.ones(y.shape[0], dtype=y.dtype, device=y.device)
        state.step_scale = torch.where(fault.to(scale.device), scale * self.shrink, scale)
        # per-chain sampler state goes back with the chain; the kept point no longer matches
        state.kept = None
        state.cache = {
            name: Sampler.select(~hold, value, cache_before[name]) if name in cache_before else value
            for name, value in state.cache.items()
        }
        return torch.where(Sampler.per_chain(hold, y), self.anchor, sample)


def refine(
    y: torch.Tensor,
    energy_fn: EnergyFunction,
    sampler: Sampler,
    num_steps: int,
    generator: torch.Generator | None = None,
    progress=None,
    max_faults: int = 3,
) -> tuple[torch.Tensor, Trace]:
    """Run ``num_steps`` sampler steps from ``y``; return the final logits and the trace.

    The trace entry of step ``t`` describes the point the step started from (so entry 0 is
    the initialisation): its energy, gradient norm and energy parts, and the sampler's
    diagnostics. Numerical faults are handled per chain by :class:`ChainHealth`
    (rollback, smaller steps, dropped after ``max_faults`` in a row) and logged in
    ``trace.faults`` / ``trace.dropped``. ``progress(step)`` is called after every step when given.
    """
    state = sampler.init_state(y, num_steps)
    trace, health = Trace(), ChainHealth(y, max_faults)
    for step in range(num_steps):
        energy_fn.relaxation.set_progress(state.progress)  # e.g. Gumbel temperature annealing
        cache_before = dict(state.cache)  # samplers replace cache entries, never edit them in place
        out = sampler.step(y, energy_fn, state, generator)
        state.iteration += 1
        values = out.trace()
        trace.add(**values)
        point_ok = torch.isfinite(values["energy"]) & torch.isfinite(values["grad_norm"])
        y = health.after_step(step, y, out.sample.detach(), point_ok, state, cache_before)
        if progress is not None:
            progress(step)
    trace.faults, trace.dropped = health.events, health.dropped
    return y, trace
