"""The hard-case curve: the share of replies holding all k drawn words, against k = 1 ... 5.

    python benchmarks/hard_cases.py [--grid configs/quality/drawn.yaml] [--out docs/img/hard_cases.png] [--md FILE]

The argument it measures: if the policy writes a reply that holds every word with probability
sigma_k, Best-of-N needs N of order 1 / sigma_k, and sigma_k falls roughly geometrically in k
when the words are unrelated, so Best-of-N's cost grows exponentially in k; a method that moves
towards the reward one word at a time should pay about linearly.

It reads the grid's keyword tasks whose prompts are ``prompt_set:keywords?...`` (k and asked from
the query) and, per task:

* sigma_k: the share of the Best-of-N run's candidates (plain policy samples) that hold every
  word, averaged over prompts, and the N at which Best-of-N would hold every word in half the
  replies if the candidates were independent draws at that rate (``log 0.5 / log(1 - sigma)``);
* every cell's success (all k words present) and Best-of-N's, prompt by prompt, at equal FLOPs
  and at equal seconds (:func:`seaflow.report.equal_cost_n`: the smallest N that spends at
  least the cell's cost on that prompt; capped at the run's n, counted), with the cells' GFLOPs
  and seconds per prompt.

It prints a Markdown table and draws a 2 x 2 figure (asked / not asked x equal FLOPs / equal
seconds): each method's success against k, and Best-of-N matched to each method's cost dashed in
the method's colour.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from quality import best_reply_of_first, cells, load_grid, prompt_ids  # noqa: E402

from seaflow.energies.keywords import keyword_hits  # noqa: E402
from seaflow.prompt_sets import GENERATED_SETS, PREFIX  # noqa: E402
from seaflow.report import bootstrap, cost_of, equal_cost_n  # noqa: E402
from seaflow.writer import read_records  # noqa: E402

AXES = {"flops": "equal FLOPs", "wall": "equal seconds"}
COLOURS = {"best_of_n": "black", "cbs": "tab:orange", "particle_filter": "tab:green", "speculative_rejection": "tab:red",
           "chains": "tab:blue", "steered": "tab:purple", "suffix_mcmc": "tab:brown"}


def keyword_tasks(grid: dict, only: list[str] | None = None) -> dict[str, tuple[int, bool]]:
    """Task -> (k, asked) for the grid's tasks on ``prompt_set:keywords`` (``only`` these; by default
    the report tasks: tuning tasks ``t_*`` left out)."""
    out = {}
    for task, spec in grid["tasks"].items():
        prompts = str(spec["prompts"])
        if not prompts.startswith(PREFIX + "keywords") or (task not in only if only else task.startswith("t_")):
            continue
        values = GENERATED_SETS["keywords"].parse(prompts.partition("?")[2])
        out[task] = (values["k"], values["asked"])
    return out


def holds_all(text: str, words: list[str]) -> float:
    return float(all(keyword_hits(text, words)))


def summarise_task(grid: dict, task: str) -> dict:
    """sigma, Best-of-N's curve and every cell's success next to Best-of-N's at its FLOPs and seconds."""
    wanted = prompt_ids(grid, task)
    runs = {}
    for _, method, label, _, _, directory in cells(grid, [task]):
        if "from" in grid["methods"][method]:
            continue
        records = {r["id"]: r for r in read_records(directory / "predictions.jsonl")}
        if wanted and set(wanted) <= set(records):
            runs[(method, label)] = [records[i] for i in wanted]
    bon = runs.pop(("best_of_n", "run"), None)
    if bon is None:
        return {}
    out = {"prompts": len(bon), "n": bon[0]["n"]}
    per_prompt = [statistics.fmean(holds_all(t, r["keywords"]) for t in r["candidate_responses"]) for r in bon]
    sigma = statistics.fmean(per_prompt)
    out["sigma"] = sigma
    out["n_half"] = math.log(0.5) / math.log(1 - sigma) if 0 < sigma < 1 else (1.0 if sigma >= 1 else math.inf)
    out["curve"] = {n: statistics.fmean(holds_all(best_reply_of_first(r, n)[0], r["keywords"]) for r in bon)
                    for n in grid["methods"]["best_of_n"]["curve"] if n <= bon[0]["n"]}
    by_id = {r["id"]: r for r in bon}
    out["cells"] = {}
    for (method, label), records in runs.items():
        entry = {"success": [holds_all(r["response"], r["keywords"]) for r in records],
                 "gflops": statistics.fmean(r["cost"]["flops"] for r in records) / 1e9,
                 "seconds": statistics.fmean(r["cost"]["wall_time_s"] for r in records)}
        for axis in AXES:
            matched, capped, ns = [], 0, []
            for r in records:
                n, reached = equal_cost_n(cost_of(r, axis), by_id[r["id"]], axis)
                matched.append(holds_all(best_reply_of_first(by_id[r["id"]], n)[0], r["keywords"]))
                capped += not reached
                ns.append(n)
            entry[axis] = {"bon": matched, "capped": capped, "n": statistics.median(ns)}
        out["cells"][f"{method} {label}"] = entry
    return out


def table(results: dict[str, dict], tasks: dict[str, tuple[int, bool]]) -> str:
    lines = ["| k | asked | sigma_k (one sample holds all) | Best-of-N for 50% (independent draws) | Best-of-N curve (N: all words) |",
             "|---|---|---|---|---|"]
    for task, (k, asked) in sorted(tasks.items(), key=lambda t: (t[1][1], t[1][0])):
        r = results.get(task)
        if not r:
            continue
        curve = ", ".join(f"{n}: {v:.0%}" for n, v in r["curve"].items())
        lines.append(f"| {k} | {'yes' if asked else 'no'} | {r['sigma']:.4f} | {r['n_half']:.0f} | {curve} |")
    lines += ["", "| k | asked | method | all words [95% CI] | GFLOPs | s/prompt | Best-of-N at equal FLOPs (median N) | "
              "Best-of-N at equal seconds (median N) |", "|---|---|---|---|---|---|---|---|"]
    for task, (k, asked) in sorted(tasks.items(), key=lambda t: (t[1][1], t[1][0])):
        r = results.get(task)
        if not r:
            continue
        for name, e in r["cells"].items():
            mean, low, high = bootstrap(e["success"], 2000)
            matched = []
            for axis in AXES:
                capped = f", {e[axis]['capped']} capped" if e[axis]["capped"] else ""
                matched.append(f"{statistics.fmean(e[axis]['bon']):.0%} (N={e[axis]['n']:g}{capped})")
            lines.append(f"| {k} | {'yes' if asked else 'no'} | {name} | {mean:.0%} [{low:.0%}, {high:.0%}] | {e['gflops']:.0f} | "
                         f"{e['seconds']:.1f} | {matched[0]} | {matched[1]} |")
    return "\n".join(lines)


def plot(results: dict[str, dict], tasks: dict[str, tuple[int, bool]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, panels = plt.subplots(2, 2, figsize=(10, 7.5), sharey=True, squeeze=False)
    handles = {}
    for row, asked in enumerate((True, False)):
        for col, axis in enumerate(AXES):
            ax = panels[row][col]
            points: dict[str, list[tuple[int, float, float]]] = {}
            for task, (k, a) in tasks.items():
                if a != asked or not results.get(task):
                    continue
                for name, e in results[task]["cells"].items():
                    points.setdefault(name, []).append((k, statistics.fmean(e["success"]), statistics.fmean(e[axis]["bon"])))
            for name, values in sorted(points.items()):
                values.sort()
                colour = COLOURS.get(name.split()[0], None)
                ks = [v[0] for v in values]
                (line,) = ax.plot(ks, [v[1] for v in values], marker="o", color=colour, label=name)
                ax.plot(ks, [v[2] for v in values], linestyle="--", color=colour, alpha=0.7)
                handles[name] = line
            ax.set_title(f"{'asked' if asked else 'not asked'}, Best-of-N (dashed) at {AXES[axis]}")
            ax.set_xlabel("k (words per reply)")
            ax.set_xticks(range(1, 6))
            ax.set_ylabel("replies holding all k words")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 4), fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", default="configs/quality/drawn.yaml")
    parser.add_argument("--out", default="docs/img/hard_cases.png", help="the figure")
    parser.add_argument("--md", default=None, help="also write the table to this file")
    parser.add_argument("--tasks", type=lambda s: s.split(","), default=None, help="these tasks (default: every report keyword task)")
    args = parser.parse_args(argv)
    grid = load_grid(args.grid)
    tasks = keyword_tasks(grid, args.tasks)
    results = {task: summarise_task(grid, task) for task in tasks}
    text = table(results, tasks)
    print(text)
    if args.md:
        Path(args.md).write_text(text + "\n")
    plot(results, tasks, Path(args.out))


if __name__ == "__main__":
    main()
