"""The relaxation contract.

A relaxation turns response logits ``y`` of shape (chains, length, vocab) into a token
distribution ``p`` of the same shape whose rows sum to one. ``p`` is what the models see
(``inputs_embeds = p @ W_emb``) and what the reference term scores; the relaxation decides
both the forward value and the gradient path back to ``y``. A relaxation never knows about
models.

``allowed`` (optional, boolean, broadcastable to ``y``) restricts each position to a subset
of the vocabulary, e.g. the reference model's top-k tokens; disallowed tokens get zero mass.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from seaflow.registry import Registered


class Relaxation(nn.Module, Registered):
    """Base class: ``relaxation(y, generator=None, allowed=None) -> p``."""

    registry: ClassVar[dict[str, type]] = {}

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
        return logits.masked_fill(~allowed, float("-inf"))

    @staticmethod
    def hard(probs_or_logits: torch.Tensor) -> torch.Tensor:
        """One-hot of the argmax along the vocabulary."""
        index = probs_or_logits.argmax(dim=-1, keepdim=True)
        return torch.zeros_like(probs_or_logits).scatter_(-1, index, 1.0)
