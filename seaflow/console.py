"""What a run shows on the terminal: a progress bar that moves within a batch, no noise, a last table.

* :class:`StepBar` (rich) counts prompts and shows the work inside the current batch: the
  refinement step ``t/T`` or the candidate block, with elapsed time and an estimate of the
  time left. :class:`SeaflowProgressBar` drives it from Lightning's predict hooks (``seaflow
  predict``); :class:`AlignProgress` from ``Aligner.align`` (the Python API). Both listen to
  :func:`seaflow.progress.report`, which the loops call once per step or candidate block.
* :func:`quiet` filters what dependencies print on every run and that says nothing about
  it: Lightning's tip about litlogger, its GPU/TPU/HPU availability and seed lines, the
  Hugging Face "Loading weights" bars, and deprecation warnings raised inside the
  dependencies (never seaflow's own warnings). ``seaflow --verbose`` keeps them.
* :func:`end_table` is the short summary printed on stdout when a run ends: prompts, mean
  reward and fluency before -> after, the win rate over the best initial sample, time per
  prompt and where the files are (read from ``summary.json``).
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from seaflow.progress import listen


class StepBar:
    """A rich progress bar over ``total`` prompts that moves within a batch.

    ``begin_batch(n)`` starts a batch of ``n`` prompts; every ``update(done, total, unit)`` (a
    :func:`seaflow.progress.report`) moves the bar by ``n * done / total`` prompts and shows
    ``unit done/total``; ``end_batch()`` counts the batch's prompts as done. The time left is
    rich's estimate from the bar's speed, so it is meaningful once a few steps have run.
    """

    def __init__(self, total: int, description: str = "seaflow", console: Console | None = None):
        self.total = max(int(total), 0)
        self.done = 0
        self.size = 0
        self.updates: list[tuple[int, int, str]] = []  # every report heard, in order
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[prompts]}/{task.total:.0f} prompts"),
            TextColumn("{task.fields[stage]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console if console is not None else Console(stderr=True),
            transient=False,
        )
        self.task = self.progress.add_task(description, total=self.total, prompts=0, stage="")

    def start(self) -> StepBar:
        self.progress.start()
        return self

    def stop(self) -> None:
        self.progress.stop()

    def begin_batch(self, size: int) -> None:
        self.size = int(size)
        self.progress.update(self.task, stage="starting batch")

    def update(self, done: int, total: int, unit: str) -> None:
        self.updates.append((int(done), int(total), unit))
        fraction = min(max(done / total, 0.0), 1.0) if total else 1.0
        self.progress.update(self.task, completed=self.done + self.size * fraction, stage=f"{unit} {done}/{total}")

    def end_batch(self) -> None:
        self.done += self.size
        self.size = 0
        self.progress.update(self.task, completed=self.done, prompts=self.done, stage="")


class SeaflowProgressBar(ProgressBar):
    """``seaflow predict``'s progress bar: prompts done, the step or candidate block within the
    current batch, elapsed time and time left (:class:`StepBar`). Rank 0 shows it."""

    def __init__(self, console: Console | None = None):
        super().__init__()
        self.console = console
        self.bar: StepBar | None = None
        self._enabled = True
        self._listening = ExitStack()

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._enabled or not trainer.is_global_zero:
            return
        loaders = trainer.predict_dataloaders
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        prompts = sum(len(loader.dataset) for loader in loaders if loader is not None)
        prompts = -(-prompts // max(trainer.world_size, 1))  # this rank's share
        self.bar = StepBar(prompts, type(pl_module).__name__, self.console).start()

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.bar is not None:
            self.bar.begin_batch(len(batch["id"]) if isinstance(batch, dict) and "id" in batch else 1)
            self._listening.enter_context(listen(self.bar.update))

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._listening.close()
        if self.bar is not None:
            self.bar.end_batch()

    def on_predict_end(self, trainer, pl_module) -> None:
        self._close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._close()

    def _close(self) -> None:
        self._listening.close()
        if self.bar is not None:
            self.bar.stop()


class AlignProgress:
    """The progress bar of ``Aligner.align`` and ``Aligner.stream`` (a no-op when not ``enabled``);
    ``total`` None (a stream of unknown length): the total grows with each batch."""

    def __init__(self, total: int | None, enabled: bool = True, description: str = "align", console: Console | None = None):
        self.bar = StepBar(total or 0, description, console) if enabled else None
        self.open_ended = total is None

    def __enter__(self) -> AlignProgress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    @contextmanager
    def batch(self, method, size: int):
        if self.bar is None:
            yield
            return
        if self.open_ended:
            self.bar.total += size
        self.bar.progress.update(self.bar.task, description=method.method_name(), total=self.bar.total)
        self.bar.begin_batch(size)
        with listen(self.bar.update):
            yield
        self.bar.end_batch()


# -- a quiet console ------------------------------------------------------------------------

# what Lightning logs at INFO on every run that says nothing about the run
LIGHTNING_NOISE = ("💡 Tip:", "GPU available:", "TPU available:", "HPU available:", "Seed set to", "LOCAL_RANK:")
LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                     "lightning.fabric.utilities.seed", "lightning.pytorch.accelerators.cuda")
# packages whose own deprecation notices are filtered (raised inside them, about their dependencies)
DEPENDENCIES = ("lightning", "lightning_fabric", "pytorch_lightning", "lightning_utilities", "torch", "torchmetrics",
                "transformers", "huggingface_hub", "tokenizers", "accelerate", "jsonargparse", "wandb", "pydantic",
                "pkg_resources", "setuptools", "matplotlib", "gguf", "vaderSentiment")
DEPENDENCY_MODULES = r"(%s)(\.|$)" % "|".join(DEPENDENCIES)


class NoiseFilter(logging.Filter):
    """Drops log records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...] = LIGHTNING_NOISE):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        message = re.sub(r"^\s*\[rank: \d+\]\s*", "", str(record.getMessage()))  # DDP prefixes the rank
        return not message.lstrip().startswith(self.prefixes)


_FILTER = NoiseFilter()
_WARNING_FILTERS: list = []  # the entries quiet() put into warnings.filters


def quiet() -> None:
    """Filter the noise listed in the module docstring (idempotent)."""
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    # PossibleUserWarning: "does not have many workers" and the like, advice for training loops
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning, PossibleUserWarning):
        warnings.filterwarnings("ignore", category=category, module=DEPENDENCY_MODULES)
        if warnings.filters[0] not in _WARNING_FILTERS:
            _WARNING_FILTERS.append(warnings.filters[0])
    try:  # jsonargparse's notices about its own arguments (skip_none, ...), wherever the call is
        from jsonargparse._deprecated import JsonargparseDeprecationWarning
    except ImportError:  # pragma: no cover  (older jsonargparse)
        JsonargparseDeprecationWarning = None
    if JsonargparseDeprecationWarning is not None:
        warnings.filterwarnings("ignore", category=JsonargparseDeprecationWarning)
        if warnings.filters[0] not in _WARNING_FILTERS:
            _WARNING_FILTERS.append(warnings.filters[0])
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights", "Writing model shards"


def verbose() -> None:
    """Undo :func:`quiet`: every notice and warning shows again."""
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).removeFilter(_FILTER)
    for entry in _WARNING_FILTERS:
        while entry in warnings.filters:
            warnings.filters.remove(entry)
    getattr(warnings, "_filters_mutated", lambda: None)()
    _WARNING_FILTERS.clear()
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()


# -- the end-of-run table -------------------------------------------------------------------


def _number(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def end_table(output_dir: str | Path, elapsed_s: float | None = None, written: int | None = None) -> Table | None:
    """The end-of-run summary of ``output_dir``'s ``summary.json`` as a rich table (None without one).

    ``before`` is the policy's plain sample (``initial_*`` fields), ``after`` the returned
    response; the win rate compares each prompt's returned reward with the best of its initial
    samples (``win_rate_vs_initial_best``; methods without them: ``win_rate_vs_initial``).
    Time per prompt is the method's own time (``mean_wall_time_s``), and, given ``elapsed_s``
    and ``written``, the whole run's (model loading included) per prompt written this run.
    """
    directory = Path(output_dir)
    try:
        summary = json.loads((directory / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    method = summary.get("method")
    method = ", ".join(method) if isinstance(method, list) else method
    table = Table(title=f"seaflow: {method} on {summary.get('prompts', 0)} prompts", title_justify="left",
                  show_header=True, header_style="bold")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row("prompts", "", str(summary.get("prompts", 0)))
    table.add_row("mean reward", _number(summary.get("mean_initial_reward")), _number(summary.get("mean_reward")))
    table.add_row("fluency (ref logprob/token)", _number(summary.get("mean_initial_ref_logprob_per_token")),
                  _number(summary.get("mean_ref_logprob_per_token")))
    if summary.get("win_rate_vs_initial_best") is not None:
        table.add_row("win rate vs best initial sample", "", f"{100 * summary['win_rate_vs_initial_best']:.0f}%")
    elif summary.get("win_rate_vs_initial") is not None:
        table.add_row("win rate vs initial sample", "", f"{100 * summary['win_rate_vs_initial']:.0f}%")
    if summary.get("mean_wall_time_s") is not None:
        table.add_row("time per prompt (method)", "", f"{summary['mean_wall_time_s']:.2f} s")
    if elapsed_s is not None and written:
        table.add_row("time per prompt (this run, all in)", "", f"{elapsed_s / written:.2f} s")
    if summary.get("failed_rows"):
        table.add_row("failed prompts, no record (errors.jsonl)", "", str(summary["failed_rows"]))
    return table


def files_line(output_dir: str | Path) -> str:
    directory = Path(output_dir)
    errors = f"  {directory / 'errors.jsonl'}" if (directory / "errors.jsonl").exists() else ""
    return f"files: {directory / 'predictions.jsonl'}  {directory / 'summary.json'}  {directory / 'config.yaml'}{errors}"


def print_end_table(output_dir: str | Path, elapsed_s: float | None = None, written: int | None = None,
                    console: Console | None = None) -> bool:
    """Print :func:`end_table` on stdout; False when the run has no summary.json."""
    table = end_table(output_dir, elapsed_s, written)
    if table is None:
        return False
    console = console or Console()
    console.print(table)
    console.print(files_line(output_dir), soft_wrap=True, highlight=False)  # never wrapped: paths stay copyable
    return True

