"""JSONL prediction writer: one line per prompt, flushed as batches finish, resumable.

Records go to ``<output_dir>/predictions.jsonl`` (with several processes, each rank writes
``predictions.rank<R>.jsonl`` and rank 0 merges them in prompt order at the end). Each line
is written whole, flushed and fsync'ed; a rerun with the same ``output_dir`` drops a torn
last line left by a crash, skips the prompts already written and appends the rest, so a
killed run resumes without losing or duplicating prompts. ``summary.json`` is rewritten
from all records at the end of every run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from seaflow.metrics import summarize

PREDICTIONS = "predictions.jsonl"
SUMMARY = "summary.json"


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


class JsonlPredictionWriter(BasePredictionWriter):
    """Writes each prompt's record as one JSON line; see the module docstring.

    Args:
        output_dir: run directory (created if missing).
        overwrite: start afresh, deleting earlier predictions in ``output_dir``, instead of resuming.
    """

    def __init__(self, output_dir: str = "runs/seaflow", overwrite: bool = False):
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.overwrite = overwrite
        self._rank = 0
        self._world = 1

    # -- files -------------------------------------------------------------------------

    def shard_path(self, rank: int) -> Path:
        return self.output_dir / (PREDICTIONS if self._world == 1 else f"predictions.rank{rank}.jsonl")

    @property
    def predictions_path(self) -> Path:
        return self.output_dir / PREDICTIONS

    def existing_files(self) -> list[Path]:
        return sorted(self.output_dir.glob("predictions*.jsonl"))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._rank, self._world = trainer.global_rank, trainer.world_size
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            probe = self.output_dir / f".write-test-{self._rank}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise OSError(f"output_dir {str(self.output_dir)!r} is not writable: {err}") from None
        if self.overwrite and self._rank == 0:
            for path in self.existing_files() + [self.output_dir / SUMMARY]:
                path.unlink(missing_ok=True)
        trainer.strategy.barrier("seaflow-writer-setup")
        done = set()
        for path in self.existing_files():
            # only the owner of a file repairs it; everyone reads
            owner = path == self.shard_path(self._rank)
            done |= {r["id"] for r in read_records(path, repair=owner)}
        datamodule = getattr(trainer, "datamodule", None)
        if done and datamodule is not None and hasattr(datamodule, "skip"):
            datamodule.skip(done)
        self.resumed = len(done)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in prediction)
        with open(self.shard_path(self._rank), "a", encoding="utf-8") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier("seaflow-writer-end")
        if self._rank != 0:
            return
        records = self.merge()
        summary = summarize(records)
        (self.output_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
        print(f"seaflow: {len(records)} records in {self.predictions_path} (summary: {self.output_dir / SUMMARY})")

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
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.predictions_path)
        for shard in shards:
            shard.unlink()
        return records + extra
