"""Prompt files and the DataModule that feeds them to a method.

Formats (by extension): ``.jsonl`` (one object per line), ``.json`` (a list of objects or of
strings), ``.csv`` (header row), ``.txt`` (one prompt per non-empty line). The prompt text
comes from ``prompt_field`` and the id from ``id_field`` (the line/row number when absent);
a row with a ``messages`` field (a list of ``{"role", "content"}`` turns, as chat datasets and
the chat-template API have them; roles ``system``, ``user``, ``assistant``, ``tool``) is a conversation: the aligned reply is its next assistant
turn, its last user turn is its prompt text, and the record keeps the conversation;
a row's ``task``, ``target`` and ``keywords`` fields, and those ``data.fields`` declares, are
kept: they reach every reward and judge with the prompt (``ResponseBatch.fields``), the
method in its batch, and the record (the task decides which judges seaflow.metrics applies).
Prompts are tokenised with the policy's tokenizer, which the data module loads itself
(the CLI links ``model.init_args.policy`` to ``data.policy``), with its chat template
(``chat_template: true``) or as plain text; special-token strings typed in a prompt stay text.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import string
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from seaflow.checks import require, require_one_of
from seaflow.encoding import encode_chat, encode_text
from seaflow.energies.base import PromptText
from seaflow.files import kind_of_non_file, physical_lines
from seaflow.resume import RunDirectory


class PromptFileError(ValueError):
    """A prompts file is missing or malformed; the message names the file and the line."""


# fields of a prompt file's rows that travel with the prompt to the rewards and into its record
METADATA_FIELDS = ("task", "target", "keywords")
# what the data module itself puts in an item: not a row field a config may declare
RESERVED_FIELDS = ("id", "prompt", "index", "prompt_ids", "response_prefix", "response_prefix_ids", "messages")


# the roles of a conversation's turns, as chat templates know them ("tool": a tool's answer)
ROLES = ("system", "user", "assistant", "tool")
HF_PREFIX = "hf:"
_DATA_FILES = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".txt": "text", ".arrow": "arrow"}


def read_hf(name: str, split: str = "train", config: str | None = None) -> list[tuple[int, Any]]:
    """Rows (numbered from 1) of a Hugging Face dataset: ``name`` is a directory written by
    ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, data files (parquet, json, jsonl,
    csv; a glob works), a local dataset directory of such files, or a hub id (``config`` is
    ``load_dataset``'s ``name``). ``split`` may take a slice, e.g. ``test[:12]``."""
    try:
        import datasets
    except ImportError:
        raise PromptFileError(f"data.path {HF_PREFIX}{name} needs Hugging Face datasets: pip install datasets") from None
    local = Path(name).expanduser()
    try:
        if local.is_dir() and ((local / "state.json").exists() or (local / "dataset_dict.json").exists()):
            loaded = datasets.load_from_disk(str(local))
            if isinstance(loaded, datasets.DatasetDict):
                base, rows = _split_slice(split)
                if base not in loaded:
                    raise PromptFileError(f"{HF_PREFIX}{name}: no split {base!r} (splits: {', '.join(loaded)}); set data.split")
                loaded = loaded[base].select(range(len(loaded[base]))[rows])
            elif split != "train":
                loaded = loaded.select(range(len(loaded))[_split_slice(split)[1]])
        elif local.suffix.lower() in _DATA_FILES or any(ch in name for ch in "*?"):
            builder = _DATA_FILES.get(local.suffix.lower(), "json")
            loaded = datasets.load_dataset(builder, data_files=str(local), split=split)
        elif local.is_dir():
            loaded = datasets.load_dataset(str(local), name=config, split=split)
        else:
            loaded = datasets.load_dataset(name, name=config, split=split)
    except PromptFileError:
        raise
    except Exception as err:  # offline hub, unknown id, bad split, unreadable files ...
        where = "local files" if local.exists() or any(ch in name for ch in "*?") else "the Hugging Face hub"
        hint = (" The hub is unreachable or HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set: download the dataset where "
                "there is a network and save_to_disk it, or point data.path at local parquet/json files."
                if where == "the Hugging Face hub" else "")
        raise PromptFileError(
            f"data.path {HF_PREFIX}{name} (split {split!r}{f', config {config!r}' if config else ''}) could not be loaded "
            f"from {where}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}.{hint}"
        ) from None
    start = _split_slice(split)[1].start
    return list(enumerate(loaded, 1 + (start if start and start > 0 else 0)))  # row numbers of the whole split


def _split_slice(split: str) -> tuple[str, slice]:
    import re

    found = re.fullmatch(r"([\w.-]+)(?:\[(-?\d*):(-?\d*)\])?", split)
    if not found:
        raise PromptFileError(f"data.split {split!r}: expected a split name with an optional slice, e.g. test[:12]")
    start, stop = found.group(2), found.group(3)
    return found.group(1), slice(int(start) if start else None, int(stop) if stop else None)


def read_prompts(
    path: str | Path, prompt_field: str = "prompt", id_field: str = "id", skipped: list[dict[str, Any]] | None = None,
    keep: tuple[str, ...] = METADATA_FIELDS, split: str = "train", dataset_config: str | None = None,
    messages_field: str | None = "messages", drop_final_reply: bool = False,
) -> list[dict[str, Any]]:
    """``[{"id": ..., "prompt": ..., "index": ...}, ...]`` from a prompts file or a Hugging Face
    dataset (``hf:NAME``, :func:`read_hf`, with ``split`` and ``dataset_config``), validated; the
    row fields named in ``keep`` are copied into the item when the row has them, and a row with
    ``messages_field`` is a conversation (:func:`validate`).

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
    if str(path).startswith(HF_PREFIX):
        return validate(read_hf(str(path)[len(HF_PREFIX):], split, dataset_config), path, prompt_field, id_field, skipped, keep,
                        messages_field=messages_field, drop_final_reply=drop_final_reply)
    path = Path(path).expanduser()
    if not path.exists():
        raise PromptFileError(f"prompts file {str(path)!r} does not exist")
    kind = kind_of_non_file(path)
    if kind is not None:
        raise PromptFileError(f"{path} is {kind}, not a prompts file: set data.path to a .jsonl, .json, .csv or .txt file")
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
    return validate(rows, path, prompt_field, id_field, skipped, keep, bad, messages_field, drop_final_reply)


def conversation(messages: Any, drop_final_reply: bool = False) -> tuple[list[dict[str, Any]], str | None]:
    """``(turns, problem)``: a conversation's turns (copied; a final assistant turn dropped with
    ``drop_final_reply``) and what is wrong with it (None when it is a conversation whose next turn is the assistant's)."""
    if not isinstance(messages, list) or not messages:
        kind = type(messages).__name__ if not isinstance(messages, list) else "an empty list"
        return [], (f"messages must be a non-empty list of {{'role', 'content'}} turns, got {kind}"
                    + (" (a CSV cell is text: use JSONL, JSON or hf:)" if isinstance(messages, str) else ""))
    turns = []
    for number, turn in enumerate(messages, 1):
        if not (isinstance(turn, dict) and isinstance(turn.get("role"), str) and turn["role"].strip()
                and isinstance(turn.get("content"), str)):
            return [], f"turn {number} of messages must be an object with a 'role' and a text 'content', got {str(turn)[:80]!r}"
        if turn["role"] not in ROLES:
            return [], (f"turn {number} of messages has the role {turn['role']!r}; the roles a conversation may have are "
                        + ", ".join(map(repr, ROLES)))
        turns.append(dict(turn))
    if drop_final_reply and turns[-1]["role"] == "assistant":
        turns = turns[:-1]
    if not turns or turns[-1]["role"] != "user":
        last = turns[-1]["role"] if turns else "nothing"
        return [], (f"the conversation ends with {last!r}, but the aligned reply is the next assistant turn, so it must end "
                    "with a user turn (set data.drop_final_reply: true to align a reply in place of a final assistant turn)")
    if not turns[-1]["content"].strip():
        return [], "the conversation's last user turn is empty"
    return turns, None


def validate(rows, path, prompt_field: str, id_field: str, skipped, keep: tuple[str, ...], bad=None,
             messages_field: str | None = "messages", drop_final_reply: bool = False) -> list[dict[str, Any]]:
    """Prompts from numbered rows (objects or strings): fields checked, ids unique. A row with
    ``messages_field`` is a conversation (:func:`conversation`): its ``prompt`` is the last user
    turn and the item keeps the turns as ``messages``."""
    if bad is None:
        def bad(number: int, pid: str | None, reason: str) -> None:
            if skipped is None:
                raise PromptFileError(f"{path}:{number}: {reason}")
            skipped.append({"line": number, "id": pid, "reason": reason})

    prompts, seen = [], {}
    for number, row in rows:
        turns = None
        if isinstance(row, str):
            prompt, pid = row, str(number)
        elif isinstance(row, dict):
            pid = str(row.get(id_field, number))
            if messages_field and row.get(messages_field) is not None:
                turns, problem = conversation(row[messages_field], drop_final_reply)
                if problem:
                    bad(number, pid, f"{problem} (id {pid!r})")
                    continue
                prompt = turns[-1]["content"]
            elif prompt_field not in row:
                also = f", or give the row a {messages_field!r} list of turns (a conversation)" if messages_field else ""
                bad(number, pid, f"no field {prompt_field!r} (fields: {', '.join(map(str, row))}); set data.prompt_field{also}")
                continue
            else:
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
            item = {"id": pid, "prompt": prompt, "index": len(prompts)}
            if turns is not None:
                item["messages"] = turns
            if isinstance(row, dict):
                item.update((name, row[name]) for name in keep if row.get(name) not in (None, ""))
            prompts.append(item)
    if not prompts:
        more = f" ({len(skipped)} bad rows skipped, the first: {skipped[0]['reason']})" if skipped else ""
        raise PromptFileError(f"{path}: no prompts in the file{more}")
    return prompts


class PromptDataset(Dataset):
    def __init__(self, items: list[dict[str, Any]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]


def collate(items: list[dict[str, Any]]) -> dict[str, list]:
    """Keep lists: prompts have ragged lengths; methods pad them (left) themselves. A field
    some rows lack (an optional ``target``, a declared field) is None for them."""
    keys = dict.fromkeys(key for item in items for key in item)
    return {key: [item.get(key) for item in items] for key in keys}


class PromptDataModule(L.LightningDataModule):
    """Prompts from a file, tokenised with the policy's tokenizer, which it loads itself.

    Args:
        path: prompts file (.jsonl, .json, .csv, .txt), a bundled set (``prompt_set:NAME``, seaflow/prompt_sets.py)
            or a Hugging Face dataset (``hf:NAME``: a ``save_to_disk`` directory, parquet/json/csv files, a
            local dataset directory or a hub id; :func:`read_hf`).
        prompt_field: field holding the prompt text.
        id_field: field holding the prompt id (default: the line number).
        chat_template: format each prompt as a user turn of the policy's chat template (a
            conversation: its turns); false feeds the text as it is (conversations need the template).
        system_prompt: optional system message for the chat template (a conversation with a
            system turn of its own keeps that one).
        batch_size: prompts per batch (each expands to ``chains`` rows in SEA).
        limit: use only the first ``limit`` prompts (None: all; at least 1).
        ids: use only the prompts with these ids, in the file's order (before ``limit``); an id the
            file lacks is an error. None: every prompt. ``seaflow tune`` runs its tuning and
            confirmation parts this way.
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
        split: the split of an ``hf:`` dataset, optionally sliced (``test[:12]``).
        dataset_config: the configuration (``load_dataset``'s ``name``) of an ``hf:`` hub dataset.
        task: the task of a prompt file's prompts (``harmful``, ``math``, ``sentiment``,
            ``keywords`` or ``general``): it decides which judges summary.json and the metrics
            callback report (seaflow.metrics.TASK_METRICS); a row's own ``task`` field and a
            prompt set's task take precedence. None: the rows' own, else no task judge.
        response_prefix: text every response is forced to start with (the prefilling attack):
            the methods sample after it, score responses with it, and never change its tokens.
            None: no forced start.
        response_prefix_field: field of the prompt file holding each prompt's own forced start
            (instead of ``response_prefix``); a row without it starts freely.
        response_prefix_tokens: keep only the first k policy tokens of the forced start
            (0: none); None keeps it whole.
        fields: further fields of the prompt rows to keep besides ``task``, ``target`` and
            ``keywords`` (e.g. ``[concepts, reference]``): each row's values reach every reward
            and judge with its prompt (``ResponseBatch.fields``), the method in its batch, and
            the record. A row may lack one; a field no row has is an error (a misspelling).
        proposal_prompt_field: field of the prompt file holding another version of each prompt
            (e.g. one that asks for what the reward wants: "... Use the words X and Y.") for
            methods that propose from the policy given it while targeting the prompt itself
            (GuidedSuffixMCMC's steered proposals, importance-corrected); batches then carry
            ``proposal_prompt_ids``. None: the prompt itself (with ``proposal_system_prompt``).
            A conversation's proposal version replaces its last user turn.
        proposal_system_prompt: system message of the proposal prompts (e.g. "Reply in a warm,
            positive tone."); None: ``system_prompt``. Setting any of the three proposal keys turns
            proposal prompts on. It replaces a conversation's own system turn in its proposal version.
        instruction: text appended (after a space) to each prompt itself (a conversation: to its last
            user turn), its ``{field}`` placeholders filled from the row as in ``proposal_instruction``:
            the asked version of prompts whose rows carry what to ask for (``seaflow tune``'s asked
            variants of a config with ``proposal_instruction``). None: the prompts as they are.
        proposal_instruction: text appended (after a space) to each prompt's proposal version, its
            ``{field}`` placeholders filled from the row (e.g. "Use the words {keywords}."; a list
            joins as "a and b", "a, b and c"): rows that carry their keywords need no asked copy
            of the prompt. None: nothing appended.
        messages_field: field of a conversation row: a list of ``{"role", "content"}`` turns ending
            with a user turn; the aligned reply is the next assistant turn (null: no conversations).
        drop_final_reply: a conversation ending with an assistant turn (a chat dataset's reference
            reply) loses that turn and the aligned reply takes its place; false: such a row is a bad prompt.
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
        ids: list[str] | None = None,
        on_bad_prompt: Literal["error", "skip"] = "error",
        policy: str | None = None,
        max_new_tokens: int = 0,
        trust_remote_code: bool = False,
        run: RunDirectory | None = None,
        split: str = "train",
        dataset_config: str | None = None,
        task: str | None = None,
        response_prefix: str | None = None,
        response_prefix_field: str | None = None,
        response_prefix_tokens: int | None = None,
        fields: list[str] | None = None,
        proposal_prompt_field: str | None = None,
        proposal_system_prompt: str | None = None,
        proposal_instruction: str | None = None,
        instruction: str | None = None,
        messages_field: str | None = "messages",
        drop_final_reply: bool = False,
    ):
        super().__init__()
        reserved = sorted(set(fields or ()) & set(RESERVED_FIELDS))
        if reserved:
            raise ValueError(
                f"data.fields may not name {', '.join(map(repr, reserved))}: the data module sets those itself "
                "(data.prompt_field, data.id_field and data.messages_field choose where the text, the id and a conversation come from)"
            )
        from seaflow.metrics import TASKS

        require_one_of("data.task", task, (*TASKS, None))
        if response_prefix is not None and response_prefix_field is not None:
            raise ValueError(
                f"set one of data.response_prefix ({response_prefix!r}) and data.response_prefix_field "
                f"({response_prefix_field!r}), not both"
            )
        require(response_prefix_tokens is None or response_prefix_tokens >= 0, "data.response_prefix_tokens",
                response_prefix_tokens, ">= 0 or null (the whole prefix)")
        require(batch_size >= 1, "data.batch_size", batch_size, ">= 1")
        require(limit is None or limit >= 1, "data.limit", limit, ">= 1 or null (every prompt)")
        require_one_of("data.on_bad_prompt", on_bad_prompt, ("error", "skip"))
        self.path = path
        self.prompt_field = prompt_field
        self.id_field = id_field
        self.chat_template = chat_template
        self.system_prompt = system_prompt
        self.batch_size = batch_size
        self.limit = limit
        self.ids = None if ids is None else [str(i) for i in ids]
        self.on_bad_prompt = on_bad_prompt
        self.policy = policy
        self.max_new_tokens = max_new_tokens
        self.trust_remote_code = trust_remote_code
        self.run = run
        self.split = split
        self.dataset_config = dataset_config
        self.task = task
        self.response_prefix = response_prefix
        self.response_prefix_field = response_prefix_field
        self.response_prefix_tokens = response_prefix_tokens
        self.fields = list(dict.fromkeys(fields or ()))
        self.proposal_prompt_field = proposal_prompt_field
        self.proposal_system_prompt = proposal_system_prompt
        self.proposal_instruction = proposal_instruction
        self.instruction_fields = instruction_fields(proposal_instruction)
        self.instruction = instruction
        self.asked_fields = instruction_fields(instruction, "data.instruction")
        self.messages_field = messages_field
        self.drop_final_reply = drop_final_reply
        # bad prompts left out (on_bad_prompt: skip): rows of the file, and prompts too long for the model
        self.file_skips: list[dict[str, Any]] = []
        self.length_skips: list[dict[str, Any]] = []
        self.prompts: list[dict[str, str]] | None = None
        self.tokenizer = None
        self.context_length: int | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.run is not None:  # one run writes a directory at a time: claimed before its records are read
            self.run.claim(self.trainer.global_rank if self.trainer is not None else 0)
        if self.prompts is None:
            self.file_skips = []
            skipped = self.file_skips if self.on_bad_prompt == "skip" else None
            prompts = read_prompts(self.path, self.prompt_field, self.id_field, skipped=skipped, keep=self.keep,
                                   split=self.split, dataset_config=self.dataset_config,
                                   messages_field=self.messages_field, drop_final_reply=self.drop_final_reply)
            missing = [name for name in self.fields if not any(name in p for p in prompts)]
            if missing:
                raise PromptFileError(
                    f"data.fields names {', '.join(map(repr, missing))} but no row of {self.path} has it "
                    f"(the rows' fields: {', '.join(sorted({k for p in prompts for k in p} - {'index'}))}); "
                    "fix the name or remove it from data.fields"
                )
            if self.task is not None:
                prompts = [{"task": self.task, **p} for p in prompts]
            if self.ids is not None:
                prompts = self.select(prompts)
            if self.instruction is not None:
                prompts = [self.asked(p) for p in prompts]
            self.prompts = prompts[: self.limit] if self.limit is not None else prompts
            if self.run is not None:
                self.run.check_prompts(self.prompts)  # before any model loads
        if self.tokenizer is None and self.policy is not None:
            from seaflow.models import load_tokenizer

            tokenizer, context_length = load_tokenizer(self.policy, trust_remote_code=self.trust_remote_code)
            self.attach_tokenizer(tokenizer, context_length)

    @property
    def keep(self) -> tuple[str, ...]:
        """The row fields kept with each prompt: ``task``, ``target``, ``keywords``, ``data.fields``, the prefix and proposal fields."""
        extra = tuple(f for f in (self.response_prefix_field, self.proposal_prompt_field) if f) + self.instruction_fields
        return tuple(dict.fromkeys(METADATA_FIELDS + tuple(self.fields) + extra + self.asked_fields))

    def select(self, prompts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The prompts whose id is in ``data.ids``, in the file's order."""
        present = {p["id"] for p in prompts}
        missing = [i for i in self.ids if i not in present]
        if missing:
            shown = ", ".join(map(repr, missing[:5])) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise PromptFileError(f"data.ids names {shown}, which {self.path} does not have: fix data.ids or data.path")
        wanted = set(self.ids)
        return [p for p in prompts if p["id"] in wanted]

    def asked(self, prompt: dict[str, Any]) -> dict[str, Any]:
        """The prompt with ``data.instruction`` appended to its text (a conversation: to its last user turn)."""
        text = f"{prompt['prompt']} {fill_instruction(self.instruction, self.asked_fields, prompt, 'data.instruction')}"
        asked = {**prompt, "prompt": text}
        if "messages" in prompt:
            asked["messages"] = [*prompt["messages"][:-1], {**prompt["messages"][-1], "content": text}]
        return asked

    def read_rows(self, rows: list[tuple[int, Any]], source: str) -> list[dict[str, Any]]:
        """Prompts from numbered rows given in Python (objects or strings), validated as a file's rows are."""
        return validate(rows, source, self.prompt_field, self.id_field, None, self.keep,
                        messages_field=self.messages_field, drop_final_reply=self.drop_final_reply)

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

    def encode(self, prompt: str, system_prompt: str | None = None) -> list[int]:
        """Policy tokens of a prompt (with ``system_prompt``, default ``data.system_prompt``); special-token
        strings typed in the prompt or the system prompt stay text, only the chat template's own
        markup is special (seaflow/encoding.py)."""
        if self.chat_template:
            return self.encode_messages([{"role": "user", "content": prompt}], system_prompt)
        return encode_text(self.tokenizer, prompt, add_special_tokens=True)

    def encode_messages(self, messages: list[dict[str, Any]], system_prompt: str | None = None, replace_system: bool = False) -> list[int]:
        """Policy tokens of a conversation in the chat template, with the generation prompt of the
        next assistant turn. ``system_prompt`` (default ``data.system_prompt``) opens it when it has
        no system turn (with ``replace_system``, in place of its own). The text of every turn stays
        text, whoever wrote it (seaflow/encoding.py)."""
        if not self.chat_template:
            raise PromptFileError(
                "a conversation (a row with messages) needs the policy's chat template, but data.chat_template is false; "
                "set it to true, or give the rows a plain prompt"
            )
        system_prompt = self.system_prompt if system_prompt is None else system_prompt
        if system_prompt and (replace_system or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": system_prompt}, *(m for m in messages if m["role"] != "system")]
        return encode_chat(self.tokenizer, messages)

    def encode_row(self, prompt: dict[str, Any]) -> list[int]:
        """Policy tokens of a prompt row: its conversation when it has one, else its text."""
        return self.encode_messages(prompt["messages"]) if "messages" in prompt else self.encode(prompt["prompt"])

    @property
    def proposes(self) -> bool:
        return (self.proposal_prompt_field is not None or self.proposal_system_prompt is not None
                or self.proposal_instruction is not None)

    def proposal(self, prompt: dict[str, Any]) -> dict[str, Any]:
        """``proposal_prompt_ids``: the policy tokens of the prompt's proposal version; empty when off."""
        if not self.proposes:
            return {}
        text = prompt["prompt"]
        if self.proposal_prompt_field is not None:
            text = prompt.get(self.proposal_prompt_field)
            if not isinstance(text, str) or not text.strip():
                raise PromptFileError(
                    f"prompt {prompt['id']!r} has no text in its {self.proposal_prompt_field!r} field "
                    f"(data.proposal_prompt_field): add it to every row, or set data.proposal_prompt_field: null"
                )
        if self.proposal_instruction is not None:
            text = f"{text} {fill_instruction(self.proposal_instruction, self.instruction_fields, prompt)}"
        if "messages" in prompt:  # the conversation, its last user turn in the proposal version
            turns = [*prompt["messages"][:-1], {"role": "user", "content": text}]
            replace = self.proposal_system_prompt is not None  # the proposal's own system message, in place of the conversation's
            return {"proposal_prompt_ids": self.encode_messages(turns, self.proposal_system_prompt, replace_system=replace)}
        return {"proposal_prompt_ids": self.encode(text, self.proposal_system_prompt)}

    @property
    def forces_prefix(self) -> bool:
        return self.response_prefix is not None or self.response_prefix_field is not None

    def prefix(self, prompt: dict[str, Any]) -> dict[str, Any]:
        """``response_prefix`` (text) and ``response_prefix_ids`` (policy tokens, cut to
        ``response_prefix_tokens``) of a prompt; empty without a forced start."""
        if not self.forces_prefix:
            return {}
        text = self.response_prefix if self.response_prefix_field is None else prompt.get(self.response_prefix_field)
        ids = encode_text(self.tokenizer, str(text)) if text else []
        if self.response_prefix_tokens is not None:
            ids = ids[: self.response_prefix_tokens]
        return {"response_prefix": self.tokenizer.decode(ids) if ids else "", "response_prefix_ids": ids}

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
            ids = self.encode_row(prompt)
            forced = self.prefix(prompt)
            need = reserve + len(forced.get("response_prefix_ids", ()))
            if self.context_length is not None and len(ids) + need > self.context_length:
                reason = (
                    f"prompt {prompt['id']!r} has {len(ids)} tokens; with {need} response tokens it "
                    f"exceeds the model's context of {self.context_length}: shorten it or remove it"
                )
                if self.on_bad_prompt == "error":
                    raise PromptFileError(f"{reason} (or set data.on_bad_prompt: skip)")
                self.length_skips.append({"id": prompt["id"], "reason": reason})
                continue
            items.append(self.item(prompt, ids, forced))
        if self.run is not None:
            self.run.skipped = self.skipped
        return items

    def item(self, prompt: dict[str, Any], ids: list[int], forced: dict[str, Any]) -> dict[str, Any]:
        """A batch item: the row's kept fields, its forced start, its tokens, and its text as a
        :class:`~seaflow.energies.base.PromptText` carrying the row's fields to the rewards.

        The prefix field is left out (the record carries ``response_prefix`` instead)."""
        field = self.response_prefix_field
        row = {k: v for k, v in prompt.items() if field is None or k != field or k in ("id", "prompt", "index")}
        fields = {k: v for k, v in row.items() if k not in ("prompt", "index")}
        return {**row, "prompt": PromptText(prompt["prompt"], fields), **forced, **self.proposal(prompt), "prompt_ids": ids}

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
            items.append(self.item(prompt, self.encode_row(prompt), self.prefix(prompt)))
        return sorted(items, key=lambda item: item["index"])

    def predict_dataloader(self) -> DataLoader:
        items = self.items()
        if self.trainer is not None:
            items = self.fill_ranks(items, self.trainer.world_size)
        return DataLoader(PromptDataset(items), batch_size=self.batch_size, shuffle=False, collate_fn=collate)


def instruction_fields(template: str | None, key: str = "data.proposal_instruction") -> tuple[str, ...]:
    """The row fields an instruction template (``key``) names (its ``{field}`` placeholders)."""
    if template is None:
        return ()
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise ValueError(f"{key} {template!r} is not a valid template ({error}): write each row field "
                         "as {field} and a literal brace as {{ or }}") from None
    bad = [name for name in names if not name.isidentifier()]
    if bad:
        raise ValueError(f"{key} {template!r} has the placeholder(s) {', '.join('{' + b + '}' for b in bad)}: "
                         "each placeholder names one row field, e.g. {keywords}")
    return tuple(dict.fromkeys(names))


def fill_instruction(template: str, names: tuple[str, ...], row: dict[str, Any], key: str = "data.proposal_instruction") -> str:
    """``template`` (the value of ``key``) with each of its fields ``names`` (:func:`instruction_fields`,
    parsed once) replaced by the row's value (a list as "a and b", "a, b and c")."""
    values = {}
    for name in names:
        value = row.get(name)
        if value is None or value == "" or value == []:
            raise PromptFileError(
                f"prompt {row['id']!r} has no {name!r} field, which {key} ({template!r}) fills in: "
                f"add it to every row, or change {key}"
            )
        if isinstance(value, (list, tuple)):
            words = [str(v) for v in value]
            value = words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"
        values[name] = value
    return template.format(**values)

