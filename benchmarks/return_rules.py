"""Which reply a chain method should return: the return rules of GuidedSuffixMCMC side by side.

    python benchmarks/return_rules.py runs/quality/keywords_tuning_asked/suffix_tokens/steps=16 [more cells] [--no-gemma]
    python benchmarks/return_rules.py runs/quality/keywords{,_more}/suffix_steered/steps=16 --pool \\
        --against 'asked Best-of-64=runs/quality/keywords_asked/best_of_n/run:64' \
        --against 'asked Best-of-64=runs/quality/keywords_more_asked/best_of_n/run:64' --context prompt|asked|none

A GuidedSuffixMCMC run with ``returns: best_target`` or ``final`` records, per prompt, the
reply each rule picks (``alternatives``: ``best_reward``, the highest-reward state any chain
visited; ``likeliest_best``, the highest reward, ties to the likelier state under the
policy; ``best_target``, the highest ``log pi_ref(y|x) + alpha r``; ``final``, the chains'
final states, the one of highest reward). One run gives all of them on the same chains: this
prints, per cell and rule, the optimised reward, the task's judge (read from the grid's task
of the cell's directory), keyword repeats and distinct-2 within the reply, and the NLL per
token under the policy and under Gemma-3-270m (another family), means over prompts, and the
paired difference of each rule to ``best_reward`` on the judge and on Gemma's NLL.

``--pool`` reads all cells as one table (e.g. a task and its ``_more`` prompts). ``--against
[LABEL=]CELL:N`` adds Best-of-N's reply from a Best-of-N cell (the best reward among its first ``N``
candidates, ties as that run broke them: to the likeliest with ``returns: likeliest_best``),
matched by prompt id: e.g. the asked Best-of-64 next to chains run on the un-asked prompts
(cells with the same LABEL, default ``Best-of-N``, pool); the paired columns then compare with
the first such row. ``--context`` sets what the NLLs
condition on: the record's ``prompt`` (default), the prompt file's ``asked`` version of it, or
``none`` (the reply alone), so replies written for different prompts are judged after the same
text.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from quality import NllCache, best_reply_of_first, judge_value, load_grid, sign_flip_p  # noqa: E402

from seaflow import judges  # noqa: E402
from seaflow.data import METADATA_FIELDS, read_prompts  # noqa: E402
from seaflow.metrics import distinct_n  # noqa: E402
from seaflow.writer import read_records  # noqa: E402

RULES = ("best_reward", "likeliest_best", "best_target", "final")


def asked_texts(grid: dict, tasks: set[str]) -> dict[str, str]:
    """Per prompt id, the asked version of the prompt (the prompt files' ``asked`` field)."""
    out = {}
    for task in tasks:
        path = grid["tasks"][task]["prompts"]
        for row in read_prompts(path, keep=METADATA_FIELDS + ("asked",)):
            if "asked" not in row:
                raise ValueError(f"--context asked: row {row['id']!r} of {path} has no 'asked' field")
            out[row["id"]] = row["asked"]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cells", nargs="+", help="cell directories: <output_dir>/<task>/<method>/<budget>")
    parser.add_argument("--grid", default="configs/quality/grid.yaml")
    parser.add_argument("--no-gemma", action="store_true")
    parser.add_argument("--pool", action="store_true", help="one table over all cells (their tasks must share a judge)")
    parser.add_argument("--against", action="append", default=[], metavar="[LABEL=]CELL:N",
                        help="Best-of-N's reply from a Best-of-N cell, matched by prompt id (cells with one LABEL pool)")
    parser.add_argument("--context", choices=("prompt", "asked", "none"), default="prompt",
                        help="what the NLLs condition on: the record's prompt, the row's asked version, or nothing")
    args = parser.parse_args(argv)
    grid = load_grid(args.grid)
    cache = NllCache(Path(grid.get("output_dir", "runs/quality")) / "nll_cache.json", gemma=not args.no_gemma).continuations(grid)
    cells = [list(map(Path, args.cells))] if args.pool else [[Path(c)] for c in args.cells]
    against: dict[str, tuple[int, dict[str, dict]]] = {}  # label -> (N, records by prompt id)
    for spec in args.against:
        head, sep, tail = spec.partition("=")
        label, rest = (head, tail) if sep and "/" not in head else ("", spec)  # a cell path may hold '=' (steps=16)
        cell, _, n = rest.rpartition(":")
        label = label or f"Best-of-{n}"
        if label in against and against[label][0] != int(n):
            raise ValueError(f"--against {spec!r}: {label!r} is Best-of-{against[label][0]} already; give each N its own LABEL")
        by_id = against.setdefault(label, (int(n), {}))[1]
        for record in read_records(Path(cell) / "predictions.jsonl"):
            by_id[record["id"]] = record
    for group in cells:
        tasks = {cell.parent.parent.name for cell in group}
        kinds = {grid["tasks"][task]["judge"] for task in tasks}
        if len(kinds) != 1:
            raise ValueError(f"--pool: the cells' tasks {sorted(tasks)} have different judges {sorted(kinds)}")
        kind = kinds.pop()
        records = [r for cell in group for r in read_records(cell / "predictions.jsonl") if r.get("alternatives")]
        name = ", ".join(map(str, group))
        if not records:
            print(f"{name}: no record with alternatives (run with returns: likeliest_best, best_target or final)")
            continue
        missing = sorted({r["id"] for r in records for _, by_id in against.values() if r["id"] not in by_id})
        if missing:
            raise ValueError(f"--against: no Best-of-N record for {', '.join(missing[:5])}")
        asked = asked_texts(grid, tasks) if args.context == "asked" else {}

        def before(record):  # the text the NLLs condition on
            if args.context == "asked":
                return asked[record["id"]]
            return record["prompt"] if args.context == "prompt" else ""

        replies = {rule: [(r["alternatives"][rule]["response"], r["alternatives"][rule]["reward"]) for r in records]
                   for rule in RULES if all(rule in r["alternatives"] for r in records)}  # older runs: fewer rules
        for label, (n, by_id) in against.items():
            replies[label] = [best_reply_of_first(by_id[r["id"]], n) for r in records]
        cache.fill([(before(r), text) for chosen in replies.values() for (text, _), r in zip(chosen, records)])
        print(f"\n{name} ({len(records)} prompts, judge {kind}, NLL after {args.context})")
        base_name = next(iter(against), "best_reward")
        print(f"| reply | reward | judge | success | keyword repeats | distinct-2 | NLL policy | NLL Gemma | judge - {base_name} [p] | "
              f"Gemma NLL - {base_name} |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        rows = {}
        for rule, chosen in replies.items():
            texts = [text for text, _ in chosen]
            judged = [judge_value(kind, text, r) for text, r in zip(texts, records)]
            repeats = [judges.keyword_repeats(text, r["keywords"]) for text, r in zip(texts, records)] if kind == "keywords" else []
            rows[rule] = {
                "reward": [reward for _, reward in chosen],
                "judge": [j for j, _ in judged], "success": [s for _, s in judged],
                "repeats": [v for v in repeats if v is not None],
                "distinct": [v for v in (distinct_n([t], 2) for t in texts) if v is not None],
                "policy": [cache.get("policy", before(r), t) for t, r in zip(texts, records)],
                "gemma": [cache.get("gemma", before(r), t) for t, r in zip(texts, records)],
            }
        base = rows[base_name]
        for rule, row in rows.items():

            def mean(values):
                values = [v for v in values if v is not None]
                return f"{statistics.fmean(values):.3f}" if values else "-"

            diffs = [a - b for a, b in zip(row["judge"], base["judge"])]
            gemma = [a - b for a, b in zip(row["gemma"], base["gemma"]) if a is not None and b is not None]
            versus = "-" if rule == base_name else f"{statistics.fmean(diffs):+.3f} [p {sign_flip_p(diffs):.2f}]"
            gemma_versus = "-" if rule == base_name or not gemma else f"{statistics.fmean(gemma):+.3f}"
            print(f"| {rule} | {mean(row['reward'])} | {mean(row['judge'])} | {mean(row['success'])} | {mean(row['repeats'])} | "
                  f"{mean(row['distinct'])} | {mean(row['policy'])} | {mean(row['gemma'])} | {versus} | {gemma_versus} |")


if __name__ == "__main__":
    main()
