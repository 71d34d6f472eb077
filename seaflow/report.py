"""``seaflow report RUN_DIR [RUN_DIR ...] --out DIR``: compare finished runs like with like.

Reads each run's ``predictions.jsonl``, ``config.yaml`` and ``summary.json`` (metrics are
recomputed from the records with :func:`seaflow.metrics.summarize`, so runs written by an
older seaflow get the current metrics) and writes to ``DIR``:

* ``report.md``: one row per run: method, prompts, and as a mean with a bootstrap 95%
  interval over prompts (:func:`bootstrap`): the returned reward, the metric of the records'
  task (harmful rate, accuracy, positive rate, keyword hit rate; seaflow.metrics), fluency
  (mean log pi_ref per response token), FLOPs and wall time per prompt (the records'
  ``cost``) and its sequential depth; then distinct-2 and the paired win rate over a ``Sample``
  run among the inputs; then the like-for-like tables (:func:`like_for_like`, :func:`between_runs`):
  every other run against each Best-of-N run's curve at equal FLOPs and at equal wall time,
  prompt by prompt, and the runs against each other with their cost ratios; and where each
  run was measured (the records' device and load average);
* ``reward_vs_cost.png`` (``reward_vs_wall.png``, ``reward_vs_depth.png`` with ``--x``): the
  returned reward of every run against FLOPs (wall time, sequential depth) per prompt, with
  95% intervals: a Best-of-N run as a curve over N from its own candidates
  (:func:`best_of_n_curve`; with ``--soft LAMBDA`` also Soft Best-of-N's curve read off the
  same candidates, :func:`soft_best_of_first`), an iterative run (SEA, GuidedSuffixMCMC,
  BiasedDecoding) as a curve over its steps from the trace of the chain it returned
  (:func:`step_curve`), any other run as one point;
* ``nll_per_position.png``: per response position, the mean NLL of each run's tokens under
  the reference minus that of the base policy's samples (a ``Sample`` run among the inputs,
  paired by prompt), with 95% intervals; without a ``Sample`` run, the NLL minus the
  reference entropy at that position (zero in expectation for the policy's own samples).
  Both are one-sample estimates of how far a method's tokens are from the reference, not a
  KL: they can be negative (a near-greedy decode is more likely than a sample).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from seaflow.metrics import RESPONSE_METRICS, task_values, summarize
from seaflow.writer import PREDICTIONS, SUMMARY, read_records

BOOTSTRAP = 2000  # resamples for every interval
# the cost axes: name -> (the records' cost field, axis label)
AXES = {
    "flops": ("flops", "FLOPs per prompt"),
    "wall": ("wall_time_s", "wall time per prompt (s)"),
    "depth": ("sequential_depth", "sequential depth (model calls one after another)"),
}


def bootstrap(values: list[float | None], boot: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` (None and NaN left out) and the 2.5% / 97.5%
    percentiles of the means of ``boot`` resamples with replacement (NaNs when nothing is left)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan, math.nan
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(boot))
    return statistics.fmean(values), means[int(0.025 * boot)], means[min(int(0.975 * boot), boot - 1)]


def best_of_first(record: dict[str, Any], n: int) -> tuple[int, float]:
    """``(candidate, reward)`` Best-of-``n`` returns on a Best-of-N record's first ``n``
    candidates: candidate ``c`` is the same draw for every N; ties go to the earlier one, or to
    the likeliest when the run returned ``likeliest_best`` (its ``candidate_ref_logprobs``)."""
    rewards = [r if math.isfinite(r) else -math.inf for r in record["candidate_rewards"][:n]]
    likelihood = record.get("candidate_ref_logprobs") if record.get("returns") == "likeliest_best" else None
    best = max(range(len(rewards)), key=lambda c: (rewards[c], likelihood[c] if likelihood else 0.0, -c))
    return best, record["candidate_rewards"][best]


def soft_best_of_first(record: dict[str, Any], n: int, reward_temperature: float, seed: int) -> tuple[int, float]:
    """``(candidate, reward)`` Soft Best-of-``n`` (``seaflow.methods.SoftBestOfN``) returns on a
    Best-of-N record's first ``n`` candidates: the same draw from ``softmax(r / lambda)`` with the
    prompt's stream of the run ``seed``, so a Best-of-N run gives Soft Best-of-N at no extra cost."""
    from seaflow.methods.soft_best_of_n import soft_choice

    rewards = record["candidate_rewards"][:n]
    candidate, _ = soft_choice(rewards, reward_temperature, seed, record["id"])
    return candidate, rewards[candidate]


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
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if percent:
        return f"{100 * value:.1f}%"
    return f"{value:.{digits}f}"


def _interval(values: list[float | None], digits: int = 3, percent: bool = False, scale: float = 1.0) -> str:
    mean, low, high = bootstrap(values)
    if math.isnan(mean):
        return "–"
    if percent:
        return f"{100 * mean:.0f}% [{100 * low:.0f}, {100 * high:.0f}]"
    if scale != 1.0:
        mean, low, high = mean / scale, low / scale, high / scale
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def win_rate(run: Run, baseline: Run) -> float | None:
    theirs = {r["id"]: r.get("reward") for r in baseline.records}
    pairs = [(r["reward"], theirs[r["id"]]) for r in run.records
             if r.get("reward") is not None and theirs.get(r["id"]) is not None]
    return sum(a > b for a, b in pairs) / len(pairs) if pairs else None


def _cost(record: dict[str, Any], key: str) -> float | None:
    value = (record.get("cost") or {}).get(key)
    if value is None and key == "wall_time_s":
        value = record.get("wall_time_s")
    return None if value is None else float(value)


def cost_of(record: dict[str, Any], axis: str) -> float | None:
    """The record's cost on ``axis`` (``flops``, ``wall`` or ``depth``; :data:`AXES`)."""
    return _cost(record, AXES[axis][0])


def mean_cost(records: list[dict[str, Any]], axis: str) -> float:
    values = [v for v in (cost_of(r, axis) for r in records) if v is not None]
    return statistics.fmean(values) if values else math.nan


def is_best_of_n(run: "Run") -> bool:
    """A Best-of-N run whose records keep every candidate's reward (its curve over N can be read off)."""
    return run.method.startswith("BestOfN") and all(r.get("candidate_rewards") for r in run.records)


def run_seed(run: "Run") -> int:
    """The run's ``model.init_args.seed`` (its config.yaml; 0 when unknown)."""
    model = run.config.get("model") or {}
    return int((model.get("init_args") or {}).get("seed", 0) or 0)


def task_metrics_of(runs: list[Run]) -> list[str]:
    """The task metrics any run's records have, in seaflow.metrics' order."""
    present = {name for run in runs for record in run.records for name in task_values(record)}
    return [name for name in RESPONSE_METRICS if name in present]


def table(runs: list[Run]) -> str:
    baseline = next((run for run in runs if run.method == "Sample"), None)
    metrics = task_metrics_of(runs)
    header = (["run", "method", "prompts", "reward"] + [name.replace("_", " ") for name in metrics]
              + ["fluency (log p_ref/token)", "GFLOPs/prompt", "time/prompt (s)", "sequential depth", "distinct-2", "win vs Sample"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        records = run.records
        measured = [task_values(r) for r in records]
        row = [run.directory.name, run.method, str(len(records)), _interval([r.get("reward") for r in records])]
        for name in metrics:
            row.append(_interval([m.get(name) for m in measured], percent=True))
        row += [
            _interval([r.get("ref_logprob_per_token") for r in records]),
            _interval([_cost(r, "flops") for r in records], digits=1, scale=1e9),
            _interval([_cost(r, "wall_time_s") for r in records], digits=2),
            _fmt(mean_cost(records, "depth"), digits=0),
            _fmt(run.summary.get("distinct_2")),
            _fmt(win_rate(run, baseline), percent=True) if baseline is not None and run is not baseline else "–",
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- reward against cost -------------------------------------------------------------------------


@dataclass
class Curve:
    """Points ``(cost per prompt, reward mean, low, high)`` of one run, in cost order; ``costs``
    holds the cost of every point on each axis of :data:`AXES`."""

    label: str
    costs: dict[str, list[float]]
    reward: list[tuple[float, float, float]]
    kind: str  # "best_of_n", "steps" or "point"
    ticks: list[str] = field(default_factory=list)

    @property
    def flops(self) -> list[float]:
        return self.costs["flops"]


def best_of_n_curve(run: Run, soft: float | None = None) -> Curve | None:
    """Best-of-N for N = 1, 2, 4, ... up to the run's N from its candidates; FLOPs and wall time =
    the run's x N / n (generation and scoring are one row per candidate; the prompt's one shared
    pass is pro-rated too, a little less than Best-of-N pays for it; for wall time an
    approximation: small batches use the machine less well), sequential depth the run's (N rows
    run side by side). ``soft``: Soft Best-of-N with that lambda instead, the same draw
    :class:`~seaflow.methods.SoftBestOfN` makes (:func:`soft_best_of_first`)."""
    if not is_best_of_n(run):
        return None
    records = run.records
    n = min(len(r["candidate_rewards"]) for r in records)
    sizes = sorted({2**i for i in range(int(math.log2(n)) + 1)} | {n})
    costs = {axis: [mean_cost(records, axis) * (1 if axis == "depth" else k / n) for k in sizes] for axis in AXES}
    if soft is None:
        rewards = [bootstrap([best_of_first(r, k)[1] for r in records]) for k in sizes]
        return Curve(run.label, costs, rewards, "best_of_n", [f"N={k}" for k in sizes])
    seed = run_seed(run)
    rewards = [bootstrap([soft_best_of_first(r, k, soft, seed)[1] for r in records]) for k in sizes]
    return Curve(f"{run.label}, soft lambda={soft:g}", costs, rewards, "best_of_n", [f"N={k}" for k in sizes])


def chosen_trace(record: dict[str, Any]) -> list[float] | None:
    """The returned chain's reward at each traced step, as the method would return it if stopped there:
    SEA and BiasedDecoding record the returned chain's trace (the state each step started from);
    GuidedSuffixMCMC records every chain's and returns its best visited state (a running maximum)."""
    trace = (record.get("trace") or {}).get("reward")
    if not trace:
        return None
    if isinstance(trace[0], list):
        chain = trace[record.get("chain", 0)]
        best, out = -math.inf, []
        for value in chain:
            best = max(best, value)
            out.append(best)
        return out
    return [float(v) for v in trace]


def step_curve(run: Run) -> Curve | None:
    """An iterative run's returned-chain reward over its steps; the cost of step t is the run's
    FLOPs pro-rated as (t + 1) / (T + 1) (the initial samples count as one step), the last
    point is the returned reward at the full cost."""
    traces = [chosen_trace(r) for r in run.records]
    if not traces or any(t is None for t in traces):
        return None
    steps = min(map(len, traces))
    points = [bootstrap([t[i] for t in traces]) for i in range(steps)]
    points.append(bootstrap([r.get("reward") for r in run.records]))
    costs = {}
    for axis in AXES:
        total = mean_cost(run.records, axis)
        costs[axis] = [total * (i + 1) / (steps + 1) for i in range(steps)] + [total]
    return Curve(run.label, costs, points, "steps", [str(i) for i in range(steps)] + ["returned"])


def point(run: Run) -> Curve:
    return Curve(run.label, {axis: [mean_cost(run.records, axis)] for axis in AXES},
                 [bootstrap([r.get("reward") for r in run.records])], "point")


def curves(runs: list[Run], soft: tuple[float, ...] = ()) -> list[Curve]:
    out = [best_of_n_curve(run) or step_curve(run) or point(run) for run in runs]
    return out + [best_of_n_curve(run, lam) for lam in soft for run in runs if is_best_of_n(run)]


def plot_reward_vs_cost(runs: list[Run], path: Path, axis: str = "flops", soft: tuple[float, ...] = ()) -> Path | None:
    """Returned reward against cost per prompt on ``axis`` (log scale) with 95% intervals; None
    without rewards or costs. ``soft``: Soft Best-of-N curves read off every Best-of-N run."""
    drawn = [c for c in curves(runs, soft)
             if not any(math.isnan(x) for x in c.costs[axis]) and not math.isnan(c.reward[-1][0])]
    if not drawn:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, curve in enumerate(drawn):
        mean = [p[0] for p in curve.reward]
        err = [[m - p[1] for m, p in zip(mean, curve.reward)], [p[2] - m for m, p in zip(mean, curve.reward)]]
        style = {"best_of_n": dict(marker="s", linestyle="-"), "steps": dict(marker="o", markersize=3, linestyle="-"),
                 "point": dict(marker="D", markersize=7, linestyle="none")}[curve.kind]
        suffix = {"best_of_n": ", over N", "steps": ", over steps", "point": ""}[curve.kind]
        xs = curve.costs[axis]
        ax.errorbar(xs, mean, yerr=err, color=f"C{i}", capsize=3, label=curve.label + suffix, **style)
        if curve.kind == "best_of_n":
            for x, y, tick in zip(xs, mean, curve.ticks):
                ax.annotate(tick, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7, color=f"C{i}")
        if curve.kind == "steps":
            ax.plot(xs[-1:], mean[-1:], marker="*", markersize=11, color=f"C{i}", linestyle="none")
    ax.set_xscale("log")
    ax.set_xlabel(f"{AXES[axis][1]} (log scale; iterative runs: the run's cost pro-rated over steps)", fontsize=8)
    ax.set_ylabel("returned reward (mean over prompts, 95% CI)")
    ax.set_title("Returned reward vs cost (star: the response the run returned)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# -- divergence from the reference per position --------------------------------------------------


def position_values(run: Run, base: Run | None) -> tuple[list[list[float]], str]:
    """Per position, one value per prompt long enough: the NLL of the run's token minus the mean
    NLL of the base run's token at that position for the same prompt (paired by id); without a
    base, the NLL minus the reference entropy there."""
    theirs = {r["id"]: r.get("ref_token_logprobs") for r in base.records} if base is not None else {}
    values: list[list[float]] = []
    for record in run.records:
        logprobs = record.get("ref_token_logprobs") or []
        entropy = record.get("ref_token_entropy") or []
        other = theirs.get(record["id"]) if base is not None else None
        for t, lp in enumerate(logprobs):
            if base is not None:
                if other is None or t >= len(other):
                    continue
                value = -lp + other[t]
            else:
                if t >= len(entropy):
                    continue
                value = -lp - entropy[t]
            while len(values) <= t:
                values.append([])
            values[t].append(value)
    label = ("NLL under p_ref minus the Sample run's, same prompt (nats)" if base is not None
             else "NLL under p_ref minus the reference entropy (nats)")
    return values, label


def plot_nll_per_position(runs: list[Run], path: Path, min_prompts: int = 2) -> Path | None:
    """Per-position divergence estimate (see the module docstring) with 95% intervals; positions with
    fewer than ``min_prompts`` values are left out."""
    base = next((run for run in runs if run.method == "Sample"), None)
    shown = [run for run in runs if run is not base] if base is not None else runs
    series = []
    ylabel = ""
    for run in shown:
        values, ylabel = position_values(run, base)
        points = [(t, *bootstrap(v)) for t, v in enumerate(values) if len(v) >= min_prompts]
        if points:
            series.append((run.label, points))
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, points) in enumerate(series):
        ts = [p[0] for p in points]
        ax.plot(ts, [p[1] for p in points], color=f"C{i}", label=label)
        ax.fill_between(ts, [p[2] for p in points], [p[3] for p in points], color=f"C{i}", alpha=0.2)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("response position (token)")
    ax.set_ylabel(ylabel, fontsize=8)
    title = ("Per-position NLL difference to the base samples" if base is not None
             else "Per-position NLL minus reference entropy")
    ax.set_title(title + " (one-sample estimate, 95% CI; not a KL)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# -- like for like: paired over prompts at equal cost ---------------------------------------------


def sign_flip_p(diffs: list[float], draws: int = 20000, seed: int = 0) -> float:
    """Two-sided p-value of the paired sign-flip permutation test of mean difference 0.

    Under the null each prompt's difference is as likely to have either sign; exact
    enumeration up to 16 prompts, Monte Carlo (``draws`` sign vectors) beyond."""
    n = len(diffs)
    observed = abs(sum(diffs))
    if n <= 16:
        hits = sum(abs(sum(d if (mask >> i) & 1 else -d for i, d in enumerate(diffs))) >= observed - 1e-12
                   for mask in range(1 << n))
        return hits / (1 << n)
    rng = random.Random(seed)
    hits = sum(abs(sum(d if rng.random() < 0.5 else -d for d in diffs)) >= observed - 1e-12 for _ in range(draws))
    return (hits + 1) / (draws + 1)


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact sign test (ties dropped): how often a fair coin splits as unevenly."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def equal_cost_n(value: float, record: dict[str, Any], axis: str = "flops") -> tuple[int, bool]:
    """The smallest N whose Best-of-N spends at least ``value`` on ``axis`` (``flops`` or ``wall``)
    for this prompt, read as the Best-of-N record's cost x N / n, and whether the record's
    candidates reach it (False: capped at its n, so Best-of-N spends less)."""
    per_candidate = cost_of(record, axis) / record["n"]
    wanted = max(1, math.ceil(value / per_candidate - 1e-9))
    return min(wanted, record["n"]), wanted <= record["n"]


def paired_summary(diffs: list[float]) -> dict[str, Any]:
    """Mean paired difference, its bootstrap interval, wins / ties / losses and both p-values."""
    _, low, high = bootstrap(diffs)  # the mean paired difference's interval, prompts resampled
    wins, losses = sum(d > 1e-12 for d in diffs), sum(d < -1e-12 for d in diffs)
    return {"prompts": len(diffs), "diff": statistics.fmean(diffs), "low": low, "high": high, "wins": wins,
            "ties": len(diffs) - wins - losses, "losses": losses, "p": sign_flip_p(diffs), "p_sign": sign_test_p(wins, losses)}


def _judge(record: dict[str, Any]) -> float | None:
    """The first judge of the record's task on its response (seaflow.metrics), None without one."""
    values = task_values(record)
    return next(iter(values.values())) if values else None


def like_for_like(runs: list[Run], axis: str) -> list[dict[str, Any]]:
    """Every run that is not Best-of-N against each Best-of-N run at equal cost on ``axis``,
    prompt by prompt: Best-of-N gets the smallest N whose cost on that prompt reaches the run's
    (:func:`equal_cost_n`, read off its candidates); the difference of returned rewards and, where
    the task has a judge, of the judge (run minus Best-of-N)."""
    out = []
    for bon in (run for run in runs if is_best_of_n(run)):
        theirs = {r["id"]: r for r in bon.records}
        for run in runs:
            if is_best_of_n(run):
                continue
            rewards, judges, sizes = [], [], []
            for record in run.records:
                other, spent = theirs.get(record["id"]), cost_of(record, axis)
                if other is None or spent is None or cost_of(other, axis) is None or record.get("reward") is None:
                    continue
                n, reached = equal_cost_n(spent, other, axis)
                best, reward = best_of_first(other, n)
                sizes.append((n, reached))
                rewards.append(record["reward"] - reward)
                texts = other.get("candidate_responses")
                if texts:
                    mine, rival = _judge(record), _judge({**other, "response": texts[best]})
                    if mine is not None and rival is not None:
                        judges.append(mine - rival)
            if rewards:
                out.append({"run": run.label, "best_of_n": bon.label, "axis": axis,
                            "n_median": statistics.median(n for n, _ in sizes), "capped": sum(not r for _, r in sizes),
                            "reward": paired_summary(rewards), "judge": paired_summary(judges) if judges else None})
    return out


def between_runs(runs: list[Run]) -> list[dict[str, Any]]:
    """Every pair of runs that are not Best-of-N, paired over their common prompts: differences of
    reward and judge (first minus second) and the ratios of their mean FLOPs and wall time."""
    others = [run for run in runs if not is_best_of_n(run)]
    out = []
    for i, first in enumerate(others):
        for second in others[i + 1:]:
            theirs = {r["id"]: r for r in second.records}
            pairs = [(r, theirs[r["id"]]) for r in first.records if r["id"] in theirs]
            rewards = [a["reward"] - b["reward"] for a, b in pairs if a.get("reward") is not None and b.get("reward") is not None]
            judged = [(_judge(a), _judge(b)) for a, b in pairs]
            judges = [a - b for a, b in judged if a is not None and b is not None]
            if not rewards:
                continue
            ratio = {axis: mean_cost([a for a, _ in pairs], axis) / mean_cost([b for _, b in pairs], axis) for axis in ("flops", "wall")}
            out.append({"first": first.label, "second": second.label, "ratio": ratio,
                        "reward": paired_summary(rewards), "judge": paired_summary(judges) if judges else None})
    return out


def _diff(summary: dict[str, Any] | None) -> str:
    if summary is None:
        return "–"
    return f"{summary['diff']:+.3f} [{summary['low']:+.3f}, {summary['high']:+.3f}], p = {summary['p']:.3f}"


def like_for_like_lines(runs: list[Run]) -> list[str]:
    """The like-for-like section of report.md (empty without two runs to compare)."""
    lines = []
    names = {"flops": "equal FLOPs", "wall": "equal wall time"}
    for axis in ("flops", "wall"):
        rows = like_for_like(runs, axis)
        if not rows:
            continue
        lines += [f"### Against Best-of-N at {names[axis]}", "",
                  "| run | Best-of-N run | N at equal cost (median) | reward difference [95% CI], p | judge difference [95% CI], p | wins / ties / losses (reward) |",
                  "|---|---|---|---|---|---|"]
        for e in rows:
            capped = f", {e['capped']} capped at its n" if e["capped"] else ""
            r = e["reward"]
            lines.append(f"| {e['run']} | {e['best_of_n']} | N={e['n_median']:g}{capped} | {_diff(r)} | {_diff(e['judge'])} | "
                         f"{r['wins']} / {r['ties']} / {r['losses']} |")
        lines.append("")
    pairs = between_runs(runs)
    if pairs:
        lines += ["### Runs against each other", "",
                  "| first | second | FLOPs first / second | wall time first / second | reward difference [95% CI], p | judge difference [95% CI], p |",
                  "|---|---|---|---|---|---|"]
        for e in pairs:
            lines.append(f"| {e['first']} | {e['second']} | {e['ratio']['flops']:.2f}x | {e['ratio']['wall']:.2f}x | "
                         f"{_diff(e['reward'])} | {_diff(e['judge'])} |")
        lines.append("")
    if not lines:
        return []
    return ["## Like for like, paired over prompts", "",
            "Differences are first minus second (run minus Best-of-N), paired by prompt; intervals: bootstrap over prompts;",
            "p: two-sided sign-flip permutation test. Best-of-N at equal cost: per prompt the smallest N whose cost",
            "(the run's x N / n; for wall time an approximation, small batches use the machine less well) reaches the",
            "other run's on that prompt. Judge: the task's judge (seaflow.metrics). Compare wall times only between",
            "runs measured on the same machine under similar load (below).", ""] + lines


def machine_lines(runs: list[Run]) -> list[str]:
    """Where each run was measured: the records' devices and load averages."""
    lines = []
    for run in runs:
        costs = [r.get("cost") or {} for r in run.records]
        devices = sorted({c["device"] for c in costs if c.get("device")})
        loads = [c["load_average"] for c in costs if c.get("load_average") is not None]
        load = f"load average {statistics.fmean(loads):.2f} (min {min(loads):.2f}, max {max(loads):.2f})" if loads else "load not recorded"
        lines.append(f"- `{run.directory}`: data `{run.data_path or '?'}`; {', '.join(devices) or 'device not recorded'}; {load}")
    return lines


def write_report(run_dirs: list[str | Path], out: str | Path, axes: tuple[str, ...] = ("flops",),
                 soft: tuple[float, ...] = ()) -> Path:
    """Write report.md and the plots for ``run_dirs`` into ``out``; return the markdown path.

    ``axes``: the x axes of the reward-vs-cost plots (:data:`AXES`); ``soft``: lambdas of Soft
    Best-of-N curves read off the Best-of-N runs."""
    if not run_dirs:
        raise ReportError("seaflow report needs at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parts = ["# seaflow comparison", "", table(runs), ""]
    parts += [f"Means over prompts with bootstrap 95% intervals ({BOOTSTRAP} resamples). Fluency: mean log p_ref per "
              "response token. Cost: the records' `cost` (FLOPs estimated per model; wall time depends on the machine's load).", ""]
    parts += like_for_like_lines(runs)
    plots = [(f"Returned reward vs {AXES[axis][1].removesuffix(' per prompt')}",
              plot_reward_vs_cost(runs, out / f"reward_vs_{'cost' if axis == 'flops' else axis}.png", axis, soft)) for axis in axes]
    plots.append(("Divergence from the reference per position", plot_nll_per_position(runs, out / "nll_per_position.png")))
    for title, plot in plots:
        if plot is not None:
            parts += [f"## {title}", "", f"![{title}]({plot.name})", ""]
    parts += ["Runs (where each was measured):", ""] + machine_lines(runs) + [""]
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path


def main(args: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="seaflow report", description="Compare finished seaflow runs: markdown table and plots.")
    parser.add_argument("runs", nargs="+", help="run directories (each with predictions.jsonl)")
    parser.add_argument("--out", required=True, help="directory for report.md and the PNG plots")
    parser.add_argument("--x", default="flops", type=lambda text: text.split(","),
                        help=f"x axes of the reward-vs-cost plots, comma-separated: {', '.join(AXES)} (default flops)")
    parser.add_argument("--soft", type=float, action="append", default=[], metavar="LAMBDA",
                        help="also draw Soft Best-of-N read off each Best-of-N run's candidates at this lambda (repeatable)")
    options = parser.parse_args(args)
    unknown = [axis for axis in options.x if axis not in AXES]
    if unknown:
        parser.error(f"--x {','.join(unknown)}: not an axis; use {', '.join(AXES)}")
    path = write_report(options.runs, options.out, tuple(options.x), tuple(options.soft))
    print(f"seaflow: report written to {path}")
    return path
