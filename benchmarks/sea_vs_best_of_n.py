"""SEA against Best-of-N at about equal wall time, on one machine, in one run.

    python benchmarks/sea_vs_best_of_n.py --config configs/sea.yaml [--prompts FILE] [--limit 8] [--set steps=20 ...]

Runs the config's SEA on its prompts (all prompts of a batch at once, as ``seaflow predict``
does), then Best-of-N with the same policy, reward and seeds for N = chains, 2*chains, ...
up to past SEA's wall time, and prints per method: mean discrete reward, mean reference
log-likelihood per token (fluency), win rate against the plain sample, and the median wall
time per prompt. The row "BoN @ SEA time" is the largest N whose time does not exceed SEA's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import yaml
from jsonargparse import ArgumentParser

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from seaflow.data import read_prompts  # noqa: E402
from seaflow.methods import BestOfN  # noqa: E402
from seaflow.methods.base import AlignmentMethod  # noqa: E402
from seaflow.models import load_causal_lm  # noqa: E402


def build_method(config: dict, overrides: list[str]) -> AlignmentMethod:
    for item in overrides:
        key, value = item.split("=", 1)
        config["model"]["init_args"][key] = yaml.safe_load(value)
    parser = ArgumentParser()
    parser.add_subclass_arguments(AlignmentMethod, "model")
    cfg = parser.parse_object({"model": config["model"]})
    return parser.instantiate(cfg).model


def batches(method, prompts, batch_size, data_cfg):
    from seaflow.data import PromptDataModule

    dm = PromptDataModule(path=data_cfg["path"], batch_size=batch_size, chat_template=data_cfg.get("chat_template", True))
    dm.prompts = prompts
    dm.attach_tokenizer(method.policy.tokenizer, method.context_length())
    items = dm.items(method.max_new_tokens)
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        yield {key: [item[key] for item in chunk] for key in chunk[0]}


def best_of_n(method: AlignmentMethod, batch: dict, n: int) -> list[dict]:
    """Best-of-N (seaflow.methods.BestOfN) with the method's policy, reward and seeds."""
    baseline = BestOfN(policy=method.policy_name, reward=method.reward, n=n, keep_candidates=False,
                       max_new_tokens=method.max_new_tokens, temperature=method.temperature,
                       top_p=method.top_p, seed=method.seed)
    baseline.attach(method.policy)
    return [{"reward": r["reward"], "ref": r["ref_logprob_per_token"], "first": r["initial_reward"],
             "time": r["wall_time_s"], "text": r["response"]} for r in baseline.predict_step(batch)]


def row(name, records):
    rewards = [r["reward"] for r in records]
    wins = sum(r["reward"] > r["first"] for r in records) / len(records)
    return (f"| {name} | {statistics.fmean(rewards):+.3f} | {statistics.fmean(r['ref'] for r in records):.2f} | "
            f"{wins:.2f} | {statistics.median(r['time'] for r in records):.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/sea.yaml")
    ap.add_argument("--prompts", default=None, help="prompt file instead of the config's data.path")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--set", nargs="*", default=[], help="SEA init_args overrides, key=yaml_value")
    ap.add_argument("--max-n", type=int, default=64)
    ap.add_argument("--show", action="store_true", help="print SEA's and BoN's responses")
    args = ap.parse_args()
    torch.set_num_threads(2)
    config = yaml.safe_load(Path(args.config).read_text())
    method = build_method(config, args.set)
    method.attach(load_causal_lm(method.policy_name, dtype=method.dtype_name))
    data_cfg = dict(config["data"])
    if args.prompts:
        data_cfg["path"] = args.prompts
    prompts = read_prompts(data_cfg["path"])[: args.limit or data_cfg.get("limit")]
    batch_size = args.batch_size or data_cfg.get("batch_size", 4)

    sea_records = []
    for batch in batches(method, prompts, batch_size, data_cfg):
        print(f"SEA: {len(sea_records)}/{len(prompts)} prompts done", file=sys.stderr, flush=True)
        for record in method.predict_step(batch):
            sea_records.append({"reward": record["reward"], "ref": record["ref_logprob_per_token"],
                                "first": record["initial_reward"], "time": record["wall_time_s"],
                                "init_ref": record["initial_ref_logprob_per_token"], "text": record["response"],
                                "initial": record["initial_response"], "trace": record["trace_mean_reward"]})
    sea_time = statistics.median(r["time"] for r in sea_records)
    sample_rows = [{"reward": r["first"], "ref": r["init_ref"], "first": r["first"], "time": 0.0} for r in sea_records]

    print(f"\n{len(prompts)} prompts, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"config {args.config} {' '.join(args.set)}")
    print("| method | mean reward | ref logprob/token | win vs sample | median s/prompt |")
    print("|---|---|---|---|---|")
    print(row("Sample (SEA's chain 0 init)", sample_rows))
    print(row(f"SEA ({method.chains} chains x {method.steps} steps)", sea_records))
    n, at_sea_time = getattr(method, "chains", 4), None
    while n <= args.max_n:
        print(f"BoN-{n}: running", file=sys.stderr, flush=True)
        bon = [r for batch in batches(method, prompts, batch_size, data_cfg) for r in best_of_n(method, batch, n)]
        print(row(f"BoN-{n}", bon))
        if statistics.median(r["time"] for r in bon) <= sea_time:
            at_sea_time = (n, bon)
        else:
            break
        n *= 2
    if at_sea_time:
        print(row(f"BoN @ SEA time (N={at_sea_time[0]})", at_sea_time[1]))
    traces = [r["trace"] for r in sea_records if r["trace"]]
    if traces:
        mean_trace = [statistics.fmean(t[i] for t in traces) for i in range(len(traces[0]))]
        print("mean relaxed reward per iteration (all chains):", " ".join(f"{v:+.3f}" for v in mean_trace))
    if args.show:
        for r in sea_records:
            print(json.dumps({"initial": r["initial"], "sea": r["text"], "reward": round(r["reward"], 3)}, ensure_ascii=False))


if __name__ == "__main__":
    main()
