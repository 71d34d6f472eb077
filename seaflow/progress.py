"""Progress inside one predict batch: loops report, a progress bar listens.

A method's batch can take minutes (T refinement steps, N candidates), longer than anything a
per-batch bar shows. The loops call :func:`report` as they go (``refine`` once per sampler
step, Best-of-N once per candidate block, ...); whatever is listening (the console's progress
bar, seaflow/console.py) hears ``(done, total, unit)``. With no listener a report costs a
list lookup. This module imports nothing, so the lowest layers may call it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

Listener = Callable[[int, int, str], None]
_listeners: list[Listener] = []


def report(done: int, total: int, unit: str = "step") -> None:
    """``done`` of ``total`` units (``step``, ``candidates``, ...) of the current batch are finished."""
    for listener in _listeners:
        listener(done, total, unit)


@contextmanager
def listen(listener: Listener) -> Iterator[Listener]:
    """Call ``listener(done, total, unit)`` on every :func:`report` inside the ``with`` block."""
    _listeners.append(listener)
    try:
        yield listener
    finally:
        _listeners.remove(listener)
