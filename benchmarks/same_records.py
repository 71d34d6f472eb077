"""Every shipped method config, shrunk to two prompts and a few steps, run on the embedded model:
record the records once, then check that a later tree writes the same ones.

    python benchmarks/same_records.py list                        # the cases, one per line
    python benchmarks/same_records.py record DIR [--only a,b]     # run the cases, keep DIR/<case>/predictions.jsonl
    python benchmarks/same_records.py compare DIR [--only a,b]    # run them again, compare with DIR's
    python benchmarks/same_records.py diff DIR OTHER [--only a,b] # compare two stored sets, run nothing

A refactoring that should not change any output (generation, the engines, the method bases)
must leave every record equal: the records are compared value by value with keys sorted, the
``cost`` field included (``output.wall_time: false`` leaves out the only field that varies).
Each case is a shipped config with a few keys changed (fewer steps and tokens, two prompts,
the lexicon reward where a config needs a trained reward head that a fresh checkout does not
have); :data:`CASES` lists them. Every case runs ``seaflow predict`` in its own process, so on a
shared machine each can run under a lock: ``for c in $(python benchmarks/same_records.py list);
do cpulock python benchmarks/same_records.py compare DIR --only $c; done``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

# two prompts: an everyday request (long replies, rows end at the limit) and a one-word
# question (short replies, rows end at EOS at different steps); the prefix field gives the two
# rows forced starts of different lengths
PROMPTS = [
    {"id": "same-01", "prompt": "Describe your morning in two sentences.", "start": "Sure, my morning was"},
    {"id": "same-02", "prompt": "Answer with one word: is the sky blue?", "start": "Yes"},
]
LEXICON = {"class_path": "LexiconReward", "init_args": {"lexicon": "vader", "scale": 1.0}}
OWN_PROMPTS = {"data.path": "{prompts}", "data.limit": None, "data.task": "sentiment"}
PER_ROW_STARTS = {**OWN_PROMPTS, "data.response_prefix_field": "start", "data.response_prefix": None, "data.response_prefix_tokens": None}
ADVBENCH = {"data.path": "prompt_set:advbench[400:402]", "model.init_args.reward": LEXICON}


def sampler(name: str, **init_args) -> dict:
    return {"model.init_args.sampler": {"class_path": name, "init_args": init_args}}


# name -> (shipped config, changed keys); every case also gets two prompts and wall_time: false
CASES: dict[str, tuple[str, dict]] = {
    "demo": ("configs/demo.yaml", {"model.init_args.steps": 4, "model.init_args.max_new_tokens": 16, **OWN_PROMPTS}),
    "demo_pool": ("configs/demo.yaml", {"model.init_args.steps": 3, "model.init_args.max_new_tokens": 12,
                                        "model.init_args.init_pool": 6, **OWN_PROMPTS}),
    "demo_starts": ("configs/demo.yaml", {"model.init_args.steps": 3, "model.init_args.max_new_tokens": 12, **PER_ROW_STARTS}),
    "suffix_uniform": ("configs/quality/sentiment/suffix_uniform.yaml", {"model.init_args.steps": 3, "model.init_args.max_new_tokens": 12,
                                                                         **OWN_PROMPTS}),
    "sea": ("configs/sea.yaml", {"model.init_args.steps": 3, "model.init_args.max_new_tokens": 12, **OWN_PROMPTS}),
    "sea_guided": ("configs/sea.yaml", {"model.init_args.steps": 2, "model.init_args.max_new_tokens": 12,
                                        "model.init_args.decode": "guided", **OWN_PROMPTS}),
    "sea_top_p": ("configs/sea.yaml", {"model.init_args.steps": 2, "model.init_args.max_new_tokens": 12,
                                       "model.init_args.temperature": 0.8, "model.init_args.top_p": 0.9, **OWN_PROMPTS}),
    "sea_mala": ("configs/sea.yaml", {"model.init_args.steps": 2, "model.init_args.max_new_tokens": 12, **OWN_PROMPTS,
                                      **sampler("MALA", step_size=0.3, noise_scale=0.05)}),
    "sea_hmc": ("configs/sea.yaml", {"model.init_args.steps": 2, "model.init_args.max_new_tokens": 12, **OWN_PROMPTS,
                                     **sampler("HMC", step_size=0.1, leapfrog_steps=2)}),
    "sea_adaptive": ("configs/sea.yaml", {"model.init_args.steps": 2, "model.init_args.max_new_tokens": 12, **OWN_PROMPTS,
                                          **sampler("AdaptiveLangevin", step_size=0.3, noise_scale=0.05)}),
    "demo_discrete": ("configs/demo_discrete.yaml", {"model.init_args.steps": 3, "model.init_args.max_new_tokens": 12, **OWN_PROMPTS}),
    "multiple_try": ("configs/quality/sentiment/multiple_try.yaml", {"model.init_args.steps": 2, "model.init_args.max_new_tokens": 12,
                                                                     **OWN_PROMPTS}),
    "biased_decoding": ("configs/biased_decoding.yaml", {"model.init_args.steps": 2, "model.init_args.max_new_tokens": 12, **OWN_PROMPTS}),
    "biased_starts": ("configs/biased_decoding.yaml", {"model.init_args.steps": 2, "model.init_args.max_new_tokens": 8, **PER_ROW_STARTS}),
    "sample": ("configs/baselines/sample.yaml", {"model.init_args.max_new_tokens": 16, **OWN_PROMPTS}),
    "sample_greedy": ("configs/baselines/sample.yaml", {"model.init_args.max_new_tokens": 16, "model.init_args.temperature": 0.0,
                                                        **OWN_PROMPTS}),
    "sample_top_p": ("configs/baselines/sample.yaml", {"model.init_args.max_new_tokens": 16, "model.init_args.top_p": 0.8,
                                                       **OWN_PROMPTS}),
    "best_of_n": ("configs/baselines/best_of_n.yaml", {"model.init_args.max_new_tokens": 16, "model.init_args.n": 4,
                                                       "model.init_args.sample_batch": 3, **OWN_PROMPTS}),
    "args": ("configs/baselines/args.yaml", {"model.init_args.max_new_tokens": 10, "model.init_args.top_k": 4, **OWN_PROMPTS}),
    "args_sample": ("configs/baselines/args.yaml", {"model.init_args.max_new_tokens": 10, "model.init_args.top_k": 4,
                                                    "model.init_args.mode": "sample", **OWN_PROMPTS}),
    "cbs": ("configs/baselines/cbs.yaml", {"model.init_args.max_new_tokens": 12, "model.init_args.beams": 2,
                                           "model.init_args.samples_per_beam": 2, "model.init_args.chunk_length": 5, **OWN_PROMPTS}),
    "prefill_sample": ("configs/advbench/prefill/sample.yaml", {"model.init_args.max_new_tokens": 12, **ADVBENCH}),
    "prefill_best_of_n": ("configs/advbench/prefill/best_of_n.yaml", {"model.init_args.max_new_tokens": 12, "model.init_args.n": 4,
                                                                      **ADVBENCH}),
    "prefill_args": ("configs/advbench/prefill/args.yaml", {"model.init_args.max_new_tokens": 8, "model.init_args.top_k": 3, **ADVBENCH}),
    "prefill_cbs": ("configs/advbench/prefill/cbs.yaml", {"model.init_args.max_new_tokens": 12, "model.init_args.chunk_length": 5,
                                                          **ADVBENCH}),
    "prefill_sea": ("configs/advbench/prefill/sea.yaml", {"model.init_args.max_new_tokens": 12, "model.init_args.steps": 2, **ADVBENCH}),
    "prefill_suffix_mcmc": ("configs/advbench/prefill/suffix_mcmc.yaml", {"model.init_args.max_new_tokens": 12, "model.init_args.steps": 3,
                                                                          **ADVBENCH}),
    "starts_sample": ("configs/baselines/sample.yaml", {"model.init_args.max_new_tokens": 10, **PER_ROW_STARTS}),
    "starts_args": ("configs/baselines/args.yaml", {"model.init_args.max_new_tokens": 6, "model.init_args.top_k": 3, **PER_ROW_STARTS}),
    "starts_cbs": ("configs/baselines/cbs.yaml", {"model.init_args.max_new_tokens": 8, "model.init_args.beams": 2,
                                                  "model.init_args.samples_per_beam": 2, "model.init_args.chunk_length": 4, **PER_ROW_STARTS}),
    "demo_moves": ("configs/demo.yaml", {"model.init_args.steps": 4, "model.init_args.max_new_tokens": 12, "model.init_args.token_moves": 0.5,
                                         "model.init_args.returns": "best_target", **OWN_PROMPTS}),
    "demo_steered": ("configs/demo.yaml", {"model.init_args.steps": 3, "model.init_args.max_new_tokens": 12,
                                           "model.init_args.init_from": "proposal_prompt",
                                           "data.proposal_system_prompt": "Reply in a warm, cheerful voice.", **OWN_PROMPTS}),
    "soft_best_of_n": ("configs/baselines/soft_best_of_n.yaml", {"model.init_args.max_new_tokens": 12, "model.init_args.n": 4,
                                                                 **OWN_PROMPTS}),
    "speculative_rejection": ("configs/baselines/speculative_rejection.yaml", {"model.init_args.max_new_tokens": 12, "model.init_args.n": 6,
                                                                               "model.init_args.decision_points": [3, 6], **OWN_PROMPTS}),
    "speculative_shared": ("configs/baselines/speculative_rejection.yaml", {"model.init_args.max_new_tokens": 10, "model.init_args.n": 4,
                                                                            "model.init_args.decision_points": [4],
                                                                            "model.init_args.share_prompt": True, **PER_ROW_STARTS}),
    "particle_filter": ("configs/baselines/particle_filter.yaml", {"model.init_args.max_new_tokens": 12, "model.init_args.particles": 6,
                                                                   "model.init_args.block": 3, **OWN_PROMPTS}),
    "particle_shared": ("configs/baselines/particle_filter.yaml", {"model.init_args.max_new_tokens": 10, "model.init_args.particles": 4,
                                                                   "model.init_args.block": 3, "model.init_args.resampling": "multinomial",
                                                                   "model.init_args.share_prompt": True, **PER_ROW_STARTS}),
    "starts_sea_guided": ("configs/sea.yaml", {"model.init_args.steps": 2, "model.init_args.max_new_tokens": 8,
                                               "model.init_args.decode": "guided", **PER_ROW_STARTS}),
}


def derived_config(name: str, out: Path) -> Path:
    """Write case ``name``'s config (the shipped one with its keys changed) and return its path."""
    source, changes = CASES[name]
    config = yaml.safe_load((ROOT / source).read_text())
    prompts = out / "prompts.jsonl"
    changes = {
        **changes, "output.output_dir": str(out / name), "output.overwrite": True, "output.wall_time": False,
        "trainer.enable_progress_bar": False, "trainer.logger": False,
    }
    if "data.limit" not in changes and not str(changes.get("data.path", "")).startswith("prompt_set:"):
        changes["data.limit"] = 2
    for key, value in changes.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = str(prompts) if value == "{prompts}" else value
    path = out / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run(name: str, out: Path) -> list[dict]:
    """Run case ``name`` into ``out/<name>`` and return its records."""
    config = derived_config(name, out)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", "from seaflow.cli import main; main()", "predict", "--config", str(config)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"case {name} failed ({' '.join(command)}):\n{done.stderr[-4000:]}")
    return load(out / name)


def load(run_dir: Path) -> list[dict]:
    lines = (run_dir / "predictions.jsonl").read_text().split("\n")  # at "\n" only: a reply may hold U+2028
    return sorted((json.loads(line) for line in lines if line.strip()), key=lambda r: r["id"])


def differences(expected, actual, path: str = "") -> list[str]:
    """Where two JSON values differ (a float pair also gives its difference)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = []
        for key in sorted(set(expected) | set(actual)):
            if key not in expected or key not in actual:
                out.append(f"{path}.{key}: only in {'new' if key in actual else 'stored'}")
            else:
                out += differences(expected[key], actual[key], f"{path}.{key}")
        return out
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{path}: {len(expected)} items stored, {len(actual)} now"]
        return [line for i, (e, a) in enumerate(zip(expected, actual)) for line in differences(e, a, f"{path}[{i}]")]
    if expected == actual or (isinstance(expected, float) and isinstance(actual, float) and math.isnan(expected) and math.isnan(actual)):
        return []
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return [f"{path}: {expected!r} stored, {actual!r} now (difference {actual - expected:.3g})"]
    return [f"{path}: {expected!r} stored, {actual!r} now"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("list", "record", "compare", "diff"))
    parser.add_argument("dir", nargs="?", type=Path, help="where the stored records are (record writes them there)")
    parser.add_argument("other", nargs="?", type=Path, help="diff: the other stored set (e.g. DIR/rerun after a compare)")
    parser.add_argument("--only", default=None, help="comma-separated case names (default: all)")
    args = parser.parse_args()
    names = list(CASES) if args.only is None else args.only.split(",")
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; the cases: {', '.join(CASES)}")
    if args.action == "list":
        print("\n".join(names))
        return
    if args.dir is None:
        raise SystemExit(f"{args.action} needs DIR, the folder of the stored records")
    stored = args.dir.resolve()
    if args.action == "record":
        for name in names:
            records = run(name, stored)
            print(f"{name}: {len(records)} records stored in {stored / name}")
        return
    if args.action == "diff" and args.other is None:
        raise SystemExit("diff needs DIR and OTHER, two folders of stored records")
    failed = []
    for name in names:
        if args.action == "diff" and not ((stored / name).is_dir() and (args.other / name).is_dir()):
            continue
        expected = load(stored / name)
        actual = load(args.other.resolve() / name) if args.action == "diff" else run(name, stored / "rerun")
        found = differences([json.loads(json.dumps(r, sort_keys=True)) for r in expected],
                            [json.loads(json.dumps(r, sort_keys=True)) for r in actual])
        print(f"{name}: {'same records' if not found else f'{len(found)} differences'}")
        for line in found[:20]:
            print(f"  {line}")
        failed += [name] if found else []
    if failed:
        raise SystemExit(f"records differ: {', '.join(failed)}")


if __name__ == "__main__":
    main()
