"""Read an offline wandb run back from its directory (tests only).

An offline run keeps everything in ``run-<id>.wandb``: a log of protobuf ``Record`` messages
in LevelDB's log format (32 KiB blocks, each piece with a 7-byte header: CRC32, length,
type FULL / FIRST / MIDDLE / LAST) after a 7-byte file header. wandb 0.31 ships no Python
reader of it, so this is a small one for checking what a run wrote.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def raw_records(path: Path):
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a wandb run file")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if length == 0 and kind == 0:
            pos += left
            continue
        piece = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            yield piece
        elif kind == FIRST:
            pending = piece
        elif kind == MIDDLE:
            pending += piece
        elif kind == LAST:
            yield pending + piece
            pending = b""


def _items(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def read_run(directory: Path) -> dict:
    """``{"config", "summary", "history", "files"}`` of the offline run in ``directory``
    (an ``offline-run-*`` folder); summary is the last value of each key."""
    from wandb.proto import wandb_internal_pb2

    (path,) = Path(directory).glob("run-*.wandb")
    out = {"config": {}, "summary": {}, "history": [], "directory": Path(directory)}
    for data in raw_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["config"].update(_items(record.run.config.update))
        elif kind == "config":
            out["config"].update(_items(record.config.update))
        elif kind == "summary":
            out["summary"].update(_items(record.summary.update))
        elif kind == "history":
            out["history"].append(_items(record.history.item))
    return out


def offline_runs(root: Path) -> list[Path]:
    """The offline run folders under ``root``, once wandb has written them.

    wandb-core keeps a run's ``.wandb`` log in memory (whole 32 KiB blocks aside) until the run's
    stream closes; ``run.finish()`` returns when the run's exit is acknowledged and only asks the
    service to close the stream, so a file read right after it may hold nothing but its header.
    Tearing the service down waits for it to close, and so write, every stream. Call this once
    this process's runs are finished (a run still open cannot finish after the teardown).
    """
    import wandb

    wandb.teardown()
    return sorted(Path(root).glob("**/offline-run-*"))
