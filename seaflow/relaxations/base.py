"""The relaxation contract.

A relaxation turns response logits ``y`` of shape (chains, length, vocab) into a token
distribution ``p`` of the same shape whose rows sum to one. ``p`` is what the models see
(``inputs_embeds = p @ W_emb``) and what the reference term scores; the relaxation decides
both the forward value and the gradient path back to ``y``. A relaxation never knows about
models.

``allowed`` (optional, boolean, broadcastable to ``y``) restricts each position to a subset
of the vocabulary, e.g. the reference model's top-k tokens (:meth:`Relaxation.top_k_mask`
builds one); disallowed tokens get zero mass in every relaxation, forward and backward.

Relaxations whose behaviour changes over the run (an annealed temperature) read
``self.progress`` in [0, 1]; the refinement loop sets it with :meth:`Relaxation.set_progress`
before each sampler step.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn



class Relaxation(nn.Module):
    """Base class: ``relaxation(y, generator=None, allowed=None) -> p``."""

    one_hot_gradient: ClassVar[bool] = False
    """True when the gradient handed back to ``y`` is dE/d(one-hot tokens) (what discrete
    samplers with ``needs_one_hot_gradient`` read)."""

    progress: float = 0.0

    def set_progress(self, progress: float) -> None:
        """Tell the relaxation how far the run is (finished steps / planned steps)."""
        self.progress = min(max(float(progress), 0.0), 1.0)

    def forward(
        self,
        logits: torch.Tensor,
        generator: torch.Generator | None = None,
        allowed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def restrict(logits: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        """Logits with disallowed tokens pushed to -inf (no-op when ``allowed`` is None)."""
        if allowed is None:
            return logits
        if allowed.dtype != torch.bool:
            raise ValueError(f"allowed must be a boolean mask, got dtype {allowed.dtype}")
        if not bool(allowed.any(dim=-1).all()):
            raise ValueError("allowed leaves some position without any token: every position needs at least one allowed token")
        return logits.masked_fill(~allowed, float("-inf"))

    @staticmethod
    def top_k_mask(scores: torch.Tensor, k: int, include: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean mask of the ``k`` highest ``scores`` per position (ties may add a few).

        ``scores`` has shape (..., vocab), e.g. the reference model's next-token logits;
        ``include`` (token ids of shape ``scores.shape[:-1]``, e.g. the current tokens) is
        always allowed, so restricting never changes an iterate's own decode.
        """
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"top-k restriction needs an integer k >= 1, got {k!r}")
        k = min(k, scores.shape[-1])
        threshold = scores.topk(k, dim=-1).values[..., -1:]
        mask = scores >= threshold
        if include is not None:
            mask = mask.scatter(-1, include.unsqueeze(-1), True)
        return mask

    @staticmethod
    def hard(probs_or_logits: torch.Tensor) -> torch.Tensor:
        """One-hot of the argmax along the vocabulary."""
        index = probs_or_logits.argmax(dim=-1, keepdim=True)
        return torch.zeros_like(probs_or_logits).scatter_(-1, index, 1.0)
