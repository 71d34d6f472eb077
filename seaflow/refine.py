"""The SEA refinement loop and the helpers around it, free of Lightning.

``SEA.predict_step`` (seaflow/module.py) strings these together:

1. :func:`initial_logits` - logits that decode (argmax) exactly to the policy's samples;
2. :class:`EnergyFunction` + :func:`refine` - T sampler steps on
   ``E(y) = -w_ref * log pi_ref(relax(y) | x) - alpha * r(x, relax(y))``;
3. decoding (argmax or guided, :mod:`seaflow.generation`) and discrete scoring.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from seaflow.energies.base import Reward, ResponseBatch
from seaflow.energies.reference import ReferenceLogLikelihood
from seaflow.relaxations.base import Relaxation
from seaflow.samplers.base import Sampler


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
    return torch.randn(shape, generator=generator, device=device) * scale


@dataclass
class EnergyParts:
    """Per-row values at one evaluation: total energy, reward and reference log-likelihood."""

    energy: torch.Tensor
    reward: torch.Tensor | None = None
    reference: torch.Tensor | None = None


class EnergyFunction:
    """``y -> (E(y), dE/dy)`` for a batch, with the batch-constant work done once.

    Terms whose weight is zero are not evaluated (the paper's "w/o reward" and "w/o
    reference" ablations). The most recent parts are kept in :attr:`last` for the trace.
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
        self.last: EnergyParts | None = None
        self.evaluations = 0
        self.best_energy: torch.Tensor | None = None
        self.best_tokens: torch.Tensor | None = None

    def parts(self, y: torch.Tensor) -> tuple[EnergyParts, torch.Tensor]:
        """The energy and its terms at ``y``, and the relaxed tokens the models saw."""
        probs = self.relaxation(y, generator=self.generator, allowed=self.allowed)
        energy = torch.zeros(y.shape[0], device=y.device)
        reward = reference = None
        if self.reward is not None:
            reward = self.reward.value(self.reward_state, probs)
            energy = energy - self.alpha * reward
        if self.reference is not None:
            reference = self.reference.value(self.reference_state, probs)
            energy = energy - self.reference_weight * reference
        return EnergyParts(energy=energy, reward=reward, reference=reference), probs

    def __call__(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            parts, probs = self.parts(y)
            (grad,) = torch.autograd.grad(parts.energy.sum(), y)
        self.evaluations += 1
        self._record(parts, probs)
        return self.last.energy, grad

    @torch.no_grad()
    def evaluate(self, y: torch.Tensor) -> EnergyParts:
        """The energy at ``y`` without a gradient (e.g. the final iterate, for best-state tracking)."""
        parts, probs = self.parts(y)
        self._record(parts, probs)
        return self.last

    def _record(self, parts: EnergyParts, probs: torch.Tensor) -> None:
        self.last = EnergyParts(
            energy=parts.energy.detach(),
            reward=None if parts.reward is None else parts.reward.detach(),
            reference=None if parts.reference is None else parts.reference.detach(),
        )
        self._track_best(probs.detach())

    def _track_best(self, probs: torch.Tensor) -> None:
        """Keep, per row, the tokens of the lowest-energy state seen so far.

        Exact when the models saw one-hot tokens (straight-through, hard Gumbel-softmax):
        the relaxed energy is then the discrete energy of those tokens. With a soft forward
        there are no tokens to keep, and nothing is tracked.
        """
        values, tokens = probs.max(dim=-1)
        if not bool((values == 1).all()):
            return
        energy = self.last.energy
        if self.best_energy is None:
            self.best_energy, self.best_tokens = energy.clone(), tokens.clone()
            return
        better = energy < self.best_energy
        self.best_energy = torch.where(better, energy, self.best_energy)
        self.best_tokens = torch.where(better.unsqueeze(1), tokens, self.best_tokens)


@dataclass
class Trace:
    """Per-iteration diagnostics, each a list (one entry per step) of per-row tensors."""

    records: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def add(self, **values: torch.Tensor | None) -> None:
        for name, value in values.items():
            if value is not None:
                self.records.setdefault(name, []).append(value.detach().float().cpu())

    def stacked(self) -> dict[str, torch.Tensor]:
        """``name -> (steps, B)``."""
        return {name: torch.stack(values) for name, values in self.records.items()}


def refine(
    y: torch.Tensor,
    energy_fn: EnergyFunction,
    sampler: Sampler,
    num_steps: int,
    generator: torch.Generator | None = None,
    progress=None,
) -> tuple[torch.Tensor, Trace]:
    """Run ``num_steps`` sampler steps from ``y``; return the final logits and the trace.

    The trace entry of step ``t`` describes the point the step started from (so entry 0 is
    the initialisation). ``progress(step)`` is called after every step when given.
    """
    state = sampler.init_state(y, num_steps)
    trace = Trace()
    for step in range(num_steps):
        energy_fn.relaxation.set_progress(state.progress)  # e.g. Gumbel temperature annealing
        out = sampler.step(y, energy_fn, state, generator)
        y, state = out.sample.detach(), out.state
        # Metropolis samplers report the parts of the state they started from; otherwise the
        # last evaluation is that state
        parts = out.energy_record if out.energy_record is not None else energy_fn.last
        trace.add(**out.diagnostics, reward=parts.reward, reference=parts.reference)
        if progress is not None:
            progress(step)
    return y, trace
