"""Schedules: a value that changes over the run (samplers' step sizes and noise scales, a
relaxation's temperature).

A schedule maps training progress ``p`` in [0, 1] (finished steps / planned steps) to a
multiplier, applied to the sampler's base value. A sampler argument typed
``float | Schedule`` accepts either: a float is a constant.
"""

from __future__ import annotations

import math


class Schedule:
    """Base class: ``schedule(progress) -> value``."""

    def __call__(self, progress: float) -> float:
        raise NotImplementedError


class Constant(Schedule):
    """Always ``value``."""

    def __init__(self, value: float = 1.0):
        self.value = value

    def __call__(self, progress: float) -> float:
        return self.value


class Linear(Schedule):
    """From ``start`` to ``end`` linearly over the run."""

    def __init__(self, start: float = 1.0, end: float = 0.0):
        self.start, self.end = start, end

    def __call__(self, progress: float) -> float:
        return self.start + (self.end - self.start) * progress


class Cosine(Schedule):
    """Cosine decay from ``start`` to ``end``."""

    def __init__(self, start: float = 1.0, end: float = 0.0):
        self.start, self.end = start, end

    def __call__(self, progress: float) -> float:
        return self.end + 0.5 * (self.start - self.end) * (1 + math.cos(math.pi * progress))


class Piecewise(Schedule):
    """Piecewise constant: ``values[i]`` from ``boundaries[i-1]`` to ``boundaries[i]``.

    COLD decoding's large-noise-then-small is ``Piecewise(boundaries=[0.5], values=[1.0, 0.1])``.
    """

    def __init__(self, boundaries: list[float], values: list[float]):
        if len(values) != len(boundaries) + 1:
            raise ValueError(
                f"Piecewise needs one more value than boundaries, got {len(values)} values "
                f"for {len(boundaries)} boundaries"
            )
        if list(boundaries) != sorted(boundaries):
            raise ValueError(f"Piecewise boundaries must be increasing, got {boundaries}")
        self.boundaries, self.values = list(boundaries), list(values)

    def __call__(self, progress: float) -> float:
        for boundary, value in zip(self.boundaries, self.values):
            if progress < boundary:
                return value
        return self.values[-1]


def resolve(value: float | Schedule, progress: float) -> float:
    """The value of a float-or-schedule argument at ``progress``."""
    return value(progress) if isinstance(value, Schedule) else float(value)
