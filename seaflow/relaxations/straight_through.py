"""Straight-through relaxation (SEA's default)."""

from __future__ import annotations

import torch

from seaflow.checks import require
from seaflow.relaxations.base import Relaxation


class _OneHotWithSoftmaxGradient(torch.autograd.Function):
    """Forward ``one_hot(argmax softmax(z / t))``; backward the softmax's vector-Jacobian product.

    Only ``z`` is kept for the backward pass (where the softmax is recomputed), so a step
    holds one dense ``(B, L, V)`` tensor (the one-hot) instead of the softmax, the one-hot
    and their straight-through sum.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        soft = torch.softmax(logits / temperature, dim=-1)
        # argmax of the probabilities (not of the logits), as the plain straight-through estimator
        hard = Relaxation.hard(soft)
        ctx.save_for_backward(logits)
        ctx.temperature = temperature
        return hard

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (logits,) = ctx.saved_tensors
        t = ctx.temperature
        soft = torch.softmax(logits if t == 1.0 else logits / t, dim=-1)
        inner = (grad * soft).sum(-1, keepdim=True)
        # soft * (grad - inner) / t, built in the softmax's buffer
        soft.mul_(grad - inner)
        return (soft if t == 1.0 else soft.div_(t)), None


class StraightThrough(Relaxation):
    """Forward: ``one_hot(argmax y)``; backward: the gradient of ``softmax(y / temperature)``.

    The models therefore always score real tokens (the relaxed energy of an iterate equals
    the discrete energy of its argmax decode), while the gradient still says which tokens
    would lower the energy.
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        require(temperature > 0, "StraightThrough temperature", temperature, "> 0")
        self.temperature = temperature

    def forward(self, logits, generator=None, allowed=None):
        return _OneHotWithSoftmaxGradient.apply(self.restrict(logits, allowed), self.temperature)
