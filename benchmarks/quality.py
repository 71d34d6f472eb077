"""The quality grid: tasks x methods x budgets, judged by what no method optimises.

    python benchmarks/quality.py run    [--grid configs/quality/grid.yaml] [--tasks a,b] [--methods m,n] [--budgets steps=5] [--time-limit 540]
    python benchmarks/quality.py report [--grid ...] [--no-gemma] [--boot 2000] [--x flops,wall,depth]

``run`` executes each cell (task, method, budget) as ``seaflow predict --config <method's
config for the task>`` with the task's prompts, one output directory per cell and the
budget's ``model.init_args`` override. Every method sees the same prompts and the same
per-prompt seeds. Cells resume: a finished cell is skipped, an interrupted one continues
where it stopped (the JSONL writer's resume); ``--time-limit`` stops the running cell with
SIGTERM (it finishes its batch, writes it and exits) so runs fit in short slots.

``report`` reads every cell's records and writes ``<output_dir>/results.md``,
``results.json`` and frontier plots (``frontier_reward.png``, ``frontier_judge.png``; with
``--x wall`` or ``depth`` also ``frontier_judge_wall.png`` ...): per task x method x budget
the optimised reward, the task's independent judge (:mod:`seaflow.judges`), the NLL per token
of the reply under the policy and under Gemma-3-270m (another family), FLOPs, wall time and
sequential depth per prompt (the records' ``cost``), each mean with a bootstrap 95% interval
over prompts, and the machine and load each cell ran under. Best-of-N is a curve over N read
from one run's candidates (candidate c is the same draw for every N; its FLOPs and wall time
are the run's times N/n, generation being one row per candidate after one shared pass over the
prompt, which is pro-rated too, in Best-of-N's favour; its depth is the run's). A
method with ``from: best_of_n`` and a ``reward_temperature`` is Soft Best-of-N read off the
same candidates (the draw ``seaflow.methods.SoftBestOfN`` makes), at no cost of its own. NLLs
are cached in ``<output_dir>/nll_cache.json``. The goal check compares each other method with
Best-of-N at equal FLOPs (interpolated on the curve in log-FLOPs; beyond its largest N,
against the largest N); the paired tables compare every cell with Best-of-N prompt by prompt
at equal FLOPs and at equal wall time, and with the grid's ``rivals`` (each at its cheapest
budget that costs at least as much).

A cell's ``set`` (in the method's entry) fixes further ``model.init_args`` keys, and a task's
``limit`` runs only its first prompts: a tuning grid (configs/quality/tune_search.yaml) uses both.
A task's ``recommended`` (``method/budget``) is the config docs/results.md recommends there: the
frontier plots (a grid of panels, one legend, a colour per method) mark its cost with a dashed line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seaflow import judges  # noqa: E402
from seaflow.judges import judge_value  # noqa: E402,F401  (the grid's judges: sentiment, keywords, refusal)
from seaflow.data import read_prompts  # noqa: E402
from seaflow.metrics import distinct_n  # noqa: E402
from seaflow.energies.keywords import keyword_list  # noqa: E402
from seaflow.report import (  # noqa: E402,F401  (the paired statistics are used and tested from here too)
    AXES, best_of_first, bootstrap, cost_of, equal_cost_n, paired_summary, sign_flip_p, sign_test_p, soft_best_of_first,
)
from seaflow.writer import read_records  # noqa: E402


# -- the grid ------------------------------------------------------------------------------------


def load_grid(path: str) -> dict[str, Any]:
    grid = yaml.safe_load(Path(path).read_text())
    for name in ("tasks", "methods"):
        if not grid.get(name):
            raise ValueError(f"{path}: no {name}")
    return grid


def cells(grid: dict, tasks: list[str] | None = None, methods: list[str] | None = None, budgets: list[str] | None = None):
    """``(task, method, label, config path, overrides, directory)`` in run order (methods outer).

    A method read off another's runs (``from``) yields that method's cells."""
    out = Path(grid.get("output_dir", "runs/quality"))
    for method, spec in grid["methods"].items():
        if methods and method not in methods:
            continue
        source = grid["methods"][spec.get("from", method)]
        for task in grid["tasks"]:
            if tasks and task not in tasks:
                continue
            config = source["config"].format(task=grid["tasks"][task].get("configs_from", task))
            if not Path(config).exists():
                continue  # a method without a config for this task is not part of the task's grid
            folder = out / task / spec.get("from", method)
            fixed = dict(source.get("set") or {})
            if "budgets" in source:
                for value in source["budgets"]:
                    label = f"{source['key']}={value}"
                    if budgets and label not in budgets:
                        continue
                    yield task, method, label, config, {**fixed, source["key"]: value}, folder / label
            else:
                yield task, method, "run", config, fixed, folder / "run"


def prompt_ids(grid: dict, task: str) -> list[str]:
    """The task's prompt ids (its first ``limit`` prompts when the task sets one)."""
    ids = [p["id"] for p in read_prompts(grid["tasks"][task]["prompts"])]
    limit = grid["tasks"][task].get("limit")
    return ids[:limit] if limit else ids


def done_ids(directory: Path) -> set[str]:
    return {r["id"] for r in read_records(directory / "predictions.jsonl")}


def cli_value(value) -> str:
    """A command-line value: text as it is (a quoted string would reach a choice as '"guided"'), anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def predict_command(grid: dict, task: str, config: str, overrides: dict, directory: Path) -> list[str]:
    """The ``seaflow predict`` command of one cell: the method's config, the task's prompts and
    data settings, the grid's response length, the cell's ``model.init_args`` and directory."""
    command = [
        sys.executable, "-m", "seaflow.cli", "predict", "--config", config,
        "--data.path", grid["tasks"][task]["prompts"], "--data.limit", json.dumps(grid["tasks"][task].get("limit")),
        "--model.init_args.max_new_tokens", str(grid.get("max_new_tokens", 24)),
        "--output.output_dir", str(directory),
    ]
    for key, value in overrides.items():
        command += [f"--model.init_args.{key}", cli_value(value)]
    for key, value in grid["tasks"][task].get("data", {}).items():  # the task's own data settings (an asked variant)
        command += [f"--data.{key}", cli_value(value)]
    return command


def fingerprint(grid: dict, task: str, config: str, overrides: dict) -> str:
    """A hash of everything that decides a cell's records: the method's config (parsed, so comments do
    not count), the cell's overrides, the task's prompts, limit and data settings, the response length."""
    spec = grid["tasks"][task]
    content = {
        "config": yaml.safe_load(Path(config).read_text()), "overrides": overrides,
        "prompts": spec["prompts"], "limit": spec.get("limit"), "data": spec.get("data", {}),
        "max_new_tokens": grid.get("max_new_tokens", 24),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


CELL_FILE = "cell.json"  # a cell's fingerprint and when it first ran


def check_fingerprint(grid: dict, task: str, config: str, overrides: dict, directory: Path) -> str | None:
    """None when the cell's config is the one it first ran with (or it never ran), else why not."""
    path = directory / CELL_FILE
    if not path.exists():
        return None
    recorded = json.loads(path.read_text())
    now = fingerprint(grid, task, config, overrides)
    if recorded["fingerprint"] == now:
        return None
    return (f"{directory} first ran on {recorded['first_run']} with config fingerprint {recorded['fingerprint']}; "
            f"{config}, the cell's overrides or the task's prompts have changed since (now {now}): its records are not this "
            "config's. Restore the config, or delete the directory to run the cell afresh")


def record_fingerprint(grid: dict, task: str, config: str, overrides: dict, directory: Path) -> None:
    path = directory / CELL_FILE
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"fingerprint": fingerprint(grid, task, config, overrides), "config": config,
                                    "overrides": overrides, "first_run": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))


def run(grid: dict, args) -> None:
    deadline = time.monotonic() + args.time_limit if args.time_limit else None
    for task, method, label, config, overrides, directory in cells(grid, args.tasks, args.methods, args.budgets):
        if "from" in grid["methods"][method]:
            continue  # read off another method's runs: nothing to run
        stale = check_fingerprint(grid, task, config, overrides, directory)
        if stale:
            raise SystemExit(f"quality: {task}/{method}/{label}: {stale}")
        wanted = prompt_ids(grid, task)
        if set(wanted) <= done_ids(directory):
            continue
        record_fingerprint(grid, task, config, overrides, directory)
        command = predict_command(grid, task, config, overrides, directory)
        if deadline is not None and deadline - time.monotonic() < 30:
            print(f"quality: time is up before {task}/{method}/{label}; rerun to continue", file=sys.stderr)
            return
        print(f"quality: {task}/{method}/{label}: {len(done_ids(directory))}/{len(wanted)} done, running", file=sys.stderr, flush=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        lock = cpu_lock(args.lock)
        started = time.monotonic()
        child = subprocess.Popen(command, env=env)
        try:
            child.wait(timeout=None if deadline is None else max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGTERM)  # the writer finishes the batch in flight, writes it, stops
            try:
                child.wait(timeout=args.grace)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            print(f"quality: stopped {task}/{method}/{label} at the time limit "
                  f"({len(done_ids(directory))}/{len(wanted)} prompts written); rerun to continue", file=sys.stderr)
            return
        finally:
            if lock is not None:
                lock.close()  # let a waiting job have the machine between cells
        if child.returncode != 0:
            raise SystemExit(f"quality: {task}/{method}/{label} failed (exit {child.returncode}): {' '.join(command)}")
        print(f"quality: {task}/{method}/{label} finished in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        time.sleep(1 if lock is not None else 0)


def cpu_lock(path: str | None):
    """An open file holding an exclusive ``flock`` on ``path`` (waiting for it), or None: cells
    run alone on the machine when every heavy job takes the same lock."""
    if path is None:
        return None
    import fcntl

    handle = open(path, "a")
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    return handle


# -- judging ------------------------------------------------------------------------------------


class NllCache:
    """NLL per token of (prompt, reply) under the policy and under Gemma, computed once, kept on disk.

    A reply is judged after its prompt in the judge's chat template (the policy's; Gemma, a base
    model, after the prompt and a blank line), or, for a prompt in ``raw`` (a continuation task's
    prefix), as the continuation of the prompt's text itself."""

    def __init__(self, path: Path, gemma: bool):
        self.path = path
        self.values = json.loads(path.read_text()) if path.exists() else {}
        self.use_gemma = gemma
        self.models: dict[str, Any] = {}
        self.judges: dict[str, Any] = {}
        self.raw: set[str] = set()

    @staticmethod
    def key(model: str, prompt: str, reply: str) -> str:
        return hashlib.sha1(f"{model}\0{prompt}\0{reply}".encode()).hexdigest()

    def mode(self, model: str, prompt: str) -> str:
        """The judge's name for this prompt: ``model``, or ``model-raw`` for a continuation prefix."""
        return f"{model}-raw" if prompt in self.raw else model

    def judge(self, name: str):
        if name not in self.judges:
            from seaflow.judges import Fluency, gemma_location
            from seaflow.models import EMBEDDED_DEFAULT, load_causal_lm

            model, raw = name.removesuffix("-raw"), name.endswith("-raw")
            if model not in self.models:
                started = time.perf_counter()
                self.models[model] = load_causal_lm(EMBEDDED_DEFAULT if model == "policy" else gemma_location())
                print(f"quality: loaded the {model} fluency judge in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            if raw:
                self.judges[name] = Fluency(self.models[model], chat_template=False, separator="", batch_size=8)
            elif model == "policy":
                self.judges[name] = Fluency(self.models[model], chat_template=True)
            else:
                self.judges[name] = Fluency(self.models[model], chat_template=False, batch_size=8)
        return self.judges[name]

    def fill(self, pairs: list[tuple[str, str]]) -> None:
        models = ["policy"] + (["gemma"] if self.use_gemma else [])
        for model in models:
            missing = sorted({p for p in pairs if self.key(self.mode(model, p[0]), *p) not in self.values})
            for name in sorted({self.mode(model, prompt) for prompt, _ in missing}):
                chunk = [p for p in missing if self.mode(model, p[0]) == name]
                print(f"quality: {name} NLL for {len(chunk)} replies", file=sys.stderr, flush=True)
                values = self.judge(name).nll_per_token(chunk)
                for pair, value in zip(chunk, values):
                    self.values[self.key(name, *pair)] = value
                self.path.write_text(json.dumps(self.values))

    def get(self, model: str, prompt: str, reply: str) -> float | None:
        value = self.values.get(self.key(self.mode(model, prompt), prompt, reply))
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else value

    def continuations(self, grid: dict) -> "NllCache":
        """Judge the prompts of the grid's ``context: continuation`` tasks as prefixes the reply continues."""
        for spec in grid["tasks"].values():
            if spec.get("context") == "continuation":
                self.raw |= {row["prompt"] for row in read_prompts(spec["prompts"])}
        return self


def rows_of(grid: dict, task: str, method: str, label: str, directory: Path, spec: dict) -> list[tuple[str, list[dict]]]:
    """``(budget label, per-prompt rows)``: one entry per budget (a Best-of-N run gives its whole curve)."""
    records = {r["id"]: r for r in read_records(directory / "predictions.jsonl")}
    wanted = prompt_ids(grid, task)
    if not records:
        return []
    present = [pid for pid in wanted if pid in records]
    if "curve" not in spec:
        return [(label, [row_of(records[pid], records[pid]["response"], records[pid]["reward"], 1.0) for pid in present])]
    soft = spec.get("reward_temperature")
    seed = run_seed(directory) if soft is not None else 0
    out = []
    for n in spec["curve"]:
        rows = []
        for pid in present:
            record = records[pid]
            if soft is None:
                best, reward = best_of_first(record, n)  # first maximum, as BestOfN picks
            else:
                best, reward = soft_best_of_first(record, n, soft, seed)  # SoftBestOfN's draw
            rows.append(row_of(record, record["candidate_responses"][best], reward, n / record["n"]))
        out.append((f"N={n}", rows))
    return out


def run_seed(directory: Path) -> int:
    """The run's ``model.init_args.seed`` from its config.yaml (0 when unknown)."""
    path = directory / "config.yaml"
    config = yaml.safe_load(path.read_text()) if path.exists() else {}
    return int((((config or {}).get("model") or {}).get("init_args") or {}).get("seed", 0) or 0)


def row_of(record: dict, reply: str, reward: float, share: float) -> dict:
    """One prompt's row; ``share``: the part of the record's FLOPs and wall time it stands for
    (N / n for Best-of-N read off a larger run; the depth does not shrink with N)."""
    cost = record.get("cost") or {}
    depth = cost.get("sequential_depth")
    return {
        "id": record["id"], "prompt": record["prompt"], "reply": reply, "reward": reward,
        "flops": cost.get("flops", math.nan) * share, "wall": cost.get("wall_time_s", record.get("wall_time_s", math.nan)) * share,
        "depth": math.nan if depth is None else depth, "load": cost.get("load_average"), "device": cost.get("device"),
        "record": record,
    }


def summarise(grid: dict, args, cache: "NllCache") -> tuple[list[dict], list[tuple]]:
    """The table (one entry per task x method x budget) and the per-prompt rows it was made from."""
    table = []
    entries = []
    for task, method, label, config, overrides, directory in cells(grid, args.tasks, args.methods):
        stale = check_fingerprint(grid, task, config, overrides, directory)
        if stale:
            raise SystemExit(f"quality: {task}/{method}/{label}: {stale}")
        for budget, rows in rows_of(grid, task, method, label, directory, grid["methods"][method]):
            entries.append((task, method, budget, rows))
    cache.fill([(r["prompt"], r["reply"]) for *_, rows in entries for r in rows])
    for task, method, budget, rows in entries:
        kind = grid["tasks"][task]["judge"]
        keywords = task_keywords(grid, task) if kind == "keywords" else {}  # by prompt text
        judged = [judge_value(kind, r["reply"], {"keywords": keywords_of(r, keywords)}) for r in rows]
        entry = {"task": task, "method": method, "budget": budget, "prompts": len(rows),
                 "complete": len(rows) == len(prompt_ids(grid, task))}
        columns = {
            "reward": [r["reward"] for r in rows],
            "judge": [j for j, _ in judged],
            "success": [s for _, s in judged],
            "nll_policy": [cache.get("policy", r["prompt"], r["reply"]) for r in rows],
            "nll_gemma": [cache.get("gemma", r["prompt"], r["reply"]) for r in rows],
            "flops": [r["flops"] for r in rows],
            "wall": [r["wall"] for r in rows],
            "depth": [r["depth"] for r in rows],
            "distinct_2": [distinct_n([r["reply"]], 2) for r in rows],  # within each reply: repetition lowers it
        }
        if kind == "keywords":
            repeats = [judges.keyword_repeats(r["reply"], keywords_of(r, keywords)) for r in rows]
            columns["repeats"] = [v for v in repeats if v is not None]  # occurrences per present keyword
        for name, values in columns.items():
            mean, low, high = bootstrap(values, args.boot)
            entry[name] = {"mean": mean, "low": low, "high": high}
        entry["ids"] = [r["id"] for r in rows]
        loads = [r["load"] for r in rows if r["load"] is not None]
        entry["load"] = {"mean": statistics.fmean(loads), "min": min(loads), "max": max(loads)} if loads else None
        entry["devices"] = sorted({r["device"] for r in rows if r["device"]})
        table.append(entry)
    return table, entries


# -- paired comparisons at equal FLOPs and at equal wall time ---------------------------------------


def task_keywords(grid: dict, task: str) -> dict[str, list[str]]:
    """Prompt text -> keywords for the task's rows that carry them (a prompt file or a prompt set)."""
    table = {}
    for row in read_prompts(grid["tasks"][task]["prompts"]):
        words = keyword_list(row.get("keywords"))
        if words:
            table[row["prompt"]] = words
    return table


def keywords_of(row: dict, table: dict[str, list[str]]) -> list[str] | None:
    """A row's keywords: its record's own (the prompt file's row), else looked up by prompt text."""
    return row["record"].get("keywords") or table.get(row["prompt"])


def judge_of(grid: dict, task: str):
    """``reply, row -> judge score`` for the task (``row``: an entry of :func:`rows_of`)."""
    kind = grid["tasks"][task]["judge"]
    keywords = task_keywords(grid, task) if kind == "keywords" else {}
    return lambda reply, row: judge_value(kind, reply, {"keywords": keywords_of(row, keywords)})[0]


def best_reply_of_first(record: dict, n: int) -> tuple[str, float]:
    """Best-of-``n``'s reply and reward, read from a Best-of-N record's first ``n`` candidates."""
    best, reward = best_of_first(record, n)
    return record["candidate_responses"][best], reward


def equal_flops_n(method_flops: float, bon_record: dict) -> tuple[int, bool]:
    """:func:`seaflow.report.equal_cost_n` on FLOPs."""
    return equal_cost_n(method_flops, bon_record, "flops")


def is_read_off(spec: dict) -> bool:
    """A method whose rows are read off a Best-of-N run (Best-of-N's own curve or Soft Best-of-N's)."""
    return "curve" in spec


def best_of_n_method(grid: dict) -> str | None:
    """The grid's Best-of-N (the first method with a curve of its own, not read off another)."""
    return next((m for m, spec in grid["methods"].items() if "curve" in spec and "from" not in spec), None)


PAIRED_AXES = {"flops": "equal FLOPs", "wall": "equal wall time"}


def paired_rows(grid: dict, entries: list[tuple], cache: "NllCache") -> list[dict]:
    """Every complete cell that is not read off Best-of-N against Best-of-N at equal FLOPs and at
    equal wall time, prompt by prompt.

    For each prompt, Best-of-N gets the smallest N whose cost reaches the method's on that prompt
    (read from the same prompt's N = n run: candidate c is the same draw for every N; its wall
    time pro-rated as N / n), so Best-of-N never spends less than the method unless the run's n
    is too small (counted in ``capped``)."""
    bon_method = best_of_n_method(grid)
    runs = {}
    for task, method, label, config, overrides, directory in cells(grid, None, [bon_method] if bon_method else []):
        runs[task] = {r["id"]: r for r in read_records(directory / "predictions.jsonl")}
    plans = []
    for axis in PAIRED_AXES:
        for task, method, budget, rows in entries:
            if is_read_off(grid["methods"][method]) or task not in runs or len(rows) < len(prompt_ids(grid, task)):
                continue
            pairs = []
            for row in rows:
                bon = runs[task].get(row["id"])
                if bon is None or math.isnan(row[axis]) or cost_of(bon, axis) is None:
                    continue
                n, reached = equal_cost_n(row[axis], bon, axis)
                reply, _ = best_reply_of_first(bon, n)
                pairs.append((row, reply, n, reached))
            plans.append((axis, task, method, budget, pairs))
    cache.fill([(row["prompt"], reply) for *_, pairs in plans for row, reply, _, _ in pairs])
    out = []
    for axis, task, method, budget, pairs in plans:
        if not pairs:
            continue
        judge = judge_of(grid, task)
        diffs = [judge(row["reply"], row) - judge(reply, row) for row, reply, _, _ in pairs]
        gemma = [(cache.get("gemma", row["prompt"], row["reply"]), cache.get("gemma", row["prompt"], reply))
                 for row, reply, _, _ in pairs]
        gemma = [(a, b) for a, b in gemma if a is not None and b is not None]
        entry = paired_entry(task, method, budget, diffs, gemma, [(n, reached) for _, _, n, reached in pairs])
        out.append({**entry, "axis": axis})
    return out + pooled(grid, out)


def pooled(grid: dict, out: list[dict]) -> list[dict]:
    """A task with ``pool_with`` is also reported pooled with that task (same method, budget and axis)."""
    extra = []
    for task, spec in grid["tasks"].items():
        other = spec.get("pool_with")
        for e in [e for e in out if e["task"] == task and other]:
            match = next((o for o in out if o["task"] == other and o["method"] == e["method"] and o["budget"] == e["budget"]
                          and o.get("axis") == e.get("axis") and o.get("rival") == e.get("rival")), None)
            if match is not None:
                entry = paired_entry(f"{other}+{task}", e["method"], e["budget"], match["diffs"] + e["diffs"],
                                     match["gemma"] + e["gemma"], match["n"] + e["n"])
                extra.append({**entry, **{k: e[k] for k in ("axis", "rival", "rival_budget") if k in e}})
    return extra


def rival_rows(grid: dict, entries: list[tuple], cache: "NllCache") -> list[dict]:
    """Every complete cell against each of the grid's ``rivals`` (the strongest searches), prompt by
    prompt, on FLOPs and on wall time: the rival at its cheapest budget whose mean cost reaches the
    cell's (its largest when none does, counted in ``capped``); read-off methods (Soft Best-of-N)
    give their curve's points as budgets."""
    rivals = [m for m in grid.get("rivals", []) if m in grid["methods"]]
    complete = [(task, method, budget, rows) for task, method, budget, rows in entries
                if rows and len(rows) == len(prompt_ids(grid, task))]
    out = []
    for axis in PAIRED_AXES:
        for task, method, budget, rows in complete:
            if is_read_off(grid["methods"][method]) and "from" not in grid["methods"][method]:
                continue  # Best-of-N itself: the tables above
            spent = statistics.fmean(r[axis] for r in rows)
            for rival in rivals:
                if rival == method:
                    continue
                options = sorted(((statistics.fmean(r[axis] for r in rrows), rbudget, rrows)
                                  for t, m, rbudget, rrows in complete if t == task and m == rival), key=lambda o: o[0])
                if not options or math.isnan(spent):
                    continue
                reached = [o for o in options if o[0] >= spent * (1 - 1e-9)]
                cost, rbudget, rrows = reached[0] if reached else options[-1]
                theirs = {r["id"]: r for r in rrows}
                pairs = [(r, theirs[r["id"]]) for r in rows if r["id"] in theirs]
                judge = judge_of(grid, task)
                diffs = [judge(a["reply"], a) - judge(b["reply"], b) for a, b in pairs]
                gemma = [(cache.get("gemma", a["prompt"], a["reply"]), cache.get("gemma", b["prompt"], b["reply"])) for a, b in pairs]
                gemma = [(x, y) for x, y in gemma if x is not None and y is not None]
                entry = paired_entry(task, method, budget, diffs, gemma, [])
                out.append({**entry, "axis": axis, "rival": rival, "rival_budget": rbudget, "cost_ratio": cost / spent,
                            "capped": 0 if reached else len(pairs)})
    return out + pooled(grid, out)


def paired_entry(task: str, method: str, budget: str, diffs: list[float], gemma: list[tuple[float, float]],
                 n: list[tuple[int, bool]]) -> dict:
    """One paired row: :func:`seaflow.report.paired_summary` of the judge differences (interval, wins,
    both p-values), with the cell, Best-of-N's N and the mean Gemma NLLs."""
    summary = paired_summary(diffs)
    return {
        "task": task, "method": method, "budget": budget, "prompts": len(diffs),
        "bon_n_median": statistics.median(k for k, _ in n) if n else math.nan,
        "capped": sum(not reached for _, reached in n),
        "judge_diff": summary["diff"], **{k: summary[k] for k in ("low", "high", "wins", "ties", "losses", "p", "p_sign")},
        "gemma_method": statistics.fmean(a for a, _ in gemma) if gemma else math.nan,
        "gemma_bon": statistics.fmean(b for _, b in gemma) if gemma else math.nan,
        "diffs": diffs, "gemma": gemma, "n": n,
    }


def paired_lines(paired: list[dict], axis: str = "flops") -> list[str]:
    lines = [
        f"| task | method | budget | prompts | Best-of-N at {PAIRED_AXES[axis]} (median N) | judge difference [95% CI] | wins / ties / losses | p (sign-flip) | p (sign test) | Gemma NLL method vs Best-of-N |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in paired:
        if e.get("axis", "flops") != axis:
            continue
        capped = f", {e['capped']} capped at the run's n" if e["capped"] else ""
        lines.append(
            f"| {e['task']} | {e['method']} | {e['budget']} | {e['prompts']} | N={e['bon_n_median']:g}{capped} | "
            f"{e['judge_diff']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}] | {e['wins']} / {e['ties']} / {e['losses']} | "
            f"{e['p']:.3f} | {e['p_sign']:.3f} | {e['gemma_method']:.2f} vs {e['gemma_bon']:.2f} |"
        )
    return lines


def rival_lines(rows: list[dict], axis: str) -> list[str]:
    lines = [
        f"| task | method | budget | rival (budget at {PAIRED_AXES[axis]}) | rival's cost / method's | judge difference [95% CI] | wins / ties / losses | p (sign-flip) | Gemma NLL method vs rival |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in rows:
        if e["axis"] != axis:
            continue
        ratio = f"{e['cost_ratio']:.2f}x" if "cost_ratio" in e else "(pooled)"
        capped = " (its largest: cheaper)" if e.get("capped") else ""
        lines.append(
            f"| {e['task']} | {e['method']} | {e['budget']} | {e['rival']} ({e['rival_budget']}){capped} | {ratio} | "
            f"{e['judge_diff']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}] | {e['wins']} / {e['ties']} / {e['losses']} | "
            f"{e['p']:.3f} | {e['gemma_method']:.2f} vs {e['gemma_bon']:.2f} |"
        )
    return lines


# -- reporting ----------------------------------------------------------------------------------


def fmt(cell: dict, digits: int = 3, ci: bool = True) -> str:
    if cell is None or math.isnan(cell["mean"]):
        return "-"
    text = f"{cell['mean']:.{digits}f}"
    return text + (f" [{cell['low']:.{digits}f}, {cell['high']:.{digits}f}]" if ci else "")


def goal_check(table: list[dict], grid: dict) -> list[str]:
    """Each non-Best-of-N cell against Best-of-N at equal FLOPs (judge, and Gemma NLL within 10%)."""
    lines = []
    bon_method = best_of_n_method(grid)
    for task in grid["tasks"]:
        curve = sorted((e for e in table if e["task"] == task and e["method"] == bon_method and e["complete"]),
                       key=lambda e: e["flops"]["mean"])
        if len(curve) < 2:
            continue
        for e in table:
            if e["task"] != task or e["method"] == bon_method or not e["complete"]:
                continue
            at = bon_at(curve, e["flops"]["mean"])
            better = e["judge"]["mean"] > at["judge"]
            gemma_ok = (not math.isnan(e["nll_gemma"]["mean"]) and not math.isnan(at["nll_gemma"])
                        and e["nll_gemma"]["mean"] <= 1.10 * at["nll_gemma"])
            verdict = "MEETS the goal" if better and gemma_ok else "does not meet the goal"
            lines.append(
                f"- {task} / {e['method']} {e['budget']}: judge {e['judge']['mean']:.3f} vs Best-of-N {at['judge']:.3f} "
                f"at {at['where']}; Gemma NLL {e['nll_gemma']['mean']:.2f} vs {at['nll_gemma']:.2f}: {verdict}"
            )
    return lines


def bon_at(curve: list[dict], flops: float) -> dict:
    xs = [math.log(e["flops"]["mean"]) for e in curve]
    x = math.log(flops)
    if x >= xs[-1]:
        last = curve[-1]
        return {"judge": last["judge"]["mean"], "nll_gemma": last["nll_gemma"]["mean"],
                "where": f"{last['budget']} (its largest; {flops / last['flops']['mean']:.1f}x fewer FLOPs)"}
    if x <= xs[0]:
        first = curve[0]
        return {"judge": first["judge"]["mean"], "nll_gemma": first["nll_gemma"]["mean"], "where": f"{first['budget']} (cheaper than any)"}
    i = max(k for k in range(len(xs)) if xs[k] <= x)
    w = (x - xs[i]) / (xs[i + 1] - xs[i])
    lerp = lambda name: (1 - w) * curve[i][name]["mean"] + w * curve[i + 1][name]["mean"]  # noqa: E731
    return {"judge": lerp("judge"), "nll_gemma": lerp("nll_gemma"),
            "where": f"equal FLOPs (between {curve[i]['budget']} and {curve[i + 1]['budget']})"}


def write_report(table: list[dict], grid: dict, out: Path, paired: list[dict] | None = None, rivals: list[dict] | None = None) -> None:
    judge_names = {"sentiment": "TextBlob polarity (success: > 0)", "keywords": "keyword coverage (success: all)",
                   "refusal": "refusal phrases (success: refuses)",
                   "toxicity": "1 - alt-profanity-check's offensive probability (success: > 0.5, i.e. not toxic)"}
    lines = [
        "| task | method | budget | prompts | reward | judge | success | keyword repeats | distinct-2 | NLL/token policy | NLL/token Gemma | GFLOPs/prompt | s/prompt | depth | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in table:
        load = f"{e['load']['mean']:.1f}" if e.get("load") else "-"
        repeats = fmt(e["repeats"], 2, ci=False) if "repeats" in e else "-"
        lines.append(
            f"| {e['task']} | {e['method']} | {e['budget']} | {e['prompts']}{'' if e['complete'] else ' (partial)'} | "
            f"{fmt(e['reward'])} | {fmt(e['judge'])} | {fmt(e['success'], 2, ci=False)} | {repeats} | "
            f"{fmt(e['distinct_2'], 3, ci=False)} | {fmt(e['nll_policy'], 2)} | "
            f"{fmt(e['nll_gemma'], 2)} | {e['flops']['mean'] / 1e9:.0f} | {e['wall']['mean']:.1f} | {fmt(e['depth'], 0, ci=False)} | {load} |"
        )
    judges = "; ".join(f"{t}: {judge_names[s['judge']]}" for t, s in grid["tasks"].items())
    devices = sorted({d for e in table for d in e.get("devices", [])})
    loads = [e["load"] for e in table if e.get("load")]
    machine = (f"Measured on {', '.join(devices) or 'an unrecorded device'}; 1-minute load average per cell "
               + (f"{min(x['min'] for x in loads):.1f} to {max(x['max'] for x in loads):.1f} (column load: the cell's mean)."
                  if loads else "not recorded."))
    paired_text = ""
    for axis, name in PAIRED_AXES.items():
        paired_text += (
            f"\n## Paired, prompt by prompt, against Best-of-N at {name}\n\n"
            f"Per prompt, Best-of-N gets the smallest N whose {'FLOPs' if axis == 'flops' else 'wall time (pro-rated as N/n)'} "
            "reach the method's on that prompt (from the same\n"
            "prompt's candidates); difference = method's judge - Best-of-N's judge; interval: bootstrap over prompts;\n"
            "p (sign-flip): two-sided sign-flip permutation test of a zero mean difference (the primary test);\n"
            "p (sign test): two-sided exact sign test on wins against losses (ties dropped).\n\n"
            + "\n".join(paired_lines(paired or [], axis)) + "\n"
        )
    rival_text = ""
    if rivals:
        for axis, name in PAIRED_AXES.items():
            rival_text += (
                f"\n## Paired against the strongest searches at {name}\n\n"
                "Each cell against each rival at the rival's cheapest budget whose mean cost per prompt reaches the cell's\n"
                "(its largest when none does); difference = method's judge - rival's judge, paired by prompt.\n\n"
                + "\n".join(rival_lines(rivals, axis)) + "\n"
            )
    text = (
        "# Quality grid\n\nMeans over prompts with bootstrap 95% intervals. Judges: " + judges + ".\n"
        "Best-of-N rows for N < n are read from the N = n run's candidates (FLOPs and wall time scaled by N/n, depth the run's);\n"
        "Soft Best-of-N rows (a method read off Best-of-N) from the same candidates. Depth: model calls one after another\n"
        "(seaflow/cost.py). " + machine + "\n\n"
        + "\n".join(lines) + "\n\n## Goal check (judge higher than Best-of-N at equal FLOPs, Gemma NLL within 10%)\n\n"
        + "\n".join(goal_check(table, grid) or ["- no complete non-Best-of-N cell yet"]) + "\n"
        + paired_text + rival_text
    )
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps(table, indent=1))
    print(text)


def method_colours(grid: dict) -> dict[str, Any]:
    """One colour per method of the grid, by its place in the grid's ``methods``: the same in every plot."""
    import matplotlib

    shades = matplotlib.colormaps["tab20"].colors
    palette = shades[0::2] + shades[1::2]  # ten distinct hues first, then their light shades
    return {method: palette[i % len(palette)] for i, method in enumerate(grid["methods"])}


def recommended_cell(grid: dict, task: str) -> tuple[str, str] | None:
    """``(method, budget label)`` of the task's ``recommended`` entry (``method/budget``), None without one."""
    entry = grid["tasks"][task].get("recommended")
    if not entry:
        return None
    method, _, budget = entry.partition("/")
    return method, budget


def plot(table: list[dict], grid: dict, out: Path, axes: tuple[str, ...] = ("flops",), columns: int = 3) -> list[Path]:
    """Frontier plots: reward and judge against each of ``axes`` (``frontier_judge.png`` for FLOPs,
    ``frontier_judge_wall.png`` for wall time, ``frontier_judge_depth.png`` for depth).

    One panel per task in a grid of ``columns`` panels a row (readable at page width), one legend
    for the figure, each method in its colour of :func:`method_colours` in every plot, and the cost
    of the task's recommended config (its ``recommended: method/budget`` in the grid) marked by a
    dashed line in that method's colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    colours = method_colours(grid)
    tasks = [t for t in grid["tasks"] if any(e["task"] == t for e in table)]
    columns = max(1, min(columns, len(tasks)))
    rows = max(1, math.ceil(len(tasks) / columns))
    written = []
    for axis in axes:
        for column, name in (("reward", "optimised reward"), ("judge", "independent judge")):
            fig, panels = plt.subplots(rows, columns, figsize=(4.0 * columns, 3.3 * rows), squeeze=False)
            handles = {}
            for ax, task in zip(panels.flat, tasks):
                for method in grid["methods"]:
                    points = sorted((e for e in table if e["task"] == task and e["method"] == method and e["complete"]),
                                    key=lambda e: (e[axis]["mean"], e["flops"]["mean"]))
                    if not points:
                        continue
                    xs = [e[axis]["mean"] for e in points]
                    ys = [e[column]["mean"] for e in points]
                    err = [[y - e[column]["low"] for y, e in zip(ys, points)], [e[column]["high"] - y for y, e in zip(ys, points)]]
                    drawn = ax.errorbar(xs, ys, yerr=err, marker="o", markersize=4, capsize=2, color=colours[method], label=method)
                    handles.setdefault(method, drawn)
                    for x, y, e in zip(xs, ys, points):
                        ax.annotate(e["budget"].split("=")[-1], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
                chosen = recommended_cell(grid, task)
                cell = next((e for e in table if chosen and e["task"] == task and (e["method"], e["budget"]) == chosen
                             and e["complete"]), None)
                if cell is not None:
                    ax.axvline(cell[axis]["mean"], color=colours.get(cell["method"], "black"), linestyle="--", linewidth=1.2)
                    handles.setdefault("recommended config's cost (dashed, in its method's colour)",
                                       Line2D([], [], color="black", linestyle="--", linewidth=1.2))
                ax.set_xscale("log")
                ax.set_title(f"{task}: {grid['tasks'][task]['judge'] if column == 'judge' else 'reward'}", fontsize=9)
                ax.set_xlabel(AXES[axis][1], fontsize=8)
                ax.set_ylabel(name, fontsize=8)
                ax.tick_params(labelsize=7)
                ax.grid(alpha=0.3)
            for ax in list(panels.flat)[len(tasks):]:
                ax.axis("off")
            fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 5), fontsize=8,
                       frameon=False, bbox_to_anchor=(0.5, 0.0))
            legend_rows = math.ceil(len(handles) / 5) if handles else 0
            fig.tight_layout(rect=(0, 0.035 * legend_rows / rows + 0.02 * legend_rows, 1, 1))
            path = out / f"frontier_{column}{'' if axis == 'flops' else '_' + axis}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["run", "report"])
    ap.add_argument("--grid", default="configs/quality/grid.yaml")
    ap.add_argument("--tasks", type=lambda s: s.split(","), default=None)
    ap.add_argument("--methods", type=lambda s: s.split(","), default=None)
    ap.add_argument("--budgets", type=lambda s: s.split(","), default=None, help="run only these budget labels, e.g. steps=5")
    ap.add_argument("--time-limit", type=float, default=None, help="seconds; stop the running cell (resumable) after it")
    ap.add_argument("--grace", type=float, default=240, help="seconds a stopped cell gets to write its batch")
    ap.add_argument("--lock", default=None, help="a lock file every heavy job on the machine takes: each cell waits for it and runs alone")
    ap.add_argument("--no-gemma", action="store_true", help="skip the Gemma NLL column (its model loads slowly)")
    ap.add_argument("--boot", type=int, default=2000, help="bootstrap resamples")
    ap.add_argument("--x", type=lambda s: s.split(","), default=["flops"],
                    help="x axes of the frontier plots, comma-separated: flops, wall, depth (default flops)")
    args = ap.parse_args()
    unknown = [axis for axis in args.x if axis not in AXES]
    if unknown:
        ap.error(f"--x {','.join(unknown)}: not an axis; use flops, wall or depth")
    os.chdir(ROOT)
    grid = load_grid(args.grid)
    if args.command == "run":
        run(grid, args)
        return
    import torch

    torch.set_num_threads(2)
    out = Path(grid.get("output_dir", "runs/quality"))
    out.mkdir(parents=True, exist_ok=True)
    cache = NllCache(out / "nll_cache.json", gemma=not args.no_gemma).continuations(grid)
    table, entries = summarise(grid, args, cache)
    paired = paired_rows(grid, entries, cache)
    rivals = rival_rows(grid, entries, cache)
    write_report(table, grid, out, paired, rivals)
    (out / "paired.json").write_text(json.dumps(paired + rivals, indent=1))
    plot(table, grid, out, tuple(args.x))


if __name__ == "__main__":
    main()
