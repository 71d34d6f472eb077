"""The engine of GuidedSuffixMCMC: the policy rewrites a suffix, a Metropolis test on the reward accepts.

Target: ``pi(y) ∝ pi_ref(y | x) exp(alpha r(x, y))``, the optimum of the KL-regularised
reward objective (the distribution SEA aims at), over the responses the policy can write
within ``max_new_tokens`` tokens.

One step, for every chain of every prompt at once:

1. **cut**: draw a slot ``t`` from ``q(t | y)``. The slots of a response of ``n`` tokens
   are its tokens ``0 .. n-1`` plus the EOS slot ``n`` when ``n < L`` (cutting there lets the
   response grow). ``q`` is a softmax over per-slot scores from the gradient of
   ``alpha r`` with respect to the one-hot response (:func:`cut_scores`: the first-order
   gain of the best replacement token at that slot, among the policy's ``cut_top_k`` next
   tokens), at temperature ``cut_temperature``, mixed with a uniform floor ``cut_floor`` so
   every slot keeps a positive probability;
2. **resample**: keep ``y_<t`` and let the policy (temperature 1, no top-p) write a new
   suffix from slot ``t`` until EOS or ``L`` tokens in all (:func:`resample_suffixes`; the
   prompt's keys and values are computed once per batch, each step runs only the kept
   prefix and the new tokens);
3. **accept** with probability ``min(1, exp(alpha (r(y') - r(y))) q(t | y') / q(t | y))``.

Why that ratio is exact (docs/method.md derives it in full): for a fixed cut ``t`` the
move draws ``y' = y_<t + s`` with probability ``q(t | y) pi_ref(s | x, y_<t)``; the reverse
move from ``y'`` with the same ``t`` draws ``y``'s suffix with ``q(t | y') pi_ref(y_>=t | x, y_<t)``;
``pi_ref(y) = pi_ref(y_<t) pi_ref(y_>=t | y_<t)`` (EOS included, a length-L response has no
EOS factor, exactly as the capped sampler writes it), so every ``pi_ref`` factor cancels
and each cut's kernel satisfies detailed balance on its own; the mixture over cuts does too.
``t`` is a valid cut of ``y'`` whenever it is one of ``y`` (``y'`` keeps ``y_<t`` and
fills at least slot ``t``). A proposal at another temperature or top-p would leave the
reference and proposal log-probabilities in the ratio: those settings are refused.

``q(t | y')`` needs the gradient at the proposal: it is computed there for every proposal,
and is the gradient the next step needs when the proposal is accepted, so each step costs
one suffix generation and one reward forward and backward pass per chain. The policy's
top-k at the proposal's slots comes from the generation itself (the kept prefix's logits and
the sampling logits). Each prompt returns the best state (discrete reward) any of its
chains visited; the record keeps every chain's acceptance rate and its trace.

A forced start (``data.response_prefix``, the prefilling attack) of ``k`` tokens is the
first ``k`` tokens of every state: the initial samples continue after it, the cut slots of
that row are ``t >= k`` only, in the forward ``q(t | y)`` and the reverse ``q(t | y')``
alike, so no proposal changes it, and the chain is exact for
``pi_ref(y_>=k | x, y_<k) exp(alpha r(x, y))`` over the responses that start with it (the
reward, and the records' reference statistics, score the whole response, the start
included). Each row holds its own start plus ``max_new_tokens`` free tokens.

This module knows no Lightning: :func:`run_chains` takes the proposals, the cut rule (with
the reward and its gradient, :class:`OneHotRewardGradient`) and per-step seeds;
:class:`seaflow.methods.GuidedSuffixMCMC` is the LightningModule that wires them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from seaflow import cost, generation, rng
from seaflow.energies.base import ResponseBatch
from seaflow.layout import (
    PrefixLayout, active_mask, build_layout, build_prefix_layout, cache_argument, output_cache, supports_prefix_cache, with_prefix_cache,
    wrap_cache,
)
from seaflow.progress import report


# -- the cut distribution ------------------------------------------------------------------


def cut_slots(lengths: torch.Tensor, width: int, starts: torch.Tensor | None = None, limits: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, width)`` mask of the slots a response may be cut at: its tokens and, if ``n < width``, its EOS slot.

    With a forced start (``data.response_prefix``) row ``b``'s slots are ``starts[b] ..``: its
    first ``starts[b]`` tokens are never cut; ``limits[b]`` (default ``width``) is the most
    tokens row ``b`` may hold, so its EOS slot exists only when ``n < limits[b]``.
    """
    slots = torch.arange(width, device=lengths.device).unsqueeze(0)
    if limits is None:
        valid = slots <= lengths.clamp(max=width - 1).unsqueeze(1)
    else:
        valid = slots <= torch.minimum(lengths, limits.to(lengths.device) - 1).unsqueeze(1)
    if starts is not None:
        valid = valid & (slots >= starts.to(lengths.device).unsqueeze(1))
    return valid


def cut_scores(grad: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor, candidates: torch.Tensor | None = None,
               scale: float = 1.0) -> torch.Tensor:
    """Per-slot score ``(B, L)``: the first-order gain of the best replacement token.

    ``grad[b, u, v]`` is the derivative of ``alpha r`` with respect to the one-hot entry
    ``(u, v)`` of response ``b``; the score of token slot ``u`` is
    ``max_{v in C_u} grad[b, u, v] - grad[b, u, y_u]``, the predicted change of
    ``log pi`` when slot ``u`` takes the best token of ``C_u`` (the policy's top-k next
    tokens at ``u`` given ``candidates``, else the whole vocabulary). The EOS slot and
    slots past it score 0. ``scale`` multiplies the gradient (``alpha``: log-target units); it
    is applied to the gathered entries only, which gives the same numbers as scaling ``grad``
    first (multiplying by ``scale >= 0`` keeps the order, so the maximum is the same entry).
    """
    current = grad.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) * scale
    best = (grad * scale).amax(-1) if candidates is None else (grad.gather(-1, candidates) * scale).amax(-1)
    scores = (best - current).float()
    active = active_mask(lengths.to(scores.device), tokens.shape[1])
    return torch.where(active, scores, torch.zeros_like(scores))


def cut_log_probs(scores: torch.Tensor, lengths: torch.Tensor, temperature: float | None, floor: float,
                  starts: torch.Tensor | None = None, limits: torch.Tensor | None = None) -> torch.Tensor:
    """``log q(t | y)`` ``(B, L)``: ``(1 - floor) softmax(scores / temperature) + floor / slots``, -inf off the slots
    (:func:`cut_slots`: with ``starts``, a row's forced tokens are no slots, and the softmax and the
    uniform share are over its free slots only).

    ``temperature`` None (or ``floor`` 1) gives uniform cuts.
    """
    valid = cut_slots(lengths, scores.shape[1], starts, limits)
    count = valid.sum(1, keepdim=True).float()
    uniform = valid.float() / count
    if temperature is None or floor >= 1:
        probs = uniform
    else:
        logits = torch.where(valid, scores.float() / temperature, torch.full_like(scores, float("-inf"), dtype=torch.float))
        probs = (1 - floor) * torch.softmax(logits, dim=-1) + floor * uniform
    return torch.where(valid, probs.log(), torch.full_like(probs, float("-inf")))


# -- one batch of suffix proposals -----------------------------------------------------------


@dataclass
class PromptCache:
    """The prompts' keys and values for all rows (prompts x chains), computed once per batch."""

    layout: PrefixLayout | None  # with key_values; None when the model's cache cannot be re-wrapped
    prompt_ids: list[list[int]]

    def rows(self, index: torch.Tensor) -> "PromptCache":
        """The rows ``index`` (repeats allowed): no model runs."""
        layout = None if self.layout is None else self.layout.rows(index)
        return PromptCache(layout, [self.prompt_ids[int(i)] for i in index])


def prompt_cache(model: torch.nn.Module, prompt_ids: list[list[int]], pad_id: int, width: int) -> PromptCache:
    """Key/value cache of the distinct prompts, expanded to one row per entry of ``prompt_ids``."""
    device = model.get_input_embeddings().weight.device
    if not (supports_prefix_cache(model) and all(prompt_ids)):
        return PromptCache(None, prompt_ids)
    unique, places = generation.distinct_prompts(prompt_ids)
    index = torch.tensor(places, device=device)
    base = build_prefix_layout(unique, torch.zeros(len(unique), dtype=torch.long), pad_id).to(device)
    base = with_prefix_cache(model, base)
    rows = PrefixLayout(
        ids=base.ids[index], attention_mask=base.attention_mask[index], position_ids=base.position_ids[index],
        prompt_lengths=base.prompt_lengths[index], lengths=torch.zeros(len(prompt_ids), dtype=torch.long),
        after_ids=base.after_ids[index], after_mask=base.after_mask[index],
        key_values=tuple((k[index], v[index]) for k, v in base.key_values), last_logits=base.last_logits[index],
        owner=base.owner,
    )
    return PromptCache(rows, prompt_ids)


def slot_log_probs(logits: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor, eos_ids: list[int],
                   limits: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, L)``: the log-probability of each slot of the responses, ``logits[b, u]`` being slot ``u``'s next-token logits.

    Slot ``u < n`` holds ``log p(y_u | y_<u)``; the EOS slot ``n`` (when ``n`` is below the
    row's limit, ``L`` by default) holds ``log P(EOS)``, all EOS ids together (the sampler stops
    at any of them); later slots hold 0. A row's sum is ``log pi(y)`` exactly as the capped
    sampler writes ``y``.
    """
    width = tokens.shape[1]
    logp = torch.log_softmax(logits.float(), -1)
    token_logp = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    eos_logp = logp[..., eos_ids].logsumexp(-1)
    slots = torch.arange(width, device=tokens.device).unsqueeze(0)
    n = lengths.to(tokens.device).unsqueeze(1)
    limit = torch.full_like(n, width) if limits is None else limits.to(tokens.device).unsqueeze(1)
    zero = torch.zeros_like(token_logp)
    return torch.where(slots < n, token_logp, torch.where((slots == n) & (n < limit), eos_logp, zero))


@dataclass
class Proposal:
    """:meth:`SuffixProposals.propose`'s new responses and what the chain needs about them."""

    tokens: torch.Tensor  # (B, L)
    lengths: torch.Tensor  # (B,)
    kv: tuple | None  # per layer (B, heads, L, dim) of the response slots, with a cache
    candidates: torch.Tensor | None  # (B, L, k) the policy's top-k at each slot
    log_probs: torch.Tensor | None  # (B, L) slot log-probabilities under the proposing policy
    cut_logits: torch.Tensor  # (B, V) the policy's next-token logits at the cut slot t (given y_<t)

    def take(self, index: torch.Tensor) -> "Proposal":
        """The rows ``index``."""
        def pick(value):
            return None if value is None else value[index.to(value.device)]

        kv = None if self.kv is None else tuple((pick(k), pick(v)) for k, v in self.kv)
        return Proposal(pick(self.tokens), pick(self.lengths), kv, pick(self.candidates), pick(self.log_probs), pick(self.cut_logits))


class SuffixProposals:
    """Suffix proposals for a batch of chains: the policy rewrites ``y_>=t`` given ``x`` and ``y_<t``.

    With a re-wrappable prompt cache each chain state carries the keys and values of its
    response slots (``kv``, per layer ``(B, heads, L, head_dim)``): a proposal then runs one
    token (``y_{t-1}``, whose output predicts slot ``t``) on top of prompt + kept prefix, and
    the new tokens; rows leave the batch as they finish (the batch is narrowed whenever half
    of its rows are done), so a step costs about ``L - t + 1`` token passes per chain.
    Without such a cache every proposal runs prompt + kept prefix as whole rows.

    ``limits[b]`` (default ``width``) is the most tokens row ``b``'s response may hold: with
    forced starts of different lengths each row holds its own start plus the same number of
    free tokens (as :func:`seaflow.generation.sample` writes them).
    """

    def __init__(self, model: torch.nn.Module, cache: PromptCache, width: int, eos_ids: list[int], pad_id: int, top_k: int | None = None,
                 limits: torch.Tensor | None = None):
        self.model, self.cache, self.width = model, cache, width
        self.eos_ids, self.pad_id, self.top_k = eos_ids, pad_id, top_k
        self.limits = limits

    @property
    def cached(self) -> bool:
        return self.cache.layout is not None

    def rows(self, index: torch.Tensor) -> "SuffixProposals":
        """Proposals for the rows ``index`` of this batch (repeats allowed: several tries per chain)."""
        limits = None if self.limits is None else self.limits[index.to(self.limits.device)]
        return SuffixProposals(self.model, self.cache.rows(index), self.width, self.eos_ids, self.pad_id, self.top_k, limits=limits)

    @torch.no_grad()
    def read(self, tokens: torch.Tensor, lengths: torch.Tensor, log_probs: bool = False):
        """What a chain state needs about given responses, from one pass of the policy over them
        (it reads them, :meth:`propose` writes): ``(kv, candidates, slot log-probabilities)``.

        ``kv`` needs a re-wrappable cache, ``candidates`` a ``top_k``; the per-slot
        log-probabilities (:func:`slot_log_probs`, ``(B, L)``) come only with ``log_probs``.
        Without a cache, a top-k or log-probabilities nothing is run.
        """
        rows, width = tokens.shape
        if self.cached:
            layout = replace(self.cache.layout, lengths=lengths.cpu())
            keep = {} if (self.top_k is not None or log_probs) else {"logits_to_keep": 1}
            out = layout.run(self.model, tokens, slots=width, **keep)
            prompt_width = layout.ids.shape[1]
            kv = tuple((layer.keys[:, :, prompt_width:], layer.values[:, :, prompt_width:]) for layer in output_cache(out).layers)
            if self.top_k is None and not log_probs:
                return kv, None, None
            logits = torch.cat([layout.last_logits.unsqueeze(1), out.logits[:, : width - 1].float()], dim=1)
        elif self.top_k is None and not log_probs:
            return None, None, None
        else:
            kv = None
            # the EOS slot's log-probability needs the position after the last token
            run_lengths = (lengths + 1).clamp(max=width) if log_probs else lengths
            batch = build_layout(self.cache.prompt_ids, run_lengths.cpu(), self.pad_id).to(tokens.device)
            logits = batch.next_token_logits(self.model, tokens)
        candidates = logits.topk(self.top_k, dim=-1).indices if self.top_k is not None else None
        logp = slot_log_probs(logits, tokens, lengths, self.eos_ids, self.limits) if log_probs else None
        return kv, candidates, logp

    @torch.no_grad()
    def propose(self, tokens, lengths, kv, candidates, cuts: torch.Tensor, generators: list[torch.Generator],
                log_probs: torch.Tensor | None = None, first_bias: torch.Tensor | None = None) -> "Proposal":
        """New responses ``y_<t + s`` (see :func:`resample_suffixes`).

        ``log_probs`` (``(B, L)``, the state's :func:`slot_log_probs`) asks for the proposals'
        per-slot log-probabilities: the kept slots' are copied, the new ones come from the
        sampling logits. ``first_bias`` (``(B, V)``) is added to the logits of slot ``t`` for
        the draw of its token only (the gradient token move); the suffix after it, the
        candidates and the log-probabilities are the policy's own.
        """
        rows, width = tokens.shape
        device = tokens.device
        cuts = cuts.to(device)
        slots = torch.arange(width, device=device).unsqueeze(0)
        kept = slots < cuts.unsqueeze(1)
        out_tokens = torch.where(kept, tokens, torch.full_like(tokens, self.pad_id))
        out_candidates = None
        if self.top_k is not None:
            out_candidates = torch.where(kept.unsqueeze(-1), candidates, 0) if candidates is not None else torch.zeros(
                rows, width, self.top_k, dtype=torch.long, device=device)
        out_log_probs = None if log_probs is None else torch.where(kept, log_probs, torch.zeros_like(log_probs))
        if self.cached:
            context = self._refeed(tokens, kv, cuts)
            out_kv = tuple((torch.empty_like(k), torch.empty_like(v)) for k, v in kv)
            prompt_width = self.cache.layout.ids.shape[1]

            def harvest(rows_global, rows_local, cache):
                # physical layout of the cache: [prompt | L state slots | y_{t-1} | new tokens ...]
                c = cuts[rows_global].unsqueeze(1)
                u = slots.expand(len(rows_global), -1)
                index = torch.where(u < c - 1, prompt_width + u, torch.where(u == c - 1, prompt_width + width, prompt_width + width + 1 + u - c))
                for (k_out, v_out), layer in zip(out_kv, cache.layers):
                    size = layer.keys.shape
                    gather = index.clamp(max=size[2] - 1)[:, None, :, None].expand(-1, size[1], -1, size[3])
                    k_out[rows_global] = layer.keys[rows_local].gather(2, gather)
                    v_out[rows_global] = layer.values[rows_local].gather(2, gather)
        else:
            # prompt + kept prefix as whole left-padded rows
            before = [ids + tokens[b, : int(cuts[b])].tolist() for b, ids in enumerate(self.cache.prompt_ids)]
            context = generation.prefill(self.model, before, self.pad_id)
            out_kv, harvest = None, None
        cut_logits = context.logits
        # the policy writes slot t on at temperature 1 (the ratio needs its own samples); rows leave
        # the batch once half of it is done, harvest keeping their cache
        state = generation.Generation.start(context, width, self.eos_ids, self.pad_id, slots=cuts, limits=self.limits, tokens=out_tokens)
        rules = [] if first_bias is None else [generation.BiasFirstToken(first_bias)]
        records = [] if out_candidates is None else [generation.RecordTopK(out_candidates)]
        if out_log_probs is not None:
            records.append(generation.RecordLogProbs(out_log_probs, self.eos_ids))
        generation.generate(self.model, state, generation.GumbelSample(generators), rules, records, narrow=0.5, on_leave=harvest)
        return Proposal(out_tokens, state.lengths, out_kv, out_candidates, out_log_probs, cut_logits)

    def _refeed(self, tokens, kv, cuts) -> generation.Context:
        """Cache of prompt + state slots, then one pass of ``y_{t-1}``, whose output predicts slot ``t``."""
        layout = self.cache.layout
        device = tokens.device
        width = tokens.shape[1]
        data = tuple((torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)) for (pk, pv), (k, v) in zip(layout.key_values, kv))
        past = wrap_cache(self.model, data)
        previous = (cuts - 1).clamp(min=0)
        has_previous = cuts >= 1
        slot_mask = (torch.arange(width, device=device).unsqueeze(0) < previous.unsqueeze(1)) & has_previous.unsqueeze(1)
        mask = torch.cat([layout.attention_mask, slot_mask.long(), has_previous.long().unsqueeze(1)], dim=1)
        token = torch.where(has_previous, tokens.gather(1, previous.unsqueeze(1)).squeeze(1), torch.full_like(cuts, self.pad_id))
        out = self.model(
            input_ids=token.unsqueeze(1), attention_mask=mask, position_ids=(layout.prompt_lengths + previous).unsqueeze(1),
            use_cache=True, **{cache_argument(self.model): past},
        )
        logits = torch.where(has_previous.unsqueeze(1), out.logits[:, -1].float(), layout.last_logits)
        return generation.Context(output_cache(out), mask, layout.prompt_lengths + cuts, logits)


@torch.no_grad()
def resample_suffixes(
    model: torch.nn.Module,
    cache: PromptCache,
    tokens: torch.Tensor,
    cuts: torch.Tensor,
    eos_ids: list[int],
    pad_id: int,
    generators: list[torch.Generator],
    top_k: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Keep ``tokens[b, :cuts[b]]`` and sample the rest from the policy at temperature 1.

    Every row writes at most ``L - cuts[b]`` new tokens (``L = tokens.shape[1]``) and stops
    at EOS, which is not part of the response. Returns ``(tokens (B, L), lengths (B,),
    candidates (B, L, top_k) | None)``: ``candidates[b, u]`` are the policy's ``top_k`` most
    likely tokens at slot ``u`` given the new response's prefix ``y'_<u`` (slots ``< length``).
    (:class:`SuffixProposals` without a chain state: the kept prefixes are read first.)
    """
    proposals = SuffixProposals(model, cache, tokens.shape[1], eos_ids, pad_id, top_k)
    kv, candidates, _ = proposals.read(tokens, cuts.to(tokens.device))
    new = proposals.propose(tokens, cuts, kv, candidates, cuts, generators)
    return new.tokens, new.lengths, new.candidates


# -- the reward and its gradient -------------------------------------------------------------


class OneHotRewardGradient:
    """``(tokens, lengths) -> (reward (B,), grad (B, L, V) | None, parts)`` for the rows of one batch.

    ``grad`` is the gradient of the ``reward`` term with respect to the one-hot response. With
    a ``selection_reward`` the returned reward (the Metropolis test's target) is its value and
    the gradient is still the ``reward`` term's: the cut distribution may depend on the state
    in any way, so the chain stays exact for ``pi_ref exp(alpha r_selection)``.
    """

    def __init__(self, reward, selection_reward, vocab_size: int, prompt_ids: list[list[int]], prompts: list[str]):
        self.reward, self.selection_reward = reward, selection_reward
        self.vocab_size = vocab_size
        self.prompt_ids, self.prompts = prompt_ids, prompts

    def rows(self, index) -> "OneHotRewardGradient":
        """The same reward for the rows ``index`` of this batch (a tensor, a range or a list; repeats allowed)."""
        rows = [int(i) for i in index]
        return OneHotRewardGradient(self.reward, self.selection_reward, self.vocab_size, [self.prompt_ids[i] for i in rows],
                                    [self.prompts[i] for i in rows])

    def __call__(self, tokens: torch.Tensor, lengths: torch.Tensor, need_grad: bool = True):
        """``(reward, grad or None, parts)``; ``parts`` are the named terms of the returned reward
        (a :class:`~seaflow.energies.combined.RewardSum`'s), empty for a single reward."""
        batch = ResponseBatch(self.prompt_ids, self.prompts, lengths.cpu(), tokens.shape[1])
        selected = None
        if self.selection_reward is not None:
            with torch.no_grad():
                selected, parts = self.selection_reward.value_and_parts(self.selection_reward.prepare(batch), tokens)
            if not need_grad:
                return selected.float(), None, parts
        prepared = self.reward.prepare(batch)
        if not need_grad:
            with torch.no_grad():
                value, parts = self.reward.value_and_parts(prepared, tokens)
                return value.float(), None, parts
        with torch.enable_grad():
            # the one-hot response written straight as floats (one_hot() would first build it as int64)
            one_hot = torch.zeros(*tokens.shape, self.vocab_size, device=tokens.device).scatter_(-1, tokens.unsqueeze(-1), 1.0)
            one_hot.requires_grad_(True)
            value, own = self.reward.value_and_parts(prepared, one_hot)
            (grad,) = torch.autograd.grad(value.sum(), one_hot)
        if selected is None:
            return value.detach().float(), grad, {name: part.detach() for name, part in own.items()}
        return selected.float(), grad, parts


# -- the chains ----------------------------------------------------------------------------


@dataclass
class ChainState:
    """The chains' current responses and what the next step needs about them."""

    tokens: torch.Tensor  # (B, L)
    lengths: torch.Tensor  # (B,)
    reward: torch.Tensor  # (B,)
    log_q: torch.Tensor  # (B, L) log q(. | y)
    kv: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None  # per layer (B, heads, L, dim) of the response slots
    candidates: torch.Tensor | None = None  # (B, L, k) the policy's top-k at each slot given y_<u
    log_probs: torch.Tensor | None = None  # (B, L) slot log-probabilities under the proposing policy
    target_log_prob: torch.Tensor | None = None  # (B,) log pi_ref(y | x) under the target's prompt
    grad: torch.Tensor | None = None  # (B, L, V) the reward's one-hot gradient (token moves)
    parts: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B,) the reward's named terms (a RewardSum's)

    def where(self, accept: torch.Tensor, other: "ChainState") -> "ChainState":
        """``other``'s rows where ``accept``, this state's elsewhere."""
        def pick(new, old):
            if old is None:
                return None
            mask = accept.view(-1, *([1] * (old.dim() - 1)))
            return torch.where(mask, new, old)

        return ChainState(
            tokens=pick(other.tokens, self.tokens), lengths=pick(other.lengths, self.lengths),
            reward=pick(other.reward, self.reward), log_q=pick(other.log_q, self.log_q),
            kv=None if self.kv is None else tuple((pick(nk, k), pick(nv, v)) for (nk, nv), (k, v) in zip(other.kv, self.kv)),
            candidates=pick(other.candidates, self.candidates), log_probs=pick(other.log_probs, self.log_probs),
            target_log_prob=pick(other.target_log_prob, self.target_log_prob), grad=pick(other.grad, self.grad),
            parts={name: pick(other.parts[name], value) for name, value in self.parts.items()},
        )


@dataclass
class ChainRun:
    """Result of :func:`run_chains`: final states, best visited states, per-step diagnostics.

    ``best_*`` is each chain's visited state of highest reward; with ``track_target``, also
    ``best_target_*``: its visited state of highest target log-density
    ``log pi_ref(y | x) + alpha r(y)`` (``best_target_value``), ``likeliest_best``: its visited
    state of highest reward, among states of equal reward (a discrete reward: all keywords
    present) the one of highest target log-density, and ``final.target_log_prob``.
    """

    final: ChainState
    best_tokens: torch.Tensor
    best_lengths: torch.Tensor
    best_reward: torch.Tensor
    accepted: torch.Tensor  # (steps, B) bool
    cuts: torch.Tensor  # (steps, B)
    rewards: torch.Tensor  # (steps + 1, B) reward of the state before each step, and the final one
    proposal_rewards: torch.Tensor  # (steps, B)
    log_ratio: torch.Tensor  # (steps, B) log of the acceptance ratio
    token_moves: torch.Tensor | None = None  # (steps, B) bool: the step was a gradient token move
    best_target_tokens: torch.Tensor | None = None
    best_target_lengths: torch.Tensor | None = None
    best_target_reward: torch.Tensor | None = None
    best_target_value: torch.Tensor | None = None
    reward_parts: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (steps + 1, B), as ``rewards``
    likeliest_best: tuple | None = None  # (tokens, lengths, reward, target value): highest reward, ties to the likelier

    @property
    def acceptance(self) -> torch.Tensor:
        """Acceptance rate per chain ``(B,)`` (NaN without steps)."""
        if self.accepted.shape[0] == 0:
            return torch.full((self.accepted.shape[1],), float("nan"))
        return self.accepted.float().mean(0)


class GradientCuts:
    """``y -> (reward, log q(. | y), grad, parts)``: the reward, the gradient-guided cut distribution, the gradient,
    the reward's named terms.

    ``score_fn(tokens, lengths) -> (reward (B,), grad (B, L, V)[, parts])`` gives the reward and its
    gradient with respect to the one-hot response (and optionally the reward's named terms
    ``{name: (B,)}``, a RewardSum's; returned as the fourth value, empty without them); ``alpha`` scales the gradient into
    log-target units before :func:`cut_scores`. ``starts`` and ``limits`` (per row, see
    :func:`cut_slots`) keep the cuts off each row's forced start, for every state alike: the
    forward draw ``q(t | y)`` and the reverse ``q(t | y')`` of the acceptance ratio.
    ``keep_grad`` returns the gradient (token moves need it), also with uniform cuts; otherwise
    the third value is None.

    ``batch_rows`` (with a ``score_fn`` that has ``rows``, as :class:`OneHotRewardGradient`)
    scores that many rows at a time: the gradient is ``(rows, L, V)`` floats, so without
    ``keep_grad`` only one chunk's gradient exists at a time and only the ``(rows, L)`` cut
    scores are kept; the values are the same as in one pass.
    """

    def __init__(self, score_fn, alpha: float, temperature: float | None, floor: float,
                 starts: torch.Tensor | None = None, limits: torch.Tensor | None = None, keep_grad: bool = False,
                 batch_rows: int | None = None):
        self.score_fn = score_fn
        self.alpha = alpha
        self.temperature = temperature
        self.floor = floor
        self.uniform = temperature is None or floor >= 1
        self.starts, self.limits = starts, limits
        self.keep_grad = keep_grad
        self.batch_rows = batch_rows

    def rows(self, index: torch.Tensor) -> "GradientCuts":
        """The same cut rule for the rows ``index`` of this batch (a ``score_fn`` with ``rows`` is narrowed too)."""
        def pick(value):
            return None if value is None else value[index.to(value.device)]

        score_fn = self.score_fn.rows(index) if hasattr(self.score_fn, "rows") else self.score_fn
        return GradientCuts(score_fn, self.alpha, self.temperature, self.floor, pick(self.starts), pick(self.limits), self.keep_grad,
                            self.batch_rows)

    def __call__(self, tokens: torch.Tensor, lengths: torch.Tensor, candidates: torch.Tensor | None):
        size = self.batch_rows or len(tokens)
        if len(tokens) <= size or not hasattr(self.score_fn, "rows"):
            reward, scores, grad, parts = self._scores(self.score_fn, tokens, lengths, candidates)
        else:
            chunks = [self._scores(self.score_fn.rows(range(i, min(i + size, len(tokens)))), tokens[i : i + size], lengths[i : i + size],
                                   None if candidates is None else candidates[i : i + size])
                      for i in cost.side_by_side(range(0, len(tokens), size))]
            reward, scores = torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks])
            grad = torch.cat([c[2] for c in chunks]) if self.keep_grad else None
            parts = {name: torch.cat([c[3][name] for c in chunks]) for name in chunks[0][3]}
        log_q = cut_log_probs(scores, lengths, self.temperature, self.floor, self.starts, self.limits)
        return reward, log_q, grad, parts

    def _scores(self, score_fn, tokens, lengths, candidates):
        """``(reward, cut scores (rows, L), gradient if kept, parts)`` of one chunk."""
        reward, grad, *parts = score_fn(tokens, lengths, need_grad=self.keep_grad or not self.uniform)
        scores = (torch.zeros(tokens.shape, device=tokens.device) if grad is None or self.uniform
                  else cut_scores(grad, tokens, lengths, candidates, scale=self.alpha))
        return reward, scores, (grad if self.keep_grad else None), (parts[0] if parts else {})


class TokenMoves:
    """The gradient token move: slot ``t`` gets a token drawn over the whole vocabulary, the policy writes on.

    At a token slot ``t`` of ``y`` (drawn from ``q(t | y)`` restricted to the slots that hold a
    token), the new token is drawn from

        q(v | y, t) ∝ p(v | x, y_<t) exp(alpha g_y[t, v] / temperature)      (v not an EOS id)

    where ``p`` is the proposing policy's next-token distribution and ``g_y[t, v]`` the
    reward's gradient with respect to the one-hot entry ``(t, v)`` at ``y`` (a first-order
    estimate of ``r`` with ``v`` at ``t``; temperature 2 is the locally balanced choice of
    Gibbs-with-gradients), and the policy writes the suffix after it. A token the policy would
    almost never sample (a keyword it does not write unprompted) is proposed when the reward's
    gradient favours it. The reverse move from ``y'`` at the same ``t`` proposes ``y_t`` with
    ``q(y_t | y', t)`` (the gradient at ``y'``, the same ``p``, since ``y'_<t = y_<t``) and
    rewrites ``y``'s suffix; every suffix and every ``p`` factor cancels against ``pi_ref`` in
    the acceptance ratio, which keeps

        (g_{y'}[t, y_t] - g_y[t, v]) alpha / temperature + log Z_y - log Z_{y'}

    beside ``alpha (r' - r)`` and the restricted cut probabilities (``Z``: the normalisers of
    ``q(. | y, t)`` and ``q(. | y', t)``). ``rate`` is each step's probability (per chain, drawn
    independently of the state) of this move instead of a plain suffix move; each move is
    reversible on its own, so the mixture is exact. ``random_direction`` replaces the gradient
    by the same values with the vocabulary permuted at random (one permutation per chain and
    step, used by the forward and the reverse draw alike): the same move without the gradient's
    information, for ablations.
    """

    def __init__(self, rate: float, alpha: float, temperature: float, eos_ids: list[int], random_direction: bool = False):
        self.rate, self.alpha, self.temperature = rate, alpha, temperature
        self.eos_ids = eos_ids
        self.random_direction = random_direction

    def bias(self, grad: torch.Tensor, rows: torch.Tensor, cuts: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
        """``alpha g[t, .] / temperature`` ``(B, V)`` at each row's cut, EOS ids at -inf (permuted by ``order``)."""
        values = grad[rows, cuts].float()
        if order is not None:
            values = values.gather(-1, order)
        values = values * (self.alpha / self.temperature)
        values[:, self.eos_ids] = float("-inf")
        return values


class MultipleTries:
    """Several suffixes per chain from one cut: a multiple-try Metropolis step with an independent proposal.

    Read the cut as an auxiliary variable: the joint target is ``pi(y) q(t | y)`` and drawing
    ``t ~ q(t | y)`` at each step is a Gibbs move on it. Given ``t``, the target of the suffix
    ``s = y_>=t`` is ``pi_ref(s | x, y_<t) exp(alpha r(y)) q(t | y)``, and the policy's suffix
    ``pi_ref(s | x, y_<t)`` proposes independently of the current one, so each response's
    importance weight is ``w(y) = exp(alpha r(y)) q(t | y)``. The step

    1. draws ``K`` suffixes ``y_1 .. y_K`` after the kept prefix ``y_<t`` (all ``B K`` rows in
       one batch, row ``b``'s tries at ``b K .. b K + K - 1``);
    2. picks ``y_j`` with probability ``w(y_j) / sum_k w(y_k)``;
    3. moves to it with probability ``min(1, sum_k w(y_k) / (sum_k w(y_k) - w(y_j) + w(y)))``:
       the multiple-try Metropolis test of an independence proposal (Liu, Liang and Wong, 2000),
       whose reference set is the other tries and the current state.

    With ``K = 1`` the test is the plain step's ``exp(alpha (r' - r)) q(t | y') / q(t | y)``.
    A step costs ``K`` suffix generations and ``K`` reward gradients per chain, run as one
    batch: ``K`` times the rows per model call of a plain step, the same sequential calls.
    """

    def __init__(self, proposals: SuffixProposals, cuts_fn: GradientCuts, tries: int, reverse_cuts_fn: GradientCuts | None = None):
        self.tries = tries
        self.proposals, self.cuts_fn, self.reverse_cuts_fn = proposals, cuts_fn, reverse_cuts_fn
        self._rows: dict[int, tuple] = {}

    def _spread(self, rows: int, device):
        """The rows of every try (``b K + k`` holds row ``b``) and the proposals and cut rules on them, built once."""
        if rows not in self._rows:
            spread = torch.arange(rows, device=device).repeat_interleave(self.tries)
            reverse = None if self.reverse_cuts_fn is None else self.reverse_cuts_fn.rows(spread)
            self._rows[rows] = (spread, self.proposals.rows(spread), self.cuts_fn.rows(spread), reverse)
        return self._rows[rows]

    def step(self, state: ChainState, cuts: torch.Tensor, generators: list[torch.Generator], choice: torch.Tensor,
             seeds: list[list[int]], alpha: float, correct_cut: bool = True):
        """``(proposal, its reward, its log q, its gradient, its reward's parts, log acceptance ratio)``, one proposal per row.

        ``generators`` are the rows' own (try 0 draws its suffix from them), ``seeds[k - 1]`` the
        rows' seeds for try ``k``; ``choice`` (``(B,)`` uniforms) picks the try.
        """
        rows, device = state.tokens.shape[0], state.tokens.device
        spread, proposals, cuts_fn, reverse_fn = self._spread(rows, device)
        extra = [rng.row_generators(row_seeds, device=device) for row_seeds in seeds]
        gens = [g for b in range(rows) for g in [generators[b], *(try_gens[b] for try_gens in extra)]]

        def pick(value):
            return None if value is None else value[spread]

        kv = None if state.kv is None else tuple((pick(k), pick(v)) for k, v in state.kv)
        cut_rows = cuts[spread]
        new = proposals.propose(pick(state.tokens), pick(state.lengths), kv, pick(state.candidates), cut_rows, gens,
                                log_probs=pick(state.log_probs))
        reward, log_q, grad, parts = cuts_fn(new.tokens, new.lengths, new.candidates)
        reward = reward.float()
        weight, current = alpha * reward, alpha * state.reward
        if correct_cut:
            reverse = log_q if reverse_fn is None else reverse_fn(new.tokens, new.lengths, new.candidates)[1]
            weight = weight + reverse[torch.arange(len(spread), device=device), cut_rows]
            current = current + state.log_q[torch.arange(rows, device=device), cuts]
        weight = torch.where(torch.isfinite(reward), weight, torch.full_like(weight, float("-inf"))).view(rows, self.tries)
        current = ranked(current)
        top = weight.amax(1, keepdim=True)
        chosen = _categorical(weight - torch.where(torch.isfinite(top), top, torch.zeros_like(top)), choice)
        others = weight.scatter(1, chosen.unsqueeze(1), current.unsqueeze(1))  # the reference set: other tries + current
        log_ratio = weight.logsumexp(1) - others.logsumexp(1)
        index = torch.arange(rows, device=device) * self.tries + chosen
        return (new.take(index), reward[index], log_q[index], None if grad is None else grad[index],
                {name: value[index] for name, value in parts.items()}, log_ratio)


def _token_slot_log_q(log_q: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``log q(t | y)`` restricted to the slots that hold a token (``t < n``) and renormalised."""
    slots = torch.arange(log_q.shape[1], device=log_q.device).unsqueeze(0)
    masked = torch.where(slots < lengths.to(log_q.device).unsqueeze(1), log_q, torch.full_like(log_q, float("-inf")))
    return masked - masked.logsumexp(-1, keepdim=True)


def run_chains(
    proposals: SuffixProposals,
    tokens: torch.Tensor,
    lengths: torch.Tensor,
    cuts_fn: GradientCuts,
    alpha: float,
    steps: int,
    seeds,
    correct_cut: bool = True,
    reverse_cuts_fn: GradientCuts | None = None,
    token_moves: TokenMoves | None = None,
    target_log_prob=None,
    track_target: bool = False,
    tries: int = 1,
    try_seeds=None,
) -> ChainRun:
    """``steps`` Metropolis steps of every chain (row) from ``tokens``/``lengths``.

    ``seeds(step) -> list[int]`` gives one seed per row for step ``step``: the row's cut,
    its new suffix and its accept test draw from a generator seeded with it, so a chain's
    path does not depend on the other rows of the batch. ``correct_cut=False`` drops the
    ``q(t | y') / q(t | y)`` factor; ``reverse_cuts_fn`` computes ``q(t | y')`` with other cut
    rules than the forward draw's (e.g. without the forced start's restriction). Both give a
    wrong sampler, kept to show that the exact ratio matters.

    ``token_moves`` mixes in :class:`TokenMoves` (``cuts_fn`` must keep its gradient).
    ``target_log_prob(tokens, lengths) -> (B,)`` is ``log pi_ref(y | x)`` under the target's
    prompt when ``proposals`` proposes from another one (a steered proposal: the policy given
    an instructed prompt ``x'``): the ratio then carries the importance correction
    ``[log pi_ref(y' | x) - log pi_ref(y | x)] - [log p(y' | x') - log p(y | x')]`` (the kept
    prefix cancels in both), so the chains still target ``pi_ref(y | x) exp(alpha r)``.
    ``track_target`` also tracks each chain's visited state of highest target log-density.

    ``tries > 1`` proposes that many suffixes per chain and step from the same cut, all rows of
    all tries in one batch (:class:`MultipleTries`); ``try_seeds(step) -> list[list[int]]`` gives
    the seeds of tries ``1 .. tries - 1`` (one list per try, one seed per row; try 0 draws from
    the row's own generator, so ``tries=1`` is the plain chain), by default derived from
    ``seeds(step)``.
    """
    device = tokens.device
    rows = tokens.shape[0]
    steered = target_log_prob is not None
    track = steered or track_target
    kv, candidates, log_probs = proposals.read(tokens, lengths, log_probs=track)
    reward, log_q, grad, parts = cuts_fn(tokens, lengths, candidates)
    if token_moves is not None and grad is None:
        raise ValueError("token moves need the reward's gradient: build GradientCuts with keep_grad=True")
    target = None
    if track:
        target = target_log_prob(tokens, lengths).float() if steered else log_probs.sum(1)
    state = ChainState(tokens, lengths, reward.float(), log_q, kv, candidates, log_probs, target, grad, parts)
    parts_log = {name: [value.float().cpu()] for name, value in parts.items()}
    best_tokens, best_lengths, best_reward = tokens.clone(), lengths.clone(), ranked(state.reward).clone()
    if track:
        best_value = ranked(state.target_log_prob + alpha * state.reward)
        best_target = (tokens.clone(), lengths.clone(), state.reward.clone(), best_value.clone())
        likeliest = (tokens.clone(), lengths.clone(), ranked(state.reward).clone(), best_value.clone())
    accepted, cut_log, reward_log, proposal_log, ratio_log, move_log = [], [], [state.reward.cpu()], [], [], []
    row_index = torch.arange(rows, device=device)
    multiple = None
    if tries > 1:
        if token_moves is not None or steered:
            raise ValueError("several tries per step (tries > 1) are plain suffix moves: use them without token moves "
                             "and without steered proposals")
        multiple = MultipleTries(proposals, cuts_fn, tries, reverse_cuts_fn)
        if try_seeds is None:
            def try_seeds(step):
                return [[(int(seed) * 1_000_003 + k) % (2**63) for seed in seeds(step)] for k in range(1, tries)]
    for step in range(steps):
        gens = rng.row_generators(seeds(step), device=device)
        # cut and accept draws (and the move's) come first from each row's generator, then the suffix's Gumbel noise
        draws = rng.rand((rows, 2 if token_moves is None and multiple is None else 3), rng.RowGenerators(gens), device)
        # 1. cut: t ~ q(t | y) (a token move draws among the token slots only)
        bias = order = None
        if token_moves is None:
            moving = torch.zeros(rows, dtype=torch.bool, device=device)
            forward_log_q = state.log_q
        else:
            moving = draws[:, 2] < token_moves.rate
            forward_log_q = torch.where(moving.unsqueeze(1), _token_slot_log_q(state.log_q, state.lengths), state.log_q)
            if token_moves.random_direction:
                order = torch.stack([torch.randperm(state.grad.shape[-1], generator=g, device=g.device) for g in gens]).to(device)
        cuts = _categorical(forward_log_q, draws[:, 0])
        if token_moves is not None:
            bias = token_moves.bias(state.grad, row_index, cuts, order)
            bias = torch.where(moving.unsqueeze(1), bias, torch.zeros_like(bias))
        # 2. resample: keep y_<t, the policy writes y'_>=t (a token move's first token from the gradient-tilted policy;
        #    with several tries MultipleTries writes them all, picks one by its weight and gives its test's log ratio)
        if multiple is not None:
            new, new_reward, new_log_q, new_grad, new_parts, log_ratio = multiple.step(
                state, cuts, gens, draws[:, 2], try_seeds(step), alpha, correct_cut)
        else:
            new = proposals.propose(state.tokens, state.lengths, state.kv, state.candidates, cuts, gens,
                                    log_probs=state.log_probs, first_bias=bias)
        # 3. accept: log u < alpha (r(y') - r(y)) + log q(t | y') - log q(t | y), plus the token move's and the steered terms
        if multiple is None:
            new_reward, new_log_q, new_grad, new_parts = cuts_fn(new.tokens, new.lengths, new.candidates)
            new_reward = new_reward.float()
            log_ratio = alpha * (new_reward - state.reward)
            if correct_cut:
                reverse = new_log_q if reverse_cuts_fn is None else reverse_cuts_fn(new.tokens, new.lengths, new.candidates)[1]
                if token_moves is not None:
                    reverse = torch.where(moving.unsqueeze(1), _token_slot_log_q(reverse, new.lengths), reverse)
                log_ratio = log_ratio + reverse[row_index, cuts] - forward_log_q[row_index, cuts]
            if token_moves is not None:
                policy = torch.log_softmax(new.cut_logits, -1)
                back = token_moves.bias(new_grad, row_index, cuts, order)
                placed = new.tokens[row_index, cuts].unsqueeze(1)
                before = state.tokens[row_index, cuts].unsqueeze(1)
                gradient_part = (back.gather(1, before) - bias.gather(1, placed)).squeeze(1)
                normalisers = (policy + bias).logsumexp(-1) - (policy + back).logsumexp(-1)
                log_ratio = log_ratio + torch.where(moving, gradient_part + normalisers, torch.zeros_like(log_ratio))
        new_target = None
        if track:
            new_target = target_log_prob(new.tokens, new.lengths).float() if steered else new.log_probs.sum(1)
        if steered:  # importance correction of the steered proposal (the kept prefix cancels in both sums)
            log_ratio = log_ratio + (new_target - state.target_log_prob) - (new.log_probs.sum(1) - state.log_probs.sum(1))
        log_ratio = torch.where(torch.isfinite(new_reward), log_ratio, torch.full_like(log_ratio, float("-inf")))
        accept = draws[:, 1].log() < log_ratio
        proposal = ChainState(new.tokens, new.lengths, new_reward, new_log_q, new.kv, new.candidates, new.log_probs, new_target,
                              new_grad, new_parts)
        state = state.where(accept, proposal)
        better = accept & (ranked(new_reward) > best_reward)
        best_tokens = torch.where(better.unsqueeze(1), new.tokens, best_tokens)
        best_lengths = torch.where(better, new.lengths, best_lengths)
        best_reward = torch.where(better, new_reward, best_reward)
        if track:
            value = ranked(new_target + alpha * new_reward)
            higher = accept & (value > best_target[3])
            best_target = _keep(higher, (new.tokens, new.lengths, new_reward, value), best_target)
            reward_now = ranked(new_reward)  # the highest reward, ties (a discrete reward) to the likelier state
            likelier = accept & ((reward_now > likeliest[2]) | ((reward_now == likeliest[2]) & (value > likeliest[3])))
            likeliest = _keep(likelier, (new.tokens, new.lengths, reward_now, value), likeliest)
        accepted.append(accept.cpu())
        cut_log.append(cuts.cpu())
        reward_log.append(state.reward.cpu())
        for name, value in state.parts.items():
            parts_log[name].append(value.float().cpu())
        proposal_log.append(new_reward.cpu())
        ratio_log.append(log_ratio.cpu())
        move_log.append(moving.cpu())
        report(step + 1, steps, "step")  # the progress bar (seaflow/progress.py)

    def stack(values, dtype):
        return torch.stack(values) if values else torch.zeros(0, rows, dtype=dtype)

    run = ChainRun(
        final=state, best_tokens=best_tokens, best_lengths=best_lengths, best_reward=best_reward,
        accepted=stack(accepted, torch.bool), cuts=stack(cut_log, torch.long), rewards=torch.stack(reward_log),
        proposal_rewards=stack(proposal_log, torch.float), log_ratio=stack(ratio_log, torch.float),
        token_moves=None if token_moves is None else stack(move_log, torch.bool),
        reward_parts={name: torch.stack(values) for name, values in parts_log.items()},
    )
    if track:
        run.best_target_tokens, run.best_target_lengths, run.best_target_reward, run.best_target_value = best_target
        run.likeliest_best = likeliest
    return run


def _keep(mask: torch.Tensor, new: tuple, old: tuple) -> tuple:
    """Per row, ``new``'s tensors where ``mask`` holds, else ``old``'s (tokens are (B, L), the others (B,))."""
    return tuple(torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b) for a, b in zip(new, old))


def ranked(values: torch.Tensor) -> torch.Tensor:
    """``values`` with every non-finite entry (NaN, +-inf) set to -inf, so it ranks last in a max
    or a descending sort: the one rule by which every method ranks rewards and target values."""
    return torch.where(torch.isfinite(values), values, torch.full_like(values, float("-inf")))


def _categorical(log_probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One index per row from ``exp(log_probs)`` by inverting the CDF at ``uniform``."""
    cdf = log_probs.exp().cumsum(-1)
    index = (cdf < (uniform * cdf[:, -1]).unsqueeze(1)).sum(-1)
    # never land past the last valid slot (float rounding at the top of the CDF)
    last = torch.isfinite(log_probs).long().cumsum(-1).argmax(-1)
    return torch.minimum(index, last)
