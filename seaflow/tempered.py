"""Reward-tempered choices among candidates: ``softmax(r / lambda)`` weights, one seeded draw,
and resampling (systematic or multinomial).

Plain Python on lists of floats (a few dozen candidates per prompt), so the same numbers come
out in a method (Soft Best-of-N, the particle filter) and in a report that replays Soft
Best-of-N from a Best-of-N run's candidate rewards (``seaflow.report``).
"""

from __future__ import annotations

import math
import random
from typing import Sequence


def log_weights(rewards: Sequence[float], temperature: float) -> list[float]:
    """``r / temperature`` with ``-inf`` for a non-finite reward; temperature 0 puts all weight on
    the first maximum (Best-of-N's choice, ties to the earlier candidate), ``inf`` is uniform."""
    finite = [r is not None and math.isfinite(r) for r in rewards]
    if not any(finite):
        return [0.0] * len(rewards)  # nothing to prefer: uniform
    if temperature == 0:
        best = max((r, -i) for i, (r, ok) in enumerate(zip(rewards, finite)) if ok)
        return [0.0 if i == -best[1] else -math.inf for i in range(len(rewards))]
    if math.isinf(temperature):
        return [0.0 if ok else -math.inf for ok in finite]
    return [r / temperature if ok else -math.inf for r, ok in zip(rewards, finite)]


def normalise(logs: Sequence[float]) -> list[float]:
    """Probabilities from log weights (softmax; all ``-inf``: uniform)."""
    top = max(logs)
    if top == -math.inf:
        return [1.0 / len(logs)] * len(logs)
    weights = [math.exp(v - top) for v in logs]
    total = math.fsum(weights)
    return [w / total for w in weights]


def tempered_weights(rewards: Sequence[float], temperature: float) -> list[float]:
    """``softmax(r / temperature)`` (see :func:`log_weights` for 0, ``inf`` and non-finite rewards)."""
    return normalise(log_weights(rewards, temperature))


def draw(weights: Sequence[float], u: float) -> int:
    """The index whose cumulative weight first exceeds ``u`` (in [0, 1)) times the total: inverse-CDF sampling."""
    target = u * math.fsum(weights)
    running = 0.0
    last = max(i for i, w in enumerate(weights) if w > 0)
    for i, w in enumerate(weights):
        running += w
        if w > 0 and running > target:
            return i
    return last  # rounding left the target at the very top


def choose(rewards: Sequence[float], temperature: float, rng: random.Random) -> tuple[int, float]:
    """``(index, probability)``: one draw from ``softmax(r / temperature)`` with ``rng``."""
    weights = tempered_weights(rewards, temperature)
    index = draw(weights, rng.random())
    return index, weights[index]


def effective_sample_size(weights: Sequence[float]) -> float:
    """``1 / sum w_i^2`` of normalised weights: from 1 (one particle holds all) to their count (uniform)."""
    return 1.0 / math.fsum(w * w for w in weights)


def systematic(weights: Sequence[float], count: int, rng: random.Random) -> list[int]:
    """``count`` ancestors by systematic resampling: one uniform ``u``, points ``(k + u) / count``.

    Each index is drawn ``floor(count * W_i + u) - floor(count * W_{i-1} + u)`` times (``W``: the
    cumulative weights), so counts differ from ``count * w_i`` by less than one; uniform weights
    give every index once."""
    u = rng.random()
    total = math.fsum(weights)
    scaled = [count * w / total for w in weights]  # expected copies; exactly 1.0 each for uniform weights
    out, running = [], 0.0
    for i, expected in enumerate(scaled):
        before = math.floor(running + u)
        running += expected
        after = count if i == len(scaled) - 1 else min(math.floor(running + u), count)
        out += [i] * max(after - before, 0)
    return out[:count]


def multinomial(weights: Sequence[float], count: int, rng: random.Random) -> list[int]:
    """``count`` independent draws of an index with probability ``w_i``, in index order."""
    return sorted(draw(weights, rng.random()) for _ in range(count))


RESAMPLERS = {"systematic": systematic, "multinomial": multinomial}
