"""Biased decoding: the policy writes every token, a per-position bias on its logits steers it.

``BiasedDecoding`` (seaflow/methods/biased_decoding.py) moves a bias ``b`` of shape
``(rows, L, V)`` with a sampler; this module, free of Lightning, holds the two pieces it needs:

1. :func:`biased_decode` - decode left to right with the policy and a KV cache: at position
   ``t`` the token is ``argmax(policy_logits(x, y_<t) + b_t)``, relaxed (straight-through:
   forward one-hot, backward the softmax of ``(logits + b) / tau``) and fed as the next input;
   the reference log-likelihood of the decoded tokens falls out of the same pass (the logits
   at ``t`` are the policy's next-token logits after the actual prefix).
2. :class:`BiasEnergy` - ``b -> (E(b), dE/db)`` with
   ``E = -w_ref log pi_ref(y | x) - alpha r(x, y) + (bias_weight / 2) ||b - b0||^2`` on the
   decoded (relaxed) tokens ``y``, tracking each chain's best decoded sequence by its exact
   discrete energy ``-w_ref log pi_ref - alpha r``.

Every evaluation decodes real tokens (the forward pass is one-hot), so its reward and
reference terms are exactly the discrete scores of the sequence it decoded.

A forced start (``data.response_prefix``, the prefilling attack) is decoded as it is: its
tokens are the first of the response, fed to the policy and scored by the reward and the
reference term like the others, and the bias holds only the free positions after it
(``b_j`` acts at response position ``k + j`` of a row whose start has ``k`` tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from seaflow import layout as L
from seaflow.cost import count_soft_embedding
from seaflow.generation import Stops, forced_start, prefill_layout
from seaflow.energies.base import ResponseBatch, Reward
from seaflow.relaxations.base import Relaxation
from seaflow.samplers.base import Evaluation


@dataclass
class Decoded:
    """One biased decode of a batch.

    ``tokens`` ``(B, L)`` (``pad_id`` from each row's end on), ``lengths`` ``(B,)`` (tokens
    before the first EOS), ``probs`` ``(B, L, V)`` the relaxed one-hots of the active
    positions (zero elsewhere; differentiable), ``reference`` ``(B,)`` the summed
    ``log pi_ref(y_t | x, y_<t)`` over active positions (differentiable), ``logits`` the
    policy's next-token logits ``(B, L, V)`` when asked for.
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    probs: torch.Tensor
    reference: torch.Tensor
    logits: torch.Tensor | None = None


def prompt_state(model: torch.nn.Module, prompt_ids: list[list[int]], pad_id: int) -> L.PrefixLayout:
    """The left-padded prompt block of every row, with its key/value cache (and the logits that
    predict response position 0) when the model supports one; otherwise each decode runs the prompt."""
    if not all(prompt_ids):
        raise ValueError("biased decoding needs at least one prompt token per row")
    device = model.get_input_embeddings().weight.device
    layout = L.build_prefix_layout(prompt_ids, torch.zeros(len(prompt_ids), dtype=torch.long), pad_id).to(device)
    if L.supports_prefix_cache(model):
        layout = L.with_prefix_cache(model, layout)
    return layout


def biased_decode(
    model: torch.nn.Module,
    prompt: L.PrefixLayout,
    bias: torch.Tensor,
    relaxation: Relaxation,
    eos_ids: list[int],
    pad_id: int,
    generator=None,
    keep_logits: bool = False,
    through_policy: bool = True,
    forced: list[list[int]] | None = None,
) -> Decoded:
    """Decode ``bias.shape[1]`` tokens left to right: token ``t = argmax(logits_t + bias_t)``.

    ``relaxation`` turns ``logits_t + bias_t`` into the token fed to the next position; its
    forward value must be one-hot (``StraightThrough``, ``OneHot``, hard ``GumbelSoftmax``)
    so that the policy reads real tokens, and its backward pass is the gradient path from
    the next positions and the energy terms back to ``bias`` (and through the policy to the
    earlier positions). Differentiable when called with grad enabled. A row ends at its first
    EOS (not part of the response); finished rows are masked out of attention as in
    :func:`seaflow.generation.sample`, so with ``bias = 0`` and straight-through the tokens
    are exactly the policy's greedy decode.

    ``through_policy=False`` feeds the relaxation ``logits.detach() + bias_t``: the choice at
    position ``t`` then passes gradient to ``bias_t`` only, not back through the policy's
    logits into the earlier positions (the reference term still differentiates through the
    logits). With ``OneHot`` this makes ``dE/dbias_t`` the gradient of the energy with respect to
    the decoded one-hot tokens, as a discrete sampler reads it: the first-order change of ``E``
    when position ``t`` takes token ``v``, however unlikely ``v`` is under the policy.

    ``forced[i]`` (a forced start of ``k_i`` tokens) makes row ``i``'s first ``k_i`` tokens
    ``forced[i]`` whatever the bias (a constant one-hot: no gradient reaches the bias there),
    and ``bias[i, j]`` act at position ``k_i + j``: the decode then holds
    ``max k + bias.shape[1]`` positions, and row ``i`` ends after ``k_i + bias.shape[1]`` tokens
    at most (as :func:`seaflow.generation.sample` with ``forced``).
    """
    rows, width, vocab = bias.shape
    device = bias.device
    free = width
    start, limit = forced_start(forced, rows, free + (max(map(len, forced)) if forced else 0), device)
    if start is not None:
        width = free + start.shape[1]
        offset = (start >= 0).sum(1)  # k_i: the positions before row i's first free one
    row_index = torch.arange(rows, device=device)
    weight = model.get_input_embeddings().weight
    context = prefill_layout(model, prompt)
    cache, logits, mask = context.cache, context.logits, context.mask
    position = context.positions.to(device).unsqueeze(1)
    tokens = torch.full((rows, width), pad_id, dtype=torch.long, device=device)
    stops = Stops.of(eos_ids, limit if limit is not None else torch.full((rows,), width, dtype=torch.long, device=device))
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    probs, reference, kept = [], torch.zeros(rows, device=device, dtype=bias.dtype), []
    for t in range(width):
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # float32 at least
        choice = logits if through_policy else logits.detach()
        if start is None:
            relaxed = relaxation((choice + bias[:, t]).unsqueeze(1), generator=generator)[:, 0]
        else:
            bias_t = bias[row_index, (t - offset).clamp(0, free - 1)]
            relaxed = relaxation((choice + bias_t).unsqueeze(1), generator=generator)[:, 0]
            if t < start.shape[1]:
                pinned = start[:, t] >= 0
                fixed = torch.nn.functional.one_hot(start[:, t].clamp(min=0), vocab).to(relaxed.dtype)
                relaxed = torch.where(pinned.unsqueeze(1), fixed, relaxed)
        values, token = relaxed.detach().max(dim=-1)
        if not bool((values == 1).all()):
            raise ValueError(
                f"biased decoding feeds real tokens to the policy and needs a relaxation whose forward value is "
                f"one-hot (StraightThrough, OneHot, GumbelSoftmax with hard: true), got {type(relaxation).__name__}"
            )
        # the loop's stop rule (seaflow.generation.Stops): EOS ends a row before it, so does its limit
        write, ended = stops.step(row_index, torch.full_like(row_index, t), token, ~finished)
        finished = finished | ended
        active = write.to(relaxed.dtype)
        probs.append(relaxed * active.unsqueeze(1))
        reference = reference + active * (relaxed * torch.log_softmax(logits, dim=-1)).sum(-1)
        if keep_logits:
            kept.append(logits.detach())
        tokens[:, t] = torch.where(write, token, torch.full_like(token, pad_id))
        if bool(finished.all()) or t == width - 1:
            break
        mask = torch.cat([mask, (~finished).long().unsqueeze(1)], dim=1)
        count_soft_embedding(model.get_input_embeddings(), relaxed.unsqueeze(1), looked_up=True)
        embedded = L.LookupOneHot.apply(relaxed, token, weight).unsqueeze(1)
        out = model(
            inputs_embeds=embedded, attention_mask=mask, position_ids=position,
            use_cache=True, **{L.cache_argument(model): cache},
        )
        cache = L.output_cache(out)
        logits = out.logits[:, -1]
        position = position + 1
    done = len(probs)
    stacked = torch.stack(probs, dim=1)
    if done < width:  # every row ended early
        stacked = torch.cat([stacked, stacked.new_zeros(rows, width - done, vocab)], dim=1)
    all_logits = None
    if keep_logits:
        all_logits = torch.stack(kept, dim=1)
        if done < width:
            all_logits = torch.cat([all_logits, all_logits[:, -1:].expand(-1, width - done, -1)], dim=1)
    return Decoded(tokens=tokens, lengths=stops.lengths, probs=stacked, reference=reference, logits=all_logits)


class BiasEnergy:
    """``delta -> (E, dE/d delta)`` for the bias ``b = base + delta`` of biased decoding.

    ``E = -reference_weight * log pi_ref(y | x) - alpha * r(x, y) + (bias_weight / 2) ||delta||^2``
    where ``y`` is :func:`biased_decode` with bias ``base + delta``. ``base`` (fixed, e.g.
    ``temperature x`` Gumbel noise, which makes the decode at ``delta = 0`` an exact policy
    sample) is not penalised: the penalty measures how far the sampler pushed the policy,
    standing in for the KL term next to the reference log-likelihood.

    Keeps, per row, the best decoded sequence any evaluation saw by the exact discrete
    energy ``-reference_weight * log pi_ref - alpha * r`` (``best_tokens``, ``best_lengths``,
    ``best_energy``), and the first evaluation's sequence (``first_tokens``, ``first_lengths``):
    the point every sampler evaluates first is its start.

    An :class:`~seaflow.samplers.EnergyFn` (``allowed`` is None: the bias is continuous), with
    ``relaxation`` and ``track`` as :class:`seaflow.refine.EnergyFunction`; each evaluation's
    parts are the ``reward`` and ``reference`` of the sequence it decoded.

    ``forced`` (per row, see :func:`biased_decode`) starts every decode with the row's forced
    tokens: ``delta`` then covers the free positions only, the penalty too, and the reward and
    reference terms score the whole response (the forced tokens' reference log-likelihood is a
    constant of the row).
    """

    allowed = None

    def __init__(
        self,
        model: torch.nn.Module,
        batch: ResponseBatch,
        relaxation: Relaxation,
        reward: Reward | None,
        alpha: float,
        reference_weight: float,
        bias_weight: float,
        eos_ids: list[int],
        pad_id: int,
        base: torch.Tensor | None = None,
        generator=None,
        through_policy: bool = True,
        forced: list[list[int]] | None = None,
    ):
        self.model = model
        self.forced = forced if forced and any(forced) else None
        self.batch = batch
        self.relaxation = relaxation
        self.reward = reward if (reward is not None and alpha != 0) else None
        self.alpha = alpha
        self.reference_weight = reference_weight
        self.bias_weight = bias_weight
        self.eos_ids, self.pad_id = eos_ids, pad_id
        self.base = base
        self.generator = generator
        self.through_policy = through_policy
        self.prompt = prompt_state(model, batch.prompt_ids, pad_id)
        self._prepared: dict[tuple[int, ...], object] = {}
        self.evaluations = 0
        self.first_tokens = self.first_lengths = None
        self.best_energy = self.best_tokens = self.best_lengths = None

    def bias(self, delta: torch.Tensor) -> torch.Tensor:
        return delta if self.base is None else self.base + delta

    def reward_state(self, lengths: torch.Tensor):
        """The reward's per-batch preparation for these response lengths (kept for repeats)."""
        key = tuple(int(n) for n in lengths.tolist())
        if key not in self._prepared:
            if len(self._prepared) >= 16:
                self._prepared.pop(next(iter(self._prepared)))
            self._prepared[key] = self.reward.prepare(replace(self.batch, lengths=lengths.cpu()))
        return self._prepared[key]

    def parts(self, delta: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], Decoded, torch.Tensor]:
        """``(total energy, parts, the decode, the discrete energy)`` at ``delta``."""
        decoded = biased_decode(
            self.model, self.prompt, self.bias(delta), self.relaxation, self.eos_ids, self.pad_id, self.generator,
            through_policy=self.through_policy, forced=self.forced,
        )
        parts = {"reference": decoded.reference}
        discrete = -self.reference_weight * decoded.reference
        if self.reward is not None:
            value, terms = self.reward.value_and_parts(self.reward_state(decoded.lengths), decoded.probs)
            parts["reward"] = value.to(discrete.device)
            parts.update((f"reward.{name}", part.to(discrete.device)) for name, part in terms.items())  # a RewardSum's terms
            discrete = discrete - self.alpha * parts["reward"]
        energy = discrete
        if self.bias_weight:
            energy = energy + 0.5 * self.bias_weight * delta.flatten(1).pow(2).sum(1)
        return energy, parts, decoded, discrete

    def __call__(self, delta: torch.Tensor) -> Evaluation:
        with torch.enable_grad():
            leaf = delta.detach().requires_grad_(True)
            energy, parts, decoded, discrete = self.parts(leaf)
            (grad,) = torch.autograd.grad(energy.sum(), leaf)
        self.evaluations += 1
        self._track_best(decoded, discrete.detach())
        return Evaluation(delta, energy.detach(), grad, {name: value.detach() for name, value in parts.items()})

    @torch.no_grad()
    def track(self, delta: torch.Tensor) -> None:
        """Count ``delta``'s decode as a visited state without a gradient (e.g. the last iterate)."""
        _, _, decoded, discrete = self.parts(delta)
        self._track_best(decoded, discrete)

    def _track_best(self, decoded: Decoded, discrete: torch.Tensor) -> None:
        tokens, lengths = decoded.tokens, decoded.lengths
        discrete = torch.where(torch.isfinite(discrete), discrete, float("inf"))
        if self.best_energy is None:
            self.first_tokens, self.first_lengths = tokens.clone(), lengths.clone()
            self.best_energy, self.best_tokens, self.best_lengths = discrete.clone(), tokens.clone(), lengths.clone()
            return
        better = discrete < self.best_energy
        self.best_energy = torch.where(better, discrete, self.best_energy)
        self.best_tokens = torch.where(better.unsqueeze(1), tokens, self.best_tokens)
        self.best_lengths = torch.where(better, lengths, self.best_lengths)
