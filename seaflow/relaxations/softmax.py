"""Plain softmax relaxation."""

from __future__ import annotations

import torch

from seaflow.checks import require
from seaflow.relaxations.base import Relaxation


class Softmax(Relaxation):
    """``p = softmax(y / temperature)`` in both passes: models see a soft mixture of tokens."""

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        require(temperature > 0, "Softmax temperature", temperature, "> 0")
        self.temperature = temperature

    def forward(self, logits, generator=None, allowed=None):
        logits = self.restrict(logits, allowed)
        if self.temperature != 1.0:  # no scaled (B, L, V) copy at the default temperature
            logits = logits / self.temperature
        return torch.softmax(logits, dim=-1)
