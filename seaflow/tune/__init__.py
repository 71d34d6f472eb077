"""``seaflow tune``: the method chosen on the user's own prompts, at the user's budget.

    seaflow tune --config my_task.yaml --budget 400GFLOPs [--methods a,b] [--prompts 24] [--confirm 24]
                 [--judge auto] [--out runs/tune] [--dry-run] [--no-asking] [--seed 0]

``my_task.yaml`` is a ``seaflow predict`` config: its policy, reward, response length and
seed, and its data section, are the task (:class:`~seaflow.tune.candidates.Task`); its method
does not matter. The steps, in order:

1. **split** the prompts (after ``data.limit``) with the seed: shuffled, the first ``--prompts``
   are the tuning part, the next ``--confirm`` the confirmation part (each kept in file order);
2. **size** every candidate (seaflow/tune/candidates.py) to the budget: two runs on one batch of
   tuning prompts (``data.batch_size`` of them) at small sizes give its cost line on each axis from the records' ``cost``
   (seaflow/tune/budget.py), and the largest size within the budget is taken; a candidate that
   cannot run on the task (a message of its own) or whose smallest size costs too much is left
   out, with the reason;
3. print the **plan** and its estimated cost and run time (``--dry-run`` stops here);
4. run every candidate on the **tuning** part and rank by the judge (seaflow/tune/judging.py),
   each mean with its bootstrap interval (:func:`seaflow.report.bootstrap`), fluency beside it;
5. run the best two on the **confirmation** part and report their paired difference, its
   interval and sign-flip p-value (:func:`seaflow.report.paired_summary`);
6. write ``<out>/recommended.yaml`` (commented, runnable with ``seaflow predict --config``),
   ``<out>/tune.md`` (the table) and ``<out>/tune.json``.

The recommendation is the tuning winner, unless the confirmation reverses it (the runner-up
ahead there with p < 0.05). Every run is a ``seaflow predict`` run directory,
``<out>/cells/<candidate>/<knob>=<size>`` (its probes, tuning and confirmation prompts in one
``predictions.jsonl``), so a rerun of the same command resumes where a crash stopped it.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from seaflow.report import AXES, bootstrap, cost_of, mean_cost, paired_summary
from seaflow.data import PromptFileError
from seaflow.resume import RunMismatchError, read_records
from seaflow.tune.budget import Budget, CostFit, format_cost
from seaflow.tune.candidates import CANDIDATES, DEFAULT, Candidate, Task
from seaflow.tune.judging import SPECS, Judge, fluency, judge_from

# ``predict(config_path, callbacks)``: runs ``seaflow predict --config config_path`` in this process
# with extra Lightning callbacks (seaflow/cli.py gives it; this module never imports the CLI)
Predict = Callable[[Path, list], None]
CONFIRM_P = 0.05  # the confirmation reverses the tuning winner when the runner-up is ahead at p below this


@dataclass
class Sized:
    """A candidate with its cost lines (``fits``: axis -> CostFit) and the size the budget gives it."""

    candidate: Candidate
    fits: dict[str, CostFit] = field(default_factory=dict)
    size: int | None = None
    reason: str | None = None  # why it is left out

    def cost(self, axis: str) -> float:
        return self.fits[axis](self.size) if self.size is not None else math.nan


@dataclass
class Result:
    """A candidate's tuning run: the judge, the reward and fluency over the tuning prompts, its cost per prompt."""

    sized: Sized
    judge: tuple[float, float, float]
    reward: float
    nll: float
    costs: dict[str, float]
    prompts: int

    @property
    def name(self) -> str:
        return self.sized.candidate.name

    @property
    def label(self) -> str:
        return self.sized.candidate.label(self.sized.size)


class Tuner:
    """The steps of the module docstring on one task, one budget and one output directory."""

    def __init__(self, task: Task, budget: Budget, candidates: list[Candidate], judge: Judge, tuning: list[str],
                 confirmation: list[str], out: Path, predict: Predict, asking: bool = True, log=None):
        self.task, self.budget, self.judge = task, budget, judge
        self.candidates = candidates
        self.tuning, self.confirmation = tuning, confirmation
        self.out = out
        self.predict = predict
        self.asking = asking
        self.log = log or (lambda text: print(text, file=sys.stderr, flush=True))
        self.timings_path = out / "timings.json"
        saved = json.loads(self.timings_path.read_text()) if self.timings_path.exists() else {}
        self.timings = {cell: runs for cell, runs in saved.items() if isinstance(runs, list)}  # cell -> its runs' seconds

    # -- cells ------------------------------------------------------------------------------------

    def directory(self, candidate: Candidate, size: int) -> Path:
        return self.out / "cells" / candidate.name / candidate.label(size)

    def records(self, candidate: Candidate, size: int, ids: list[str]) -> list[dict[str, Any]]:
        """The cell's records of ``ids`` (those written), in the order of ``ids``."""
        written = {r["id"]: r for r in read_records(self.directory(candidate, size) / "predictions.jsonl")}
        return [written[i] for i in ids if i in written]

    def run(self, candidate: Candidate, size: int, ids: list[str], bar=None) -> list[dict[str, Any]]:
        """Run ``candidate`` at ``size`` on the prompts ``ids`` not yet written (its run directory resumes)."""
        directory = self.directory(candidate, size)
        done = len(self.records(candidate, size, ids))
        if bar is not None:
            bar.skip(done)
        if done < len(ids):
            config = self.task.cell_config(candidate, size, ids, directory)
            path = self.out / "configs" / candidate.name / f"{candidate.label(size)}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
            before = {r["id"] for r in self.records(candidate, size, ids)}
            started = time.perf_counter()
            try:
                self.predict(path, [bar.callback(f"{candidate.name} {candidate.label(size)}")] if bar is not None else [])
            finally:  # a stopped or failed run's time counts too
                seconds = time.perf_counter() - started
                new = [r for r in self.records(candidate, size, ids) if r["id"] not in before]
                self.timings.setdefault(f"{candidate.name}/{candidate.label(size)}", []).append(
                    {"seconds": seconds, "prompts": len(new), "records_s": sum(cost_of(r, "wall") or 0.0 for r in new)})
                self.timings_path.write_text(json.dumps(self.timings, indent=1))
        return self.records(candidate, size, ids)

    # -- 2. size ----------------------------------------------------------------------------------

    def size(self, candidate: Candidate) -> Sized:
        """The candidate's cost lines from two runs on one batch of tuning prompts and its size within the budget."""
        sized = Sized(candidate)
        reason = self.task.applicable(candidate, self.asking)
        if reason:
            sized.reason = reason
            return sized
        probe = self.tuning[: self.probe_prompts]
        points = []
        for size in candidate.probes:
            try:
                records = self.run(candidate, size, probe)
            except (RunMismatchError, PromptFileError):
                raise  # the output directory or the prompts, not the method
            except ValueError as err:  # the method cannot run on this task (it says why)
                sized.reason = f"cannot run on this task: {str(err).splitlines()[0]}"
                return sized
            points.append((size, records))
        for axis in AXES:
            values = [(size, mean_cost(records, axis)) for size, records in points]
            if any(math.isnan(v) for _, v in values):
                continue
            sized.fits[axis] = CostFit.through(*values)
        if "wall" in sized.fits and "flops" in sized.fits and not sized.fits["wall"].grows():
            # measured seconds too noisy to show growth: seconds per FLOP at the larger probe, times the FLOPs line
            _, records = points[-1]
            rate = mean_cost(records, "wall") / max(mean_cost(records, "flops"), 1.0)
            flops = sized.fits["flops"]
            sized.fits["wall"] = CostFit(flops.intercept * rate, flops.slope * rate)
        fit = sized.fits.get(self.budget.axis)
        if fit is None:
            sized.reason = f"its records carry no cost.{AXES[self.budget.axis][0]}"
            return sized
        sized.size = fit.largest_within(self.budget.value, candidate.smallest, candidate.largest)
        if sized.size is None:
            sized.reason = (f"its smallest size ({candidate.label(candidate.smallest)}) costs "
                            f"{self.budget.format(fit(candidate.smallest))} per prompt, over the budget")
        return sized

    # -- 3. the plan ------------------------------------------------------------------------------

    @property
    def probe_prompts(self) -> int:
        """Prompts of a probe: one batch of the task's ``data.batch_size`` (its seconds per prompt are a batch's)."""
        return max(1, min(int(self.task.data.get("batch_size") or 4), len(self.tuning)))

    def runs_seconds(self) -> float:
        """Seconds every run of this output directory took, over every invocation (a resumed tune's too)."""
        return sum(t["seconds"] for runs in self.timings.values() for t in runs)

    def overhead(self) -> float:
        """Seconds a run spends outside its records' wall time (loading the models): the smallest measured."""
        spent = [t["seconds"] - t["records_s"] for runs in self.timings.values() for t in runs if t["prompts"]]
        return max(min(spent), 0.0) if spent else 5.0

    def estimate(self, plan: list[Sized]) -> dict[str, float]:
        """Estimated seconds and FLOPs of the tuning runs and of the confirmation (its two costliest candidates)."""
        ready = [s for s in plan if s.size is not None]
        overhead = self.overhead()
        tuning = [overhead + max(s.cost("wall"), 0.0) * len(self.tuning) for s in ready]
        confirm = sorted((overhead + max(s.cost("wall"), 0.0) * len(self.confirmation) for s in ready), reverse=True)[:2]
        flops = [max(s.cost("flops"), 0.0) for s in ready]
        costliest = sorted(flops, reverse=True)[:2]
        return {"tuning_s": sum(tuning), "confirmation_s": sum(confirm),
                "tuning_flops": sum(flops) * len(self.tuning), "confirmation_flops": sum(costliest) * len(self.confirmation)}

    def plan_lines(self, plan: list[Sized], estimate: dict[str, float]) -> list[str]:
        lines = [f"plan: {len([s for s in plan if s.size is not None])} candidates at {self.budget.describe()}, "
                 f"{len(self.tuning)} tuning prompts, {len(self.confirmation)} confirmation prompts; judge: {self.judge.name}",
                 "", "| candidate | prompt | size | GFLOPs/prompt | s/prompt | depth |", "|---|---|---|---|---|---|"]
        for s in plan:
            c = s.candidate
            if s.size is None:
                lines.append(f"| {c.name} | {c.prompt} | left out: {s.reason} | | | |")
                continue
            note = "" if s.fits[self.budget.axis].grows() else f" (the largest: its {self.budget.axis} does not grow with {c.knob})"
            lines.append(f"| {c.name} | {c.prompt} | {c.label(s.size)}{note} | {s.cost('flops') / 1e9:.3g} | "
                         f"{s.cost('wall'):.3g} | {s.cost('depth'):.0f} |")
        lines += ["", f"estimated: {minutes(estimate['tuning_s'])} for the tuning runs, {minutes(estimate['confirmation_s'])} for "
                  f"the confirmation; {(estimate['tuning_flops'] + estimate['confirmation_flops']) / 1e12:.3g} TFLOPs in all "
                  f"(from the probes: one batch of {self.probe_prompts} prompts at each of two small sizes)"]
        return lines

    # -- 4. tuning, 5. confirmation ---------------------------------------------------------------------

    def result(self, sized: Sized, records: list[dict[str, Any]]) -> Result:
        judged = [self.judge(r) for r in records]
        costs = {axis: statistics.fmean([cost_of(r, axis) or 0.0 for r in records]) for axis in AXES}
        nll = [fluency(r) for r in records]
        rewards = [r["reward"] for r in records if r.get("reward") is not None]
        return Result(sized, bootstrap(judged), statistics.fmean(rewards) if rewards else math.nan,
                      statistics.fmean(v for v in nll if v is not None) if any(v is not None for v in nll) else math.nan,
                      costs, len(records))

    def rank(self, results: list[Result]) -> list[Result]:
        """Highest judge mean first; a tie goes to the cheaper on the budget's axis."""
        usable = [r for r in results if not math.isnan(r.judge[0])]
        return sorted(usable, key=lambda r: (-r.judge[0], r.costs[self.budget.axis]))

    def confirm(self, first: Result, second: Result, bar=None) -> dict[str, Any]:
        """Both on the confirmation prompts, paired by prompt: first minus second."""
        mine = {r["id"]: r for r in self.run(first.sized.candidate, first.sized.size, self.confirmation, bar)}
        theirs = {r["id"]: r for r in self.run(second.sized.candidate, second.sized.size, self.confirmation, bar)}
        pairs = [(self.judge(mine[i]), self.judge(theirs[i])) for i in self.confirmation if i in mine and i in theirs]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        if not pairs:
            return {"prompts": 0}
        summary = paired_summary([a - b for a, b in pairs])
        return {**summary, "first": first.name, "second": second.name, "first_mean": statistics.fmean(a for a, _ in pairs),
                "second_mean": statistics.fmean(b for _, b in pairs)}

    # -- all of it ----------------------------------------------------------------------------------

    def __call__(self, dry_run: bool = False) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        self.log(f"seaflow tune: sizing {len(self.candidates)} candidates to {self.budget.describe()} "
                 f"(two runs each on {self.probe_prompts} tuning prompt(s), at small sizes)")
        plan = []
        for candidate in self.candidates:
            sized = self.size(candidate)
            self.log(f"  {candidate.name}: " + (sized.reason and f"left out: {sized.reason}"
                                                 or f"{candidate.label(sized.size)} ({format_cost(self.budget.axis, sized.cost(self.budget.axis))} per prompt)"))
            plan.append(sized)
        estimate = self.estimate(plan)
        text = self.plan_lines(plan, estimate)
        print("\n".join(text), flush=True)
        (self.out / "plan.md").write_text("\n".join(text) + "\n")
        ready = [s for s in plan if s.size is not None]
        if dry_run:
            return {"plan": plan, "estimate": estimate}
        if not ready:
            raise ValueError(f"no candidate fits {self.budget.describe()} on this task: raise --budget, or see the reasons above")
        bar = CellBar(len(ready) * len(self.tuning) + 2 * len(self.confirmation) * (len(ready) > 1))
        with bar:
            results = [self.result(s, self.run(s.candidate, s.size, self.tuning, bar)) for s in ready]
            ranked = self.rank(results)
            confirmation = self.confirm(ranked[0], ranked[1], bar) if len(ranked) > 1 and self.confirmation else {"prompts": 0}
        chosen = ranked[0]
        if confirmation.get("prompts") and confirmation["diff"] < 0 and confirmation["p"] < CONFIRM_P:
            chosen = ranked[1]
        path = self.write_config(chosen, confirmation)
        elapsed = time.perf_counter() - started
        table = self.table(ranked, [s for s in plan if s.size is None], confirmation, chosen, path, elapsed, estimate)
        print("\n".join(table), flush=True)
        (self.out / "tune.md").write_text("\n".join(table) + "\n")
        summary = {
            "budget": {"axis": self.budget.axis, "value": self.budget.value}, "judge": self.judge.name,
            "tuning": self.tuning, "confirmation_ids": self.confirmation,
            "ranked": [{"candidate": r.name, "size": r.label, "judge": r.judge, "reward": r.reward, "nll_per_token": r.nll,
                        "costs": r.costs, "prompts": r.prompts} for r in ranked],
            "left_out": {s.candidate.name: s.reason for s in plan if s.size is None},
            "confirmation": confirmation, "recommended": {"candidate": chosen.name, "size": chosen.label, "config": str(path)},
            "estimate": estimate, "elapsed_s": elapsed, "runs_s": self.runs_seconds(),
        }
        (self.out / "tune.json").write_text(json.dumps(summary, indent=1))
        return summary

    # -- 6. what it writes --------------------------------------------------------------------------

    def write_config(self, chosen: Result, confirmation: dict[str, Any]) -> Path:
        candidate, size = chosen.sized.candidate, chosen.sized.size
        config = self.task.cell_config(candidate, size, None, self.out / "recommended_run")
        config["trainer"] = {"inference_mode": False, **(self.task.config.get("trainer") or {})}
        header = [
            f"{candidate.summary} ({candidate.label(size)}): seaflow tune's choice for {self.task.path.name}",
            f"at {self.budget.describe()} ({self.budget.format(chosen.costs[self.budget.axis])} measured), ranked by "
            f"{self.judge.name} on {len(self.tuning)} tuning prompts.",
            confirmation_line(confirmation),
            f"Evidence on seaflow's own tasks: {candidate.evidence}",
            f"    seaflow predict --config {self.out / 'recommended.yaml'}",
        ]
        text = commented_yaml(config, self.task.comments(candidate, size), header, f"as in {self.task.path.name}")
        path = self.out / "recommended.yaml"
        path.write_text(text)
        return path

    def table(self, ranked: list[Result], left_out: list[Sized], confirmation: dict[str, Any], chosen: Result, path: Path,
              elapsed: float, estimate: dict[str, float]) -> list[str]:
        warning = "" if not self.judge.optimised else " (the reward the methods optimise: a gain here may be reward hacking)"
        lines = [
            f"seaflow tune: {self.task.path.name} at {self.budget.describe()}; {len(self.tuning)} tuning prompts; "
            f"judge: {self.judge.name}{warning}; NLL/token: the policy's, lower is more fluent", "",
            "| rank | candidate | size | judge [95% CI] | reward | NLL/token | GFLOPs/prompt | s/prompt | depth |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for i, r in enumerate(ranked, 1):
            mean, low, high = r.judge
            lines.append(f"| {i} | {r.name} | {r.label} | {mean:.3f} [{low:.3f}, {high:.3f}] | {r.reward:.3f} | {r.nll:.2f} | "
                         f"{r.costs['flops'] / 1e9:.3g} | {r.costs['wall']:.2f} | {r.costs['depth']:.0f} |")
        for s in left_out:
            lines.append(f"| - | {s.candidate.name} | left out: {s.reason} | | | | | | |")
        lines += ["", confirmation_line(confirmation),
                  f"recommended: {chosen.name} ({chosen.label}) -> {path}   (seaflow predict --config {path})",
                  f"its runs took {minutes(self.runs_seconds())} in all, probes included ({minutes(elapsed)} in this "
                  f"invocation; estimated {minutes(estimate['tuning_s'] + estimate['confirmation_s'])} after the probes)"]
        return lines


def confirmation_line(confirmation: dict[str, Any]) -> str:
    if not confirmation.get("prompts"):
        return "no confirmation: fewer than two candidates ran, or no confirmation prompts"
    c = confirmation
    verdict = ("confirmed" if c["diff"] > 0 and c["p"] < CONFIRM_P else
               f"reversed: {c['second']} is ahead, it is recommended" if c["diff"] < 0 and c["p"] < CONFIRM_P else
               "the two are not distinguishable on these prompts")
    return (f"confirmation on {c['prompts']} other prompts: {c['first']} - {c['second']} = {c['diff']:+.3f} "
            f"[{c['low']:+.3f}, {c['high']:+.3f}], p {c['p']:.3f} (sign-flip), {c['wins']} / {c['ties']} / {c['losses']} "
            f"wins / ties / losses: {verdict}")


def minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


# -- the commented config ---------------------------------------------------------------------------


def scalar(value: Any) -> str:
    """One YAML value on one line (a list or mapping in flow style)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True).strip()
    return text[: -len("...")].strip() if text.endswith("\n...") or text == "..." else text


def commented_yaml(config: dict[str, Any], comments: dict[str, str], header: list[str], default: str) -> str:
    """``config`` as YAML with a comment on every key (``comments`` by dotted key, else ``default``)."""
    lines = [f"# {line}" for line in header]

    def emit(mapping: dict[str, Any], path: str, indent: int) -> None:
        for key, value in mapping.items():
            dotted = f"{path}.{key}" if path else str(key)
            comment = comments.get(dotted, default)
            if isinstance(value, dict) and value:
                lines.append(f"{'  ' * indent}{key}:".ljust(38) + f"  # {comment}")
                emit(value, dotted, indent + 1)
            else:
                lines.append(f"{'  ' * indent}{key}: {scalar(value)}".ljust(38) + f"  # {comment}")

    emit(config, "", 0)
    return "\n".join(lines) + "\n"


# -- the progress bar over every cell ----------------------------------------------------------------


class CellBar:
    """One progress bar over every prompt of every tuning and confirmation run (seaflow.console.StepBar)."""

    def __init__(self, total: int):
        from seaflow.console import StepBar

        self.bar = StepBar(total, "seaflow tune")

    def __enter__(self) -> "CellBar":
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    def skip(self, prompts: int) -> None:
        """Count prompts a run wrote before (a resumed run)."""
        self.bar.done += prompts
        self.bar.progress.update(self.bar.task, completed=self.bar.done, prompts=self.bar.done)

    def callback(self, description: str):
        """A Lightning callback that moves this bar through one run's batches."""
        from contextlib import ExitStack

        import lightning as L

        from seaflow.progress import listen

        bar = self.bar

        class CellProgress(L.Callback):
            def __init__(self):
                self.listening = ExitStack()

            def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
                bar.progress.update(bar.task, description=description)
                bar.begin_batch(len(batch["id"]))
                self.listening.enter_context(listen(bar.update))

            def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
                self.listening.close()
                bar.end_batch()

            def on_exception(self, trainer, pl_module, exception):
                self.listening.close()

        return CellProgress()


# -- the command line ----------------------------------------------------------------------------------


def prompt_rows(task: Task) -> list[dict[str, Any]]:
    """The task's prompts as ``seaflow predict`` reads them (``data.ids`` and ``data.limit`` applied)."""
    from seaflow.data import read_prompts

    data = task.data
    rows = read_prompts(data["path"], data.get("prompt_field", "prompt"), data.get("id_field", "id"), keep=("task",),
                        split=data.get("split", "train"), dataset_config=data.get("dataset_config"),
                        messages_field=data.get("messages_field", "messages"), drop_final_reply=data.get("drop_final_reply", False))
    if data.get("ids") is not None:
        wanted = {str(i) for i in data["ids"]}
        rows = [r for r in rows if r["id"] in wanted]
    if data.get("task"):
        rows = [{**r, "task": data["task"]} for r in rows]
    return rows[: data["limit"]] if data.get("limit") else rows


def split(ids: list[str], tuning: int, confirmation: int, seed: int) -> tuple[list[str], list[str]]:
    """``(tuning ids, confirmation ids)``: ``ids`` shuffled with ``seed``, the first ``tuning``, then the next
    ``confirmation``; each part in the file's order."""
    order = list(ids)
    random.Random(seed).shuffle(order)
    first, second = set(order[:tuning]), set(order[tuning : tuning + confirmation])
    return [i for i in ids if i in first], [i for i in ids if i in second]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="seaflow tune", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Choose the method for your task at your budget: every candidate on your tuning prompts, "
                    "the best two confirmed on other prompts, the winner written as a seaflow predict config.",
        epilog="e.g.  seaflow tune --config configs/sentiment_asked.yaml --budget 400GFLOPs --prompts 4 --dry-run\n"
               "candidates: " + ", ".join(CANDIDATES) + "\n(docs/tune.md: what each one is, how the split and the sizes are chosen)")
    ap.add_argument("--config", required=True, help="your seaflow predict config: policy, reward, max_new_tokens, data")
    ap.add_argument("--budget", required=True, help="per prompt: GFLOPs (400GFLOPs), seconds (8s) or sequential depth (depth:96)")
    ap.add_argument("--methods", default=",".join(DEFAULT),
                    help=f"candidates, comma-separated, or 'all' (default: every one but args): {', '.join(CANDIDATES)}")
    ap.add_argument("--prompts", type=int, default=None, help="tuning prompts (default: half the prompts, at most 24)")
    ap.add_argument("--confirm", type=int, default=None, help="confirmation prompts (default: as many as tuning prompts, at most the rest)")
    ap.add_argument("--judge", default="auto", help=f"what ranks the candidates: {SPECS} (default auto: the task's own judge)")
    ap.add_argument("--out", default="runs/tune", help="output directory (its run directories resume; default runs/tune)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the split into tuning and confirmation prompts (default 0)")
    ap.add_argument("--no-asking", action="store_true", help="the prompts must stay as given: leave out the asked variants")
    ap.add_argument("--dry-run", action="store_true", help="size the candidates (two runs each on one batch of prompts), print the plan and its cost, stop")
    return ap


def main(args: list[str], predict: Predict) -> dict[str, Any]:
    options = parser().parse_args(args)
    task = Task.read(options.config)
    budget = Budget.parse(options.budget)
    names = list(CANDIDATES) if options.methods == "all" else [m.strip() for m in options.methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in CANDIDATES]
    if unknown or not names:
        raise ValueError(f"--methods {options.methods!r}: {', '.join(unknown) or 'none given'} is not a candidate; "
                         f"choose among {', '.join(CANDIDATES)} (or 'all')")
    rows = prompt_rows(task)
    if len(rows) < 2:
        raise ValueError(f"{task.data['path']} has {len(rows)} prompt(s): seaflow tune needs at least 2 (one to tune on, one to confirm)")
    tuning = options.prompts if options.prompts is not None else max(1, min(24, len(rows) // 2))
    if not 1 <= tuning < len(rows):
        raise ValueError(f"--prompts {tuning}: give between 1 and {len(rows) - 1} (the task has {len(rows)} prompts; "
                         "at least one is left to confirm on)")
    confirmation = options.confirm if options.confirm is not None else min(tuning, len(rows) - tuning)
    if not 1 <= confirmation <= len(rows) - tuning:
        raise ValueError(f"--confirm {confirmation}: give between 1 and {len(rows) - tuning} (the prompts left after "
                         f"{tuning} tuning prompts)")
    tuning_ids, confirmation_ids = split([r["id"] for r in rows], tuning, confirmation, options.seed)
    tasks = {r.get("task") for r in rows}
    judge = judge_from(options.judge, tasks.pop() if len(tasks) == 1 else None)
    tuner = Tuner(task, budget, [CANDIDATES[m] for m in names], judge, tuning_ids, confirmation_ids, Path(options.out),
                  predict, asking=not options.no_asking)
    return tuner(dry_run=options.dry_run)
