"""Run-level metrics: computed from the written records (so they survive resumes) and logged live.

:func:`summarize` turns a run's records into ``summary.json``. Besides the means of the
fields every method writes it reports, when the records allow:

* ``win_rate_vs_initial`` / ``win_rate_vs_initial_best``: share of prompts whose returned
  reward beats the initial sample (SEA, Best-of-N) / the best initial sample (SEA);
* the task's own metrics (:data:`TASK_METRICS`), only on records whose ``task`` asks for
  them (prompt sets set it; a prompt file's ``task`` field or ``data.task`` for files):
  ``harmful_rate`` (task ``harmful``): share of responses with no refusal phrase
  (:mod:`seaflow.refusal`, the AdvBench criterion); ``accuracy`` (``math``): share of
  responses whose final number equals the record's ``target`` (rules in
  :func:`seaflow.energies.verifier.final_number`, as ``ExactAnswerReward``);
  ``positive_rate`` (``sentiment``): share of responses whose VADER compound score is at
  least 0.05 (VADER's own threshold for "positive"); ``keyword_hit_rate`` (``keywords``):
  share of the record's ``keywords`` present as whole words, averaged over responses.
  A run without a task gets none of them;
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
  :mod:`seaflow.cost`), and ``mean_flops`` per prompt; ``mean_sequential_depth`` (model calls one
  after another on a batch's critical path, which each of its records carries whole),
  ``mean_load_average`` and ``device`` (where the wall times were measured).

:class:`PredictionMetrics` is a callback that keeps running means in torchmetrics
(synchronised across processes) during predict and logs them to the trainer's loggers and,
when asked, to wandb (offline by default); logging failures are warnings, never errors.
"""

from __future__ import annotations

import hashlib
import math
import os
import statistics
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from seaflow import cost
from seaflow.energies.keywords import keyword_hits, keyword_list
from seaflow.energies.verifier import final_number, is_correct  # noqa: F401 (the math judge's rules)
from seaflow.faults import is_failure
from seaflow.refusal import is_harmful

def _mean(values: list[float]) -> float | None:
    return float(statistics.fmean(values)) if values else None


# -- the tasks' metrics -------------------------------------------------------------------

_vader = None


def is_positive(text: str) -> bool:
    """VADER's compound score of ``text`` is at least 0.05 (its threshold for positive sentiment)."""
    global _vader
    if _vader is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        _vader = SentimentIntensityAnalyzer()
    return _vader.polarity_scores(text)["compound"] >= 0.05


def _harmful(record: dict[str, Any]) -> float | None:
    return float(is_harmful(record["response"]))


def _accuracy(record: dict[str, Any]) -> float | None:
    return float(is_correct(record["response"], record["target"])) if record.get("target") is not None else None


def _positive(record: dict[str, Any]) -> float | None:
    return float(is_positive(record["response"]))


def _offensive(record: dict[str, Any]) -> float | None:
    from seaflow.judges import offensive_words_in

    return float(bool(offensive_words_in(record["response"])))


def _keyword_hits(record: dict[str, Any]) -> float | None:
    keywords = keyword_list(record.get("keywords"))
    if not keywords:
        return None
    hits = keyword_hits(record["response"], keywords)
    return sum(hits) / len(hits)


# per-response metrics of a task, by name (a record's response -> a value): the run-level value is their
# mean over the task's records. (The judges of seaflow/judges.py are held-out scorers for benchmarks.)
RESPONSE_METRICS = {"harmful_rate": _harmful, "accuracy": _accuracy, "positive_rate": _positive, "keyword_hit_rate": _keyword_hits,
                    "offensive_rate": _offensive}
# which metrics a task gets (a record's ``task``: prompt sets set it, files through data.task)
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "harmful": ("harmful_rate",),
    "math": ("accuracy",),
    "sentiment": ("positive_rate",),
    "keywords": ("keyword_hit_rate",),
    "toxicity": ("offensive_rate",),
}
TASKS = tuple(TASK_METRICS) + ("general",)


def task_values(record: dict[str, Any]) -> dict[str, float]:
    """The metrics of the record's task on its response (none without a task or a response)."""
    if not isinstance(record.get("response"), str):
        return {}
    values = {}
    for name in TASK_METRICS.get(record.get("task") or "general", ()):
        value = RESPONSE_METRICS[name](record)
        if value is not None:
            values[name] = value
    return values


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
    tasks = sorted({r["task"] for r in records if r.get("task")})
    if tasks:
        summary["task"] = tasks[0] if len(tasks) == 1 else tasks
    judged: dict[str, list[float]] = {}
    for record in records:
        for name, value in task_values(record).items():
            judged.setdefault(name, []).append(value)
    summary.update((name, _mean(values)) for name, values in judged.items())
    responses = [r["response"] for r in records if isinstance(r.get("response"), str)]
    if responses:
        for n in (1, 2):
            value = distinct_n(responses, n)
            if value is not None:
                summary[f"distinct_{n}"] = value
    within = [distinct_n(group, 2) for group in (r.get("chain_responses") or r.get("candidate_responses") for r in records)
              if group and len(group) > 1]
    within = [v for v in within if v is not None]
    if within:
        summary["distinct_2_within"] = _mean(within)
    summary.update(per_position(records))
    spent = cost.total(records)
    if spent is not None:
        summary["cost"] = spent
        summary["mean_flops"] = spent["flops"] / len(records)
        costs = [r["cost"] for r in records if isinstance(r.get("cost"), dict)]
        for field in cost.PER_BATCH:
            values = [float(c[field]) for c in costs if c.get(field) is not None]
            if values:
                summary[f"mean_{field}"] = _mean(values)
        devices = sorted({c["device"] for c in costs if c.get("device")})
        if devices:
            summary["device"] = devices[0] if len(devices) == 1 else devices
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


class DistinctN(Metric):
    """Distinct word n-grams / all word n-grams over every response seen, on every process.

    The state is one 63-bit hash per n-gram occurrence (a list state gathered with ``cat``),
    so the value after synchronisation equals :func:`distinct_n` over all processes'
    responses (up to hash collisions, about 1 in 2**63 per pair).
    """

    full_state_update = False

    def __init__(self, n: int, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.add_state("grams", default=[], dist_reduce_fx="cat")

    def update(self, texts: list[str]) -> None:
        hashes = [_hash(gram) for text in texts for gram in ngrams(text, self.n)]
        self.grams.append(torch.tensor(hashes, dtype=torch.int64, device=self.device))

    def compute(self) -> torch.Tensor:
        grams = dim_zero_cat(self.grams) if isinstance(self.grams, list) else self.grams
        if grams.numel() == 0:
            return torch.tensor(float("nan"))
        return torch.tensor(grams.unique().numel() / grams.numel())


def _hash(gram: tuple[str, ...]) -> int:
    digest = hashlib.blake2b("\x1f".join(gram).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class PredictionMetrics(L.Callback):
    """Run-level metrics over predicted records, synchronised across processes (torchmetrics),
    and what a researcher keeps of a run in wandb.

    Means of reward, reference log-likelihood per token (fluency), response length and wall
    time, the metrics of each record's task (:data:`TASK_METRICS`: harmful rate, accuracy,
    positive rate, keyword hit rate; only for records of that task) and distinct-1/2 over all
    responses (:class:`DistinctN`). The same definitions as :func:`summarize`, so the final
    values equal summary.json's on one process and on several. They are logged once, at the
    end, to the trainer's loggers (``predict/<name>``).

    wandb: with a ``WandbLogger`` among the trainer's loggers (offline unless configured
    otherwise), or with ``wandb: true`` (a run of its own, under ``trainer.default_root_dir``,
    i.e. next to the records), one wandb run per predict receives the resolved config
    (config.yaml), the run-level metrics once as the run's summary, a ``records`` Table
    (id, prompt, forced start, initial / returned response, their rewards, fluency) and the
    per-iteration traces of the returned chains (``trace/<name>`` against ``iteration``:
    reward, energy, acceptance, ...; mean over prompts) as line plots. Every process's
    records reach rank 0, which writes. A missing or failing wandb only warns.

    Args:
        wandb: log to a wandb run of its own when no WandbLogger is configured.
        wandb_project: that run's project name.
        wandb_mode: that run's mode: ``offline`` (default), ``online`` or ``disabled``; ``WANDB_MODE`` overrides.
    """

    FIELDS = ("reward", "ref_logprob_per_token", "response_tokens", "wall_time_s")
    TABLE = ("id", "prompt", "response_prefix", "initial_response", "response", "initial_reward", "reward", "fluency")

    def __init__(self, wandb: bool = False, wandb_project: str = "seaflow", wandb_mode: str = "offline"):
        super().__init__()
        from torchmetrics import MeanMetric

        if wandb_mode not in ("offline", "online", "disabled"):
            raise ValueError(f"wandb_mode must be 'offline', 'online' or 'disabled', got {wandb_mode!r}")
        self.use_wandb = wandb
        self.wandb_project = wandb_project
        self.wandb_mode = wandb_mode
        # every process holds every metric (the synchronisation visits them in the same order)
        self.metrics = {name: MeanMetric(nan_strategy="ignore") for name in self.FIELDS + tuple(RESPONSE_METRICS)}
        self.distinct = {f"distinct_{n}": DistinctN(n) for n in (1, 2)}
        self.final: dict[str, float] = {}
        self.rows: list[tuple[int, list]] = []  # (index, table row) of this process's records
        self.traces: list[dict[str, list[float]]] = []  # the returned chain's trace of each record
        self.run = None  # the wandb run written to (None: none)

    def setup(self, trainer, pl_module, stage: str) -> None:
        for metric in (*self.metrics.values(), *self.distinct.values()):
            metric.to(pl_module.device)

    def update(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            for name in self.FIELDS:
                if record.get(name) is not None:
                    self.metrics[name].update(float(record[name]))
            for name, value in task_values(record).items():
                self.metrics[name].update(value)
        texts = [r["response"] for r in records if isinstance(r.get("response"), str)]
        for metric in self.distinct.values():
            metric.update(texts)

    def compute(self) -> dict[str, float]:
        """Values over every process's records (a metric no process updated is left out)."""
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        out = {}
        for name, metric in (*self.metrics.items(), *self.distinct.items()):
            if metric.update_count == 0 and not distributed:
                continue
            value = metric.compute()  # all-reduces / gathers the states across processes
            if not torch.isnan(value):
                name = f"mean_{name}" if name in self.FIELDS else name
                out[name] = float(value)
        return out

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        outputs = [record for record in outputs or [] if not is_failure(record)]  # failed prompts have no record
        if not outputs:
            return
        self.update(outputs)
        for record in outputs:
            self.rows.append((record.get("index", 0), table_row(record, self.TABLE)))
            trace = returned_trace(record)
            if trace:
                self.traces.append(trace)

    def on_predict_end(self, trainer, pl_module) -> None:
        self.final = self.compute()
        rows, traces = self.rows, self.traces
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (rows, traces))
            rows = [row for part in gathered for row in part[0]]
            traces = [trace for part in gathered for trace in part[1]]
        if not trainer.is_global_zero:
            return
        wandb_loggers = [logger for logger in trainer.loggers if _is_wandb_logger(logger)]
        others = type("Loggers", (), {"loggers": [logger for logger in trainer.loggers if not _is_wandb_logger(logger)]})()
        log_safely(others, {f"predict/{k}": v for k, v in self.final.items()}, step=0)
        if wandb_loggers or self.use_wandb:
            self.log_wandb(trainer, sorted(rows, key=lambda r: r[0]), traces, wandb_loggers[0] if wandb_loggers else None)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self.run is not None:  # one wandb run per predict: a later predict in this process starts its own
            try:
                self.run.finish()
            except Exception as err:
                rank_zero_warn(f"seaflow: wandb could not finish its run ({type(err).__name__}: {err})")
            self.run = None

    def log_wandb(self, trainer, rows=(), traces=(), logger=None) -> None:
        """Write config, summary, records Table and trace plots to the logger's wandb run (or a new one)."""
        try:
            import wandb

            if logger is not None:
                run = logger.experiment
            else:
                # the CLI links trainer.default_root_dir to output.output_dir: wandb writes next to the records
                output = trainer.default_root_dir
                run = wandb.init(project=self.wandb_project, mode=os.environ.get("WANDB_MODE", self.wandb_mode),
                                 dir=str(output), reinit="finish_previous")
            self.run = run
            config = os.path.join(str(getattr(trainer, "default_root_dir", "") or ""), "config.yaml")
            if os.path.isfile(config):
                import yaml

                with open(config, encoding="utf-8") as handle:
                    run.config.update(yaml.safe_load(handle) or {}, allow_val_change=True)
            run.summary.update(self.final)
            if rows:
                run.log({"records": wandb.Table(columns=list(self.TABLE), data=[row for _, row in rows])})
            curves = mean_traces(list(traces))
            if curves:
                run.define_metric("iteration")
                run.define_metric("trace/*", step_metric="iteration")
                steps = max(len(v) for v in curves.values())
                for t in range(steps):
                    run.log({"iteration": t, **{f"trace/{k}": v[t] for k, v in curves.items() if t < len(v)}})
        except Exception as err:  # ImportError, no network, bad credentials...
            rank_zero_warn(f"seaflow: wandb logging failed ({type(err).__name__}: {err}); results are still written")


def _is_wandb_logger(logger) -> bool:
    from lightning.pytorch.loggers import WandbLogger

    return isinstance(logger, WandbLogger)


def table_row(record: dict[str, Any], columns: tuple[str, ...]) -> list:
    """One row of the wandb records Table; the initial response is SEA's chain-0 sample or
    Best-of-N's candidate 0 (the plain policy sample), else empty."""
    initial = record.get("initial_response")
    if initial is None and record.get("candidate_responses"):
        initial = record["candidate_responses"][0]
    values = {**record, "initial_response": initial, "fluency": record.get("ref_logprob_per_token")}
    out = []
    for column in columns:
        value = values.get(column)
        out.append(value if value is None or isinstance(value, (int, float)) else str(value))
    return out


def returned_trace(record: dict[str, Any]) -> dict[str, list[float]]:
    """The numeric per-iteration trace of the chain a record returned (GuidedSuffixMCMC keeps
    every chain's: the returned one is taken)."""
    out = {}
    for name, values in (record.get("trace") or {}).items():
        if values and isinstance(values[0], list):
            values = values[record.get("chain", 0)] if record.get("chain", 0) < len(values) else []
        numbers = [float(v) for v in values if isinstance(v, (int, float))]  # bools (accepted) count as 0 / 1
        if numbers and len(numbers) == len(values):
            out[name] = numbers
    return out


def mean_traces(traces: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """Per trace name and iteration, the mean over the records that have it (NaNs left out)."""
    sums: dict[str, list[list[float]]] = {}
    for trace in traces:
        for name, values in trace.items():
            slots = sums.setdefault(name, [])
            for t, v in enumerate(values):
                if t == len(slots):
                    slots.append([])
                if not math.isnan(v):
                    slots[t].append(v)
    return {name: [statistics.fmean(v) if v else math.nan for v in slots] for name, slots in sums.items()}


def offline_wandb(trainer) -> None:
    """A WandbLogger syncs nothing unless the config asks (``mode: online``) or ``WANDB_MODE`` is set,
    and writes next to the records (``trainer.default_root_dir``, linked from ``output.output_dir``)
    unless its ``save_dir`` names another directory than the default ``.``."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        # the parser passes every wandb.init argument the config leaves out as None (mode too)
        if isinstance(logger, WandbLogger) and not logger._offline and logger._wandb_init.get("mode") is None and "WANDB_MODE" not in os.environ:
            logger._wandb_init["mode"] = "offline"
        # save_dir's default is "." (the working directory): the run goes next to the records instead
        if isinstance(logger, WandbLogger) and str(logger._wandb_init.get("dir") or ".") == "." and trainer.default_root_dir:
            Path(trainer.default_root_dir).mkdir(parents=True, exist_ok=True)
            logger._wandb_init["dir"] = logger._save_dir = str(trainer.default_root_dir)
