"""Methods following a surrogate against Best-of-N with the true text reward, at equal FLOPs.

    python benchmarks/distill_compare.py --bon runs/quality/sentiment/best_of_n/run \
        --runs runs/distill/textblob/sea/steps=5 runs/distill/textblob/suffix_mcmc/steps=8 ...

Best-of-N's curve is read from a Best-of-64 run's ``candidate_responses`` re-selected with the
true reward (TextBlob polarity by default): candidate ``c`` is the same seeded draw whatever
reward the run selected with, and a Python reward costs no FLOPs, so Best-of-N's FLOPs are the
run's times N/64. For each method run: its mean true reward and the paired difference
with Best-of-N at the smallest N whose FLOPs reach the method's, prompt by prompt (bootstrap
95% interval, wins/ties/losses). Only prompts present in every run count.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seaflow.energies.text import resolve_callable  # noqa: E402
from seaflow.report import bootstrap  # noqa: E402
from seaflow.writer import read_records  # noqa: E402

CURVE = (1, 4, 8, 16, 32, 64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bon", required=True, help="a Best-of-64 run directory with candidate_responses")
    ap.add_argument("--runs", nargs="+", required=True, help="method run directories")
    ap.add_argument("--reward", default="seaflow.judges.sentiment_polarity", help="the true reward, str -> float")
    args = ap.parse_args()
    reward = resolve_callable(args.reward)
    bon = {r["id"]: r for r in read_records(Path(args.bon) / "predictions.jsonl")}
    runs = {d: {r["id"]: r for r in read_records(Path(d) / "predictions.jsonl")} for d in args.runs}
    runs = {d: recs for d, recs in runs.items() if recs}  # a run not started yet is left out
    ids = [i for i in bon if all(i in recs for recs in runs.values())]
    n = len(bon[ids[0]]["candidate_responses"])
    scores = {i: [reward(text) for text in bon[i]["candidate_responses"]] for i in ids}
    flops = {i: bon[i]["cost"]["flops"] / n for i in ids}  # per candidate
    print(f"prompts: {len(ids)}; Best-of-N from {args.bon} re-selected with {args.reward}")
    print("| method | mean true reward [95% CI] | mean policy log-prob/token | GFLOPs/prompt |")
    print("|---|---|---|---|")
    for k in CURVE:
        if k > n:
            continue
        best = [max(scores[i][:k]) for i in ids]
        _, low, high = bootstrap(best)
        print(f"| Best-of-{k} (true reward) | {statistics.fmean(best):.3f} [{low:.3f}, {high:.3f}] | - | "
              f"{statistics.fmean(flops[i] * k for i in ids) / 1e9:.0f} |")
    rows = []
    for d, recs in runs.items():
        values = [recs[i]["reward"] for i in ids]
        _, low, high = bootstrap(values)
        print(f"| {d} | {statistics.fmean(values):.3f} [{low:.3f}, {high:.3f}] | "
              f"{statistics.fmean(recs[i]['ref_logprob_per_token'] for i in ids):.2f} | "
              f"{statistics.fmean(recs[i]['cost']['flops'] for i in ids) / 1e9:.0f} |")
        diffs, ns = [], []
        for i in ids:
            k = next((k for k in range(1, n + 1) if flops[i] * k >= recs[i]["cost"]["flops"]), n)
            ns.append(k)
            diffs.append(recs[i]["reward"] - max(scores[i][:k]))
        rows.append((d, diffs, ns))
    print("\n| method | Best-of-N at equal FLOPs (median N) | difference in true reward [95% CI] | wins / ties / losses |")
    print("|---|---|---|---|")
    for d, diffs, ns in rows:
        _, low, high = bootstrap(diffs)
        wins = sum(x > 1e-9 for x in diffs)
        losses = sum(x < -1e-9 for x in diffs)
        print(f"| {d} | {statistics.median(ns):.0f} | {statistics.fmean(diffs):+.3f} [{low:+.3f}, {high:+.3f}] | "
              f"{wins} / {len(diffs) - wins - losses} / {losses} |")


if __name__ == "__main__":
    main()
