"""Prompt files and the DataModule that feeds them to a method.

Formats (by extension): ``.jsonl`` (one object per line), ``.json`` (a list of objects or of
strings), ``.csv`` (header row), ``.txt`` (one prompt per non-empty line). The prompt text
comes from ``prompt_field`` and the id from ``id_field`` (the line/row number when absent).
Prompts are tokenised with the policy's tokenizer, which the data module loads itself
(the CLI links ``model.init_args.policy`` to ``data.policy``), with its chat template
(``chat_template: true``) or as plain text; special-token strings typed in a prompt stay text.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from seaflow.encoding import encode_chat, encode_text
from seaflow.resume import RunDirectory


class PromptFileError(ValueError):
    """A prompts file is missing or malformed; the message names the file and the line."""


def read_prompts(
    path: str | Path, prompt_field: str = "prompt", id_field: str = "id", skipped: list[dict[str, Any]] | None = None,
) -> list[dict[str, str]]:
    """``[{"id": ..., "prompt": ...}, ...]`` from a prompts file, validated.

    A bad row (malformed JSON line, missing field, empty prompt, duplicate id) raises
    :class:`PromptFileError`, or, when a ``skipped`` list is given, is appended to it as
    ``{"line", "id", "reason"}`` and left out. A missing, non-UTF-8 or empty file always raises.
    """

    def bad(number: int, pid: str | None, reason: str) -> None:
        if skipped is None:
            raise PromptFileError(f"{path}:{number}: {reason}")
        skipped.append({"line": number, "id": pid, "reason": reason})

    # -- benchmark prompt sets (``prompt_set:advbench`` etc.; seaflow/prompt_sets.py) --
    if str(path).startswith("prompt_set:"):
        from seaflow.prompt_sets import load_prompt_set

        return load_prompt_set(str(path))
    # -- end of prompt-set hook --
    path = Path(path).expanduser()
    if not path.exists():
        raise PromptFileError(f"prompts file {str(path)!r} does not exist")
    if not path.is_file():
        raise PromptFileError(f"{path} is a directory, not a prompts file: set data.path to a .jsonl, .json, .csv or .txt file")
    raw = path.read_bytes()
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0  # a UTF-8 BOM is accepted and dropped
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as err:
        raise PromptFileError(f"{path}: not UTF-8 text (byte {err.start + bom}): re-save the file as UTF-8") from None
    suffix = path.suffix.lower()
    rows: list[tuple[int, Any]] = []
    if suffix == ".jsonl":
        for number, line in enumerate(physical_lines(text), 1):
            if line.strip():
                try:
                    rows.append((number, json.loads(line)))
                except json.JSONDecodeError as err:
                    bad(number, None, f"malformed JSON ({err.msg} at column {err.colno}): {line[:80]!r}")
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise PromptFileError(f"{path}:{err.lineno}: malformed JSON ({err.msg})") from None
        if not isinstance(data, list):
            raise PromptFileError(f"{path}: expected a JSON list of prompts, got {type(data).__name__}")
        rows = list(enumerate(data, 1))
    elif suffix == ".csv":
        # the csv module reads the file itself, so quoted fields keep their line breaks; rows are
        # numbered by the physical line they start on
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            for row in reader:
                breaks = sum(value.count("\n") for value in row.values() if isinstance(value, str))
                rows.append((reader.line_num - breaks, row))
        except csv.Error as err:
            raise PromptFileError(f"{path}:{reader.line_num}: malformed CSV ({err})") from None
    elif suffix in (".txt", ".text", ""):
        rows = [(number, line) for number, line in enumerate(physical_lines(text), 1) if line.strip()]
    else:
        raise PromptFileError(f"{path}: unknown prompts format {suffix!r}; use .jsonl, .json, .csv or .txt")
    prompts, seen = [], {}
    for number, row in rows:
        if isinstance(row, str):
            prompt, pid = row, str(number)
        elif isinstance(row, dict):
            pid = str(row.get(id_field, number))
            if prompt_field not in row:
                bad(number, pid, f"no field {prompt_field!r} (fields: {', '.join(map(str, row))}); set data.prompt_field")
                continue
            prompt = row[prompt_field]
        else:
            bad(number, None, f"expected an object or a string, got {type(row).__name__}")
            continue
        if not isinstance(prompt, str) or not prompt.strip():
            bad(number, pid, f"empty prompt (id {pid!r}, value {prompt!r})")
        elif pid in seen:
            bad(number, pid, f"duplicate id {pid!r} (first on line {seen[pid]})")
        else:
            seen[pid] = number
            prompts.append({"id": pid, "prompt": prompt, "index": len(prompts)})
    if not prompts:
        more = f" ({len(skipped)} bad rows skipped, the first: {skipped[0]['reason']})" if skipped else ""
        raise PromptFileError(f"{path}: no prompts in the file{more}")
    return prompts


def physical_lines(text: str) -> list[str]:
    """Lines split at ``\\n`` (and ``\\r\\n``) only: U+2028, U+0085 and other separators inside a
    line (valid in a JSON string, or in a prompt) are text, not line breaks."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


class PromptDataset(Dataset):
    def __init__(self, items: list[dict[str, Any]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]


def collate(items: list[dict[str, Any]]) -> dict[str, list]:
    """Keep lists: prompts have ragged lengths; methods pad them (left) themselves."""
    return {key: [item[key] for item in items] for key in items[0]}


class PromptDataModule(L.LightningDataModule):
    """Prompts from a file, tokenised with the policy's tokenizer, which it loads itself.

    Args:
        path: prompts file (.jsonl, .json, .csv, .txt).
        prompt_field: field holding the prompt text.
        id_field: field holding the prompt id (default: the line number).
        chat_template: format each prompt as a user turn of the policy's chat template.
        system_prompt: optional system message for the chat template.
        batch_size: prompts per batch (each expands to ``chains`` rows in SEA).
        limit: use only the first ``limit`` prompts (None: all; at least 1).
        on_bad_prompt: ``error`` stops at the first bad prompt (malformed line, missing field,
            empty prompt, duplicate id, longer than the model's context) with a message naming
            it; ``skip`` leaves it out and lists it, with the reason, under ``skipped`` in
            summary.json. A missing, empty or non-UTF-8 file is always an error.
        policy: the policy whose tokenizer and context length to use. The CLI links it from
            ``model.init_args.policy`` (with ``trust_remote_code``); None needs :meth:`attach_tokenizer`.
        max_new_tokens: response tokens each prompt must leave free in the context (linked from
            ``model.init_args.max_new_tokens``).
        trust_remote_code: allow custom tokenizer code (linked from the method).
        run: the run directory shared with the writer (linked from ``output``): prompts written
            already are left out, after checking that their text is unchanged; skipped prompts
            are reported to it for summary.json.
    """

    def __init__(
        self,
        path: str,
        prompt_field: str = "prompt",
        id_field: str = "id",
        chat_template: bool = True,
        system_prompt: str | None = None,
        batch_size: int = 4,
        limit: int | None = None,
        on_bad_prompt: Literal["error", "skip"] = "error",
        policy: str | None = None,
        max_new_tokens: int = 0,
        trust_remote_code: bool = False,
        run: RunDirectory | None = None,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if limit is not None and limit < 1:
            raise ValueError(f"data.limit must be >= 1 (or null for every prompt), got {limit}")
        if on_bad_prompt not in ("error", "skip"):
            raise ValueError(f"data.on_bad_prompt must be 'error' or 'skip', got {on_bad_prompt!r}")
        self.path = path
        self.prompt_field = prompt_field
        self.id_field = id_field
        self.chat_template = chat_template
        self.system_prompt = system_prompt
        self.batch_size = batch_size
        self.limit = limit
        self.on_bad_prompt = on_bad_prompt
        self.policy = policy
        self.max_new_tokens = max_new_tokens
        self.trust_remote_code = trust_remote_code
        self.run = run
        # bad prompts left out (on_bad_prompt: skip): rows of the file, and prompts too long for the model
        self.file_skips: list[dict[str, Any]] = []
        self.length_skips: list[dict[str, Any]] = []
        self.prompts: list[dict[str, str]] | None = None
        self.tokenizer = None
        self.context_length: int | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.prompts is None:
            self.file_skips = []
            skipped = self.file_skips if self.on_bad_prompt == "skip" else None
            prompts = read_prompts(self.path, self.prompt_field, self.id_field, skipped=skipped)
            self.prompts = prompts[: self.limit] if self.limit is not None else prompts
            if self.run is not None:
                self.run.check_prompts(self.prompts)  # before any model loads
        if self.tokenizer is None and self.policy is not None:
            from seaflow.models import load_tokenizer

            tokenizer, context_length = load_tokenizer(self.policy, trust_remote_code=self.trust_remote_code)
            self.attach_tokenizer(tokenizer, context_length)

    @property
    def done_ids(self) -> set[str]:
        """Ids of prompts the run directory holds already (resume)."""
        return set(self.run.done()) if self.run is not None else set()

    @property
    def skipped(self) -> list[dict[str, Any]]:
        """Every prompt left out by ``on_bad_prompt: skip``, with the reason (written to summary.json)."""
        return self.file_skips + self.length_skips

    def attach_tokenizer(self, tokenizer, context_length: int | None = None) -> None:
        """Use this tokenizer (``setup`` loads the policy's otherwise; for use outside the CLI)."""
        if self.chat_template and not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "data.chat_template is true but the policy's tokenizer has no chat template; "
                "set data.chat_template: false"
            )
        self.tokenizer = tokenizer
        self.context_length = context_length

    def encode(self, prompt: str) -> list[int]:
        """Policy tokens of a prompt; special-token strings typed in the prompt or the system
        prompt stay text, only the chat template's own markup is special (seaflow/encoding.py)."""
        if self.chat_template:
            messages = [{"role": "user", "content": prompt}]
            if self.system_prompt:
                messages.insert(0, {"role": "system", "content": self.system_prompt})
            return encode_chat(self.tokenizer, messages)
        return encode_text(self.tokenizer, prompt, add_special_tokens=True)

    def items(self, reserve: int | None = None) -> list[dict[str, Any]]:
        """Tokenised prompts not yet done; ``reserve`` (default ``max_new_tokens``) tokens must stay free."""
        reserve = self.max_new_tokens if reserve is None else reserve
        self.setup()
        if self.tokenizer is None:
            raise RuntimeError("PromptDataModule has no tokenizer: give it a policy, or call attach_tokenizer()")
        done = self.done_ids
        items = []
        self.length_skips = []
        for prompt in self.prompts:
            if prompt["id"] in done:
                continue
            ids = self.encode(prompt["prompt"])
            if self.context_length is not None and len(ids) + reserve > self.context_length:
                reason = (
                    f"prompt {prompt['id']!r} has {len(ids)} tokens; with {reserve} response tokens it "
                    f"exceeds the model's context of {self.context_length}: shorten it or remove it"
                )
                if self.on_bad_prompt == "error":
                    raise PromptFileError(f"{reason} (or set data.on_bad_prompt: skip)")
                self.length_skips.append({"id": prompt["id"], "reason": reason})
                continue
            items.append({**prompt, "prompt_ids": ids})
        if self.run is not None:
            self.run.skipped = self.skipped
        return items

    def fill_ranks(self, items: list[dict[str, Any]], world_size: int) -> list[dict[str, Any]]:
        """Give every process at least one prompt when a resume leaves fewer than ``world_size``.

        Lightning's predict sampler needs a prompt per rank. Prompts already done are run again
        to fill the gap; the writer keeps the first record of each id, so nothing is duplicated.
        """
        done_ids = self.done_ids
        if world_size <= 1 or len(items) >= world_size or not done_ids:
            return items
        done = [p for p in self.prompts if p["id"] in done_ids]
        for prompt in done[: world_size - len(items)]:
            items.append({**prompt, "prompt_ids": self.encode(prompt["prompt"])})
        return sorted(items, key=lambda item: item["index"])

    def predict_dataloader(self) -> DataLoader:
        items = self.items()
        if self.trainer is not None:
            items = self.fill_ranks(items, self.trainer.world_size)
        return DataLoader(PromptDataset(items), batch_size=self.batch_size, shuffle=False, collate_fn=collate)
