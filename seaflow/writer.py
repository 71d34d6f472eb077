"""JSONL prediction writer: one line per prompt, flushed as batches finish, resumable.

Records go to ``<output_dir>/predictions.jsonl`` (with several processes, each rank writes
``predictions.rank<R>.jsonl`` and rank 0 merges them in prompt order at the end). Each line
is written whole, flushed and fsync'ed; a rerun with the same ``output_dir`` drops a torn
last line left by a crash, skips the prompts already written and appends the rest, so a
killed run resumes without losing or duplicating prompts. ``summary.json`` is rewritten
from all records at the end of every run, with the prompts the data module skipped.

A prompt whose reward failed on it (a row fault, seaflow/faults.py) gets an entry in
``<output_dir>/errors.jsonl`` instead of a record: its id, text, the config key of the reward
(``stage``) and the error. A rerun runs exactly the prompts without a record, the failed ones
among them; at the end of every run ``errors.jsonl`` is rewritten with one entry per prompt
that still has no record, and ``summary.json`` counts them. ``max_failed_rows`` stops a run
whose prompts fail beyond a count or a share.

Records are strict JSON: non-finite floats (a numerical fault) are written as ``null``.
SIGINT (Ctrl-C) and SIGTERM (``timeout``, schedulers) let the current batch finish and be
written, then stop the run with a message saying how to resume; a second signal stops at
once. See docs/reliability.md.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from seaflow.checks import require
from seaflow.faults import is_failure
from seaflow.metrics import summarize
from seaflow.resume import ERRORS, PREDICTIONS, SUMMARY, RunDirectory, read_records  # noqa: F401  (read_records: public here too)


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def _append(path: Path, entries: list[dict[str, Any]], mode: str = "a") -> None:
    """Write ``entries`` as JSON lines, whole, flushed and fsync'ed (a crash leaves at most a torn last line)."""
    lines = "".join(json.dumps(strict_json(entry), ensure_ascii=False, allow_nan=False) + "\n" for entry in entries)
    with open(path, mode, encoding="utf-8") as handle:
        handle.write(lines)
        handle.flush()
        os.fsync(handle.fileno())


def _without_wall_time(record: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in record.items() if k != "wall_time_s"}
    if isinstance(out.get("cost"), dict):
        out["cost"] = {k: v for k, v in out["cost"].items() if k not in ("wall_time_s", "load_average")}
    return out


class TooManyFailedRows(RuntimeError):
    """More prompts failed than ``output.max_failed_rows`` allows; the message names the last error."""


class JsonlPredictionWriter(BasePredictionWriter):
    """Writes each prompt's record as one JSON line; see the module docstring.

    Args:
        output_dir: run directory (created if missing).
        overwrite: start afresh, deleting earlier predictions in ``output_dir``, instead of resuming.
        wall_time: keep each record's ``wall_time_s`` (and its ``cost``'s wall time and load average);
            false makes reruns byte-identical.
        max_failed_rows: stop the run once more of its prompts have failed (a reward's error or
            non-finite value on them; errors.jsonl) than this: a count (an integer >= 0) or a share
            of the prompts the run takes (a number in (0, 1)). Under DDP each rank applies it to its
            own prompts. None: never stop; every failed prompt is listed and a rerun retries it.
    """

    STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, output_dir: str = "runs/seaflow", overwrite: bool = False, wall_time: bool = True,
                 max_failed_rows: int | float | None = None):
        super().__init__(write_interval="batch")
        require(max_failed_rows is None or (isinstance(max_failed_rows, int) and not isinstance(max_failed_rows, bool)
                                            and max_failed_rows >= 0)
                or (isinstance(max_failed_rows, float) and 0 < max_failed_rows < 1),
                "output.max_failed_rows", max_failed_rows, "a count (an integer >= 0), a share in (0, 1) or null")
        self.output_dir = Path(output_dir)
        self.overwrite = overwrite
        self.max_failed_rows = max_failed_rows
        # what the directory holds: shared with the data module (its ``run`` argument, linked by the CLI)
        self.run = RunDirectory(self.output_dir, overwrite)
        self.wall_time = wall_time
        self._rank = 0
        self._world = 1
        self._stop_signal: str | None = None
        self._previous_handlers: dict[int, Any] = {}
        self.written = 0
        self.failed = 0  # prompts that failed this run (error entries written)
        self._limit: float | None = None  # failed prompts this rank may have before it stops (max_failed_rows)
        self.announce = True  # the closing "N records in ..." line (seaflow predict prints its table instead)

    # -- files -------------------------------------------------------------------------

    def shard_path(self, rank: int) -> Path:
        return self.output_dir / (PREDICTIONS if self._world == 1 else f"predictions.rank{rank}.jsonl")

    def errors_shard_path(self, rank: int) -> Path:
        return self.output_dir / (ERRORS if self._world == 1 else f"errors.rank{rank}.jsonl")

    @property
    def errors_path(self) -> Path:
        return self.output_dir / ERRORS

    @property
    def predictions_path(self) -> Path:
        return self.output_dir / PREDICTIONS

    def existing_files(self) -> list[Path]:
        return self.run.record_files()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._rank, self._world = trainer.global_rank, trainer.world_size
        self.run.claim(self._rank)  # no other run writes here until this one ends (the data module claims first)
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            probe = self.output_dir / f".write-test-{self._rank}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise OSError(
                f"output_dir {str(self.output_dir)!r} is not writable ({err.strerror or err}): "
                "choose another output.output_dir"
            ) from None
        if self.overwrite and self._rank == 0:
            for path in self.existing_files() + self.run.error_files() + [self.output_dir / SUMMARY]:
                path.unlink(missing_ok=True)
        trainer.strategy.barrier("seaflow-writer-setup")

    # -- resuming, and stopping on SIGINT / SIGTERM -----------------------------------------

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # resume: only the owner of a file repairs a torn last line; the data module left out what is done
        for path in self.existing_files() + self.run.error_files():
            if path in (self.shard_path(self._rank), self.errors_shard_path(self._rank)):
                read_records(path, repair=True)
        done = len(self.run.done()) if self.run.resumed is None else self.run.resumed
        failed = len(self.run.failed()) if self.run.retried is None else self.run.retried
        if (done or failed) and self._rank == 0:
            again = f"; running the {failed} that failed again" if failed else ""
            print(f"seaflow: resuming: {done} prompts already in {self.output_dir}, skipping them{again}", file=sys.stderr)
        self.failed = 0
        self._limit = self.failure_limit(trainer)
        # installed after Lightning's own handlers, which the SIGTERM handler still calls
        self._stop_signal = None
        if threading.current_thread() is threading.main_thread():
            for signum in self.STOP_SIGNALS:
                self._previous_handlers[signum] = signal.signal(signum, self._on_stop_signal)

    def _on_stop_signal(self, signum, frame) -> None:
        if self._stop_signal is not None:
            raise KeyboardInterrupt  # second signal: stop now
        self._stop_signal = signal.Signals(signum).name
        print(f"\nseaflow: {self._stop_signal} received: finishing the current batch, then stopping "
              "(send it again to stop at once)", file=sys.stderr, flush=True)
        previous = self._previous_handlers.get(signum)
        if signum == signal.SIGTERM and callable(previous):
            previous(signum, frame)  # Lightning's notifier (stops DDP workers)

    def _restore_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous_handlers.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous_handlers = {}

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()
        self.run.release()
        if isinstance(exception, TooManyFailedRows):
            return  # its message says how to go on
        if self._rank == 0 and (isinstance(exception, KeyboardInterrupt) or self.written):
            print(self.resume_hint(exception), file=sys.stderr, flush=True)

    def resume_hint(self, exception: BaseException) -> str:
        config = self.output_dir / "config.yaml"
        command = f"seaflow predict --config {shlex.quote(str(config))}" + (" --output.overwrite false" if self.overwrite else "")
        reason = self._stop_signal or type(exception).__name__
        return (
            f"seaflow: stopped ({reason}) after writing {self.written} records this run to {self.output_dir}; "
            f"every finished record is saved. To resume, rerun the same command, e.g.\n    {command}"
        )

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handlers()
        self.run.release()

    # -- writing ---------------------------------------------------------------------------

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        failures = [entry for entry in prediction if is_failure(entry)]
        records = [record for record in prediction if not is_failure(record)]
        if not self.wall_time:
            records = [_without_wall_time(record) for record in records]
        for path, entries in ((self.shard_path(self._rank), records), (self.errors_shard_path(self._rank), failures)):
            if entries:
                _append(path, entries)
        self.written += len(records)
        self.failed += len(failures)
        if self._stop_signal is not None:
            raise KeyboardInterrupt(self._stop_signal)  # Lightning shuts down and calls on_exception
        if failures and self._limit is not None and self.failed > self._limit:
            raise TooManyFailedRows(self.too_many_failed(failures[-1]))

    def failure_limit(self, trainer: L.Trainer) -> float | None:
        """The failed prompts this rank may have (``max_failed_rows``; a share of this rank's prompts)."""
        if self.max_failed_rows is None or isinstance(self.max_failed_rows, int):
            return self.max_failed_rows
        loaders = trainer.predict_dataloaders
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        prompts = sum(len(loader.dataset) for loader in loaders if loader is not None)
        return self.max_failed_rows * -(-prompts // max(self._world, 1))

    def too_many_failed(self, last: dict[str, Any]) -> str:
        allowed = (f"{self.max_failed_rows}" if isinstance(self.max_failed_rows, int)
                   else f"{self.max_failed_rows:g} of the run's prompts, {self._limit:g}")
        return (
            f"{self.failed} prompts failed in this run, more than output.max_failed_rows allows ({allowed}); the last, "
            f"{last['id']!r}, at {last['stage']}: {last['error']}. Every entry is in {self.errors_path} and every finished "
            "record is saved: fix the cause and rerun the same command (it runs the failed prompts again), "
            "or raise output.max_failed_rows"
        )

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier("seaflow-writer-end")
        if self._rank != 0:
            return
        records = self.merge()
        failures = self.merge_errors({str(r["id"]) for r in records})
        summary = summarize(records)
        summary["failed_rows"] = len(failures)
        if failures:
            stages: dict[str, int] = {}
            for entry in failures:
                stages[entry.get("stage", "?")] = stages.get(entry.get("stage", "?"), 0) + 1
            summary["failed_stages"] = stages
        # prompts the data module left out (on_bad_prompt: skip), with the reason for each
        skipped = list(self.run.skipped)
        if skipped:
            summary["skipped"] = [{"id": pid} for pid in summary.get("skipped", [])] + skipped
        (self.output_dir / SUMMARY).write_text(json.dumps(strict_json(summary), indent=2) + "\n")
        if self.announce:
            print(f"seaflow: {len(records)} records in {self.predictions_path} (summary: {self.output_dir / SUMMARY})")
        if skipped:
            print(f"seaflow: {len(skipped)} prompts skipped (reasons under 'skipped' in {self.output_dir / SUMMARY})")
        if failures:
            print(f"seaflow: {len(failures)} prompts failed and have no record (their errors: {self.errors_path}); "
                  "rerun the same command to run them again", file=sys.stderr)

    def merge_errors(self, recorded: set[str]) -> list[dict[str, Any]]:
        """Fold the error files (rank shards, entries of earlier runs) into errors.jsonl: the latest
        entry of each prompt that has no record, in prompt order; no file when there is none."""
        latest: dict[str, dict[str, Any]] = {}
        paths = self.run.error_files()
        for path in sorted(paths, key=lambda p: p.name != ERRORS):  # earlier runs' entries first
            for entry in read_records(path):
                if str(entry.get("id")) not in recorded:
                    latest.pop(str(entry["id"]), None)
                    latest[str(entry["id"])] = entry
        entries = sorted(latest.values(), key=lambda e: e.get("index") if isinstance(e.get("index"), int) else 0)
        if entries:
            tmp = self.errors_path.with_suffix(".jsonl.tmp")
            _append(tmp, entries, mode="w")
            os.replace(tmp, self.errors_path)
        for path in paths:
            if path != self.errors_path or not entries:
                path.unlink(missing_ok=True)
        return entries

    def merge(self) -> list[dict[str, Any]]:
        """Fold rank shards into predictions.jsonl (idempotent); return all records."""
        records = read_records(self.predictions_path)
        shards = [p for p in self.existing_files() if p.name != PREDICTIONS]
        if not shards:
            return records
        seen = {r["id"] for r in records}
        extra = []
        for shard in shards:
            for record in read_records(shard):
                if record["id"] not in seen:
                    seen.add(record["id"])
                    extra.append(record)
        extra.sort(key=lambda r: r.get("index", 0))
        tmp = self.predictions_path.with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            for record in records + extra:
                handle.write(json.dumps(strict_json(record), ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.predictions_path)
        for shard in shards:
            shard.unlink()
        return records + extra
