"""JSONL prediction writer: one line per prompt, flushed as batches finish, resumable.

Records go to ``<output_dir>/predictions.jsonl`` (with several processes, each rank writes
``predictions.rank<R>.jsonl`` and rank 0 merges them in prompt order at the end). Each line
is written whole, flushed and fsync'ed; a rerun with the same ``output_dir`` drops a torn
last line left by a crash, skips the prompts already written and appends the rest, so a
killed run resumes without losing or duplicating prompts. ``summary.json`` is rewritten
from all records at the end of every run, with the prompts the data module skipped.

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

from seaflow.metrics import summarize
from seaflow.resume import PREDICTIONS, SUMMARY, RunDirectory, read_records  # noqa: F401  (read_records: public here too)


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def _without_wall_time(record: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in record.items() if k != "wall_time_s"}
    if isinstance(out.get("cost"), dict):
        out["cost"] = {k: v for k, v in out["cost"].items() if k not in ("wall_time_s", "load_average")}
    return out


class JsonlPredictionWriter(BasePredictionWriter):
    """Writes each prompt's record as one JSON line; see the module docstring.

    Args:
        output_dir: run directory (created if missing).
        overwrite: start afresh, deleting earlier predictions in ``output_dir``, instead of resuming.
        wall_time: keep each record's ``wall_time_s`` (and its ``cost``'s wall time and load average);
            false makes reruns byte-identical.
    """

    STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, output_dir: str = "runs/seaflow", overwrite: bool = False, wall_time: bool = True):
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.overwrite = overwrite
        # what the directory holds: shared with the data module (its ``run`` argument, linked by the CLI)
        self.run = RunDirectory(self.output_dir, overwrite)
        self.wall_time = wall_time
        self._rank = 0
        self._world = 1
        self._stop_signal: str | None = None
        self._previous_handlers: dict[int, Any] = {}
        self.written = 0
        self.announce = True  # the closing "N records in ..." line (seaflow predict prints its table instead)

    # -- files -------------------------------------------------------------------------

    def shard_path(self, rank: int) -> Path:
        return self.output_dir / (PREDICTIONS if self._world == 1 else f"predictions.rank{rank}.jsonl")

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
            for path in self.existing_files() + [self.output_dir / SUMMARY]:
                path.unlink(missing_ok=True)
        trainer.strategy.barrier("seaflow-writer-setup")

    # -- resuming, and stopping on SIGINT / SIGTERM -----------------------------------------

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # resume: only the owner of a file repairs a torn last line; the data module left out what is done
        for path in self.existing_files():
            if path == self.shard_path(self._rank):
                read_records(path, repair=True)
        done = len(self.run.done()) if self.run.resumed is None else self.run.resumed
        if done and self._rank == 0:
            print(f"seaflow: resuming: {done} prompts already in {self.output_dir}, skipping them", file=sys.stderr)
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
        if not self.wall_time:
            prediction = [_without_wall_time(record) for record in prediction]
        lines = "".join(json.dumps(strict_json(record), ensure_ascii=False, allow_nan=False) + "\n" for record in prediction)
        with open(self.shard_path(self._rank), "a", encoding="utf-8") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())
        self.written += len(prediction)
        if self._stop_signal is not None:
            raise KeyboardInterrupt(self._stop_signal)  # Lightning shuts down and calls on_exception

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier("seaflow-writer-end")
        if self._rank != 0:
            return
        records = self.merge()
        summary = summarize(records)
        # prompts the data module left out (on_bad_prompt: skip), with the reason for each
        skipped = list(self.run.skipped)
        if skipped:
            summary["skipped"] = [{"id": pid} for pid in summary.get("skipped", [])] + skipped
        (self.output_dir / SUMMARY).write_text(json.dumps(strict_json(summary), indent=2) + "\n")
        if self.announce:
            print(f"seaflow: {len(records)} records in {self.predictions_path} (summary: {self.output_dir / SUMMARY})")
        if skipped:
            print(f"seaflow: {len(skipped)} prompts skipped (reasons under 'skipped' in {self.output_dir / SUMMARY})")

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
