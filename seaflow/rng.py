"""Randomness with one stream per chain.

Samplers and relaxations take a ``generator`` argument: either one ``torch.Generator`` for
the whole batch, or :class:`RowGenerators`, one generator per chain (row). SEA uses the
latter, seeded from (seed, prompt id, chain), so a prompt's refinement draws the same noise
whatever else shares its batch, whatever the batch size and the number of processes.

Draw through :func:`randn`, :func:`rand` and :func:`exponential` (or the samplers' helpers
``noise_like`` and ``metropolis``) so both kinds of generator work.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch


class RowGenerators:
    """One ``torch.Generator`` per row: row ``i`` of every draw comes from generator ``i`` only."""

    def __init__(self, generators: Sequence[torch.Generator]):
        self.generators = list(generators)

    def __len__(self) -> int:
        return len(self.generators)

    def draw(self, fill: Callable[[torch.Tensor, torch.Generator], torch.Tensor], shape, device, dtype) -> torch.Tensor:
        if shape[0] != len(self.generators):
            raise ValueError(f"RowGenerators has {len(self.generators)} generators for a draw of {shape[0]} rows")
        rows = []
        for generator in self.generators:
            row = torch.empty(tuple(shape[1:]), device=generator.device, dtype=dtype)
            rows.append(fill(row, generator))
        return torch.stack(rows).to(device)


Generator = torch.Generator | RowGenerators | None


def _draw(fill, shape, generator: Generator, device, dtype) -> torch.Tensor:
    dtype = dtype or torch.get_default_dtype()
    if isinstance(generator, RowGenerators):
        return generator.draw(fill, shape, device, dtype)
    return fill(torch.empty(tuple(shape), device=device, dtype=dtype), generator)


def randn(shape, generator: Generator = None, device=None, dtype=None) -> torch.Tensor:
    """Standard normal draws of ``shape``."""
    return _draw(lambda t, g: t.normal_(generator=g), shape, generator, device, dtype)


def rand(shape, generator: Generator = None, device=None, dtype=None) -> torch.Tensor:
    """Uniform [0, 1) draws of ``shape``."""
    return _draw(lambda t, g: t.uniform_(generator=g), shape, generator, device, dtype)


def exponential(shape, generator: Generator = None, device=None, dtype=None) -> torch.Tensor:
    """Exponential(1) draws of ``shape``."""
    return _draw(lambda t, g: t.exponential_(generator=g), shape, generator, device, dtype)
