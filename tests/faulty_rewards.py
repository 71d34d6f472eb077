"""Rewards that fail on chosen prompts, for the row-isolation tests (``CallableReward`` functions,
importable by a ``seaflow predict`` subprocess with this directory on PYTHONPATH).

A prompt is ``"prompt K: ..."``; :func:`score` raises on the prompts with ``K % 10 == 3`` (10%)
and returns NaN on those with ``K % 20 == 7`` (5%); :func:`clean_score` is the same reward
without the faults. Both count each call in ``$SEAFLOW_TEST_CALLS`` when it is set.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import lightning as L


def number(prompt: str) -> int:
    return int(re.match(r"prompt (\d+)", prompt).group(1))


def raises(k: int) -> bool:
    return k % 10 == 3


def is_nan(k: int) -> bool:
    return k % 20 == 7


def clean_score(prompt: str, response: str) -> float:
    """A deterministic reward of the text: its share of letters among 'aeiou', in [0, 1]."""
    _log(prompt)
    letters = [c for c in response.lower() if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / max(len(letters), 1)


def score(prompt: str, response: str) -> float:
    k = number(prompt)
    if raises(k):
        raise ValueError(f"reward service said no to prompt {k}")
    if is_nan(k):
        return float("nan")
    return clean_score(prompt, response)


def score_all(prompts: list[str], responses: list[str]) -> list[float]:
    """:func:`score` as one call per batch: a faulty prompt anywhere fails the whole call, unnamed."""
    return [score(p, r) for p, r in zip(prompts, responses)]


def always_fails(prompt: str, response: str) -> float:
    raise RuntimeError("the reward service is not configured")


def flaky(prompt: str, response: str) -> float:
    """Fails while the file ``$SEAFLOW_TEST_OUTAGE`` exists, on the prompts :func:`score` raises on."""
    if raises(number(prompt)) and Path(os.environ["SEAFLOW_TEST_OUTAGE"]).exists():
        raise ConnectionError("the reward service is down")
    return clean_score(prompt, response)


class Transient:
    """A callable that fails its first ``failures`` calls, then scores; or sleeps ``delay`` seconds first."""

    def __init__(self, failures: int = 0, delay: float = 0.0):
        self.failures, self.delay, self.calls = failures, delay, 0

    def __call__(self, response: str) -> float:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if self.calls <= self.failures:
            raise ConnectionError(f"try {self.calls}: connection reset")
        return float(len(response))


def _log(prompt: str) -> None:
    path = os.environ.get("SEAFLOW_TEST_CALLS")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"{number(prompt)}\n")


class StopAfterBatches(L.Callback):
    """``--trainer.callbacks+ faulty_rewards.StopAfterBatches``: after ``batches`` batches, create
    ``<output_dir>/paused`` and wait (a minute at most) to be killed."""

    def __init__(self, batches: int = 10):
        self.batches, self.seen = batches, 0

    def on_predict_batch_end(self, trainer, *args, **kwargs):
        self.seen += 1
        if self.seen >= self.batches:
            (Path(trainer.default_root_dir) / "paused").touch()
            time.sleep(60)
