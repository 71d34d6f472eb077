"""Randomness with one stream per row: every per-row seed and draw of seaflow comes from here.

A row (a chain, a candidate) draws from its own ``torch.Generator`` seeded from
(run seed, prompt id, chain or candidate index, purpose) by :func:`prompt_seed`, so a prompt's
samples, refinement noise and accept tests are the same whatever else shares its batch,
whatever the batch size and the number of processes.

Samplers and relaxations take a ``generator`` argument: either one ``torch.Generator`` for
the whole batch, or :class:`RowGenerators`, one generator per row. Draw through :func:`randn`,
:func:`rand`, :func:`exponential` and :func:`gumbel` (or the samplers' helpers ``noise_like``
and ``metropolis``) so both kinds of generator work.
"""

from __future__ import annotations

import hashlib
import random
from typing import Callable, Sequence

import torch


def prompt_seed(seed: int, prompt_id: str, chain: int, purpose: str = "sample") -> int:
    """A 63-bit seed from the run seed, the prompt id, the chain (or candidate) and what it is for:
    batch- and rank-independent."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}:{chain}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def prompt_stream(seed: int, prompt_id: str, purpose: str) -> random.Random:
    """A Python random stream of a prompt's own (a resampling, a soft choice), from :func:`prompt_seed`."""
    return random.Random(prompt_seed(seed, prompt_id, 0, purpose))


def row_generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One ``torch.Generator`` per seed, on ``device``."""
    generators = []
    for seed in seeds:
        generator = torch.Generator(device=device)
        generator.manual_seed(int(seed) % (2**63))
        generators.append(generator)
    return generators


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


def gumbel(shape, generator: Generator = None, device=None) -> torch.Tensor:
    """Standard Gumbel draws ``-log(-log u)`` of ``shape`` (float32); a list of generators is one per row."""
    if isinstance(generator, (list, tuple)):
        generator = RowGenerators(generator)
    u = rand(shape, generator, device, torch.float32).clamp_(1e-20, 1.0)
    return -torch.log(-torch.log(u))
