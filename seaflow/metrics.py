"""Run-level summaries computed from the written records (so they survive resumes)."""

from __future__ import annotations

import statistics
from typing import Any


def _mean(values: list[float]) -> float | None:
    return float(statistics.fmean(values)) if values else None


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over prompts of the fields every method writes, plus SEA's before/after fields."""
    summary: dict[str, Any] = {"prompts": len(records)}
    methods = sorted({r.get("method", "?") for r in records})
    summary["method"] = methods[0] if len(methods) == 1 else methods
    for field in ("reward", "ref_logprob_per_token", "wall_time_s", "initial_reward",
                  "initial_ref_logprob_per_token", "initial_best_reward", "response_tokens"):
        values = [float(r[field]) for r in records if r.get(field) is not None]
        if values:
            summary[f"mean_{field}"] = _mean(values)
    paired = [(r["reward"], r["initial_reward"]) for r in records if r.get("initial_reward") is not None]
    if paired:
        summary["win_rate_vs_initial"] = sum(a > b for a, b in paired) / len(paired)
    paired_best = [(r["reward"], r["initial_best_reward"]) for r in records if r.get("initial_best_reward") is not None]
    if paired_best:
        summary["win_rate_vs_initial_best"] = sum(a > b for a, b in paired_best) / len(paired_best)
    skipped = [r["id"] for r in records if r.get("skipped")]
    if skipped:
        summary["skipped"] = skipped
    return summary
