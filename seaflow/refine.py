"""The SEA refinement loop and the helpers around it, free of Lightning.

``SEA.predict_step`` (seaflow/methods/sea.py) strings these together:

1. :func:`initial_logits` - logits that decode (argmax) exactly to the policy's samples;
2. :class:`EnergyFunction` + :func:`refine` - T sampler steps on
   ``E(y) = -w_ref * log pi_ref(relax(y) | x) - alpha * r(x, relax(y))``;
3. decoding (argmax or guided, :mod:`seaflow.generation`) and discrete scoring.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from seaflow import cost, rng
from seaflow.progress import report
from seaflow.energies.base import Reward, ResponseBatch
from seaflow.energies.reference import ReferenceLogLikelihood
from seaflow.layout import PrefixLayout, UnknownRows, active_mask, edit_rows, response_cache, select_rows
from seaflow.relaxations.base import Relaxation
from seaflow.samplers.base import Evaluation, Sampler, SamplerState


def _energy_parts(relaxation, reward, reference, reward_state, reference_state, alpha, reference_weight, y, generator, allowed):
    """``(energy, parts, relaxed tokens)`` at ``y`` (:meth:`EnergyFunction.parts`; a module-level function so that
    ``torch.compile`` keeps one cache for every batch)."""
    probs = relaxation(y, generator=generator, allowed=allowed)
    energy = torch.zeros(y.shape[0], device=y.device)
    parts = {}
    if reward is not None:
        parts["reward"], terms = reward.value_and_parts(reward_state, probs)
        parts.update((f"reward.{name}", value) for name, value in terms.items())  # a RewardSum's terms, for the trace
        energy = energy - alpha * parts["reward"]
    if reference is not None:
        parts["reference"] = reference.value(reference_state, probs)
        energy = energy - reference_weight * parts["reference"]
    return energy, parts, probs


def rng_rows(generator, rows: torch.Tensor):
    """The per-row generators of ``rows`` (a shared ``torch.Generator`` or ``None`` is returned as is)."""
    if isinstance(generator, rng.RowGenerators):
        return rng.RowGenerators([generator.generators[i] for i in rows.tolist()])
    return generator


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
        candidate_rows: int = 64,
        compile: bool | str = False,
    ):
        if candidate_rows < 1:
            raise ValueError(f"candidate_rows must be >= 1 (rows per forward pass of candidate evaluation), got {candidate_rows}")
        self.batch = batch
        self.candidate_rows = candidate_rows
        # torch.compile of the relaxation and the energy terms (its backward is compiled with it);
        # one compiled function for every batch, shapes marked dynamic, so a new batch size or
        # response length does not compile again from scratch
        self.compile_backend = None if compile is False else ("inductor" if compile is True else str(compile))
        self.compile_seconds = 0.0  # wall time of the evaluations that compiled (included in their own time)
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
        self._full = (self.reward_state, self.reference_state, allowed, generator)
        self.rows: torch.Tensor | None = None  # the batch rows being evaluated (None: all of them)
        self.evaluations = 0
        self.candidate_evaluations = 0
        self.best_energy: torch.Tensor | None = None
        self.best_tokens: torch.Tensor | None = None
        self.best_reward: torch.Tensor | None = None  # the reward term at each row's best state (with a reward term)

    def parts(self, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """The energy at ``y``, its terms, and the relaxed tokens the models saw."""
        arguments = (self.relaxation, self.reward, self.reference, self.reward_state, self.reference_state,
                     self.alpha, self.reference_weight, y, self.generator, self.allowed)
        if self.compile_backend is None:
            return _energy_parts(*arguments)
        import torch._dynamo

        compiled = torch.compile(_energy_parts, dynamic=True, backend=self.compile_backend)
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        started = time.perf_counter()
        out = compiled(*arguments)
        if torch._dynamo.utils.counters["stats"]["unique_graphs"] != graphs:
            self.compile_seconds += time.perf_counter() - started
        return out

    def __call__(self, y: torch.Tensor) -> Evaluation:
        with torch.enable_grad():
            leaf = y.detach().requires_grad_(True)
            energy, parts, probs = self.parts(leaf)
            (grad,) = torch.autograd.grad(energy.sum(), leaf)
        self.evaluations += 1
        energy = energy.detach()
        self._track_best(energy, probs.detach(), parts.get("reward"))
        return Evaluation(y, energy, grad, {name: value.detach() for name, value in parts.items()})

    @torch.no_grad()
    def track(self, y: torch.Tensor) -> None:
        """Count ``y`` as a visited state for best-state tracking, without a gradient (e.g. the final iterate)."""
        energy, parts, probs = self.parts(y)
        self._track_best(energy, probs, parts.get("reward"))

    # -- forward-only evaluation of candidate token sequences -----------------------------------

    @torch.no_grad()
    def energies(self, candidates: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        """Exact energies ``(B, K)`` of ``K`` candidate responses per row, given as token ids ``(B, K, L)``.

        Forward passes only (no autograd graph), ``candidate_rows`` candidates per pass, each row's
        prompt cache reused (indexed, not recomputed). With ``base`` (token ids ``(B, L)``, e.g. the
        chain's current response) the reference term also reuses the base response: the base runs
        once on the prompt cache, and a candidate that first differs from it at position ``t`` runs
        only positions ``t, t+1, ...`` on the base's keys and values up to ``t`` (candidates are
        sorted by ``t`` and split into at least 4 passes, so that each pass is as short as its
        earliest edit allows). The value is the
        energy a one-hot relaxation (``OneHot``, ``StraightThrough``) gives the same tokens, up to
        float rounding. The candidates count as visited states for ``decode: best``.
        """
        rows, k, width = candidates.shape
        flat = candidates.reshape(rows * k, width)
        owner = torch.arange(rows, device=flat.device).repeat_interleave(k)
        energy = torch.zeros(rows * k, device=flat.device)
        reward = None
        if self.reward is not None:
            reward = self._full_rows(self.reward, self.reward_state, flat, owner)
            energy -= self.alpha * reward
        if self.reference is not None:
            if base is not None and isinstance(self.reference_state, PrefixLayout):
                value = self._reference_after_base(flat, owner, base)
            else:
                value = self._full_rows(self.reference, self.reference_state, flat, owner)
            energy -= self.reference_weight * value
        self.candidate_evaluations += rows * k
        energy = energy.view(rows, k)
        finite = torch.where(torch.isfinite(energy), energy, float("inf"))
        best = finite.argmin(1)
        self._track_tokens(finite.gather(1, best.unsqueeze(1)).squeeze(1), candidates[torch.arange(rows), best],
                           None if reward is None else reward.view(rows, k).gather(1, best.unsqueeze(1)).squeeze(1))
        return energy

    def select(self, rows: torch.Tensor | None) -> None:
        """Evaluate only the batch rows ``rows`` from now on (``None``: all rows again).

        Points handed to the energy function then have ``len(rows)`` rows, in that order; the
        terms' prepared states, the ``allowed`` mask and a per-row generator are indexed from the
        full batch's (no model runs), and best-state tracking stays per batch row.
        """
        reward_state, reference_state, allowed, generator = self._full
        self.rows = rows
        if rows is None:
            self.reward_state, self.reference_state, self.allowed, self.generator = self._full
            return
        self.reward_state = self._prepared_rows(self.reward, reward_state, torch.arange(len(rows)))
        self.reference_state = self._prepared_rows(self.reference, reference_state, torch.arange(len(rows)))
        self.allowed = allowed
        if isinstance(allowed, torch.Tensor) and allowed.dim() and allowed.shape[0] == len(self.batch):
            self.allowed = allowed[rows.to(allowed.device)]
        self.generator = rng_rows(generator, rows)

    def _prepared_rows(self, term, state, index: torch.Tensor):
        """``term``'s prepared state (of the full batch) for the current rows ``index`` (indexed when possible, else prepared again)."""
        if term is None:
            return None
        if self.rows is not None:
            index = self.rows.to(index.device)[index]
            state = self._full[0] if term is self.reward else self._full[1]
        try:
            return select_rows(state, index, len(self.batch))
        except UnknownRows:
            chosen = index.tolist()
            batch = ResponseBatch([self.batch.prompt_ids[i] for i in chosen], [self.batch.prompts[i] for i in chosen],
                                  self.batch.lengths[index.cpu()], self.batch.max_length)
            return term.prepare(batch)

    def _full_rows(self, term, state, flat: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        out = []
        for start in cost.side_by_side(range(0, flat.shape[0], self.candidate_rows)):
            chunk = slice(start, start + self.candidate_rows)
            out.append(term.value(self._prepared_rows(term, state, owner[chunk]), flat[chunk]).float())
        return torch.cat(out)

    def _reference_after_base(self, flat: torch.Tensor, owner: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """``log pi_ref`` of the candidates, each run from its first difference with its row's ``base``."""
        layout: PrefixLayout = self.reference_state
        model = self.reference.policy.model
        width = base.shape[1]
        key_values, logits = response_cache(model, layout, base)
        # per-position log-likelihood of the base, and its running sums (the part a candidate shares)
        predicting = torch.cat([layout.last_logits.unsqueeze(1), logits[:, :-1].float()], dim=1)
        base_logprobs = predicting.gather(-1, base.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(predicting, dim=-1)
        del predicting
        lengths = layout.lengths.to(base.device)
        base_logprobs = base_logprobs * active_mask(lengths, width)
        shared = torch.cat([torch.zeros_like(base_logprobs[:, :1]), base_logprobs.cumsum(1)], dim=1)  # (B, L + 1)
        differs = flat != base[owner]
        starts = torch.where(differs.any(1), differs.long().argmax(1), torch.full_like(owner, width))
        value = shared[owner, torch.minimum(starts, lengths[owner])]
        order = torch.argsort(starts, stable=True)
        # passes of similar starts: at least 4 (of 8 or more rows each) so that late edits run short windows
        count = order.numel()
        passes = max(math.ceil(count / self.candidate_rows), min(4, math.ceil(count / 8)))
        size = math.ceil(count / passes)
        for begin in cost.side_by_side(range(0, count, size)):
            chunk = order[begin : begin + size]
            first = int(starts[chunk].min())
            if first >= width:
                continue  # every candidate of this pass equals its base
            span = width - first
            positions = (starts[chunk].unsqueeze(1) + torch.arange(span, device=flat.device)).clamp(max=width - 1)
            window = flat[chunk].gather(1, positions)
            rows = edit_rows(layout, key_values, logits, owner[chunk], starts[chunk])
            value[chunk] += self.reference.value(rows, window).float()
        return value

    def _track_tokens(self, energy: torch.Tensor, tokens: torch.Tensor, reward: torch.Tensor | None = None) -> None:
        """Best-state tracking for token ids (see :meth:`_track_best`); ``reward``: the reward term at ``tokens``."""
        energy = torch.where(torch.isfinite(energy), energy, float("inf"))
        reward = None if reward is None else reward.detach().float().to(energy.device)
        if self.rows is not None:  # a subset of the rows: update their entries only
            rows = self.rows.to(energy.device)
            if self.best_energy is None:  # (the start point is always tracked with every row)
                raise RuntimeError("best-state tracking must start with every row")
            better = energy < self.best_energy[rows]
            self.best_energy[rows] = torch.where(better, energy, self.best_energy[rows])
            self.best_tokens[rows] = torch.where(better.unsqueeze(1), tokens, self.best_tokens[rows])
            if reward is not None and self.best_reward is not None:
                self.best_reward[rows] = torch.where(better, reward, self.best_reward[rows])
            return
        if self.best_energy is None:
            self.best_energy, self.best_tokens = energy.clone(), tokens.clone()
            self.best_reward = None if reward is None else reward.clone()
            return
        better = energy < self.best_energy
        self.best_energy = torch.where(better, energy, self.best_energy)
        self.best_tokens = torch.where(better.unsqueeze(1), tokens, self.best_tokens)
        if reward is not None and self.best_reward is not None:
            self.best_reward = torch.where(better, reward, self.best_reward)

    def _track_best(self, energy: torch.Tensor, probs: torch.Tensor, reward: torch.Tensor | None = None) -> None:
        """Keep, per row, the tokens of the lowest-energy state seen so far.

        Exact when the models saw one-hot tokens (straight-through, hard Gumbel-softmax):
        the relaxed energy is then the discrete energy of those tokens. With a soft forward
        there are no tokens to keep, and nothing is tracked.
        """
        values, tokens = probs.max(dim=-1)
        if not bool((values == 1).all()):
            return
        # a non-finite energy (a numerical fault, see ChainHealth) never counts as the best
        self._track_tokens(energy, tokens, reward)


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
        self.ids = list(range(y.shape[0]))  # batch row of each current chain (settled chains leave, see refine)
        self._dropped_full = None

    def compact(self, keep: torch.Tensor) -> None:
        """Keep only the chains at positions ``keep`` (the others settled)."""
        if self._dropped_full is None:
            self._dropped_full = self.dropped.clone()
        self._dropped_full[torch.tensor(self.ids, dtype=torch.long, device=self.dropped.device)] = self.dropped
        index = keep.to(self.streak.device)
        self.anchor, self.streak, self.dropped = self.anchor[index.to(self.anchor.device)], self.streak[index], self.dropped[index]
        self.ids = [self.ids[i] for i in keep.tolist()]

    def expand(self, active: torch.Tensor, rows: int) -> None:
        """Back to one entry per batch row at the end of the run."""
        if self._dropped_full is None:
            return
        if self.ids:
            self._dropped_full[torch.tensor(self.ids, dtype=torch.long, device=self.dropped.device)] = self.dropped
        self.dropped = self._dropped_full

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
            self.events.append({"chain": self.ids[chain], "iteration": iteration, "action": "dropped" if drop[chain] else "rollback"})
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


class Patience:
    """Which chains have settled: their lowest energy has not improved for ``patience`` steps, or
    (samplers with an ``accept`` diagnostic) they rejected ``patience`` proposals in a row.

    With ``group_size`` the rows form groups of that many consecutive chains (SEA: the chains of
    one prompt, of which one is returned), and a group's *leader* never leaves: the chain whose
    best state so far has the highest score (``scores``: the reward term of each row's best
    state; without it the lowest energy seen), i.e. the chain that would be returned if the run
    stopped now. A chain that left keeps its score, so the leader may be one that left.
    """

    def __init__(self, rows: int, patience: int, device, group_size: int | None = None):
        if not (isinstance(patience, int) and patience >= 1):
            raise ValueError(f"patience must be an integer >= 1 or null (model.init_args.patience), got {patience!r}")
        if group_size is not None and (group_size < 1 or rows % group_size):
            raise ValueError(f"group_size must divide the {rows} rows, got {group_size}")
        self.patience = patience
        self.group_size = group_size
        self.lowest = torch.full((rows,), float("inf"), device=device)
        self.stale = torch.zeros(rows, dtype=torch.long, device=device)
        self.rejected = torch.zeros(rows, dtype=torch.long, device=device)

    def update(self, rows: torch.Tensor, energy: torch.Tensor, accept: torch.Tensor | None,
               scores: torch.Tensor | None = None) -> torch.Tensor:
        """Record one step of the chains ``rows``; return which of them have settled (and may leave).

        ``scores``: one per batch row (higher = returned first), for the leader rule."""
        rows = rows.to(self.lowest.device)
        energy = energy.to(self.lowest.device)
        improved = energy < self.lowest[rows]
        self.lowest[rows] = torch.where(improved, energy, self.lowest[rows])
        self.stale[rows] = torch.where(improved, 0, self.stale[rows] + 1)
        settled = self.stale[rows] >= self.patience
        if accept is not None:
            accept = accept.to(self.lowest.device) > 0
            self.rejected[rows] = torch.where(accept, 0, self.rejected[rows] + 1)
            settled |= self.rejected[rows] >= self.patience
        if self.group_size is not None and bool(settled.any()):
            settled &= ~self.leaders(scores)[rows]
        return settled

    def leaders(self, scores: torch.Tensor | None) -> torch.Tensor:
        """``(rows,)`` bool: each group's leader (highest score, the first on ties, as SEA's selection)."""
        score = -self.lowest if scores is None else scores.to(self.lowest.device).float()
        score = torch.nan_to_num(score, nan=float("-inf"))
        groups = score.view(-1, self.group_size)
        leader = torch.zeros_like(groups, dtype=torch.bool)
        leader.scatter_(1, groups.argmax(1, keepdim=True), True)
        return leader.flatten()


def _compact_state(state: SamplerState, keep: torch.Tensor, rows: int, x: torch.Tensor) -> torch.Tensor:
    """Keep the chains ``keep`` (positions in the current batch) in the sampler state; return the new iterate."""

    def take(value):
        if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == rows:
            return value[keep.to(value.device)]
        if isinstance(value, Evaluation):
            return Evaluation(take(value.point), take(value.energy), take(value.grad), {k: take(v) for k, v in value.parts.items()})
        if isinstance(value, dict):
            return {k: take(v) for k, v in value.items()}
        if isinstance(value, (tuple, list)):
            return type(value)(take(v) for v in value)
        return value

    state.step_scale = take(state.step_scale)
    state.cache = take(state.cache)
    if state.kept is not None and Sampler.same_point(state.kept.point, x):
        state.kept = take(state.kept)
        return state.kept.point  # the compacted iterate is the kept point: no re-evaluation
    state.kept = None
    return x[keep.to(x.device)]


def refine(
    y: torch.Tensor,
    energy_fn: EnergyFunction,
    sampler: Sampler,
    num_steps: int,
    generator: torch.Generator | None = None,
    progress=None,
    max_faults: int = 3,
    patience: int | None = None,
    group_size: int | None = None,
) -> tuple[torch.Tensor, Trace]:
    """Run ``num_steps`` sampler steps from ``y``; return the final logits and the trace.

    The trace entry of step ``t`` describes the point the step started from (so entry 0 is
    the initialisation): its energy, gradient norm and energy parts, and the sampler's
    diagnostics. Numerical faults are handled per chain by :class:`ChainHealth`
    (rollback, smaller steps, dropped after ``max_faults`` in a row) and logged in
    ``trace.faults`` / ``trace.dropped``. ``progress(step)`` is called after every step when given.

    ``patience`` (None: off) lets settled chains stop costing (:class:`Patience`): once a chain's
    lowest energy has not improved for ``patience`` steps, or it rejected ``patience`` proposals
    in a row, it leaves the batch at its current point and later steps run only the remaining
    rows (``energy_fn.select``; sampler state, fault handling and per-row generators are
    compacted with them). With per-row generators the remaining chains move exactly as without
    patience. A chain that settles after step ``t`` stays at the point step ``t`` started from
    (the last point whose energy was evaluated; ``decode: best`` loses nothing), its later trace
    entries repeat that point's energy, gradient norm and parts, its sampler diagnostics are 0,
    and ``settled`` (1.0 from step ``t + 1``) marks them. With ``group_size`` (rows in groups of that
    many consecutive chains, one of which the caller returns) a group's leader never leaves: the
    chain whose best state so far has the highest reward term (``energy_fn.best_reward``; without
    best-state tracking, the lowest energy), see :meth:`Patience.leaders`.
    """
    rows = y.shape[0]
    active = torch.arange(rows, device=y.device)
    watch = Patience(rows, patience, y.device, group_size) if patience is not None else None
    final = None  # with patience: every row's latest point once some chain settled
    state = sampler.init_state(y, num_steps)
    trace, health = Trace(), ChainHealth(y, max_faults)
    last: dict[str, torch.Tensor] = {}
    step_generator = generator
    for step in range(num_steps):
        if active.numel() == 0:  # every chain settled: the trace keeps one entry per step
            trace.add(**last, settled=torch.ones(rows))
            if progress is not None:
                progress(step)
            report(step + 1, num_steps, "step")  # a progress bar's per-step update (seaflow/progress.py)
            continue
        energy_fn.relaxation.set_progress(state.progress)  # e.g. Gumbel temperature annealing
        cache_before = dict(state.cache)  # samplers replace cache entries, never edit them in place
        before = y
        out = sampler.step(y, energy_fn, state, step_generator)
        state.iteration += 1
        values = out.trace()
        point_ok = torch.isfinite(values["energy"]) & torch.isfinite(values["grad_norm"])
        y = health.after_step(step, y, out.sample.detach(), point_ok, state, cache_before)
        if watch is None:
            trace.add(**values)
        else:
            scores = energy_fn.best_reward
            if scores is None and energy_fn.best_energy is not None:
                scores = -energy_fn.best_energy
            settled_now = watch.update(active, values["energy"], values.get("accept"), scores)
            trace.add(**_full_rows(values, active, rows, last, set(out.diagnostics)), settled=_settled(active, rows, y.device))
            if bool(settled_now.any()) and step + 1 < num_steps:
                # a settling chain stays at the point this step started from: the last one evaluated,
                # whose values its later trace entries repeat
                current = torch.where(Sampler.per_chain(settled_now.to(y.device), y), before, y)
                if final is None:
                    final = current.clone()
                else:
                    final[active] = current
                keep = (~settled_now).nonzero().flatten()
                health.compact(keep)
                if keep.numel():
                    y = _compact_state(state, keep, len(active), y)
                active = active[keep.to(active.device)]
                energy_fn.select(active if 0 < active.numel() < rows else None)
                step_generator = rng_rows(generator, active)
        if progress is not None:
            progress(step)
        report(step + 1, num_steps, "step")
    if final is not None:
        if active.numel():
            final[active] = y
        y = final
        energy_fn.select(None)
        health.expand(active, rows)
    trace.faults, trace.dropped = health.events, health.dropped
    return y, trace


def _settled(active: torch.Tensor, rows: int, device) -> torch.Tensor:
    settled = torch.ones(rows, device=device)
    settled[active] = 0.0
    return settled


def _full_rows(values: dict[str, torch.Tensor], active: torch.Tensor, rows: int, last: dict[str, torch.Tensor],
               diagnostics: set[str]) -> dict[str, torch.Tensor]:
    """One trace entry per batch row: the active chains' values, the settled chains' last ones (diagnostics 0)."""
    out = {}
    for name, value in values.items():
        if name in diagnostics:
            previous = torch.zeros(rows, dtype=value.dtype, device=value.device)
        else:
            previous = last.get(name, torch.zeros(rows, dtype=value.dtype, device=value.device)).to(value.device)
        filled = previous.clone()
        filled[active.to(value.device)] = value.detach()
        last[name] = filled if name not in diagnostics else torch.zeros_like(filled)
        out[name] = filled
    return out
