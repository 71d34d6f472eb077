"""Which reply a chain method should return: the return rules of GuidedSuffixMCMC side by side.

    python benchmarks/return_rules.py runs/quality/keywords_tuning_asked/suffix_tokens/steps=16 [more cells] [--no-gemma]

A GuidedSuffixMCMC run with ``returns: best_target`` or ``final`` records, per prompt, the
reply each rule picks (``alternatives``: ``best_reward``, the highest-reward state any chain
visited; ``likeliest_best``, the highest reward, ties to the likelier state under the
policy; ``best_target``, the highest ``log pi_ref(y|x) + alpha r``; ``final``, the chains'
final states, the one of highest reward). One run gives all of them on the same chains: this
prints, per cell and rule, the optimised reward, the task's judge (read from the grid's task
of the cell's directory), keyword repeats and distinct-2 within the reply, and the NLL per
token under the policy and under Gemma-3-270m (another family), means over prompts, and the
paired difference of each rule to ``best_reward`` on the judge and on Gemma's NLL.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from quality import NllCache, judge_value, load_grid, sign_flip_p  # noqa: E402

from seaflow import judges  # noqa: E402
from seaflow.metrics import distinct_n  # noqa: E402
from seaflow.writer import read_records  # noqa: E402

RULES = ("best_reward", "likeliest_best", "best_target", "final")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cells", nargs="+", help="cell directories: <output_dir>/<task>/<method>/<budget>")
    parser.add_argument("--grid", default="configs/quality/grid.yaml")
    parser.add_argument("--no-gemma", action="store_true")
    args = parser.parse_args(argv)
    grid = load_grid(args.grid)
    cache = NllCache(Path(grid.get("output_dir", "runs/quality")) / "nll_cache.json", gemma=not args.no_gemma)
    for cell in map(Path, args.cells):
        task = cell.parent.parent.name
        kind = grid["tasks"][task]["judge"]
        records = [r for r in read_records(cell / "predictions.jsonl") if r.get("alternatives")]
        if not records:
            print(f"{cell}: no record with alternatives (run with returns: likeliest_best, best_target or final)")
            continue
        rules = [rule for rule in RULES if all(rule in r["alternatives"] for r in records)]  # older runs: fewer rules
        cache.fill([(r["prompt"], r["alternatives"][rule]["response"]) for r in records for rule in rules])
        print(f"\n{cell} ({len(records)} prompts, judge {kind})")
        print("| rule | reward | judge | success | keyword repeats | distinct-2 | NLL policy | NLL Gemma | judge - best_reward [p] | Gemma NLL - best_reward |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        rows = {}
        for rule in rules:
            replies = [r["alternatives"][rule]["response"] for r in records]
            judged = [judge_value(kind, text, r) for text, r in zip(replies, records)]
            repeats = [judges.keyword_repeats(text, r["keywords"]) for text, r in zip(replies, records)] if kind == "keywords" else []
            rows[rule] = {
                "reward": [r["alternatives"][rule]["reward"] for r in records],
                "judge": [j for j, _ in judged], "success": [s for _, s in judged],
                "repeats": [v for v in repeats if v is not None],
                "distinct": [v for v in (distinct_n([t], 2) for t in replies) if v is not None],
                "policy": [cache.get("policy", r["prompt"], t) for t, r in zip(replies, records)],
                "gemma": [cache.get("gemma", r["prompt"], t) for t, r in zip(replies, records)],
            }
        base = rows["best_reward"]
        for rule in rules:
            row = rows[rule]

            def mean(values):
                values = [v for v in values if v is not None]
                return f"{statistics.fmean(values):.3f}" if values else "-"

            diffs = [a - b for a, b in zip(row["judge"], base["judge"])]
            gemma = [a - b for a, b in zip(row["gemma"], base["gemma"]) if a is not None and b is not None]
            versus = "-" if rule == "best_reward" else f"{statistics.fmean(diffs):+.3f} [p {sign_flip_p(diffs):.2f}]"
            gemma_versus = "-" if rule == "best_reward" or not gemma else f"{statistics.fmean(gemma):+.3f}"
            print(f"| {rule} | {mean(row['reward'])} | {mean(row['judge'])} | {mean(row['success'])} | {mean(row['repeats'])} | "
                  f"{mean(row['distinct'])} | {mean(row['policy'])} | {mean(row['gemma'])} | {versus} | {gemma_versus} |")


if __name__ == "__main__":
    main()
