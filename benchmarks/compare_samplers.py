"""Samplers and relaxations compared inside SEA, at (about) equal gradient evaluations, in one run.

    nice -n 10 python benchmarks/compare_samplers.py [--config configs/sea.yaml] [--limit 4] [--evaluations 12]

Runs SEA's ``predict_step`` through the Python API on the first ``--limit`` prompts of the
config (one batch, all prompts x chains at once) once per variant: Langevin, MALA, HMC and
AdaptiveLangevin with the straight-through relaxation, then Langevin with Gumbel-softmax.
Every variant gets about ``--evaluations`` gradient evaluations (forward + backward through
the policy and the reward): MALA spends one on the start point, HMC one per leapfrog step.
Prints one markdown table row per variant: mean (over prompts) final discrete reward of the
selected chain, mean over all chains, reference log-likelihood per token of the selected
response, evaluations, and wall time per prompt; plus the initial samples' numbers.
Without configs/sea.yaml it uses the embedded model with the VADER lexicon reward.
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
from seaflow.models import EMBEDDED_DEFAULT, load_causal_lm  # noqa: E402
from seaflow.relaxations import GumbelSoftmax, StraightThrough  # noqa: E402
from seaflow.samplers import HMC, MALA, AdaptiveLangevin, Langevin  # noqa: E402

FALLBACK = {
    "policy": EMBEDDED_DEFAULT,
    "reward": {"class_path": "seaflow.LexiconReward", "init_args": {"lexicon": "vader"}},
    "sampler": {"class_path": "seaflow.Langevin", "init_args": {"step_size": 1.0, "noise_scale": 0.05}},
    "alpha": 5.0, "reference_weight": 1.0, "chains": 4, "max_new_tokens": 24, "decode": "guided", "decode_top_k": 10,
}


def load_settings(path: Path) -> tuple[dict, str]:
    if path.exists():
        config = yaml.safe_load(path.read_text())
        return config["model"]["init_args"], config["data"]["path"]
    return dict(FALLBACK), "configs/prompts/demo.jsonl"


def instantiate(spec):
    """A ``{class_path, init_args}`` mapping -> the object (jsonargparse, as the CLI does)."""
    from jsonargparse import ArgumentParser

    from seaflow.energies.base import Reward

    parser = ArgumentParser()
    parser.add_argument("--reward", type=Reward)
    return parser.instantiate_classes(parser.parse_object({"reward": spec})).reward


def variants(base: dict, evaluations: int):
    step = float(base.get("step_size", 1.0))
    noise = float(base.get("noise_scale", 0.05))
    leapfrog = 2
    straight = StraightThrough()
    return [
        ("Langevin", Langevin(step, noise), straight, evaluations),
        ("MALA", MALA(step, noise), straight, evaluations - 1),
        # HMC with one leapfrog step is MALA with eta = epsilon^2 / 2: same reach per leapfrog step
        (f"HMC (L={leapfrog})", HMC((2 * step) ** 0.5, leapfrog_steps=leapfrog, noise_scale=noise), straight, (evaluations - 1) // leapfrog),
        ("AdaptiveLangevin (diagonal)", AdaptiveLangevin(0.1, noise, preconditioner="diagonal"), straight, evaluations),
        ("AdaptiveLangevin (scalar)", AdaptiveLangevin(0.1, noise, preconditioner="scalar"), straight, evaluations),
        ("AdaptiveLangevin (target 0.5)", AdaptiveLangevin(step, noise, preconditioner="none", target_accept=0.5), straight, evaluations - 1),
        ("Langevin + GumbelSoftmax", Langevin(step, noise), GumbelSoftmax(temperature=1.0, hard=True), evaluations),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/sea.yaml")
    ap.add_argument("--limit", type=int, default=4)
    ap.add_argument("--evaluations", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", nargs="*", default=[], help="SEA init_args overrides, key=yaml_value (e.g. max_new_tokens=16 decode=argmax)")
    ap.add_argument("--only", nargs="*", default=None, help="run only the variants whose name starts with one of these")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    settings, prompt_path = load_settings(Path(args.config))
    sampler_args = (settings.get("sampler") or {}).get("init_args", {})
    for item in args.set:
        key, value = item.split("=", 1)
        settings[key] = yaml.safe_load(value)
    common = {k: v for k, v in settings.items() if k not in ("reward", "sampler", "relaxation", "steps")}
    reward = instantiate(settings["reward"])
    policy = load_causal_lm(settings.get("policy", EMBEDDED_DEFAULT))

    prompts = read_prompts(prompt_path)[: args.limit]
    rows = []
    for name, sampler, relaxation, steps in variants(sampler_args, args.evaluations):
        if args.only and not any(name.startswith(prefix) for prefix in args.only):
            continue
        method = SEA(**common, reward=reward, sampler=sampler, relaxation=relaxation, steps=steps)
        method.attach(policy)
        data = PromptDataModule(path=prompt_path, batch_size=len(prompts))
        data.prompts = prompts
        data.attach_tokenizer(policy.tokenizer, method.context_length())
        items = data.items(method.max_new_tokens)
        batch = {key: [item[key] for item in items] for key in items[0]}
        started = time.perf_counter()
        records = method.predict_step(batch)
        elapsed = (time.perf_counter() - started) / len(records)
        rows.append((name, records, elapsed))
        print(f"done {name}: {elapsed:.1f} s/prompt", file=sys.stderr, flush=True)

    first = rows[0][1]
    print(f"\n{len(prompts)} prompts x {common.get('chains', 4)} chains, {args.evaluations} gradient evaluations, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, settings from "
          f"{args.config if Path(args.config).exists() else 'the built-in fallback'} {' '.join(args.set)}")
    print("| variant | evaluations | reward (selected) | reward (all chains) | ref logprob/token | s/prompt |")
    print("|---|---|---|---|---|---|")
    print(f"| initial samples (best of chains) | 0 | {statistics.fmean(r['initial_best_reward'] for r in first):+.3f} | "
          f"{statistics.fmean(statistics.fmean(r['chain_initial_rewards']) for r in first):+.3f} | "
          f"{statistics.fmean(r['initial_ref_logprob_per_token'] for r in first):.2f} | - |")
    for name, records, elapsed in rows:
        print(f"| {name} | {records[0]['energy_evaluations']} | {statistics.fmean(r['reward'] for r in records):+.3f} | "
              f"{statistics.fmean(statistics.fmean(r['chain_rewards']) for r in records):+.3f} | "
              f"{statistics.fmean(r['ref_logprob_per_token'] for r in records):.2f} | {elapsed:.1f} |")


if __name__ == "__main__":
    main()
