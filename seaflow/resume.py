"""A run directory and what it already holds: the one object the writer and the data module share.

:class:`RunDirectory` is made by :class:`~seaflow.writer.JsonlPredictionWriter` (the
``output`` group of the CLI) and handed to :class:`~seaflow.data.PromptDataModule` as
``run`` (a declared link in ``seaflow/cli.py``). Through it

* the data module learns which prompts are written already (:meth:`RunDirectory.done`)
  and leaves them out, after checking that each of them still has the text it was run
  with (a rerun never mixes runs);
* the writer learns which prompts the data module skipped (:attr:`RunDirectory.skipped`)
  and lists them in ``summary.json``.

A prompt that failed (a reward's row fault, seaflow/faults.py) has an entry in
``errors.jsonl`` and no record: it is not done, so a rerun runs it again
(:meth:`RunDirectory.failed` names the ones waiting), and the entry goes when it has a
record or is replaced when it fails again.

The resolved config is the other half of a run's fingerprint; :func:`config_differences`
compares two of them for the CLI's :class:`~seaflow.cli.SaveRunConfig`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
SUMMARY = "summary.json"
ERRORS = "errors.jsonl"  # one entry per prompt that failed (seaflow/faults.py); rank shards: errors.rank<R>.jsonl
CONFIG = "config.yaml"
LOCK = ".seaflow.lock"  # held by the run writing the directory; names it (pid, host, start, command)

# Keys of the resolved config that do not change what a record holds: where and how the
# run is written, how it is spread over devices and shown, and which prompts it takes.
# Everything else (the method, its components and seeds, the data's text fields and chat
# template, trainer.precision, seed_everything) is the run's fingerprint.
NOT_FINGERPRINT = ("config", "output", "trainer", "return_predictions", "ckpt_path",
                   "data.batch_size", "data.limit", "data.ids", "data.on_bad_prompt")
FINGERPRINT_EXCEPTIONS = ("trainer.precision",)
# Arguments of any component that only say how to call a service (CallableReward's): a rerun
# with more retries or a longer timeout after an outage is the same run.
NOT_FINGERPRINT_ARGUMENTS = ("retries", "backoff", "timeout")


class RunMismatchError(ValueError):
    """``output_dir`` holds records of a different run; the message names what differs and the ways out."""


class RunInUseError(RuntimeError):
    """Another run is writing ``output_dir`` now; the message names it."""


def lock_directory(directory: Path):
    """An open file holding an exclusive ``flock`` on ``directory/.seaflow.lock``, with this process
    written into it; RunInUseError naming the holder when another process has it.

    The kernel releases the lock when its process ends, however it ends (SIGKILL, a power cut on a
    local disk), so a dead run never blocks the next. Where ``flock`` does not exist (Windows) or
    the filesystem refuses it, the run goes on unlocked, with a warning.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle = open(directory / LOCK, "a+", encoding="utf-8")  # never truncated by a process that waits
    except OSError as err:
        raise OSError(f"output_dir {str(directory)!r} is not writable ({err.strerror or err}): choose another output.output_dir") from None
    try:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:
        log.warning("no flock on this platform: nothing stops a second run from writing %s at the same time", directory)
        return handle
    except OSError as err:
        if err.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            log.warning("cannot lock %s (%s): nothing stops a second run from writing it at the same time", directory, err)
            return handle
        handle.seek(0)
        holder = handle.read().strip() or "a process that has not named itself yet"
        handle.close()
        raise RunInUseError(
            f"output_dir '{directory}' is being written by another run ({holder}): wait for it to end "
            "(rerunning then resumes), stop it, or choose another output.output_dir"
        ) from None
    command = " ".join([Path(sys.argv[0]).name] + [shlex.quote(a) for a in sys.argv[1:]]) if sys.argv else "python"
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: {command}\n")
    handle.flush()
    return handle


def read_records(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """Complete records of a JSONL file; with ``repair``, truncate a torn last line in place."""
    if not path.exists():
        return []
    data = path.read_bytes()
    records, good_bytes = [], 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # torn write: the process died mid-line
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good_bytes += len(line)
    if repair and good_bytes != len(data):
        with open(path, "r+b") as handle:
            handle.truncate(good_bytes)
    return records


def ways_out(output_dir: Path) -> str:
    return (
        f"Appending would mix two runs in {output_dir}. Either choose a new output.output_dir, "
        "or set output.overwrite: true to delete its records and start afresh."
    )


def prompt_identity(row: dict[str, Any]) -> str | None:
    """What must not change between runs of a prompt id: its text, or a conversation's turns (as JSON)."""
    if row.get("messages") is not None:
        return json.dumps(row["messages"], ensure_ascii=False, sort_keys=True)
    return row.get("prompt")


class RunDirectory:
    """The output directory of a run: records already written, prompts skipped this run.

    Args:
        output_dir: the run directory.
        overwrite: the run starts afresh, so nothing counts as written.
    """

    def __init__(self, output_dir: str | Path, overwrite: bool = False):
        self.output_dir = Path(output_dir)
        self.overwrite = overwrite
        self.skipped: list[dict[str, Any]] = []  # filled by the data module: {"line"?, "id", "reason"}
        self.resumed: int | None = None  # prompts of this run written already (the data module counts them)
        self.retried: int | None = None  # prompts of this run that failed before (errors.jsonl) and run again
        self._done: dict[str, str | None] | None = None
        self._lock = None

    def claim(self, rank: int = 0) -> None:
        """Make this run the directory's one writer before anything in it is read or written
        (RunInUseError when another run writes it). Rank 0 holds the lock for the whole run: the
        other ranks of a DDP run are started by it and write their shards under its lock."""
        if rank != 0 or self._lock is not None:
            return
        self._lock = lock_directory(self.output_dir)
        self._done = None  # what the directory holds now that no other run writes it

    def release(self) -> None:
        """Let the next run write the directory (the end of a run, in this process)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def record_files(self) -> list[Path]:
        return sorted(self.output_dir.glob("predictions*.jsonl"))

    def error_files(self) -> list[Path]:
        """``errors.jsonl`` and the rank shards of a run that stopped before merging them."""
        return sorted(self.output_dir.glob("errors*.jsonl"))

    def failed(self) -> dict[str, dict[str, Any]]:
        """Prompt id -> its latest error entry, for every prompt that failed and has no record yet
        (a rerun runs them again; empty with ``overwrite``)."""
        if self.overwrite:
            return {}
        done = self.done()
        entries: dict[str, dict[str, Any]] = {}
        for path in self.error_files():
            for entry in read_records(path):
                if str(entry.get("id")) not in done:
                    entries[str(entry["id"])] = entry
        return entries

    def done(self) -> dict[str, str | None]:
        """Prompt id -> prompt text of every record already written (read once; empty with ``overwrite``)."""
        if self._done is None:
            self._done = {}
            if not self.overwrite:
                for path in self.record_files():
                    for record in read_records(path):
                        self._done.setdefault(str(record["id"]), prompt_identity(record))
        return self._done

    def check_prompts(self, prompts: list[dict[str, Any]]) -> None:
        """Refuse prompts whose id is written already with another text (RunMismatchError); count those of
        ``prompts`` written already (:attr:`resumed`: a run of some of the directory's prompts, ``data.ids``) and
        those that failed before and run again (:attr:`retried`)."""
        done, failed = self.done(), self.failed()
        self.resumed = sum(p["id"] in done for p in prompts)
        self.retried = sum(p["id"] in failed for p in prompts)
        changed = [p for p in prompts if p["id"] in done and done[p["id"]] is not None and done[p["id"]] != prompt_identity(p)]
        if changed:
            shown = "; ".join(
                f"{p['id']!r}: {_short(done[p['id']])} -> {_short(prompt_identity(p))}" for p in changed[:3]
            ) + (f"; and {len(changed) - 3} more" if len(changed) > 3 else "")
            raise RunMismatchError(
                f"output_dir '{self.output_dir}' holds records of {len(changed)} prompt id(s) whose text "
                f"differs from the prompts file now: {shown}. {ways_out(self.output_dir)}"
            )


def fingerprint(config: dict[str, Any]) -> dict[str, Any]:
    """The flattened keys of a resolved config that determine a record (see NOT_FINGERPRINT)."""
    flat = _flatten(config)
    return {
        key: value for key, value in flat.items()
        if key in FINGERPRINT_EXCEPTIONS or not (
            any(key == skip or key.startswith(skip + ".") for skip in NOT_FINGERPRINT)
            or any(key.endswith(f".init_args.{name}") for name in NOT_FINGERPRINT_ARGUMENTS))
    }


NO_DEFAULT = object()
"""What a ``defaults`` lookup of :func:`config_differences` returns for a key it knows no default of."""


def config_differences(saved: dict[str, Any], current: dict[str, Any], defaults: Callable[[str], Any] | None = None) -> list[str]:
    """``key: old -> new`` for every fingerprint key that differs between two resolved configs.

    ``defaults(key)`` gives a key's default value (or :data:`NO_DEFAULT`): a key the saved config
    lacks whose current value is its default is an argument added to seaflow after the run
    started, left at its default, and not a difference.
    """
    old, new = fingerprint(saved or {}), fingerprint(current or {})
    missing = object()
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, missing), new.get(key, missing)
        if a is missing and defaults is not None and _same(defaults(key), b):
            continue
        if a != b:
            show = lambda v: "(not set)" if v is missing else _short(v)  # noqa: E731
            lines.append(f"{key}: {show(a)} -> {show(b)}")
    return lines


def _same(default: Any, value: Any) -> bool:
    """``default`` (a Python value) equals ``value`` (as read back from YAML)."""
    if default is NO_DEFAULT:
        return False
    try:
        return yaml.safe_load(yaml.safe_dump(default)) == value
    except yaml.YAMLError:
        return False


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."
