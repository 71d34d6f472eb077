"""FLOPs per second of methods on the same prompts, measured back to back in one process.

    python benchmarks/flop_rate.py --limit 8 \
        --run bon64 configs/quality/sentiment/best_of_n.yaml model.init_args.n=64 data.batch_size=8 \
        --run mcmc configs/quality/sentiment/suffix_mcmc.yaml model.init_args.steps=32 data.batch_size=8

Each ``--run NAME CONFIG [KEY=VALUE ...]`` loads a config with ``seaflow.load`` (overrides as on
the command line) and aligns the first ``--limit`` prompts of ``--prompts`` (default: the
config's ``data.path``). Per run it prints, from the records' ``cost``: GFLOPs per prompt,
seconds per prompt (the methods' own wall time, metrics excluded), GFLOP/s, the sequential
depth of a batch, the mean reward, and the GFLOP/s ratio to the first run. With ``--profile``
it also splits each run's wall time: the policy's forward calls (their count and mean rows),
the reward and its gradient (``OneHotRewardGradient``), and the rest (sampling, indexing,
Python). The CPU's threads and load average are printed with the table: compare runs of one
invocation only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import seaflow  # noqa: E402
from seaflow import chains, cost  # noqa: E402
from seaflow.data import read_prompts  # noqa: E402


class Timers:
    """Wall time of the policy's forward calls and of the reward gradient, while installed."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self.rows = defaultdict(int)

    def install(self, model: torch.nn.Module):
        started = {}

        def before(module, args, kwargs):
            started["t"] = time.perf_counter()

        def after(module, args, kwargs, output):
            meter = cost.active()
            if meter is None or meter.paused:  # metric-only passes: outside the method's wall time
                return
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.seconds["policy forward"] += time.perf_counter() - started["t"]
            self.calls["policy forward"] += 1
            self.rows["policy forward"] += 0 if ids is None else int(ids.shape[0])

        handles = [model.register_forward_pre_hook(before, with_kwargs=True), model.register_forward_hook(after, with_kwargs=True)]
        original = chains.OneHotRewardGradient.__call__

        def timed_reward(this, *args, **kwargs):
            start = time.perf_counter()
            try:
                return original(this, *args, **kwargs)
            finally:
                self.seconds["reward + gradient"] += time.perf_counter() - start
                self.calls["reward + gradient"] += 1

        chains.OneHotRewardGradient.__call__ = timed_reward

        def remove():
            for handle in handles:
                handle.remove()
            chains.OneHotRewardGradient.__call__ = original

        return remove


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", nargs="+", action="append", required=True, metavar=("NAME CONFIG", "KEY=VALUE"),
                        help="a run: its name, its config and overrides")
    parser.add_argument("--prompts", default=None, help="prompts file (default: the first run's data.path)")
    parser.add_argument("--limit", type=int, default=8, help="the first LIMIT prompts")
    parser.add_argument("--profile", action="store_true", help="split each run's wall time (forward calls, reward gradient, rest)")
    parser.add_argument("--json", default=None, help="also write the table as JSON here")
    parser.add_argument("--records", default=None, help="also write each run's records to DIR/NAME.jsonl")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for spec in args.run:
        if len(spec) < 2:
            parser.error(f"--run needs NAME CONFIG [KEY=VALUE ...], got {spec}")
        name, config, *pairs = spec
        overrides = dict(pair.split("=", 1) for pair in pairs)
        aligner = seaflow.load(config, overrides={k: _value(v) for k, v in overrides.items()}, device="cpu")
        path = args.prompts or aligner.data.path
        prompts = [{"id": p["id"], "prompt": p["prompt"]} for p in read_prompts(path)[: args.limit]]
        timers = Timers()
        remove = timers.install(aligner.method.policy.model) if args.profile else None
        started = time.perf_counter()
        records = aligner.align(prompts)
        total = time.perf_counter() - started
        if remove is not None:
            remove()
        n = len(records)
        if args.records:
            Path(args.records).mkdir(parents=True, exist_ok=True)
            (Path(args.records) / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        flops = sum(r["cost"]["flops"] for r in records) / n / 1e9
        wall = sum(r["cost"]["wall_time_s"] for r in records) / n
        row = {
            "run": name, "prompts": n, "batch_size": aligner.data.batch_size, "gflops_per_prompt": flops,
            "s_per_prompt": wall, "gflop_per_s": flops / wall, "depth": max(r["cost"].get("sequential_depth", 0) for r in records),
            "reward": statistics.mean(r["reward"] for r in records), "align_s": total,
            "load_average": records[-1]["cost"].get("load_average"), "device": records[-1]["cost"].get("device"),
        }
        if args.profile:
            method_s = wall * n
            split = {key: timers.seconds[key] for key in timers.seconds}
            split["rest"] = method_s - sum(split.values())
            row["profile_s"] = split
            row["forward_calls"] = timers.calls["policy forward"]
            row["mean_forward_rows"] = timers.rows["policy forward"] / max(timers.calls["policy forward"], 1)
        rows.append(row)
        del aligner
    base = rows[0]["gflop_per_s"]
    print(f"device: {rows[0]['device']}, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    print(f"{'run':<24}{'prompts':>8}{'batch':>6}{'GFLOP/p':>9}{'s/p':>8}{'GFLOP/s':>9}{'ratio':>7}{'depth':>7}{'reward':>8}{'load':>6}")
    for row in rows:
        print(f"{row['run']:<24}{row['prompts']:>8}{row['batch_size']:>6}{row['gflops_per_prompt']:>9.1f}{row['s_per_prompt']:>8.2f}"
              f"{row['gflop_per_s']:>9.1f}{row['gflop_per_s'] / base:>7.2f}{row['depth']:>7}{row['reward']:>8.3f}"
              f"{row['load_average'] if row['load_average'] is not None else float('nan'):>6.2f}")
        if "profile_s" in row:
            parts = ", ".join(f"{key} {value:.1f} s" for key, value in row["profile_s"].items())
            print(f"    {parts}; {row['forward_calls']} forward calls, {row['mean_forward_rows']:.1f} rows each on average")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


if __name__ == "__main__":
    main()
