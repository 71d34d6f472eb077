"""Straight-through relaxation (SEA's default)."""

from __future__ import annotations

import torch

from seaflow.relaxations.base import Relaxation


class StraightThrough(Relaxation):
    """Forward: ``one_hot(argmax y)``; backward: the gradient of ``softmax(y / temperature)``.

    The models therefore always score real tokens (the relaxed energy of an iterate equals
    the discrete energy of its argmax decode), while the gradient still says which tokens
    would lower the energy.
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"StraightThrough temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, logits, generator=None, allowed=None):
        soft = torch.softmax(self.restrict(logits, allowed) / self.temperature, dim=-1)
        hard = self.hard(soft)
        return hard + (soft - soft.detach())
