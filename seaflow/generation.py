"""Autoregressive generation with the policy: one prefill, one sampling loop, small per-step rules.

Every method that lets the policy write tokens goes through here (biased decoding's
differentiable decode keeps its own loop and shares the stop rule, :class:`Stops`)::

    context = prefill(model, prompt_ids, pad_id)                      # 1. prompts -> cache, logits of slot 0
    state = Generation.start(context, width, eos_ids, pad_id)         # 2. the responses to write
    generate(model, state, GumbelSample(generators), [TopP(0.9)])     # 3. write until every row ends
    state.tokens, state.lengths

:func:`sample` is these three lines for plain policy samples.

The loop owns what every decoding needs: each row writes its own slots, from its start slot
on, until EOS (which the response does not hold) or its limit; forced tokens (the prefilling
attack's start) replace the choice at their slots; ended rows write nothing and, with
``narrow``, leave the model's batch. The rules own nothing else, as transformers'
``LogitsProcessor`` does: a *rule* ``rule(step, scores) -> scores`` rewrites the next-token
scores of the rows in the batch for the choice (:class:`Temperature`, :class:`TopP`,
:class:`BiasFirstToken`), one *choice* ``choose(step, scores) -> tokens`` picks a token per row
(:class:`GumbelSample`, a draw from each row's own generator; :class:`Greedy`;
:class:`GuidedChoice`; ARGS's reward-guided pick in seaflow/methods/args.py), and a *record*
``record(step, logits, token)`` reads the policy's own logits and the chosen token
(:class:`RecordTopK`, :class:`RecordLogProbs`). ``step`` is a :class:`Step`: which rows are in
the batch, the slot each writes, which of them still write.

A :class:`Generation` can be resumed: ``generate(..., steps=k)`` writes at most ``k`` tokens per
row and returns, the last ones not yet fed to the model (a row dropped now costs nothing more),
so the next call continues where it stopped; in between, :meth:`Generation.select` keeps,
drops, reorders or repeats rows, their cache with them, and :meth:`Generation.so_far` gives the
responses so far (block-wise search over partial responses: methods/partial.py).

Each row's randomness is its own generator (:mod:`seaflow.rng`), so a row's sample does not
depend on the other rows of its batch, on the batch size or on the number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import torch

from seaflow import rng
from seaflow.layout import PrefixLayout, active_mask, build_prefix_layout, cache_argument, output_cache, wrap_cache


# -- 1. the prompts: cache and the logits of the first slot ------------------------------------


@dataclass
class Context:
    """What the model's next pass needs for the rows of a batch."""

    cache: Any  # the model's key/value cache of the rows
    mask: torch.Tensor  # (b, keys) long: the attention mask of what the cache holds
    positions: torch.Tensor  # (b,) long: the position id of each row's next slot
    logits: torch.Tensor  # (b, V) float32 (float64 for a float64 model): the next-token logits of each row

    def select(self, index: torch.Tensor) -> "Context":
        """The rows ``index`` (repeats copy a row, its keys and values included); the cache is changed in place."""
        self.cache.batch_select_indices(index)
        return Context(self.cache, self.mask[index], self.positions[index], self.logits[index])


@torch.no_grad()
def prefill(model: torch.nn.Module, prompt_ids: list[list[int]], pad_id: int, share: bool = True) -> Context:
    """One pass over the left-padded ``prompt_ids``: the rows' cache and the logits that predict their next token.

    With ``share`` (the default) rows with the same prompt share one pass over it, its keys and
    values copied to each of them: the same context as a pass per row (to float rounding) for
    a fraction of the FLOPs, as a serving stack's prefix cache gives (Best-of-N's rows are one
    prompt ``n`` times). ``share=False`` runs every row's prompt.
    """
    device = model.get_input_embeddings().weight.device
    passed, index = distinct_prompts(prompt_ids) if share else (prompt_ids, None)
    context = prefill_layout(model, build_prefix_layout(passed, torch.zeros(len(passed), dtype=torch.long), pad_id).to(device))
    if len(passed) == len(prompt_ids):  # every prompt distinct: the rows are the pass's rows, in order
        return context
    return context.select(torch.tensor(index, device=device))


def distinct_prompts(prompt_ids: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """``(distinct, index)``: each prompt once, in order of first appearance, and row ``i``'s place in it."""
    places: dict[tuple[int, ...], int] = {}
    index = [places.setdefault(tuple(ids), len(places)) for ids in prompt_ids]
    return [list(ids) for ids in places], index


@torch.no_grad()
def prefill_layout(model: torch.nn.Module, layout: PrefixLayout) -> Context:
    """The context after a :class:`~seaflow.layout.PrefixLayout`'s ``before`` block: its stored cache
    (:func:`~seaflow.layout.with_prefix_cache`, computed once for many decodes) in a fresh cache
    object, else one pass over it."""
    if layout.key_values is not None:
        return Context(wrap_cache(model, layout.key_values), layout.attention_mask, layout.prompt_lengths, layout.last_logits)
    out = model(input_ids=layout.ids, attention_mask=layout.attention_mask, position_ids=layout.position_ids,
                use_cache=True, logits_to_keep=1)
    return Context(output_cache(out), layout.attention_mask, layout.prompt_lengths, at_least_float32(out.logits[:, -1]))


def at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    """Logits in float32, or float64 for a float64 model (the loop compares and samples in it)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


# -- where a response ends ----------------------------------------------------------------------


@dataclass
class Stops:
    """Where each response ends: at its first EOS (not part of the response) or once it holds ``limits`` tokens.

    ``lengths[i]`` is row ``i``'s length: the slot of its EOS, else its limit.
    """

    eos: torch.Tensor  # the end-of-sequence ids
    limits: torch.Tensor  # (B,) row i writes slots < limits[i]
    lengths: torch.Tensor  # (B,)

    @classmethod
    def of(cls, eos_ids: Sequence[int], limits: torch.Tensor) -> "Stops":
        return cls(torch.tensor(list(eos_ids), device=limits.device), limits, limits.clone())

    def step(self, rows: torch.Tensor, slots: torch.Tensor, token: torch.Tensor, live: torch.Tensor):
        """Rows ``rows`` chose ``token`` for ``slots``; ``live`` of them were still writing.
        Returns ``(write, ended)``: the rows whose token is part of the response, and the rows that end here."""
        is_eos = torch.isin(token, self.eos) & live
        self.lengths[rows[is_eos]] = slots[is_eos]
        return live & ~is_eos, is_eos | (live & (slots + 1 >= self.limits[rows]))


def forced_start(forced: list[list[int]] | None, rows: int, width: int, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(start (B, K), limit (B,))`` for a forced response start per row: row ``i``'s forced tokens,
    -1 where free, and the most tokens it may hold (its start + ``width - K`` free tokens, the same
    number of free tokens for every row whatever the others' start)."""
    if not forced or not any(forced):
        return None, None
    if len(forced) != rows:
        raise ValueError(f"forced has {len(forced)} rows for {rows} prompts")
    longest = max(map(len, forced))
    if longest > width:
        raise ValueError(f"a forced start of {longest} tokens does not fit a response of {width} tokens")
    start = torch.full((rows, longest), -1, dtype=torch.long)
    for i, ids in enumerate(forced):
        start[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    limit = torch.tensor([len(ids) + width - longest for ids in forced])
    return start.to(device), limit.to(device)


# -- 2. the responses being written ---------------------------------------------------------------


@dataclass
class Generation:
    """A batch of responses being written; :func:`generate` moves it on, and it can be resumed.

    The responses (``tokens``, ``stops``) cover every row; the model's batch (``rows`` and what
    follows) holds the rows still being written (all of them unless the loop narrowed it).
    """

    tokens: torch.Tensor  # (B, W) long: the responses, pad where nothing is written
    stops: Stops  # lengths and limits of the responses
    forced: torch.Tensor | None  # (B, K) long: forced tokens by slot, -1 where free
    pad_id: int
    rows: torch.Tensor  # (b,) the responses in the model's batch
    slots: torch.Tensor  # (b,) the slot each of them writes next
    done: torch.Tensor  # (b,) bool: ended (EOS or limit)
    context: Context  # cache, mask, positions and logits of the batch
    first_slot: int = 0  # the lowest slot any row started at
    steps: int = 0  # tokens each row of the batch has chosen so far (written or not)
    pending: torch.Tensor | None = None  # (b,) the last chosen tokens, fed to the model when the next step needs them

    @classmethod
    def start(cls, context: Context, width: int, eos_ids: Sequence[int], pad_id: int, *, slots: torch.Tensor | None = None,
              limits: torch.Tensor | None = None, tokens: torch.Tensor | None = None,
              forced: list[list[int]] | None = None) -> "Generation":
        """Responses of ``width`` slots written from ``context`` (e.g. :func:`prefill`'s) on.

        Row ``i`` writes slots ``slots[i] ..`` (default 0) of ``tokens`` (default all pad; the
        slots before keep their tokens), until EOS or ``limits[i]`` tokens (default ``width``).
        ``forced[i]`` is row ``i``'s forced start (:func:`forced_start`: it sets the limits).
        """
        device = context.logits.device
        rows = context.logits.shape[0]
        start, forced_limits = forced_start(forced, rows, width, device)
        if forced_limits is not None:
            if limits is not None:
                raise ValueError("give a forced start or limits, not both (a forced start sets each row's limit)")
            limits = forced_limits
        limits = torch.full((rows,), width, dtype=torch.long, device=device) if limits is None else limits.to(device)
        slots = torch.zeros(rows, dtype=torch.long, device=device) if slots is None else slots.to(device)
        tokens = torch.full((rows, width), pad_id, dtype=torch.long, device=device) if tokens is None else tokens
        return cls(tokens, Stops.of(eos_ids, limits), start, pad_id, torch.arange(rows, device=device), slots,
                   slots >= limits, context, first_slot=int(slots.min()) if rows else 0)

    @property
    def lengths(self) -> torch.Tensor:
        return self.stops.lengths

    @property
    def finished(self) -> bool:
        return bool(self.done.all())

    def so_far(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens, lengths)`` of the responses so far: an ended row's whole response, a live row's written slots."""
        lengths = self.stops.lengths.clone()
        live = ~self.done
        lengths[self.rows[live]] = self.slots[live]
        return self.tokens[:, : max(int(lengths.max()), 1)], lengths

    def select(self, index: torch.Tensor | Sequence[int]) -> "Generation":
        """The responses ``index`` (repeats allowed) as a new batch, cache included: row ``j`` of the
        result continues response ``index[j]``. The model's batch must hold every response."""
        if len(self.rows) != self.tokens.shape[0]:
            raise ValueError("select needs every response in the model's batch: generate without narrow")
        index = torch.as_tensor(index, dtype=torch.long, device=self.tokens.device)
        stops = Stops(self.stops.eos, self.stops.limits[index], self.stops.lengths[index])
        return replace(self, tokens=self.tokens[index], stops=stops, forced=None if self.forced is None else self.forced[index],
                       rows=torch.arange(len(index), device=index.device), slots=self.slots[index], done=self.done[index],
                       context=self.context.select(index), pending=None if self.pending is None else self.pending[index])


@dataclass
class Step:
    """What the rules see at one step: the rows in the batch and the slot each writes."""

    rows: torch.Tensor  # (b,) which responses
    slots: torch.Tensor  # (b,) the slot each writes at this step
    live: torch.Tensor  # (b,) bool: still writing (ended rows choose too; their token is dropped)
    forced: torch.Tensor | None  # (b,) the forced token at this slot, -1 where free; None: none here
    tokens: torch.Tensor  # (B, W) the responses so far
    index: int  # the step: tokens each row of the batch has chosen before


Rule = Callable[[Step, torch.Tensor], torch.Tensor]
Choice = Callable[[Step, torch.Tensor], torch.Tensor]
Record = Callable[[Step, torch.Tensor, torch.Tensor], None]


# -- 3. the loop -----------------------------------------------------------------------------------


@torch.no_grad()
def generate(model: torch.nn.Module, state: Generation, choose: Choice, rules: Sequence[Rule] = (),
             records: Sequence[Record] = (), *, steps: int | None = None, narrow: float | None = None,
             on_leave: Callable[[torch.Tensor, torch.Tensor, Any], None] | None = None) -> Generation:
    """Write ``state``'s responses until every row has ended (or ``steps`` more tokens per row).

    Each step: the last step's tokens are fed to the model (only now, so a row dropped between
    blocks is never fed), the ``rules`` rewrite the batch's next-token logits in order, ``choose``
    picks one token per row, a forced token replaces the choice at its slot, the ``records`` read
    the logits and the token, :class:`Stops` ends rows at EOS or at their limit, and the written
    tokens go into ``state.tokens``. Ended rows stay in the batch (their mask says so) unless
    ``narrow``: once that share of the batch has ended it is cut to the rest, after
    ``on_leave(responses, batch rows, cache)`` has read the leaving rows' cache (and, at the
    end, the remaining rows'). Returns ``state``, moved on.
    """
    context = state.context
    finished, taken = bool(state.done.all()), 0
    while not finished and (steps is None or taken < steps):
        if state.pending is not None:
            mask = torch.cat([context.mask, (~state.done).long().unsqueeze(1)], dim=1)
            out = model(
                input_ids=state.pending.unsqueeze(1), attention_mask=mask, position_ids=context.positions.unsqueeze(1),
                use_cache=True, **{cache_argument(model): context.cache},
            )
            context = Context(output_cache(out), mask, context.positions + 1, at_least_float32(out.logits[:, -1]))
            state.pending = None
        rows, slots = state.rows, state.slots
        live = ~state.done
        forced = None
        if state.forced is not None and state.first_slot + state.steps < state.forced.shape[1]:  # some row may be in its start
            forced = torch.where(slots < state.forced.shape[1],
                                 state.forced[rows, slots.clamp(max=state.forced.shape[1] - 1)], -1)
        step = Step(rows, slots, live, forced, state.tokens, state.steps)
        scores = context.logits
        for rule in rules:
            scores = rule(step, scores)
        token = choose(step, scores)
        if forced is not None:
            token = torch.where(forced >= 0, forced, token)
        for record in records:
            record(step, context.logits, token)
        write, ended = state.stops.step(rows, slots, token, live)
        state.tokens[rows[write], slots[write]] = token[write]
        state.done = state.done | ended
        state.slots = slots + 1
        state.steps += 1
        taken += 1
        finished = bool(state.done.all())
        if finished:
            break
        if narrow is not None and int(state.done.sum()) >= narrow * len(rows):  # the batch keeps its unfinished rows
            if on_leave is not None:
                on_leave(rows[state.done], state.done.nonzero().squeeze(1), context.cache)
            keep = (~state.done).nonzero().squeeze(1)
            context = context.select(keep)
            token = token[keep]
            state.rows, state.slots, state.done = state.rows[keep], state.slots[keep], state.done[keep]
        state.pending = token
    state.context = context
    if on_leave is not None and finished:
        on_leave(state.rows, torch.arange(len(state.rows), device=state.rows.device), context.cache)
    return state


# -- the rules ------------------------------------------------------------------------------------


class Temperature:
    """Scores divided by the sampling temperature (> 0)."""

    def __init__(self, temperature: float):
        self.temperature = temperature

    def __call__(self, step: Step, scores: torch.Tensor) -> torch.Tensor:
        return scores / self.temperature


def filter_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches ``top_p`` (nucleus)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


class TopP:
    """Nucleus filtering: tokens outside the smallest set reaching probability ``top_p`` get -inf."""

    def __init__(self, top_p: float):
        self.top_p = top_p

    def __call__(self, step: Step, scores: torch.Tensor) -> torch.Tensor:
        return filter_top_p(scores, self.top_p)


class BiasFirstToken:
    """``bias[response]`` (``(B, V)``) added to the scores of each row's first step only."""

    def __init__(self, bias: torch.Tensor):
        self.bias = bias

    def __call__(self, step: Step, scores: torch.Tensor) -> torch.Tensor:
        return scores + self.bias[step.rows] if step.index == 0 else scores


# -- the records ------------------------------------------------------------------------------------


class RecordTopK:
    """Records the ``k`` most likely next tokens at every slot a row writes (EOS slot included)
    into ``candidates[response, slot]`` (``(B, W, k)``)."""

    def __init__(self, candidates: torch.Tensor):
        self.candidates = candidates

    def __call__(self, step: Step, logits: torch.Tensor, token: torch.Tensor) -> None:
        top = logits.topk(self.candidates.shape[-1], dim=-1).indices
        live = step.live
        self.candidates[step.rows[live], step.slots[live]] = top[live]


class RecordLogProbs:
    """Records ``log p(token)`` at every slot a row writes into ``log_probs[response, slot]``
    (``(B, W)``); at the EOS slot, the probability of any EOS id (the loop stops at any of them)."""

    def __init__(self, log_probs: torch.Tensor, eos_ids: Sequence[int]):
        self.log_probs, self.eos_ids = log_probs, list(eos_ids)

    def __call__(self, step: Step, logits: torch.Tensor, token: torch.Tensor) -> None:
        logp = torch.log_softmax(logits, -1)
        is_eos = torch.isin(token, torch.tensor(self.eos_ids, device=token.device))
        value = torch.where(is_eos, logp[:, self.eos_ids].logsumexp(-1), logp.gather(-1, token.unsqueeze(1)).squeeze(1))
        live = step.live
        self.log_probs[step.rows[live], step.slots[live]] = value[live]


# -- the choices -----------------------------------------------------------------------------------


class GumbelSample:
    """A sample from ``softmax(scores)`` per row: the argmax of scores plus Gumbel noise drawn from
    the row's own generator (``generators[i]`` belongs to response ``i``)."""

    def __init__(self, generators: Sequence[torch.Generator]):
        self.generators = list(generators)
        self._rows, self._batch = None, []

    def noise(self, step: Step, shape, device) -> torch.Tensor:
        """Gumbel noise of ``shape``, row ``j`` from the generator of the batch's ``j``-th response."""
        if step.rows is not self._rows:  # the batch changed (it is narrowed, or a new one): pick its generators once
            self._rows, self._batch = step.rows, [self.generators[i] for i in step.rows.tolist()]
        return rng.gumbel(shape, self._batch, device)

    def __call__(self, step: Step, scores: torch.Tensor) -> torch.Tensor:
        return (scores + self.noise(step, scores.shape, scores.device)).argmax(-1)


class Greedy:
    """The most likely token."""

    def __call__(self, step: Step, scores: torch.Tensor) -> torch.Tensor:
        return scores.argmax(-1)


def sampling_rule(generators: Sequence[torch.Generator], temperature: float = 1.0, top_p: float = 1.0) -> tuple[Choice, list[Rule]]:
    """``(choose, rules)`` of the policy's sampling: greedy at temperature 0, else a Gumbel draw
    from each row's generator after the temperature and the nucleus filter."""
    if temperature == 0:
        return Greedy(), []
    return GumbelSample(generators), [Temperature(temperature), TopP(top_p)]


class GuidedChoice:
    """Guided decoding of refined logits ``y`` ``(B, W, V)``: at each slot, among the policy's
    ``top_k`` most likely next tokens (given the prefix actually decoded, as COLD decoding does),
    the one with the highest ``y``; past a row's active length (``lengths``) the row writes EOS."""

    def __init__(self, y: torch.Tensor, lengths: torch.Tensor, top_k: int, eos_id: int):
        self.y, self.top_k, self.eos_id = y, top_k, eos_id
        self.active = active_mask(lengths.to(y.device), y.shape[1])

    def __call__(self, step: Step, scores: torch.Tensor) -> torch.Tensor:
        candidates = scores.topk(self.top_k, dim=-1).indices  # (b, k)
        slots = step.slots.clamp(max=self.y.shape[1] - 1)
        refined = self.y[step.rows, slots].gather(-1, candidates)
        best = candidates.gather(-1, refined.argmax(-1, keepdim=True)).squeeze(-1)
        return torch.where(self.active[step.rows, slots], best, torch.full_like(best, self.eos_id))


# -- the whole thing for prompts -------------------------------------------------------------------


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompt_ids: list[list[int]],
    max_new_tokens: int,
    eos_ids: list[int],
    pad_id: int,
    generators: Sequence[torch.Generator],
    temperature: float = 1.0,
    top_p: float = 1.0,
    forced: list[list[int]] | None = None,
    choose: Choice | None = None,
    rules: Sequence[Rule] = (),
    share_prompt: bool = True,
    records: Sequence[Record] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Continuations of left-padded prompts with a KV cache: ``(tokens (B, max_new_tokens), lengths (B,))``.

    ``lengths`` counts the tokens before the first EOS (EOS itself is not part of the response);
    the rest is ``pad_id``. The policy samples at ``temperature`` (0: greedy) and ``top_p`` from
    each row's generator, unless ``choose`` (with ``rules``) picks the tokens.

    ``forced[i]`` (the prefilling attack's forced start) is the first tokens of row ``i``'s
    response: the slots ``t < len(forced[i])`` hold ``forced[i][t]`` whatever the rule chose (the
    draw is still made), and the row then has ``max_new_tokens - max(len(f) for f in forced)``
    free tokens, the same for every row whatever the others' start (callers pass
    ``max_new_tokens`` = the longest start + the free budget; :func:`forced_start`).
    Rows with the same prompt share its pass (:func:`prefill`; ``share_prompt=False``: one pass per row).
    The ``records`` read the policy's logits and the chosen tokens (e.g. :class:`RecordLogProbs`).
    """
    if choose is None:
        choose, sampling = sampling_rule(generators, temperature, top_p)
        rules = [*rules, *sampling]
    state = Generation.start(prefill(model, prompt_ids, pad_id, share_prompt), max_new_tokens, eos_ids, pad_id, forced=forced)
    generate(model, state, choose, rules, records)
    return state.tokens, state.lengths


def guided_decode(
    model: torch.nn.Module,
    prompt_ids: list[list[int]],
    logits: torch.Tensor,
    lengths: torch.Tensor,
    eos_ids: list[int],
    pad_id: int,
    top_k: int,
    forced: list[list[int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode refined logits left to right among the policy's top-k next tokens (:class:`GuidedChoice`;
    ``forced``: see :func:`sample`). Rows stop at their active length or when EOS is chosen."""
    choice = GuidedChoice(logits, lengths, top_k, eos_ids[0])
    return sample(model, prompt_ids, logits.shape[1], eos_ids, pad_id, [], forced=forced, choose=choice)

