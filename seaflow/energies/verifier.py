"""An exact-answer verifier: the response's final number against its prompt row's reference answer.

:func:`final_number` reads the answer of a GSM8K-style response; :func:`is_correct` compares
it with a reference (a number, or a worked solution ending in ``#### 72``). The math task's
``accuracy`` judge (seaflow/metrics.py) and :class:`ExactAnswerReward` use the same rules.
"""

from __future__ import annotations

import math
import re

import torch

from seaflow.energies.base import ResponseBatch
from seaflow.energies.text import TextReward, no_gradient_error

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_ANSWER_MARKERS = ("####", "answer is", "answer:")


def _number(text: str) -> float | None:
    try:
        return float(text.replace("$", "").replace(",", "").rstrip("."))
    except ValueError:
        return None


def final_number(text: str) -> float | None:
    """The answer number of a GSM8K-style response, or None.

    Rules, in order: the first number after the last ``####``; else the first number after
    the last "answer is" / "answer:" (case-insensitive); else the last number in the text.
    Numbers may carry a minus sign, a ``$``, thousands commas and decimals
    (``$1,234.50`` -> 1234.5).
    """
    lowered = text.lower()
    for marker in _ANSWER_MARKERS:
        at = lowered.rfind(marker)
        if at >= 0:
            found = _NUMBER.search(text, at + len(marker))
            if found:
                return _number(found.group())
    numbers = _NUMBER.findall(text)
    return _number(numbers[-1]) if numbers else None


def reference_number(target: str | float) -> float | None:
    """The number a reference answer states: the number itself, or a worked solution's final number."""
    if isinstance(target, (int, float)) and not isinstance(target, bool):
        return float(target)
    text = str(target).strip()
    plain = _number(text)
    return plain if plain is not None else final_number(text)


def is_correct(response: str, target: str | float) -> bool:
    """The response's final number equals the target's (to 1e-6)."""
    got, want = final_number(response), reference_number(target)
    return got is not None and want is not None and math.isclose(got, want, abs_tol=1e-6)


class ExactAnswerReward(TextReward):
    """``r = correct`` when the response's final number equals its row's reference answer, else ``incorrect``.

    The reference is the prompt row's ``field`` (``target``: GSM8K's answer, a number or a
    worked solution ending in ``#### 72``), which reaches the reward with the prompt
    (``ResponseBatch.fields``); the answer is read with :func:`final_number`'s rules, the
    math task's ``accuracy`` judge. A verifier scores text and has no gradient: it is a
    ``reward`` for Best-of-N, CBS, ARGS and GuidedSuffixMCMC with uniform cuts, and the
    ``selection_reward`` next to a differentiable ``reward`` for the gradient methods.

    Args:
        field: the prompt row's field holding the reference answer (a field other than
            ``target`` must be listed in ``data.fields``).
        correct: the reward of a correct answer.
        incorrect: the reward of a wrong or missing one.
    """

    def __init__(self, field: str = "target", correct: float = 1.0, incorrect: float = 0.0):
        super().__init__()
        if not correct > incorrect:
            raise ValueError(
                f"ExactAnswerReward correct ({correct}) must be above incorrect ({incorrect}): higher is better "
                "(model.init_args.reward.init_args.correct / incorrect)"
            )
        self.field = field
        self.correct = correct
        self.incorrect = incorrect

    def describe(self) -> str:
        return f"ExactAnswerReward({self.field!r})"

    def value(self, prepared: ResponseBatch, response: torch.Tensor) -> torch.Tensor:
        if response.is_floating_point():
            raise no_gradient_error(self)
        targets = prepared.field(self.field, self.describe(), hint=" (GSM8K rows carry it as 'target')")
        for target, fields in zip(targets, prepared.fields):
            if reference_number(target) is None:
                raise ValueError(
                    f"{self.describe()}: the reference answer {target!r} of row {fields.get('id')!r} states no number; "
                    "fix the prompt file (the verifier compares final numbers)"
                )
        texts = self.texts(prepared, response)
        scores = [self.correct if is_correct(text, target) else self.incorrect for text, target in zip(texts, targets)]
        return torch.tensor(scores, dtype=torch.float32, device=response.device)
