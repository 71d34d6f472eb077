"""Settled chains leave the batch (SEA's ``patience``): FLOPs, wall time and returned reward, in one run.

    nice -n 10 python benchmarks/patience.py --config configs/sea.yaml --limit 4 --patience none 3 5
    python benchmarks/patience.py --config configs/demo_discrete.yaml configs/quality/sentiment/multiple_try.yaml --patience none 2

Runs SEA's ``predict_step`` through the Python API on the first ``--limit`` prompts of each
config (one batch: all prompts x chains at once), once per ``--patience`` value (``none`` is
off), everything else as the config says. Per variant: the mean returned (selected) reward
and reference log-likelihood per token, the FLOPs per prompt from the records' ``cost`` (the
hooks of seaflow/cost.py), gradient evaluations per prompt, wall time per prompt, both as
ratios to patience off, and on how many prompts the returned response equals patience off's.
The chains' per-chain random streams make every chain that never settles move exactly as
without patience, so differences come only from the settled chains.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from seaflow import SEA  # noqa: E402
from seaflow.data import PromptDataModule, read_prompts  # noqa: E402
from seaflow.models import load_causal_lm  # noqa: E402


def instantiate(specs: dict) -> dict:
    """``{name: {class_path, init_args}}`` for reward / sampler / relaxation -> objects (jsonargparse, as the CLI)."""
    from jsonargparse import ArgumentParser

    from seaflow.energies.base import Reward
    from seaflow.relaxations.base import Relaxation
    from seaflow.samplers.base import Sampler

    parser = ArgumentParser()
    types = {"reward": Reward, "sampler": Sampler, "relaxation": Relaxation}
    for name in specs:
        parser.add_argument(f"--{name}", type=types[name])
    return vars(parser.instantiate_classes(parser.parse_object(specs)))


def batch_of(method, policy, prompt_path, limit):
    prompts = read_prompts(prompt_path)[:limit]
    data = PromptDataModule(path=prompt_path, batch_size=len(prompts), chat_template=True)
    data.prompts = prompts
    data.attach_tokenizer(policy.tokenizer, method.context_length())
    items = data.items(method.max_new_tokens)
    return {key: [item[key] for item in items] for key in items[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", nargs="+", default=["configs/sea.yaml"])
    ap.add_argument("--limit", type=int, default=4)
    ap.add_argument("--patience", nargs="+", default=["none", "3"], help="patience values; none = off")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", nargs="*", default=[], help="SEA init_args overrides, key=yaml_value (e.g. steps=10)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from _common import machine  # noqa: E402  (benchmarks/ on the path below)

    print(f"# patience on {machine('cpu')}, first {args.limit} prompts, one batch; {' '.join(args.set)}\n")
    print("| config | patience | reward (selected) | ref logprob/token | TFLOP/prompt | x off | s/prompt | x off | same response as off |")
    print("|---|---|---|---|---|---|---|---|---|")
    policy = None
    for config_path in args.config:
        config = yaml.safe_load(Path(config_path).read_text())
        settings = dict(config["model"]["init_args"])
        for item in args.set:
            key, value = item.split("=", 1)
            settings[key] = yaml.safe_load(value)
        objects = instantiate({k: settings.pop(k) for k in ("reward", "sampler", "relaxation") if settings.get(k)})
        policy = policy or load_causal_lm(settings["policy"])
        baseline = None
        for value in args.patience:
            patience = None if value == "none" else int(value)
            method = SEA(**settings, **objects, patience=patience)
            method.attach(policy)
            batch = batch_of(method, policy, config["data"]["path"], args.limit)
            started = time.perf_counter()
            records = method.predict_step(batch)
            seconds = (time.perf_counter() - started) / len(records)
            flops = statistics.fmean(r["cost"]["flops"] for r in records)
            row = dict(records=records, seconds=seconds, flops=flops)
            baseline = baseline or row
            same = sum(a["response_token_ids"] == b["response_token_ids"] for a, b in zip(records, baseline["records"]))
            print(f"| {config_path} | {value} | {statistics.fmean(r['reward'] for r in records):+.4f} "
                  f"| {statistics.fmean(r['ref_logprob_per_token'] for r in records):.2f} | {flops / 1e12:.3f} "
                  f"| {flops / baseline['flops']:.2f} | {seconds:.1f} | {seconds / baseline['seconds']:.2f} "
                  f"| {same}/{len(records)} |", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
