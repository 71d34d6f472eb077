"""What ``seaflow tune`` ranks the candidates by (``--judge``), read off each record.

A method that optimises a reward scores well on that reward whether or not its replies are
better (reward hacking), so the ranking is the user's choice and always named:

* ``auto`` (the default): the prompts' task's independent judge (seaflow/judges.py:
  ``sentiment`` for the sentiment task, ``keywords`` for keywords, ``refusal`` for harmful
  prompts, ``verifier`` for math), else the optimised reward, said so on the table;
* ``reward``: the optimised reward itself (the record's ``reward``);
* ``sentiment``, ``keywords``, ``refusal``, ``verifier``, ``toxicity`` (:data:`seaflow.judges.JUDGES`):
  a text judge no method optimises (:func:`seaflow.judges.judge_value`), or the exact-answer
  verifier against the row's target;
* ``fluency-penalised:BETA``: ``reward - BETA x NLL per token`` of the reply under the policy;
* ``text:module.function``: any Python function ``str -> float`` of the reply.

Fluency is reported beside every judge: the policy's NLL per token of the reply after the
prompt the method answered (the record's ``ref_logprob_per_token``, negated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from seaflow import judges

# a prompt task (data.task, a row's task) -> its independent judge
TASK_JUDGES = {"sentiment": "sentiment", "keywords": "keywords", "harmful": "refusal", "math": "verifier"}
NAMES = {"sentiment": "TextBlob polarity", "keywords": "keyword coverage", "refusal": "refuses (refusal phrases)",
         "verifier": "exact answer (verifier)", "toxicity": "1 - offensive probability (alt-profanity-check)"}
SPECS = f"auto, reward, {', '.join(judges.JUDGES)}, fluency-penalised:BETA or text:module.function"


@dataclass(frozen=True)
class Judge:
    """``score(record) -> float | None``: one number per record, higher is better; ``name`` says what it is."""

    name: str
    score: Callable[[dict[str, Any]], float | None]
    optimised: bool = False  # the optimised reward alone

    def __call__(self, record: dict[str, Any]) -> float | None:
        value = self.score(record)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def fluency(record: dict[str, Any]) -> float | None:
    """The policy's NLL per token of the record's reply (lower is more fluent)."""
    value = record.get("ref_logprob_per_token")
    return None if value is None else -float(value)


def _reward(record: dict[str, Any]) -> float | None:
    return record.get("reward")


def judge_from(spec: str, task: str | None = None) -> Judge:
    """The judge ``spec`` names (:data:`SPECS`); ``task``: the prompts' task, for ``auto``."""
    spec = str(spec).strip()
    if spec == "auto":
        kind = TASK_JUDGES.get(task or "")
        if kind is None:
            return Judge("the optimised reward (no independent judge for this task: choose one with --judge)", _reward, optimised=True)
        spec = kind
    if spec == "reward":
        return Judge("the optimised reward (--judge reward)", _reward, optimised=True)
    if spec in judges.JUDGES:
        if spec == "sentiment":
            judges.sentiment_polarity("")  # TextBlob missing: say so before any method runs
        return Judge(NAMES.get(spec, spec), lambda record: judges.judge_value(spec, record["response"], record)[0])
    name, _, value = spec.partition(":")
    if name in ("fluency-penalised", "fluency-penalized"):
        try:
            beta = float(value)
        except ValueError:
            raise ValueError(f"--judge {spec!r}: fluency-penalised needs a weight, e.g. fluency-penalised:0.1") from None

        def penalised(record: dict[str, Any]) -> float | None:
            reward, nll = record.get("reward"), fluency(record)
            return None if reward is None or nll is None else reward - beta * nll

        return Judge(f"reward - {beta:g} x NLL per token (fluency-penalised)", penalised)
    if name == "text" and value:
        from seaflow.energies.text import resolve_callable

        function = resolve_callable(value)
        return Judge(f"{value}(reply)", lambda record: function(record["response"]))
    raise ValueError(f"--judge {spec!r}: not a judge; use {SPECS}")
