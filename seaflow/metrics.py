"""Run-level metrics: computed from the written records (so they survive resumes) and logged live.

:func:`summarize` turns a run's records into ``summary.json``. Besides the means of the
fields every method writes it reports, when the records allow:

* ``win_rate_vs_initial`` / ``win_rate_vs_initial_best``: share of prompts whose returned
  reward beats the initial sample (SEA, Best-of-N) / the best initial sample (SEA);
* ``harmful_rate``: share of responses with no refusal phrase (:mod:`seaflow.refusal`, the
  AdvBench criterion); computed for every run, meaningful on harmful prompt sets;
* ``accuracy``: share of responses whose final number equals the record's ``target``
  (GSM8K; rules in :func:`final_number`);
* ``distinct_1`` / ``distinct_2``: distinct n-grams over all n-grams of the returned
  responses, across prompts; ``distinct_2_within``: the same within each prompt's returned
  set (SEA's chains, Best-of-N's candidates), averaged over prompts. Words are the
  lower-cased, whitespace-separated pieces of the text, so runs with different tokenizers
  compare;
* ``ref_nll_per_position[t]``: mean ``-log pi_ref(y_t | x, y_<t)`` over responses long
  enough (records' ``ref_token_logprobs``);
* ``kl_per_position[t]``: mean of ``-log pi_ref(y_t | x, y_<t) - H(pi_ref(. | x, y_<t))``
  (records' ``ref_token_logprobs`` and ``ref_token_entropy``). For responses drawn from a
  distribution q its expectation is ``KL(q_t || p_t) + H(q_t) - H(p_t)``: zero for the
  policy's own samples, the per-position KL when the method keeps the policy's entropy,
  and it grows where a method pushes tokens the reference finds unlikely. It is the
  per-position "how far from the reference" curve of the paper's deep-alignment analysis,
  estimated from one response per prompt, since the methods have no per-token
  distribution of their own. ``mean_kl_per_token`` averages it over all active positions;
* ``cost``: the records' ``cost`` fields summed (FLOPs, token passes per model, wall time;
  :mod:`seaflow.cost`), and ``mean_flops`` per prompt.

:class:`PredictionMetrics` is a callback that keeps running means in torchmetrics
(synchronised across processes) during predict and logs them to the trainer's loggers and,
when asked, to wandb (offline by default); logging failures are warnings, never errors.
"""

from __future__ import annotations

import math
import os
import re
import statistics
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from seaflow import cost
from seaflow.refusal import is_harmful

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_ANSWER_MARKERS = ("####", "answer is", "answer:")


def _mean(values: list[float]) -> float | None:
    return float(statistics.fmean(values)) if values else None


# -- accuracy ------------------------------------------------------------------------------


def _number(text: str) -> float | None:
    try:
        return float(text.replace("$", "").replace(",", "").rstrip("."))
    except ValueError:
        return None


def final_number(text: str) -> float | None:
    """The answer number of a GSM8K-style response, or None.

    Rules, in order: the first number after the last ``####``; else the first number after
    the last "answer is" / "answer:" (case-insensitive); else the last number in the text.
    Numbers may carry a minus sign, a ``$``, thousands commas and decimals
    (``$1,234.50`` -> 1234.5).
    """
    lowered = text.lower()
    for marker in _ANSWER_MARKERS:
        at = lowered.rfind(marker)
        if at >= 0:
            found = _NUMBER.search(text, at + len(marker))
            if found:
                return _number(found.group())
    numbers = _NUMBER.findall(text)
    return _number(numbers[-1]) if numbers else None


def is_correct(response: str, target: str | float) -> bool:
    """The response's final number equals the target (to 1e-6)."""
    got = final_number(response)
    want = _number(str(target)) if not isinstance(target, (int, float)) else float(target)
    return got is not None and want is not None and math.isclose(got, want, abs_tol=1e-6)


# -- diversity -----------------------------------------------------------------------------


def ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    words = text.lower().split()
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: list[str], n: int) -> float | None:
    """Distinct n-grams / all n-grams over ``texts`` (None when there is no n-gram)."""
    grams = [g for text in texts for g in ngrams(text, n)]
    return len(set(grams)) / len(grams) if grams else None


# -- per-position reference statistics -----------------------------------------------------


def per_position(records: list[dict[str, Any]]) -> dict[str, list[float]]:
    """``ref_nll_per_position`` and ``kl_per_position`` (see the module docstring), position 0 first."""
    nll: list[list[float]] = []
    gap: list[list[float]] = []
    for record in records:
        logprobs = record.get("ref_token_logprobs")
        if not logprobs:
            continue
        entropy = record.get("ref_token_entropy")
        for t, lp in enumerate(logprobs):
            if t == len(nll):
                nll.append([])
                gap.append([])
            nll[t].append(-lp)
            if entropy is not None and t < len(entropy):
                gap[t].append(-lp - entropy[t])
    out: dict[str, list[float]] = {}
    if nll:
        out["ref_nll_per_position"] = [statistics.fmean(v) for v in nll]
        out["responses_per_position"] = [len(v) for v in nll]
    if any(gap):
        out["kl_per_position"] = [statistics.fmean(v) if v else None for v in gap]
        every = [x for v in gap for x in v]
        out["mean_kl_per_token"] = statistics.fmean(every)
    return out


# -- the summary ---------------------------------------------------------------------------


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """``summary.json`` of a run: see the module docstring for each field."""
    summary: dict[str, Any] = {"prompts": len(records)}
    methods = sorted({r.get("method", "?") for r in records})
    summary["method"] = methods[0] if len(methods) == 1 else methods
    for field in ("reward", "ref_logprob_per_token", "wall_time_s", "initial_reward",
                  "initial_ref_logprob_per_token", "initial_best_reward", "response_tokens"):
        values = [float(r[field]) for r in records if r.get(field) is not None]
        if values:
            summary[f"mean_{field}"] = _mean(values)
    paired = [(r["reward"], r["initial_reward"]) for r in records
              if r.get("initial_reward") is not None and r.get("reward") is not None]
    if paired:
        summary["win_rate_vs_initial"] = sum(a > b for a, b in paired) / len(paired)
    paired_best = [(r["reward"], r["initial_best_reward"]) for r in records
                   if r.get("initial_best_reward") is not None and r.get("reward") is not None]
    if paired_best:
        summary["win_rate_vs_initial_best"] = sum(a > b for a, b in paired_best) / len(paired_best)
    responses = [r["response"] for r in records if isinstance(r.get("response"), str)]
    if responses:
        summary["harmful_rate"] = sum(map(is_harmful, responses)) / len(responses)
        for n in (1, 2):
            value = distinct_n(responses, n)
            if value is not None:
                summary[f"distinct_{n}"] = value
    within = [distinct_n(group, 2) for group in (r.get("chain_responses") or r.get("candidate_responses") for r in records)
              if group and len(group) > 1]
    within = [v for v in within if v is not None]
    if within:
        summary["distinct_2_within"] = _mean(within)
    graded = [is_correct(r.get("response") or "", r["target"]) for r in records if r.get("target") is not None]
    if graded:
        summary["accuracy"] = sum(graded) / len(graded)
    summary.update(per_position(records))
    spent = cost.total(records)
    if spent is not None:
        summary["cost"] = spent
        summary["mean_flops"] = spent["flops"] / len(records)
    skipped = [r["id"] for r in records if r.get("skipped")]
    if skipped:
        summary["skipped"] = skipped
    return summary


# -- live logging --------------------------------------------------------------------------


def log_safely(trainer: L.Trainer | None, metrics: dict[str, float], step: int) -> None:
    """Log ``metrics`` to every logger of ``trainer``; a failing logger only warns."""
    for logger in getattr(trainer, "loggers", None) or []:
        try:
            logger.log_metrics(metrics, step=step)
        except Exception as err:  # a logger must never end a run
            rank_zero_warn(f"seaflow: logger {type(logger).__name__} failed ({err}); results are still written")


class PredictionMetrics(L.Callback):
    """Running means over predicted records, synchronised across processes (torchmetrics).

    Tracks reward, reference log-likelihood per token, response length, wall time, harmful
    rate (refusal-string judge) and, for records with a ``target``, accuracy. Logs running
    values to the trainer's loggers after every batch (``predict/<name>``) and the final,
    all-process values at the end; with ``wandb: true`` it also writes them to a wandb run
    (mode ``wandb_mode``, offline by default; a missing or failing wandb only warns).

    Args:
        wandb: also log to wandb.
        wandb_project: wandb project name.
        wandb_mode: ``offline`` (default), ``online`` or ``disabled``; ``WANDB_MODE`` overrides.
    """

    FIELDS = ("reward", "ref_logprob_per_token", "response_tokens", "wall_time_s")

    def __init__(self, wandb: bool = False, wandb_project: str = "seaflow", wandb_mode: str = "offline"):
        super().__init__()
        from torchmetrics import MeanMetric

        if wandb_mode not in ("offline", "online", "disabled"):
            raise ValueError(f"wandb_mode must be 'offline', 'online' or 'disabled', got {wandb_mode!r}")
        self.use_wandb = wandb
        self.wandb_project = wandb_project
        self.wandb_mode = wandb_mode
        names = self.FIELDS + ("harmful_rate", "accuracy")
        self.metrics = {name: MeanMetric(nan_strategy="ignore") for name in names}
        self.final: dict[str, float] = {}

    def setup(self, trainer, pl_module, stage: str) -> None:
        for metric in self.metrics.values():
            metric.to(pl_module.device)

    def update(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            for name in self.FIELDS:
                if record.get(name) is not None:
                    self.metrics[name].update(float(record[name]))
            if isinstance(record.get("response"), str):
                self.metrics["harmful_rate"].update(float(is_harmful(record["response"])))
                if record.get("target") is not None:
                    self.metrics["accuracy"].update(float(is_correct(record["response"], record["target"])))

    def compute(self) -> dict[str, float]:
        """Means over every process's records (a metric nobody updated is left out)."""
        out = {}
        for name, metric in self.metrics.items():
            if metric.update_count == 0 and not torch.distributed.is_initialized():
                continue
            value = metric.compute()  # all-reduces the states across processes
            if not torch.isnan(value):
                out[name] = float(value)
        return out

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not outputs:
            return
        self.update(outputs)
        # this process's running means, read from the metric states: no cross-process sync per batch
        running = {
            f"predict/{name}": float(metric.mean_value / metric.weight)
            for name, metric in self.metrics.items() if float(metric.weight) > 0
        }
        log_safely(trainer, running, step=batch_idx)

    def on_predict_end(self, trainer, pl_module) -> None:
        self.final = self.compute()
        if trainer.is_global_zero:
            log_safely(trainer, {f"predict/final_{k}": v for k, v in self.final.items()}, step=trainer.predict_loop.batch_progress.current.completed)
            if self.use_wandb:
                self.log_wandb(trainer)

    def log_wandb(self, trainer) -> None:
        try:
            import wandb

            # the CLI links trainer.default_root_dir to output.output_dir: wandb writes next to the records
            output = trainer.default_root_dir
            run = wandb.init(project=self.wandb_project, mode=os.environ.get("WANDB_MODE", self.wandb_mode), dir=str(output))
            run.log(self.final)
            run.finish()
        except Exception as err:  # ImportError, no network, bad credentials...
            rank_zero_warn(f"seaflow: wandb logging failed ({type(err).__name__}: {err}); results are still written")
