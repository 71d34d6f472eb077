"""The reference (KL) term: log pi_ref(y | x) of the policy itself."""

from __future__ import annotations

import functools
import itertools
import math

import torch

from seaflow.layout import Layout, PrefixLayout, active_mask, build_layout, build_prefix_layout, supports_prefix_cache, with_prefix_cache
from seaflow.energies.base import EnergyTerm, ResponseBatch
from seaflow.models import LoadedModel


class ReferenceLogLikelihood(EnergyTerm):
    """``log pi_ref(y | x) = sum_t <p_t, log_softmax(ref_logits_t)>`` over active positions.

    The reference model is the policy, run with teacher forcing on ``[prompt ; p @ W_emb]``;
    its energy is ``-log pi_ref``, i.e. the KL regulariser of the RLHF objective. With a
    one-hot ``p`` the value is exactly the log-likelihood of the tokens.

    Args:
        cache_prefix: compute the prompt's key/value cache once per batch in ``prepare`` and
            run only the response positions on every evaluation (same values and gradients
            up to float rounding). Models whose cache is not a plain full-attention cache
            (sliding windows, recurrent layers) always run whole rows.
    """

    def __init__(self, cache_prefix: bool = True):
        super().__init__()
        self.cache_prefix = cache_prefix

    def setup(self, policy: LoadedModel) -> None:
        object.__setattr__(self, "policy", policy)
        self._cacheable = self.cache_prefix and supports_prefix_cache(policy.model)

    def prepare(self, batch: ResponseBatch) -> Layout | PrefixLayout:
        pad = self.policy.tokenizer.pad_token_id
        device = self.policy.model.get_input_embeddings().weight.device
        if getattr(self, "_cacheable", False) and all(batch.prompt_ids):
            layout = build_prefix_layout(batch.prompt_ids, batch.lengths, pad).to(device)
            return with_prefix_cache(self.policy.model, layout)
        return build_layout(batch.prompt_ids, batch.lengths, pad).to(device)

    def token_logprobs(self, layout: Layout | PrefixLayout, response: torch.Tensor) -> torch.Tensor:
        """Per-position log-likelihood ``(B, L)``, zero at inactive positions."""
        blocks = layout.next_token_logit_blocks(self.policy.model, response)
        per_token = _token_logprobs(blocks, response, reuse_logits=True)  # the blocks are this call's own
        mask = active_mask(layout.lengths.to(per_token.device), response.shape[1])
        return per_token * mask

    def value(self, prepared: Layout | PrefixLayout, response: torch.Tensor) -> torch.Tensor:
        return self.token_logprobs(prepared, response).sum(-1)


def _token_logprobs(logits: torch.Tensor | list[torch.Tensor], response: torch.Tensor, reuse_logits: bool = False) -> torch.Tensor:
    """``sum_v p_v log_softmax(logits)_v`` per position (or the log-probability of token ids), float32
    (float64 for float64 inputs).

    ``logits`` is one tensor ``(..., L, V)`` or consecutive blocks of it along the positions
    (:meth:`Layout.next_token_logit_blocks`), each in its own dtype. No float32 copy of the logits
    and no joined copy of the blocks is made: the arithmetic is float32, a few positions at a time
    (:func:`_position_blocks`), and the gradient to a distribution ``response`` is built in one
    buffer of its shape (no slice of it is taken, whose gradient would be another full tensor).
    ``reuse_logits``: the backward pass writes each block's gradient over the block itself (which
    it no longer needs), for logits that nothing else reads afterwards (a second backward pass
    through them, or another autograd node that saved them, then fails with autograd's
    in-place modification error instead of reading wrong values).
    """
    blocks = [logits] if isinstance(logits, torch.Tensor) else list(logits)
    width = sum(block.shape[-2] for block in blocks)
    if width != response.shape[-1 if response.dtype == torch.long else -2]:
        raise ValueError(f"the logit blocks cover {width} positions, the response has {tuple(response.shape)}")
    if response.dtype != torch.long:
        return _ExpectedLogSoftmax.apply(response, reuse_logits, *blocks)
    pieces, start = [], 0
    for block in blocks:
        ids = response[..., start : start + block.shape[-2]]
        normaliser = _logsumexp(block)
        pieces.append(block.gather(-1, ids.unsqueeze(-1)).squeeze(-1).to(normaliser.dtype) - normaliser)
        start += block.shape[-2]
    return torch.cat(pieces, dim=-1) if len(pieces) > 1 else pieces[0]


BLOCK_ELEMENTS = 1 << 22
"""Vocabulary entries per block of positions in the reference term's float32 arithmetic (16 MiB)."""


def _position_blocks(shape: torch.Size, offset: int = 0):
    """``(index into a tensor of shape (..., P, V), the same positions shifted by offset)`` pairs that cover
    ``shape`` in blocks of about :data:`BLOCK_ELEMENTS` entries (whole rows of the vocabulary,
    consecutive positions). Under ``torch.compile`` a single block: the compiler fuses the
    arithmetic itself, and a block count would specialise the compiled code to the shape."""
    *outer, positions, vocab = shape
    whole = (..., slice(None), slice(None)), (..., slice(offset, offset + positions), slice(None))
    if torch.compiler.is_compiling() or math.prod(outer) * positions * vocab <= BLOCK_ELEMENTS:
        yield whole
        return
    step = max(1, BLOCK_ELEMENTS // max(vocab, 1))
    for index in itertools.product(*(range(n) for n in outer)):
        for start in range(0, positions, step):
            stop = min(start + step, positions)
            yield (*index, slice(start, stop), slice(None)), (*index, slice(offset + start, offset + stop), slice(None))


def _arithmetic_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32, or float64 when an input is float64."""
    return functools.reduce(torch.promote_types, (t.dtype for t in tensors), torch.float32)


def _logsumexp(logits: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` over the last dimension in float32 (at least), block by block (no float32 copy of ``logits``)."""
    dtype = _arithmetic_dtype(logits)
    out = torch.empty(logits.shape[:-1], dtype=dtype, device=logits.device)
    for block, _ in _position_blocks(logits.shape):
        out[block[:-1]] = torch.logsumexp(logits[block].to(dtype), dim=-1)
    return out


def _spans(probs: torch.Tensor, blocks: tuple[torch.Tensor, ...]):
    """``(block number, index into that block, index of the same positions in probs)`` over all blocks."""
    offset = 0
    for number, block in enumerate(blocks):
        for index, target in _position_blocks(block.shape, offset):
            yield number, index, target
        offset += block.shape[-2]


class _ExpectedLogSoftmax(torch.autograd.Function):
    """``<p, z> - logsumexp(z) * sum_v p_v`` over the last dimension, i.e. ``sum_v p_v log_softmax(z)_v``,
    for ``p`` ``(..., L, V)`` and ``z`` given as blocks along ``L``.

    The same value and gradients as the plain float32 expression, with fewer full-vocabulary
    tensors: the log-softmax is never materialised, the backward pass keeps only ``z`` and ``p``
    (which exist anyway, in their own dtypes) and builds each gradient in one buffer of its
    input's dtype and shape (``dz = g (p - softmax(z) sum p)``, ``dp = g (z - logsumexp z)``).
    The arithmetic is float32, a few positions at a time: for float32 inputs the results are those
    of the whole-tensor float32 expression, and a bfloat16 ``z`` is never copied to float32 (its
    gradient is rounded to bfloat16 once, as autograd rounds the gradient of an upcast). With
    ``reuse_logits`` each ``dz`` is written over its ``z`` (see :func:`_token_logprobs`).
    """

    @staticmethod
    def forward(ctx, probs: torch.Tensor, reuse_logits: bool, *blocks: torch.Tensor) -> torch.Tensor:
        dtype = _arithmetic_dtype(probs, *blocks)
        normaliser = torch.empty(probs.shape[:-1], dtype=dtype, device=probs.device)
        mass = torch.empty_like(normaliser)
        value = torch.empty_like(normaliser)
        for number, index, target in _spans(probs, blocks):
            z, p = blocks[number][index].to(dtype), probs[target].to(dtype)
            lse, total = torch.logsumexp(z, dim=-1), p.sum(-1)
            normaliser[target[:-1]], mass[target[:-1]] = lse, total
            value[target[:-1]] = (p * z).sum(-1) - lse * total
        ctx.save_for_backward(probs, normaliser, mass, *blocks)
        ctx.reuse_logits = reuse_logits and not torch.compiler.is_compiling()
        return value

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        probs, normaliser, mass, *blocks = ctx.saved_tensors
        grad = grad.to(normaliser.dtype)
        needs = ctx.needs_input_grad
        grad_probs = torch.empty_like(probs) if needs[0] else None
        grad_blocks = [
            None if not wanted else block.detach() if ctx.reuse_logits and not _leaf_memory(block) else torch.empty_like(block)
            for block, wanted in zip(blocks, needs[2:])
        ]
        for number, index, target in _spans(probs, blocks):
            z = blocks[number][index].to(normaliser.dtype)  # (read before its gradient may overwrite it)
            g, lse = grad[target[:-1]].unsqueeze(-1), normaliser[target[:-1]].unsqueeze(-1)
            if grad_probs is not None:
                grad_probs[target] = (z - lse).mul_(g)
            if grad_blocks[number] is not None:
                soft = (z - lse).exp_()  # softmax(z)
                grad_blocks[number][index] = soft.mul_(-mass[target[:-1]].unsqueeze(-1)).add_(probs[target]).mul_(g)
        return (grad_probs, None, *grad_blocks)


def _leaf_memory(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a leaf or a view of one (memory that belongs to the caller)."""
    return tensor.is_leaf or (tensor._base is not None and tensor._base.is_leaf)
