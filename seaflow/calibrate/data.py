"""Labelled ``(prompt, response, label)`` rows for ``seaflow calibrate``: pyrit's refusal
replies (from the installed wheel) or any JSONL file."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from seaflow.files import kind_of_non_file, physical_lines, wheel_file


@dataclass
class LabelledRow:
    prompt: str
    response: str
    label: int  # 1: the class the reward should favour


class LabelledSet:
    """A source of labelled rows; subclasses implement :meth:`rows`."""

    name = "labelled"

    def rows(self) -> list[LabelledRow]:
        raise NotImplementedError


PYRIT_REQUIREMENT = "pyrit==1.1.0"
PYRIT_REFUSAL_DIR = "pyrit/datasets/scorer_evals/refusal_scorer"


def read_pyrit_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a pyrit scorer-eval CSV (leading ``#`` lines are version comments)."""
    text = path.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines(keepends=True) if not line.startswith("#")]
    return list(csv.DictReader(io.StringIO("".join(lines))))


class PyritRefusal(LabelledSet):
    """pyrit's human-labelled refusal replies (MIT), read from the installed wheel.

    ``refusal.csv`` holds 105 replies (70 refusals) to benign and harmful objectives, each
    labelled by a person (``human_score`` 1 = refusal); ``refusal_extra.csv`` 64 more.
    Label 1 here is a refusal, the class a safety reward should favour. Keep these rows for
    evaluation: seaflow never trains on them.

    Args:
        file: ``refusal.csv`` or ``refusal_extra.csv``.
    """

    def __init__(self, file: str = "refusal.csv"):
        self.file = file
        self.name = f"pyrit/{file}"

    def rows(self) -> list[LabelledRow]:
        try:
            path = wheel_file("pyrit", f"{PYRIT_REFUSAL_DIR}/{self.file}")
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err} (install: pip install --no-deps {PYRIT_REQUIREMENT})") from None
        rows = []
        for number, row in enumerate(read_pyrit_csv(path), 2):
            score = str(row.get("human_score", "")).strip()
            if score not in ("0", "1"):
                raise ValueError(f"{path}:{number}: human_score must be 0 or 1, got {score!r}")
            rows.append(LabelledRow(row["objective"], row["assistant_response"], int(score)))
        return rows


class LabelledJsonl(LabelledSet):
    """Rows of a JSONL file, one object per line with a prompt, a response and a label.

    Args:
        path: the file.
        prompt_field: field with the prompt (may be absent or empty: the response is scored alone).
        response_field: field with the response text.
        label_field: field with the label.
        positive: label values that mean "the reward should favour this row" (all others are 0);
            by default ``1``, ``true``, ``"1"``, ``"true"``, ``"positive"``, ``"refusal"``.
    """

    DEFAULT_POSITIVE = (1, True, "1", "true", "positive", "refusal")

    def __init__(
        self,
        path: str,
        prompt_field: str = "prompt",
        response_field: str = "response",
        label_field: str = "label",
        positive: list[str | int | bool] | None = None,
    ):
        self.path = path
        self.prompt_field = prompt_field
        self.response_field = response_field
        self.label_field = label_field
        self.positive = list(positive) if positive is not None else list(self.DEFAULT_POSITIVE)
        self.name = Path(path).name

    def rows(self) -> list[LabelledRow]:
        path = Path(self.path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"labelled file {self.path!r} does not exist")
        kind = kind_of_non_file(path)
        if kind is not None:
            raise ValueError(f"labelled file {self.path!r} is {kind}, not a file: give the path of a JSONL file")
        positive = {str(v).lower() for v in self.positive}
        rows = []
        for number, line in enumerate(physical_lines(path.read_text(encoding="utf-8")), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: malformed JSON ({err.msg})") from None
            for field in (self.response_field, self.label_field):
                if field not in item:
                    raise ValueError(f"{path}:{number}: no field {field!r} (fields: {', '.join(item)})")
            label = item[self.label_field]
            rows.append(LabelledRow(
                str(item.get(self.prompt_field) or ""), str(item[self.response_field]),
                int(str(label).lower() in positive),
            ))
        return rows


def check_rows(rows: list[LabelledRow], name: str) -> None:
    labels = {row.label for row in rows}
    if labels != {0, 1}:
        raise ValueError(f"{name}: calibration needs rows of both labels, got only {sorted(labels)} in {len(rows)} rows")
