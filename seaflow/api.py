"""The Python API: ``seaflow.load(config)`` and ``Aligner.align(prompts)``.

    import seaflow
    aligner = seaflow.load("configs/demo.yaml", overrides={"model.init_args.steps": 5})
    records = aligner.align(["Describe your morning.", "Tell me about Mondays."])

``load`` parses the config with the parser ``seaflow predict`` uses (LightningCLI and
jsonargparse: the same keys, class names, links, defaults and error messages), builds the
method and the data module from it and loads the models once. ``align`` encodes the prompts
with the data settings (chat template, system prompt, context check), runs the method's
``predict_step`` in ``data.batch_size`` batches and returns one record per prompt, each a
dict with the fields a line of ``predictions.jsonl`` has (docs/outputs.md). No Trainer is
built and nothing is written to disk.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sized, Union

import torch
import yaml

from seaflow.data import collate
from seaflow.writer import strict_json

# one prompt given to align / stream: a text, a conversation (a list of turns) or a row with fields
Prompt = Union[str, list, Mapping[str, Any]]

_END = object()  # the end of an iterator of ids

# what the API stands in for where ``seaflow predict`` reads a prompts file
NO_PROMPTS_FILE = "<prompts given to align>"


def override_args(overrides: Mapping[str, Any] | Iterable[str] | None) -> list[str]:
    """Command-line arguments for ``overrides``: ``{"model.init_args.steps": 5}`` -> ``["--model.init_args.steps=5"]``.

    Values that are not strings are written as JSON, which the parser reads as it reads a
    value typed on the command line (numbers, booleans, null, lists, ``{"class_path": ...}``);
    an infinite float as YAML's ``.inf`` (a NaN as ``.nan``, which the parser then refuses).
    A list of strings is taken as command-line arguments as they are.
    """
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        args = []
        for key, value in overrides.items():
            key = str(key).removeprefix("--")
            if isinstance(value, float) and not math.isfinite(value):
                value = ".nan" if value != value else ".inf" if value > 0 else "-.inf"
            args.append(f"--{key}={value if isinstance(value, str) else json.dumps(value)}")
        return args
    return [str(arg) for arg in overrides]


def config_args(config: str | Path | Mapping[str, Any] | None) -> list[str]:
    """``--config`` arguments for a config file, or for a config given as a dict (sent as YAML text)."""
    if config is None:
        return []
    if isinstance(config, Mapping):
        return ["--config", yaml.safe_dump(dict(config), sort_keys=False)]
    path = Path(config).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(config)!r} does not exist")
    return ["--config", str(path)]


class Aligner:
    """A method with its models loaded and the data settings of its config; see :func:`load`.

    Attributes:
        method: the :class:`~seaflow.methods.base.AlignmentMethod` (a LightningModule), models loaded.
        data: the :class:`~seaflow.data.PromptDataModule` whose settings encode the prompts.
        config: the resolved config (a jsonargparse Namespace; ``config.as_dict()`` for a dict).
    """

    def __init__(self, method, data, config, parser=None):
        self.method = method
        self.data = data
        self.config = config
        self.parser = parser

    def __repr__(self) -> str:
        return f"Aligner({self.method.method_name()}, policy={self.method.policy_name!r}, device={self.method.device})"

    def dump_config(self) -> str:
        """The resolved config as YAML (what ``seaflow predict --print_config`` prints)."""
        return self.parser.dump(self.config, skip_none=False)

    def align(self, prompts: str | Iterable[Prompt], ids: Iterable[str] | None = None,
              progress: bool = False) -> list[dict[str, Any]]:
        """One record per prompt, in order: the fields of a ``predictions.jsonl`` line; for a prompt
        on which the reward failed, the entry ``errors.jsonl`` would hold (seaflow/faults.py).

        Args:
            prompts: prompt texts (a single string is one prompt), conversations (each a list of
                ``{"role", "content"}`` turns ending with a user turn; the reply is the next
                assistant turn), or rows as a prompts file has them: dicts with the prompt text
                (``data.prompt_field``) or the turns (``data.messages_field``), optionally an id
                (``data.id_field``) and the fields the rewards read (``keywords``, ``target``,
                ``data.fields``). Every prompt is checked before the first batch runs.
            ids: an id per prompt (default: a row's own id, else ``"0"``, ``"1"``, ...). A prompt's
                randomness derives from (seed, id, chain), so the same id and text give the same
                record as ``seaflow predict``.
            progress: show a progress bar (refinement steps within each batch).
        """
        given = [prompts] if isinstance(prompts, (str, Mapping)) else list(prompts)
        keys = None if ids is None else [str(i) for i in ids]
        if keys is not None and len(keys) != len(given):
            raise ValueError(f"align got {len(given)} prompts but {len(keys)} ids")
        rows = self._rows(given, keys, 0, set(), "align")
        with self._progress(len(rows), progress) as bar:
            return list(self._records(rows, bar, itertools.count()))

    def stream(self, prompts: str | Iterable[Prompt], ids: Iterable[str] | None = None,
               progress: bool = False) -> Iterator[dict[str, Any]]:
        """The records of :meth:`align`, yielded as each batch finishes.

        ``prompts`` (and ``ids``) may be any iterable, a generator included: ``data.batch_size``
        prompts are taken at a time, checked, aligned and their records yielded before the next
        ones are read, so prompts can come from a queue or a file too large to hold and records
        can be written or shown as they come. The records are :meth:`align`'s for the same
        prompts and ids. A bad prompt or a repeated id raises when its batch is reached.
        """
        given = iter([prompts] if isinstance(prompts, (str, Mapping)) else prompts)
        keys = None if ids is None else iter(ids)
        total = len(prompts) if isinstance(prompts, Sized) and not isinstance(prompts, (str, Mapping)) else None
        return self._stream(given, keys, progress, total)

    def _stream(self, given: Iterator[Prompt], keys: Iterator[str] | None, progress: bool, total: int | None):
        seen: set[str] = set()
        start, batches = 0, itertools.count()
        with self._progress(total, progress) as bar:
            while chunk := list(itertools.islice(given, self.data.batch_size)):
                chunk_keys = None
                if keys is not None:
                    chunk_keys = [str(key) for key in itertools.islice(keys, len(chunk))]
                    if len(chunk_keys) != len(chunk):
                        raise ValueError(f"stream got more than {start + len(chunk_keys)} prompts but only that many ids")
                yield from self._records(self._rows(chunk, chunk_keys, start, seen, "stream"), bar, batches)
                start += len(chunk)
        if keys is not None and next(keys, _END) is not _END:
            raise ValueError(f"stream got {start} prompts but more ids")

    def _rows(self, given: list[Prompt], keys: list[str] | None, start: int, seen: set[str], source: str) -> list[dict[str, Any]]:
        """Validated prompt rows for ``given`` (numbered from ``start``), ids assigned and unique across ``seen``."""
        data = self.data
        rows = []
        for i, prompt in enumerate(given):
            if isinstance(prompt, Mapping):
                row = dict(prompt)
            elif isinstance(prompt, list) and data.messages_field:  # a conversation
                row = {data.messages_field: prompt}
            else:
                row = {data.prompt_field: prompt}
            if keys is not None or data.id_field not in row:
                row[data.id_field] = keys[i] if keys is not None else str(start + i)
            rows.append(row)
        found = [str(row[data.id_field]) for row in rows]
        repeated = sorted({k for k in found if found.count(k) > 1} | (set(found) & seen))
        if repeated:
            raise ValueError(f"{source} got duplicate ids: {repeated}")
        seen.update(found)
        if not rows:
            return []
        prompts = data.read_rows(list(enumerate(rows, start + 1)), source)
        return [{**p, "index": start + p["index"]} for p in prompts]

    def _progress(self, total: int | None, enabled: bool):
        from seaflow.console import AlignProgress

        return AlignProgress(total, enabled=enabled)

    def _records(self, prompts: list[dict[str, Any]], bar, batches: Iterator[int]) -> Iterator[dict[str, Any]]:
        """Records of validated prompt rows, ``data.batch_size`` per ``predict_step`` (batch indices from
        ``batches``), as each batch finishes."""
        if not prompts:
            return
        data = self.data
        task = getattr(data, "task", None)  # data.task labels every prompt, as for a prompts file
        data.prompts = [{"task": task, **p} for p in prompts] if task is not None else prompts
        data.run = None
        items = data.items(reserve=self.method.max_new_tokens)
        self.method.eval()
        for start in range(0, len(items), data.batch_size):
            batch = collate(items[start:start + data.batch_size])
            # gradients on for the method only: a caller's code between records runs in its own mode
            with torch.enable_grad(), bar.batch(self.method, len(batch["id"])):
                out = self.method.predict_step(batch, next(batches))
            # the JSONL's values: strict JSON (non-finite floats are null), plain lists and dicts
            yield from (json.loads(json.dumps(strict_json(record), ensure_ascii=False, allow_nan=False)) for record in out)


def build(args: list[str]):
    """The ``seaflow predict`` parser on ``args`` without a Trainer: the parsed config, the method
    and the data module (``seaflow predict``'s LightningCLI is imported here, when ``load`` runs)."""
    from seaflow.cli import SeaflowCLI, build_cli

    class BuildCLI(SeaflowCLI):
        """The predict parser without a Trainer: parses a config and builds the method and the data
        module only (``seaflow.load``). ``data.path`` may be left out: the prompts come from the caller."""

        def add_arguments_to_parser(self, parser) -> None:
            super().add_arguments_to_parser(parser)
            parser.set_defaults({"data.path": NO_PROMPTS_FILE})

        def parse_arguments(self, parser, args) -> None:
            """The caller's arguments only, never sys.argv (a notebook kernel's own); a mistake raises
            ConfigError (a ValueError) in one line, no SystemExit inside Python."""
            super().parse_arguments(parser, list(args or []))

        def instantiate_classes(self) -> None:
            self.config_init = self.parser.instantiate_classes(self.config)
            self.datamodule = self._get(self.config_init, "data")
            self.model = self._get(self.config_init, "model")
            self.trainer = None

    return build_cli(args, run=False, cli=BuildCLI)


def load(config: str | Path | Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | Iterable[str] | None = None,
         device: str | torch.device | None = None, verbose: bool = False) -> Aligner:
    """Build the method of a ``seaflow predict`` config, load its models once, return an :class:`Aligner`.

    Args:
        config: a predict config file (``configs/demo.yaml``), or the same content as a dict.
        overrides: the command line's ``--key value`` overrides as a dict
            (``{"model.init_args.steps": 5, "data.system_prompt": "Be brief."}``) or as a list of
            arguments (``["--model.init_args.steps", "5"]``).
        device: where the models run; default: a CUDA GPU when there is one, else the CPU.
        verbose: keep the dependencies' notices (loading bars, Lightning's tips, deprecation
            warnings) that seaflow filters by default (seaflow/console.py).

    Errors are the parser's: an unknown key or class name, a bad value, a missing file.
    ``data.path`` may be left out (the prompts are given to :meth:`Aligner.align`); the
    ``trainer`` and ``output`` sections are parsed but not used.
    """
    from seaflow.console import quiet

    if not verbose:
        quiet()
    cli = build(config_args(config) + override_args(overrides))
    method, data = cli.model, cli.datamodule
    method.setup("predict")  # loads the policy and the reward's models
    # the data module reuses the policy's tokenizer instead of loading it again
    data.attach_tokenizer(method.policy.tokenizer, method.context_length())
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    method.to(device)
    return Aligner(method, data, cli.config, cli.parser)
