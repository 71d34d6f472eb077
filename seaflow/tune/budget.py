"""A budget per prompt (FLOPs, seconds or sequential depth) and a method's size that fits it.

``--budget`` is a number and a unit: GFLOPs per prompt (``400GFLOPs``; also ``TFLOPs``,
``MFLOPs``, ``FLOPs``), seconds per prompt (``8s``) or sequential depth (``depth:96``, model
calls one after another). Each is one of the cost axes every record carries
(:data:`seaflow.report.AXES`: ``cost.flops``, ``cost.wall_time_s``, ``cost.sequential_depth``,
counted by :mod:`seaflow.cost`).

A method is sized by one knob (Best-of-N's ``n``, CBS's ``beams``, a chain's ``steps``, ...)
whose cost on every axis grows linearly: a part paid once per prompt (its prompt's pass,
the initial samples) plus a part per unit of the knob. :class:`CostFit` is that line through
two measured sizes; :meth:`CostFit.largest_within` the largest size whose cost stays within
the budget.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

UNITS = {"flops": 1.0, "mflops": 1e6, "gflops": 1e9, "tflops": 1e12}
FORMS = "GFLOPs per prompt (400GFLOPs, 0.01GFLOPs), seconds per prompt (8s) or sequential depth (depth:96)"


@dataclass(frozen=True)
class Budget:
    """What one prompt may cost on one axis (``flops``, ``wall`` or ``depth``, :data:`seaflow.report.AXES`)."""

    axis: str
    value: float

    @classmethod
    def parse(cls, text: str) -> "Budget":
        spoken = str(text).strip().replace(" ", "")
        depth = re.fullmatch(r"depth:(\d+(?:\.\d*)?)", spoken, flags=re.IGNORECASE)
        flops = re.fullmatch(r"(\d+(?:\.\d*)?(?:e[+-]?\d+)?|\.\d+)([tgm]?flops)", spoken, flags=re.IGNORECASE)
        seconds = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)s", spoken, flags=re.IGNORECASE)
        if depth:
            budget = cls("depth", float(depth.group(1)))
        elif flops:
            budget = cls("flops", float(flops.group(1)) * UNITS[flops.group(2).lower()])
        elif seconds:
            budget = cls("wall", float(seconds.group(1)))
        else:
            raise ValueError(f"--budget {text!r}: give a number and a unit: {FORMS}")
        if not budget.value > 0:
            raise ValueError(f"--budget {text!r}: the budget must be above zero ({FORMS})")
        return budget

    def format(self, value: float) -> str:
        """``value`` on this budget's axis, in its unit."""
        return format_cost(self.axis, value)

    def describe(self) -> str:
        return f"sequential depth {self.value:g}" if self.axis == "depth" else f"{self.format(self.value)} per prompt"


def format_cost(axis: str, value: float) -> str:
    """A cost in the unit a user reads it in: GFLOPs, seconds or model calls."""
    if value is None or math.isnan(value):
        return "-"
    if axis == "flops":
        return f"{value / 1e9:.3g} GFLOPs"
    if axis == "wall":
        return f"{value:.3g} s"
    return f"depth {value:.0f}"


@dataclass(frozen=True)
class CostFit:
    """``cost(size) = intercept + slope * size`` on one axis, through two measured ``(size, cost)`` points."""

    intercept: float
    slope: float

    @classmethod
    def through(cls, first: tuple[int, float], second: tuple[int, float]) -> "CostFit":
        (k0, c0), (k1, c1) = sorted((first, second))
        if k0 == k1:
            raise ValueError(f"a cost line needs two different sizes, got {k0} twice")
        slope = (c1 - c0) / (k1 - k0)
        return cls(c0 - slope * k0, slope)

    def __call__(self, size: float) -> float:
        return self.intercept + self.slope * size

    def grows(self) -> bool:
        """Whether the cost grows with the size by more than rounding (depth does not grow with Best-of-N's n)."""
        return self.slope > 1e-9 * max(abs(self.intercept), 1.0)

    def largest_within(self, budget: float, smallest: int, largest: int) -> int | None:
        """The largest size in ``[smallest, largest]`` whose cost is at most ``budget`` (None when even
        the smallest costs more; ``largest`` when the cost does not grow with the size)."""
        if self(smallest) > budget * (1 + 1e-9):
            return None
        if not self.grows():
            return largest
        return int(min(largest, max(smallest, math.floor((budget - self.intercept) / self.slope + 1e-9))))
