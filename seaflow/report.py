"""``seaflow report RUN_DIR [RUN_DIR ...] --out DIR``: compare finished runs.

Reads each run's ``predictions.jsonl``, ``config.yaml`` and ``summary.json`` (metrics are
recomputed from the records with :func:`seaflow.metrics.summarize`, so runs written by an
older seaflow get the current metrics) and writes to ``DIR``:

* ``report.md``: one row per run: method, prompts, mean reward, win rates, harmful rate
  (harmful prompt sets) or accuracy (sets with targets), reference log-likelihood per token,
  distinct-2, mean KL gap per token and wall time per prompt;
* ``reward_vs_iteration.png``: mean reward over SEA's chains per iteration, averaged over
  prompts (one line per SEA run), with the other runs' mean final reward as dotted levels;
* ``kl_per_position.png``: the per-position KL estimate of every run (see seaflow.metrics).

"Win vs Sample" pairs prompts by id with a run of the plain ``Sample`` method when one is
among the inputs (the share of prompts where the run's reward is strictly higher).
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from seaflow.metrics import summarize
from seaflow.writer import PREDICTIONS, SUMMARY, read_records

HARMFUL_SETS = ("prompt_set:advbench", "prompt_set:harmbench")


class ReportError(ValueError):
    """A run directory cannot be read; the message names it and what is missing."""


@dataclass
class Run:
    directory: Path
    records: list[dict[str, Any]]
    summary: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        method = self.summary.get("method", "?")
        return method if isinstance(method, str) else "+".join(method)

    @property
    def label(self) -> str:
        return f"{self.directory.name} ({self.method})"

    @property
    def data_path(self) -> str:
        data = self.config.get("data") or {}
        return str((data.get("init_args") or data).get("path", ""))

    @property
    def harmful_task(self) -> bool:
        return self.data_path.startswith(HARMFUL_SETS) or any(r.get("task") == "harmful" for r in self.records)


def load_run(directory: str | Path) -> Run:
    directory = Path(directory)
    predictions = directory / PREDICTIONS
    if not predictions.exists():
        raise ReportError(f"{str(directory)!r} has no {PREDICTIONS}: pass run directories written by 'seaflow predict'")
    records = read_records(predictions)
    if not records:
        raise ReportError(f"{predictions} holds no complete record")
    summary = summarize(records)
    if (directory / SUMMARY).exists():  # keep fields only the file has (e.g. from a newer writer)
        stored = json.loads((directory / SUMMARY).read_text())
        summary = {**stored, **summary}
    config_path = directory / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.exists() else {}
    return Run(directory, records, summary, config or {})


def _fmt(value: Any, digits: int = 3, percent: bool = False) -> str:
    if value is None:
        return "–"
    if percent:
        return f"{100 * value:.1f}%"
    return f"{value:.{digits}f}"


def win_rate(run: Run, baseline: Run) -> float | None:
    theirs = {r["id"]: r.get("reward") for r in baseline.records}
    pairs = [(r["reward"], theirs[r["id"]]) for r in run.records
             if r.get("reward") is not None and theirs.get(r["id"]) is not None]
    return sum(a > b for a, b in pairs) / len(pairs) if pairs else None


def table(runs: list[Run]) -> str:
    baseline = next((run for run in runs if run.method == "Sample"), None)
    header = ["run", "method", "prompts", "mean reward", "win vs initial", "win vs Sample", "harmful rate",
              "accuracy", "ref logprob/token", "distinct-2", "KL gap/token", "time/prompt (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        s = run.summary
        row = [
            run.directory.name, run.method, str(s.get("prompts", len(run.records))),
            _fmt(s.get("mean_reward")), _fmt(s.get("win_rate_vs_initial"), percent=True),
            _fmt(win_rate(run, baseline), percent=True) if baseline is not None and run is not baseline else "–",
            _fmt(s.get("harmful_rate"), percent=True) if run.harmful_task else "–",
            _fmt(s.get("accuracy"), percent=True), _fmt(s.get("mean_ref_logprob_per_token")),
            _fmt(s.get("distinct_2")), _fmt(s.get("mean_kl_per_token")), _fmt(s.get("mean_wall_time_s"), 2),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_reward_vs_iteration(runs: list[Run], path: Path) -> Path | None:
    """Mean (over prompts) of each SEA run's per-iteration mean chain reward; None if no run has a trace."""
    curves = {}
    for run in runs:
        traces = [r["trace_mean_reward"] for r in run.records if r.get("trace_mean_reward")]
        if traces:
            steps = min(map(len, traces))
            curves[run.label] = [statistics.fmean(t[i] for t in traces) for i in range(steps)]
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, curve) in enumerate(curves.items()):
        ax.plot(range(len(curve)), curve, marker="o", markersize=2, label=label, color=f"C{i}")
    others = [run for run in runs if run.label not in curves and run.summary.get("mean_reward") is not None]
    for i, run in enumerate(others, start=len(curves)):
        ax.axhline(run.summary["mean_reward"], linestyle=":", linewidth=1.2, color=f"C{i}", label=f"{run.label}: returned")
    ax.set_xlabel("iteration")
    ax.set_ylabel("mean reward over chains (relaxed)")
    ax.set_title("Reward vs iteration")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_kl_per_position(runs: list[Run], path: Path) -> Path | None:
    curves = {run.label: run.summary["kl_per_position"] for run in runs if run.summary.get("kl_per_position")}
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, curve in curves.items():
        xs = [i for i, v in enumerate(curve) if v is not None]
        ax.plot(xs, [curve[i] for i in xs], label=label)
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.set_xlabel("response position")
    ax.set_ylabel("-log p_ref(y_t) - H(p_ref)  (nats)")
    ax.set_title("KL to the reference per token position")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Write report.md and the plots for ``run_dirs`` into ``out``; return the markdown path."""
    if not run_dirs:
        raise ReportError("seaflow report needs at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parts = ["# seaflow comparison", "", table(runs), ""]
    for title, plot in (("Reward vs iteration", plot_reward_vs_iteration(runs, out / "reward_vs_iteration.png")),
                        ("KL per token position", plot_kl_per_position(runs, out / "kl_per_position.png"))):
        if plot is not None:
            parts += [f"## {title}", "", f"![{title}]({plot.name})", ""]
    parts += ["Runs:", ""] + [f"- `{run.directory}`: data `{run.data_path or '?'}`" for run in runs] + [""]
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path


def main(args: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="seaflow report", description="Compare finished seaflow runs: markdown table and plots.")
    parser.add_argument("runs", nargs="+", help="run directories (each with predictions.jsonl)")
    parser.add_argument("--out", required=True, help="directory for report.md and the PNG plots")
    options = parser.parse_args(args)
    path = write_report(options.runs, options.out)
    print(f"seaflow: report written to {path}")
    return path
