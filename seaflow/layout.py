"""Where the response sits inside a model's input, and how relaxed tokens get there.

Every model that scores a response sees a row ``before + response + after`` (e.g.
``prompt + response`` for the reference model, ``judge question + response + "Answer:"`` for a
prompted judge). Rows differ in length, so they are left-padded to a common width; only
the first ``length[i]`` response positions of row ``i`` are active (a sampled response that
ended early with EOS is shorter). The response itself is either token ids ``(B, L)`` or a
token distribution ``(B, L, V)``; both enter through the same gather, so a one-hot
distribution yields exactly the embeddings of the ids.

When the tokens before the response do not change between calls (SEA refines the response
for a fixed prompt), :class:`PrefixLayout` splits each row into a fixed left-padded
``before`` block, whose key/value cache is computed once (:func:`with_prefix_cache`), and
a tail of ``L`` response slots (inactive trailing slots masked out of attention) plus an
optional ``after`` block, which is all that runs on every call.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace

import torch

from seaflow.cost import count_soft_embedding


@dataclass
class Layout:
    """Token ids and masks of a batch of ``before + response + after`` rows (left-padded).

    ``ids`` holds the fixed tokens (pad in response slots), ``response_slots`` marks the
    response positions, and ``response_index`` says which response position each slot takes.
    """

    ids: torch.Tensor  # (B, S) long
    attention_mask: torch.Tensor  # (B, S) long
    position_ids: torch.Tensor  # (B, S) long
    response_slots: torch.Tensor  # (B, S) bool
    response_index: torch.Tensor  # (B, S) long, 0 outside the slots
    lengths: torch.Tensor  # (B,) active response length per row
    after_lengths: torch.Tensor  # (B,)

    @property
    def width(self) -> int:
        return self.ids.shape[1]

    def to(self, device) -> "Layout":
        return Layout(**{k: v.to(device) for k, v in self.__dict__.items()})

    def run(self, model: torch.nn.Module, response: torch.Tensor, **kwargs):
        """Run ``model`` on the rows with ``response`` in their slots."""
        return model(
            inputs_embeds=input_embeddings(model, self, response),
            attention_mask=self.attention_mask,
            position_ids=self.position_ids,
            use_cache=False,
            **kwargs,
        )

    def next_token_logit_blocks(self, model: torch.nn.Module, response: torch.Tensor) -> list[torch.Tensor]:
        """The logits that predict the response positions, as consecutive blocks along the response.

        Concatenated along dimension 1 they are ``(B, L, V)``; values at inactive positions are
        unspecified (callers mask them). The blocks keep the model's dtype and are not joined, so
        a caller that reduces over the vocabulary block by block never holds a second full
        ``(B, L, V)`` copy. Here one block; :class:`PrefixLayout` gives two. Needs rows that end
        with the response (no ``after`` tokens).
        """
        if int(self.after_lengths.max()) != 0:
            raise ValueError("next_token_logits needs rows that end with the response (no 'after' tokens)")
        max_len = response.shape[1]
        keep = max_len + 1
        logits = self.run(model, response, logits_to_keep=keep).logits[:, -keep:]
        lengths = self.lengths.to(logits.device)
        # Row i's response position t sits at window index (keep - 1 - lengths[i]) + t and is
        # predicted by the logits one step earlier.
        t = torch.arange(max_len, device=logits.device)
        index = (max_len - lengths).unsqueeze(1) + t.unsqueeze(0)
        index = index.clamp(max=keep - 2)
        if bool((index == t.unsqueeze(0)).all()):  # every row is full length: a slice, no copy
            return [logits[:, :max_len]]
        index = index.unsqueeze(-1).expand(-1, -1, logits.shape[-1])
        return [logits.gather(1, index)]

    def next_token_logits(self, model: torch.nn.Module, response: torch.Tensor) -> torch.Tensor:
        """Logits that predict each response position, ``(B, L, V)``, float32. Positions beyond a
        row's active length hold the logits of its last active position and must be masked by callers."""
        return joined(self.next_token_logit_blocks(model, response))



def build_layout(
    before: list[list[int]],
    lengths: torch.Tensor,
    pad_id: int,
    after: list[list[int]] | None = None,
) -> Layout:
    """Left-padded rows ``before[i] + [response slot] * lengths[i] + after[i]``."""
    batch = len(before)
    after = after if after is not None else [[] for _ in range(batch)]
    lengths_list = [int(n) for n in lengths.tolist()]
    totals = [len(b) + n + len(a) for b, n, a in zip(before, lengths_list, after)]
    width = max(totals)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    slots = torch.zeros((batch, width), dtype=torch.bool)
    index = torch.zeros((batch, width), dtype=torch.long)
    for row, (b, n, a, total) in enumerate(zip(before, lengths_list, after, totals)):
        start = width - total
        mask[row, start:] = 1
        ids[row, start : start + len(b)] = torch.tensor(b, dtype=torch.long)
        r0 = start + len(b)
        slots[row, r0 : r0 + n] = True
        index[row, r0 : r0 + n] = torch.arange(n)
        if a:
            ids[row, r0 + n :] = torch.tensor(a, dtype=torch.long)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return Layout(
        ids=ids, attention_mask=mask, position_ids=positions, response_slots=slots,
        response_index=index, lengths=lengths.detach().cpu().long(),
        after_lengths=torch.tensor([len(a) for a in after], dtype=torch.long),
    )


class LookupOneHot(torch.autograd.Function):
    """``probs @ weight`` for a one-hot ``probs`` whose tokens are known: a row lookup forward
    (no ``(B, L, V)`` copy in the weight's dtype, no dense product); the backward pass is the
    product's ``grad @ weight.T``."""

    @staticmethod
    def forward(ctx, probs: torch.Tensor, tokens: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.probs_dtype = probs.dtype
        return weight[tokens]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weight,) = ctx.saved_tensors
        return (grad.to(weight.dtype) @ weight.T).to(ctx.probs_dtype), None, None


ONE_HOT_LOOKUP = True
"""Default of :func:`response_embeddings`' ``lookup`` (benchmarks switch it off to compare)."""


def response_embeddings(embedding: torch.nn.Embedding, response: torch.Tensor, lookup: bool | None = None) -> torch.Tensor:
    """Embeddings of a response given as ids ``(B, L)`` or as a distribution ``(B, L, V)``.

    A distribution that is exactly one-hot (the forward value of straight-through, OneHot, hard
    Gumbel-softmax) is embedded by a row lookup with the dense product's gradient (same values
    and gradients, see :class:`LookupOneHot`) unless ``lookup`` is false or the call is being
    compiled.
    """
    if response.dtype in (torch.long, torch.int, torch.int32):
        return embedding(response)
    weight = embedding.weight
    # the one-hot check reads values on the host: under torch.compile it would break the graph,
    # so the compiled energy takes the dense product (same values and gradients)
    if (ONE_HOT_LOOKUP if lookup is None else lookup) and not torch.compiler.is_compiling():
        values, tokens = response.detach().max(dim=-1)
        if bool((values == 1).all()) and bool((response.detach().sum(-1) == 1).all()):
            count_soft_embedding(embedding, response, looked_up=True)
            return LookupOneHot.apply(response, tokens, weight)
    count_soft_embedding(embedding, response)
    return response.to(weight.dtype) @ weight


def input_embeddings(model: torch.nn.Module, layout: Layout, response: torch.Tensor) -> torch.Tensor:
    """``inputs_embeds`` for ``model``: fixed tokens embedded, response slots filled from ``response``."""
    embedding = model.get_input_embeddings()
    fixed = embedding(layout.ids)
    resp = response_embeddings(embedding, response)  # (B, L, H)
    index = layout.response_index.unsqueeze(-1).expand(-1, -1, resp.shape[-1])
    gathered = resp.gather(1, index)
    return torch.where(layout.response_slots.unsqueeze(-1), gathered, fixed)


# -- fixed prefix + response tail, with the prefix's key/value cache computed once ----------


@dataclass
class PrefixLayout:
    """Rows ``before[i] | L response slots | after[i]`` as three blocks of fixed width.

    ``before`` is left-padded to a common width P and never changes, so its key/value cache
    (``key_values``, one ``(keys, values)`` pair per layer) and the logits at its last
    position (``last_logits``, which predict response position 0) are computed once. The
    response slots follow at positions ``prompt_lengths[i] + t``; slots ``t >= lengths[i]``
    are masked out of attention. ``after`` (e.g. a judge's closing question) is left-padded
    within its own block so that every row ends with its last real token.
    """

    ids: torch.Tensor  # (B, P) long, the before block
    attention_mask: torch.Tensor  # (B, P) long
    position_ids: torch.Tensor  # (B, P) long
    prompt_lengths: torch.Tensor  # (B,) real tokens in the before block
    lengths: torch.Tensor  # (B,) active response length per row
    after_ids: torch.Tensor  # (B, A) long
    after_mask: torch.Tensor  # (B, A) long
    key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None
    last_logits: torch.Tensor | None = None  # (B, V) float32
    owner: int | None = None  # id() of the model the cache belongs to

    def to(self, device) -> "PrefixLayout":
        moved = {
            k: (v.to(device) if isinstance(v, torch.Tensor) else v)
            for k, v in self.__dict__.items() if k != "key_values"
        }
        kv = None if self.key_values is None else tuple((k.to(device), v.to(device)) for k, v in self.key_values)
        return PrefixLayout(**moved, key_values=kv)

    def rows(self, index: torch.Tensor) -> "PrefixLayout":
        """The rows ``index`` (repeats allowed), cache and last logits included: no model runs."""
        picked = {
            k: (v[index.to(v.device)] if isinstance(v, torch.Tensor) else v)
            for k, v in self.__dict__.items() if k != "key_values"
        }
        kv = None if self.key_values is None else tuple((k[index.to(k.device)], v[index.to(v.device)]) for k, v in self.key_values)
        return PrefixLayout(**picked, key_values=kv)

    def run(self, model: torch.nn.Module, response: torch.Tensor, slots: int | None = None, **kwargs):
        """Run ``model`` on the first ``slots`` response slots (default: all) and the ``after`` block, on top of the cache.

        The stored cache is never modified: it is re-wrapped in a fresh ``DynamicCache`` on every
        call (whose first update copies it), so calls are independent and their gradients reach
        only ``response``.
        """
        slots = response.shape[1] if slots is None else slots
        if self.key_values is None:
            raise ValueError("this PrefixLayout has no cache: build it with with_prefix_cache(model, layout)")
        if self.owner != id(model):
            raise ValueError("this PrefixLayout's cache was computed by another model; recompute it with with_prefix_cache")
        embedding = model.get_input_embeddings()
        device = self.ids.device
        parts = [response_embeddings(embedding, response[:, :slots])]
        t = torch.arange(slots, device=device)
        lengths = self.lengths.to(device)
        masks = [self.attention_mask, (t.unsqueeze(0) < lengths.unsqueeze(1)).long()]
        positions = [self.prompt_lengths.unsqueeze(1) + t.unsqueeze(0)]
        if self.after_ids.shape[1]:
            parts.append(embedding(self.after_ids))
            masks.append(self.after_mask)
            after_start = self.prompt_lengths + lengths
            positions.append(after_start.unsqueeze(1) + (self.after_mask.cumsum(dim=1) - 1).clamp(min=0))
        cache = wrap_cache(model, self.key_values)
        return model(
            inputs_embeds=torch.cat(parts, dim=1).to(embedding.weight.dtype),
            attention_mask=torch.cat(masks, dim=1),
            position_ids=torch.cat(positions, dim=1),
            use_cache=True,
            **{cache_argument(model): cache},
            **kwargs,
        )

    def next_token_logit_blocks(self, model: torch.nn.Module, response: torch.Tensor) -> list[torch.Tensor]:
        """As :meth:`Layout.next_token_logit_blocks`, on the cached prefix: the prefix's last-position
        logits ``(B, 1, V)`` (float32) and the response tail's ``(B, L - 1, V)`` as the model returns them."""
        if self.after_ids.shape[1]:
            raise ValueError("next_token_logits needs rows that end with the response (no 'after' tokens)")
        first = self.last_logits.unsqueeze(1)  # predicts response position 0
        if response.shape[1] == 1:
            return [first]
        # position t is predicted by the output at slot t-1: the last slot's output is never needed
        return [first, self.run(model, response, slots=response.shape[1] - 1).logits]

    def next_token_logits(self, model: torch.nn.Module, response: torch.Tensor) -> torch.Tensor:
        """As :meth:`Layout.next_token_logits`: only the response positions run."""
        logits = joined(self.next_token_logit_blocks(model, response))
        # the uncached convention: positions past a row's length repeat its last active position
        lengths = self.lengths.to(logits.device)
        max_len = response.shape[1]
        if bool((lengths < max_len).any()):
            t = torch.arange(max_len, device=logits.device)
            index = torch.minimum(t.unsqueeze(0), (lengths - 1).clamp(min=0).unsqueeze(1))
            logits = logits.gather(1, index.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
        return logits



def build_prefix_layout(
    before: list[list[int]],
    lengths: torch.Tensor,
    pad_id: int,
    after: list[list[int]] | None = None,
) -> PrefixLayout:
    """A :class:`PrefixLayout` (without its cache) for ``before[i] + response + after[i]``."""
    batch = len(before)
    after = after if after is not None else [[] for _ in range(batch)]

    def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max((len(r) for r in rows), default=0)
        ids, lengths = pad_rows(rows, pad_id, width=width, left=True)
        return ids, (torch.arange(width) >= width - lengths.unsqueeze(1)).long()

    ids, mask = left_padded(before)
    after_ids, after_mask = left_padded(after)
    return PrefixLayout(
        ids=ids, attention_mask=mask, position_ids=(mask.cumsum(dim=1) - 1).clamp(min=0),
        prompt_lengths=mask.sum(dim=1), lengths=lengths.detach().cpu().long(),
        after_ids=after_ids, after_mask=after_mask,
    )


def cache_argument(model: torch.nn.Module) -> str:
    """The keyword of the key/value cache: ``cache`` from transformers 5.2x, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def wrap_cache(model: torch.nn.Module, key_values):
    """Stored keys and values (one ``(keys, values)`` pair per layer) as a fresh cache for ``model``:
    the model's updates build new tensors, so the stored ones are never modified."""
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=key_values, config=model.config)


def output_cache(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def supports_prefix_cache(model: torch.nn.Module) -> bool:
    """Whether ``model`` keeps a plain (full-attention) dynamic cache that can be re-wrapped.

    Sliding-window, recurrent and other special cache layers are not re-wrapped; callers
    fall back to running whole rows.
    """
    from transformers.cache_utils import DynamicLayer

    config = getattr(model, "config", None)
    if config is None:
        return False
    try:
        from transformers import DynamicCache

        layers = DynamicCache(config=config).layers
    except Exception:  # noqa: BLE001 - an architecture transformers cannot describe: no cache
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


@torch.no_grad()
def with_prefix_cache(model: torch.nn.Module, layout: PrefixLayout, head: torch.nn.Module | None = None) -> PrefixLayout:
    """``layout`` with the key/value cache and last-position logits of its ``before`` block.

    ``model`` is a causal LM (``last_logits`` are its logits at the last prompt position),
    or, with ``head`` given, a backbone without an output layer (the base model of a
    sequence classifier): ``last_logits`` is then ``head`` applied to the backbone's last
    hidden state, e.g. a classifier's score for a row whose response is empty.
    """
    if layout.ids.shape[1] == 0:
        raise ValueError("a prefix cache needs at least one token before the response")
    inputs = dict(input_ids=layout.ids, attention_mask=layout.attention_mask, position_ids=layout.position_ids, use_cache=True)
    if head is None:
        output = model(**inputs, logits_to_keep=1)
        last = output.logits[:, -1]
    else:
        output = model(**inputs)
        last = head(output.last_hidden_state[:, -1])
    cache = output_cache(output)
    key_values = tuple((layer.keys, layer.values) for layer in cache.layers)
    return replace(layout, key_values=key_values, last_logits=last.float(), owner=id(model))


# -- the same prepared rows for other row sets (candidates, compacted batches) ---------------


class UnknownRows(TypeError):
    """A prepared state whose rows :func:`select_rows` cannot pick (the caller prepares again)."""


def select_rows(prepared, index: torch.Tensor, rows: int):
    """``prepared`` (an energy term's ``prepare`` result for ``rows`` rows) for the rows ``index``
    (repeats allowed, e.g. K candidates per row), without running any model.

    Known: :class:`Layout` and :class:`PrefixLayout` (the prompt cache and last logits are
    indexed, not recomputed), tensors whose first dimension is the rows, lists with one item per
    row, tuples and dicts of these, and values shared by all rows (None, numbers, strings,
    tensors of another first dimension). Anything else raises :class:`UnknownRows`.
    """
    if prepared is None or isinstance(prepared, (int, float, str, bool)):
        return prepared
    if isinstance(prepared, PrefixLayout):
        return prepared.rows(index)
    if isinstance(prepared, Layout):
        return Layout(**{k: v[index.to(v.device)] for k, v in prepared.__dict__.items()})
    if isinstance(prepared, torch.Tensor):
        return prepared[index.to(prepared.device)] if prepared.dim() and prepared.shape[0] == rows else prepared
    if isinstance(prepared, list) and len(prepared) == rows:
        return [prepared[i] for i in index.tolist()]
    if isinstance(prepared, tuple):
        return tuple(select_rows(part, index, rows) for part in prepared)
    if isinstance(prepared, dict):
        return {key: select_rows(part, index, rows) for key, part in prepared.items()}
    raise UnknownRows(f"cannot select rows of a prepared state of type {type(prepared).__name__}")


# -- candidates that share a response prefix with a base response -----------------------------


@torch.no_grad()
def response_cache(model: torch.nn.Module, layout: PrefixLayout, response: torch.Tensor):
    """Run the ``(B, L)`` response ids on top of ``layout``'s prompt cache, without gradients.

    Returns ``(key_values, logits)``: the keys and values of the prompt and all ``L`` response
    slots (one pair per layer) and the model's output at every response slot ``(B, L, V)``.
    :func:`edit_rows` builds rows from them that reuse the response up to a position.
    """
    if layout.after_ids.shape[1]:
        raise ValueError("response_cache needs rows that end with the response (no 'after' tokens)")
    output = layout.run(model, response)
    cache = output_cache(output)
    return tuple((layer.keys, layer.values) for layer in cache.layers), output.logits


def edit_rows(layout: PrefixLayout, key_values, slot_logits: torch.Tensor, index: torch.Tensor,
              starts: torch.Tensor) -> PrefixLayout:
    """Rows that agree with base row ``index[j]`` before response position ``starts[j]``.

    ``key_values`` and ``slot_logits`` come from :func:`response_cache` of the base responses on
    ``layout``. The result is a :class:`PrefixLayout` whose cached prefix is the prompt plus the
    base response (slots from ``starts[j]`` on masked out of attention) and whose response slots
    are positions ``starts[j], starts[j] + 1, ...`` (``lengths[index] - starts`` of them active).
    A term run on it scores only those positions, exactly as on whole rows: for the reference
    log-likelihood, the sum over positions from ``starts[j]`` on (``last_logits`` are the base's
    logits that predict position ``starts[j]``).
    """
    device = layout.ids.device
    index = index.to(device)
    starts = starts.to(device)
    width = slot_logits.shape[1]
    lengths = layout.lengths.to(device)[index]
    slot = torch.arange(width, device=device).unsqueeze(0)
    kept = (slot < torch.minimum(starts, lengths).unsqueeze(1)).long()
    prompt_lengths = layout.prompt_lengths.to(device)[index]
    previous = slot_logits[index, (starts - 1).clamp(min=0)].float()
    last = torch.where((starts == 0).unsqueeze(1), layout.last_logits[index].float(), previous)
    return PrefixLayout(
        ids=torch.cat([layout.ids[index], torch.zeros_like(kept)], dim=1),
        attention_mask=torch.cat([layout.attention_mask[index], kept], dim=1),
        position_ids=torch.cat([layout.position_ids[index], prompt_lengths.unsqueeze(1) + slot], dim=1),
        prompt_lengths=prompt_lengths + starts,
        lengths=(lengths - starts).clamp(min=0).cpu(),
        after_ids=layout.after_ids[index][:, :0],
        after_mask=layout.after_mask[index][:, :0],
        key_values=tuple((k[index.to(k.device)], v[index.to(v.device)]) for k, v in key_values),
        last_logits=last,
        owner=layout.owner,
    )


def joined(blocks: list[torch.Tensor]) -> torch.Tensor:
    """Logit blocks joined along the response, float32."""
    return torch.cat([block.float() for block in blocks], dim=1) if len(blocks) > 1 else blocks[0].float()


def active_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``(B, L)`` boolean mask of active response positions."""
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def pad_rows(rows: list[list[int]], pad_id: int, width: int | None = None, left: bool = False,
             device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists padded with ``pad_id`` into ``(B, width)`` (default: the longest row), on the
    right or, with ``left``, on the left; plus their lengths ``(B,)``."""
    width = max([len(r) for r in rows] + [1]) if width is None else width
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            if left:
                tokens[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            else:
                tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    return tokens.to(device), lengths.to(device)
