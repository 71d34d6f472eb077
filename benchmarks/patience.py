"""Settled chains leave the batch (SEA's ``patience``): FLOPs, wall time and returned reward, paired per prompt.

    python benchmarks/patience.py --config configs/sea.yaml --prompts configs/prompts/demo.jsonl --patience none 12
    python benchmarks/patience.py --config configs/sea.yaml --prompts data/sentiment_prompts.jsonl --patience none --replay 3 8 12 15

Runs SEA's ``predict_step`` through the Python API on ``--limit`` prompts (from ``--offset``) of
``--prompts`` (default: the config's ``data.path``), in batches of the config's
``data.batch_size``, once per ``--patience`` value (``none`` = off, always run first), everything
else as the config says. Per value: the mean returned reward, its paired difference to
patience off with a bootstrap 95% interval over prompts, on how many prompts the returned
response is the same token sequence, the FLOPs per prompt from the records' ``cost`` (the
hooks of seaflow/cost.py) and the wall time per prompt, both as ratios to off.

``--replay k ...`` needs no further runs: the run without patience records every energy
evaluation of every chain (its step, energy, reward term) and every chain's trace, and the
patience rule is replayed on that record for each ``k``: a chain that leaves after step t keeps
the best of its evaluations up to step t, the others keep all of theirs. This is exact because
each chain has its own random stream, so a chain that stays moves bit for bit as without
patience (checked on the embedded model: every evaluation of every remaining chain equal, and
the replayed returned rewards equal to real runs with patience 3 and 8). Its cost column is the
evaluated chain rows relative to off (the refinement only, not sampling or scoring).
``--rule any`` replays the rule without the leader exception (every settled chain leaves).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import seaflow.methods.sea as sea_module  # noqa: E402
from _common import machine  # noqa: E402
from seaflow.data import PromptDataModule, read_prompts  # noqa: E402
from seaflow.methods.base import AlignmentMethod  # noqa: E402
from seaflow.models import load_causal_lm  # noqa: E402
from seaflow.refine import EnergyFunction  # noqa: E402
from seaflow.report import bootstrap  # noqa: E402


def build(config: dict, settings: dict, policy):
    """The config's method (jsonargparse, as the CLI) with ``settings`` as its init_args, attached to ``policy``."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_subclass_arguments(AlignmentMethod, "model")
    model = {"class_path": config["model"]["class_path"], "init_args": settings}
    method = parser.instantiate(parser.parse_object({"model": model})).model
    method.attach(policy)
    return method


def batches(method, policy, path: str, prompts: list[dict], batch_size: int):
    for start in range(0, len(prompts), batch_size):
        data = PromptDataModule(path=path, batch_size=batch_size, chat_template=True)
        data.prompts = prompts[start : start + batch_size]
        data.attach_tokenizer(policy.tokenizer, method.context_length())
        items = data.items(method.max_new_tokens)
        yield {key: [item[key] for item in items] for key in items[0]}


class Recorder:
    """Every evaluation ``(batch, row) -> [(step, energy, reward term)]`` and every batch's trace, of one run."""

    def __init__(self):
        self.evaluations: dict[tuple[int, int], list[tuple[int, float, float, tuple[int, ...]]]] = defaultdict(list)
        self.traces: dict[int, dict[str, torch.Tensor]] = {}
        self.batch, self.step = 0, 0

    def __enter__(self):
        recorder, track, refine = self, EnergyFunction._track_tokens, sea_module.refine
        self._saved = track, refine

        def tracked(energy_fn, energy, tokens, reward=None):
            rows = energy_fn.rows.tolist() if energy_fn.rows is not None else range(energy.shape[0])
            values = reward.tolist() if reward is not None else [0.0] * len(energy)
            for i, row in enumerate(rows):
                recorder.evaluations[(recorder.batch, row)].append(
                    (recorder.step, float(energy[i]), float(values[i]), tuple(tokens[i].tolist())))
            return track(energy_fn, energy, tokens, reward)

        def refined(y, energy_fn, sampler, num_steps, *args, **kwargs):
            step = sampler.step

            def counted(x, fn, state, generator):
                recorder.step = state.iteration
                return step(x, fn, state, generator)

            sampler.step = counted
            try:
                out, trace = refine(y, energy_fn, sampler, num_steps, *args, **kwargs)
            finally:
                del sampler.step
            recorder.step = num_steps  # the final iterate's tracking
            recorder.traces[recorder.batch] = trace.stacked()
            return out, trace

        EnergyFunction._track_tokens, sea_module.refine = tracked, refined
        return self

    def __exit__(self, *exc):
        EnergyFunction._track_tokens, sea_module.refine = self._saved

    def replay(self, patience: int, chains: int, leader: bool = True) -> tuple[list[tuple[float, int, int]], float]:
        """Per prompt ``(returned reward, chain, tokens)`` with ``patience``, and the evaluated rows relative to off."""
        returned, cost, cost_off = [], 0, 0
        for batch, trace in sorted(self.traces.items()):
            energy, accept = trace["energy"], trace.get("accept")
            steps, rows = energy.shape
            evaluations = [self.evaluations[(batch, row)] for row in range(rows)]

            def best(row, until):  # index of the lowest energy among the evaluations of steps <= until (None: all)
                return min((e, i) for i, (s, e, _, _) in enumerate(evaluations[row]) if until is None or s <= until)[1]

            lowest, stale, rejected, left = [float("inf")] * rows, [0] * rows, [0] * rows, [None] * rows
            for t in range(steps):
                leaving = []
                for row in range(rows):
                    if left[row] is not None:
                        continue
                    e = float(energy[t, row])
                    lowest[row], stale[row] = (e, 0) if e < lowest[row] else (lowest[row], stale[row] + 1)
                    if accept is not None:
                        rejected[row] = 0 if float(accept[t, row]) > 0 else rejected[row] + 1
                    if (stale[row] >= patience or rejected[row] >= patience) and t + 1 < steps:
                        leaving.append(row)
                if leader and leaving:
                    def score(row):
                        return evaluations[row][best(row, t if left[row] is None else left[row])][2]
                    leads = {max(range(g, g + chains), key=lambda r: (score(r), -r)) for g in range(0, rows, chains)}
                    leaving = [row for row in leaving if row not in leads]
                for row in leaving:
                    left[row] = t
            for row in range(rows):
                every = sum(1 for s, _, _, _ in evaluations[row] if s < steps)
                cost_off += every
                cost += every if left[row] is None else sum(1 for s, _, _, _ in evaluations[row] if s <= left[row])
            for g in range(0, rows, chains):
                picks = [(evaluations[r][best(r, left[r])][2], -r, r, best(r, left[r])) for r in range(g, g + chains)]
                reward, _, row, index = max(picks)
                returned.append((reward, row - g, evaluations[row][index][3]))
        return returned, cost / cost_off


def paired(values: list[float], base: list[float]) -> str:
    mean, low, high = bootstrap([a - b for a, b in zip(values, base)])
    return f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/sea.yaml")
    ap.add_argument("--prompts", default=None, help="JSONL prompts (default: the config's data.path)")
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=None, help="prompts per batch (default: the config's data.batch_size)")
    ap.add_argument("--patience", nargs="+", default=["none", "12"], help="values run for real; none = off")
    ap.add_argument("--replay", nargs="*", type=int, default=[], help="values replayed on the run without patience")
    ap.add_argument("--rule", nargs="+", choices=["leader", "any"], default=["leader"],
                    help="replay: the leader stays (SEA's rule) or every settled chain leaves")
    ap.add_argument("--save", default=None, help="write the run without patience's record here (torch.save)")
    ap.add_argument("--load", default=None, help="replay a record written by --save instead of running")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", nargs="*", default=[], help="SEA init_args overrides, key=yaml_value (e.g. steps=10)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    config = yaml.safe_load(Path(args.config).read_text())
    settings = dict(config["model"]["init_args"])
    for item in args.set:
        key, value = item.split("=", 1)
        settings[key] = yaml.safe_load(value)
    path = args.prompts or config["data"]["path"]
    prompts = read_prompts(path)[args.offset : args.offset + args.limit]
    batch_size = args.batch_size or config["data"].get("batch_size", 4)
    print(f"# patience on {machine('cpu')}; {args.config}, {path} prompts {args.offset}..{args.offset + len(prompts) - 1}, "
          f"batches of {batch_size} {' '.join(args.set)}\n")
    print("| patience | reward (returned) | difference to off [95% CI] | same response as off | TFLOP/prompt | x off "
          "| s/prompt | x off |")
    print("|---|---|---|---|---|---|---|---|")
    chains = settings.get("chains", 4)
    if args.load:
        saved = torch.load(args.load, weights_only=False)
        recorder, base = Recorder(), saved["base"]
        recorder.evaluations.update(saved["evaluations"])
        recorder.traces = saved["traces"]
        replay(recorder, base, args.replay, args.rule, chains)
        return
    policy = load_causal_lm(settings["policy"])
    values = ["none"] + [v for v in args.patience if v != "none"]
    base, recorder = None, Recorder()
    for value in values:
        method = build(config, {**settings, "patience": None if value == "none" else int(value)}, policy)
        records, seconds = [], 0.0
        with recorder if value == "none" else contextlib.nullcontext():
            for index, batch in enumerate(batches(method, policy, path, prompts, batch_size)):
                recorder.batch = index
                started = time.perf_counter()
                records += method.predict_step(batch)
                seconds += time.perf_counter() - started
        rewards = [r["reward"] for r in records]
        flops = statistics.fmean(r["cost"]["flops"] for r in records)
        seconds /= len(records)
        row = dict(records=records, rewards=rewards, flops=flops, seconds=seconds)
        base = base or row
        if value == "none" and args.save:
            torch.save({"evaluations": dict(recorder.evaluations), "traces": recorder.traces,
                        "base": {"records": records, "rewards": rewards}}, args.save)
        same = sum(a["response_token_ids"] == b["response_token_ids"] for a, b in zip(records, base["records"]))
        print(f"| {value} | {statistics.fmean(rewards):+.4f} | {paired(rewards, base['rewards'])} | {same}/{len(records)} "
              f"| {flops / 1e12:.3f} | {flops / base['flops']:.2f} | {seconds:.1f} | {seconds / base['seconds']:.2f} |", flush=True)
    replay(recorder, base, args.replay, args.rule, chains)


def replay(recorder: Recorder, base: dict, values: list[int], rules: list[str], chains: int) -> None:
    """Table rows for the patience ``values`` replayed on the record of the run without patience."""
    if not values:
        return
    plain, _ = recorder.replay(10**9, chains)
    for rule in rules:
        for k in values:
            returned, cost = recorder.replay(k, chains, leader=rule == "leader")
            rewards = [r for r, _, _ in returned]
            same = sum(a[1:] == b[1:] for a, b in zip(returned, plain))
            print(f"| {k} (replayed, {rule}) | {statistics.fmean(rewards):+.4f} | {paired(rewards, base['rewards'])} "
                  f"| {same}/{len(rewards)} | - | {cost:.2f} (evaluated rows) | - | - |", flush=True)
    # the replay with no chain leaving must reproduce the real run without patience
    mismatch = [r["id"] for r, (reward, _, _) in zip(base["records"], plain) if abs(reward - r["reward"]) > 1e-6]
    print(f"\nreplay check (no chain leaves = the real run): {'ok' if not mismatch else 'MISMATCH ' + str(mismatch)}")


if __name__ == "__main__":
    main()
