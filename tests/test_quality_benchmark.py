"""benchmarks/quality.py: the statistics of its paired comparisons, and the grid read from records on disk
(Best-of-N and Soft Best-of-N read off one run, equal FLOPs and equal wall time, rivals)."""

import importlib.util
import itertools
import json
import math
import types
import statistics
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("quality", Path(__file__).resolve().parent.parent / "benchmarks" / "quality.py")
quality = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quality)


def test_sign_flip_p_matches_direct_enumeration():
    # all 5 differences positive: only the all-positive and all-negative sign vectors reach |sum|
    assert quality.sign_flip_p([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(2 / 32)
    diffs = [0.3, -0.1, 0.2, 0.0, 0.5, -0.4]
    direct = sum(abs(sum(s * d for s, d in zip(signs, diffs))) >= abs(sum(diffs)) - 1e-12
                 for signs in itertools.product((1, -1), repeat=len(diffs))) / 2 ** len(diffs)
    assert quality.sign_flip_p(diffs) == pytest.approx(direct)
    assert quality.sign_flip_p([0.0] * 4) == 1.0


def test_sign_flip_p_monte_carlo_agrees_with_normal_approximation():
    diffs = [0.2 * ((-1) ** (i % 3 == 0)) + 0.05 for i in range(40)]
    z = abs(sum(diffs)) / math.sqrt(sum(d * d for d in diffs))  # conditional variance of the sign-flip sum
    normal = math.erfc(z / math.sqrt(2))
    assert quality.sign_flip_p(diffs, draws=40000) == pytest.approx(normal, abs=0.03)


def test_equal_flops_n_gives_best_of_n_at_least_the_method_flops():
    record = {"n": 64, "cost": {"flops": 64e9}}  # 1 GFLOP per candidate
    assert quality.equal_flops_n(10.2e9, record) == (11, True)
    assert quality.equal_flops_n(10e9, record) == (10, True)
    assert quality.equal_flops_n(0.3e9, record) == (1, True)
    assert quality.equal_flops_n(100e9, record) == (64, False)  # capped: Best-of-N spends less


def test_best_reply_of_first_picks_the_first_maximum_among_the_first_n():
    record = {"candidate_rewards": [0.1, 0.5, 0.5, 0.9], "candidate_responses": ["a", "b", "c", "d"]}
    assert quality.best_reply_of_first(record, 1) == ("a", 0.1)
    assert quality.best_reply_of_first(record, 3) == ("b", 0.5)
    assert quality.best_reply_of_first(record, 4) == ("d", 0.9)


def test_the_paired_interval_brackets_the_mean():
    diffs = [0.1, 0.3, -0.2, 0.4, 0.0, 0.25, 0.15, -0.05]
    entry = quality.paired_entry("t", "m", "b", diffs, [], [(1, True)] * len(diffs))
    low, high = entry["low"], entry["high"]
    assert low < statistics.fmean(diffs) < high
    assert low > min(diffs) and high < max(diffs)


def test_every_benchmark_resamples_with_the_reports_bootstrap():
    """One bootstrap (seaflow.report.bootstrap): no benchmark keeps a copy that could drift."""
    for script in (Path(__file__).resolve().parent.parent / "benchmarks").glob("*.py"):
        assert ".choices(" not in script.read_text(), f"{script.name} resamples by itself: use seaflow.report.bootstrap"


def test_sign_test_p_is_the_exact_binomial_tail():
    assert quality.sign_test_p(5, 0) == pytest.approx(2 / 32)
    assert quality.sign_test_p(18, 6) == pytest.approx(2 * sum(math.comb(24, k) for k in range(7)) / 2 ** 24)
    assert quality.sign_test_p(3, 3) == 1.0
    assert quality.sign_test_p(0, 0) == 1.0


WORDS = ["awful", "bad", "fine", "good", "great", "wonderful", "terrible", "nice"]


class NoNll:
    """Stands in for the NLL cache (no model is loaded)."""

    def fill(self, pairs):
        pass

    def get(self, model, prompt, reply):
        return None


def write_run(directory: Path, records: list[dict], seed: int = 0) -> None:
    directory.mkdir(parents=True)
    (directory / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (directory / "config.yaml").write_text(f"model:\n  init_args:\n    seed: {seed}\n")


@pytest.fixture
def grid(tmp_path, monkeypatch):
    """A grid of 4 prompts: Best-of-8 (1 GFLOP and 0.1 s per candidate, depth 24), Soft Best-of-N read off
    it, and a method at two budgets; the method wins on 3 of 4 prompts."""
    # the sentiment judge without TextBlob (an optional package): a small polarity lexicon
    polarity = {"awful": -1.0, "terrible": -1.0, "bad": -0.7, "fine": 0.2, "nice": 0.6, "good": 0.7, "great": 0.8, "wonderful": 1.0}
    monkeypatch.setattr(quality.judges, "sentiment_polarity",
                        lambda text: statistics.fmean([polarity[w] for w in text.split() if w in polarity] or [0.0]))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"prompt {i}"}) + "\n" for i in range(4)))
    out = tmp_path / "runs"
    bon = []
    for i in range(4):
        rewards = [0.1 * ((i + c) % 5) for c in range(8)]
        bon.append({"id": f"p{i}", "prompt": f"prompt {i}", "n": 8, "reward": max(rewards), "response": "x",
                    "candidate_rewards": rewards, "candidate_responses": [f"a {WORDS[(i + c) % 8]} day" for c in range(8)],
                    "cost": {"flops": 8e9, "wall_time_s": 0.8, "sequential_depth": 24, "load_average": 1.5, "device": "cpu (2 threads)"}})
    write_run(out / "task" / "best_of_n" / "run", bon)
    for budget, flops, wall in ((2, 3e9, 0.5), (4, 6e9, 0.9)):
        write_run(out / "task" / "method" / f"steps={budget}", [
            {"id": f"p{i}", "prompt": f"prompt {i}", "reward": 1.0, "response": "a wonderful day" if i else "an awful day",
             "cost": {"flops": flops, "wall_time_s": wall, "sequential_depth": 40 * budget, "load_average": 2.0, "device": "cpu (2 threads)"}}
            for i in range(4)])
    spec = {
        "output_dir": str(out), "max_new_tokens": 24, "rivals": ["soft", "method"],
        "tasks": {"task": {"prompts": str(prompts), "judge": "sentiment", "limit": 4}},
        "methods": {
            "best_of_n": {"config": str(prompts), "curve": [1, 2, 4, 8]},
            "soft": {"from": "best_of_n", "curve": [2, 8], "reward_temperature": 0.05},
            "method": {"config": str(prompts), "key": "steps", "budgets": [2, 4], "set": {"alpha": 5}},
        },
    }
    return spec


def test_cells_read_off_methods_and_fixed_settings(grid):
    cells = list(quality.cells(grid))
    soft = [c for c in cells if c[1] == "soft"]
    assert [c[5].name for c in soft] == ["run"] and soft[0][5].parent.name == "best_of_n"  # Best-of-N's run, no run of its own
    method = [c for c in cells if c[1] == "method"]
    assert [c[4] for c in method] == [{"alpha": 5, "steps": 2}, {"alpha": 5, "steps": 4}]
    assert quality.prompt_ids({**grid, "tasks": {"task": {**grid["tasks"]["task"], "limit": 2}}}, "task") == ["p0", "p1"]


def test_a_cell_command_passes_text_as_text_and_the_rest_as_json(grid):
    """A `set` of text (decode: guided) reaches the CLI unquoted; numbers, null and lists as JSON."""
    grid["tasks"]["task"]["data"] = {"system_prompt": "Be kind.", "batch_size": 2}
    command = quality.predict_command(grid, "task", "c.yaml", {"decode": "guided", "alpha": 5, "init_pool": None, "ks": [1, 2]},
                                      Path("out"))
    pairs = dict(zip(command[4::2], command[5::2]))
    assert pairs["--model.init_args.decode"] == "guided" and pairs["--model.init_args.alpha"] == "5"
    assert pairs["--model.init_args.init_pool"] == "null" and pairs["--model.init_args.ks"] == "[1, 2]"
    assert pairs["--data.system_prompt"] == "Be kind." and pairs["--data.batch_size"] == "2"
    assert pairs["--data.limit"] == "4" and pairs["--output.output_dir"] == "out"


def test_rows_read_soft_best_of_n_off_the_best_of_n_run(grid):
    (task, _, label, _, _, directory), = [c for c in quality.cells(grid) if c[1] == "soft"]
    rows = dict(quality.rows_of(grid, task, "soft", label, directory, grid["methods"]["soft"]))
    records = {r["id"]: r for r in quality.read_records(directory / "predictions.jsonl")}
    for row in rows["N=2"]:
        best, reward = quality.soft_best_of_first(records[row["id"]], 2, 0.05, 0)
        assert row["reward"] == reward and row["reply"] == records[row["id"]]["candidate_responses"][best]
        assert row["flops"] == pytest.approx(2e9) and row["wall"] == pytest.approx(0.2) and row["depth"] == 24


def test_paired_rows_at_equal_flops_and_wall_time_and_rivals(grid):
    args = types.SimpleNamespace(tasks=None, methods=None, boot=200)
    table, entries = quality.summarise(grid, args, NoNll())
    assert {e["method"] for e in table} == {"best_of_n", "soft", "method"}
    method2 = next(e for e in table if e["method"] == "method" and e["budget"] == "steps=2")
    assert method2["depth"]["mean"] == 80 and method2["load"]["mean"] == 2.0 and method2["devices"] == ["cpu (2 threads)"]
    paired = quality.paired_rows(grid, entries, NoNll())
    by = {(e["method"], e["budget"], e["axis"]): e for e in paired}
    assert by[("method", "steps=2", "flops")]["bon_n_median"] == 3  # 3 GFLOPs: Best-of-3
    assert by[("method", "steps=2", "wall")]["bon_n_median"] == 5  # 0.5 s: Best-of-5
    assert by[("method", "steps=4", "wall")]["capped"] == 4  # 0.9 s: more than Best-of-8's run
    assert ("soft", "N=2", "flops") not in by  # read off Best-of-N: compared through the rivals
    rivals = quality.rival_rows(grid, entries, NoNll())
    # method at steps=2 (3 GFLOPs) against soft: its cheapest point reaching 3 GFLOPs is N=8 (8 GFLOPs)
    row = next(e for e in rivals if e["method"] == "method" and e["budget"] == "steps=2" and e["rival"] == "soft" and e["axis"] == "flops")
    assert row["rival_budget"] == "N=8" and row["cost_ratio"] == pytest.approx(8 / 3) and row["prompts"] == 4
    # soft at N=8 (8 GFLOPs) against method: none reaches it, its largest (6 GFLOPs) is taken and said so
    row = next(e for e in rivals if e["method"] == "soft" and e["budget"] == "N=8" and e["rival"] == "method" and e["axis"] == "flops")
    assert row["rival_budget"] == "steps=4" and row["capped"] == 4
    text_rows = quality.rival_lines(rivals, "wall")
    assert len(text_rows) == 2 + len([e for e in rivals if e["axis"] == "wall"])


def test_a_cell_whose_config_changed_since_it_first_ran_is_refused(tmp_path):
    """The fingerprint covers the parsed config, the cell's overrides and the task's prompts; comments do not count."""
    config = tmp_path / "method.yaml"
    config.write_text("model:\n  init_args:\n    alpha: 5  # the weight\n")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "p0", "prompt": "hi"}) + "\n")
    grid = {"max_new_tokens": 24, "tasks": {"task": {"prompts": str(prompts), "judge": "sentiment"}}}
    cell = tmp_path / "runs" / "task" / "method" / "steps=2"
    assert quality.check_fingerprint(grid, "task", str(config), {"steps": 2}, cell) is None  # never ran
    quality.record_fingerprint(grid, "task", str(config), {"steps": 2}, cell)
    first = json.loads((cell / quality.CELL_FILE).read_text())
    config.write_text("# a comment\nmodel:\n  init_args:\n    alpha: 5  # the reward weight\n")
    assert quality.check_fingerprint(grid, "task", str(config), {"steps": 2}, cell) is None
    quality.record_fingerprint(grid, "task", str(config), {"steps": 2}, cell)  # a second run keeps the first record
    assert json.loads((cell / quality.CELL_FILE).read_text()) == first
    config.write_text("model:\n  init_args:\n    alpha: 6\n")
    stale = quality.check_fingerprint(grid, "task", str(config), {"steps": 2}, cell)
    assert stale and first["fingerprint"] in stale and "delete the directory" in stale
    config.write_text("model:\n  init_args:\n    alpha: 5\n")
    assert quality.check_fingerprint(grid, "task", str(config), {"steps": 3}, cell)  # another override
    grid["tasks"]["task"]["prompts"] = "prompt_set:keywords?k=2&n=4&seed=1"
    assert quality.check_fingerprint(grid, "task", str(config), {"steps": 2}, cell)  # other prompts
    grid["tasks"]["task"]["prompts"] = str(prompts)
    assert quality.check_fingerprint(grid, "task", str(config), {"steps": 2}, cell) is None
    # the runner refuses the stale cell before running anything
    config.write_text("model:\n  init_args:\n    alpha: 7\n")
    run_grid = {**grid, "output_dir": str(tmp_path / "runs"), "methods": {"method": {"config": str(config), "key": "steps", "budgets": [2]}}}
    args = types.SimpleNamespace(time_limit=None, tasks=None, methods=None, budgets=None, lock=None, grace=1)
    with pytest.raises(SystemExit, match="restore the config, or delete the directory|Restore the config, or delete the directory"):
        quality.run(run_grid, args)


def test_keywords_of_a_prompt_set_task_are_read_through_the_prompt_reader(grid, monkeypatch):
    rows = [{"id": "a", "prompt": "Describe a bus.", "keywords": ["lantern", "oyster"]}, {"id": "b", "prompt": "Hi."}]
    monkeypatch.setattr(quality, "read_prompts", lambda path: rows if path == "prompt_set:keywords?k=2" else [])
    grid["tasks"]["kw"] = {"prompts": "prompt_set:keywords?k=2", "judge": "keywords"}
    assert quality.task_keywords(grid, "kw") == {"Describe a bus.": ["lantern", "oyster"]}
    judge = quality.judge_of(grid, "kw")
    assert judge("a lantern and an oyster", {"record": {}, "prompt": "Describe a bus."}) == 1.0
    assert judge("a lantern", {"record": {"keywords": ["lantern", "x"]}, "prompt": "other"}) == 0.5  # the record's own first


def test_the_toxicity_judge_scores_one_minus_the_offensive_probability(monkeypatch):
    monkeypatch.setattr(quality.judges, "_toxicity_of", lambda text: 0.9 if "idiot" in text else 0.1)
    assert quality.judge_value("toxicity", "you idiot", {}) == pytest.approx((0.1, 0.0))
    assert quality.judge_value("toxicity", "a nice walk", {}) == pytest.approx((0.9, 1.0))


def test_continuation_prompts_are_judged_as_raw_prefixes(tmp_path, monkeypatch):
    cache = quality.NllCache(tmp_path / "nll.json", gemma=True)
    monkeypatch.setattr(quality, "read_prompts", lambda path: [{"id": "r", "prompt": "The man then"}])
    cache.continuations({"tasks": {"rtp": {"prompts": "prompt_set:rtp", "context": "continuation"}, "chat": {"prompts": "x"}}})
    assert cache.mode("gemma", "The man then") == "gemma-raw" and cache.mode("policy", "Describe a bus.") == "policy"

    class Judge:
        def __init__(self, name):
            self.name = name

        def nll_per_token(self, pairs):
            return [len(self.name) + len(reply) for _, reply in pairs]

    monkeypatch.setattr(cache, "judge", Judge)
    cache.fill([("The man then", " walked"), ("Describe a bus.", "It is red.")])
    assert cache.get("gemma", "The man then", " walked") == len("gemma-raw") + 7
    assert cache.get("policy", "Describe a bus.", "It is red.") == len("policy") + 10
    assert cache.get("policy", "The man then", " walked") == len("policy-raw") + 7


@pytest.mark.parametrize("name", ["grid.yaml", "tune_search.yaml", "drawn.yaml", "drawn_tune.yaml"])
def test_shipped_grids_name_existing_configs_and_comment_every_key(name):
    path = Path(__file__).resolve().parent.parent / "configs" / "quality" / name
    grid = quality.load_grid(str(path))
    root = path.parent.parent.parent
    for method, spec in grid["methods"].items():
        source = grid["methods"][spec.get("from", method)]
        assert "config" in source, method
        tasks = [spec_t.get("configs_from", task) for task, spec_t in grid["tasks"].items()]
        assert any((root / source["config"].format(task=t)).exists() for t in tasks), method
    assert set(grid.get("rivals", [])) <= set(grid["methods"])
    uncommented = [line for line in path.read_text().splitlines()
                   if ":" in line and not line.lstrip().startswith("#") and "#" not in line and not line.rstrip().endswith(":")]
    assert not uncommented, uncommented


def test_return_rules_pools_cells_adds_best_of_n_and_judges_after_one_context(tmp_path, capsys):
    """benchmarks/return_rules.py: two tasks pooled, the asked Best-of-2 (ties to the likeliest) beside the
    rules, every NLL read after the rows' asked text (a cache filled beforehand: no model loads)."""
    spec = importlib.util.spec_from_file_location("return_rules", Path(__file__).resolve().parent.parent / "benchmarks" / "return_rules.py")
    rules = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rules)
    out = tmp_path / "runs"
    tasks = {}
    for task, ids in (("kw", ["a"]), ("kw_more", ["b"])):
        path = tmp_path / f"{task}.jsonl"
        path.write_text("".join(json.dumps({"id": i, "prompt": f"tell {i}", "asked": f"tell {i}. use owl", "keywords": ["owl"]}) + "\n"
                                for i in ids))
        tasks[task] = {"prompts": str(path), "judge": "keywords"}
        alternatives = {rule: {"response": f"{i} {rule} owl" if rule != "final" else f"{i} final", "reward": 1.0, "chain": 0}
                        for i in ids for rule in rules.RULES}
        write_run(out / task / "chain" / "steps=2", [{"id": i, "prompt": f"tell {i}", "keywords": ["owl"], "response": "x",
                                                       "alternatives": alternatives} for i in ids])
        write_run(out / f"{task}_asked" / "best_of_n" / "run", [
            {"id": i, "prompt": f"tell {i}. use owl", "keywords": ["owl"], "n": 3, "returns": "likeliest_best",
             "candidate_rewards": [1.0, 1.0, 1.0], "candidate_ref_logprobs": [-9.0, -3.0, -1.0],
             "candidate_responses": [f"{i} first owl", f"{i} likelier owl", f"{i} beyond n owl"]} for i in ids])
        tasks[f"{task}_asked"] = {"prompts": str(path), "judge": "keywords"}
    grid_path = tmp_path / "grid.yaml"
    grid_path.write_text(json.dumps({"output_dir": str(out), "tasks": tasks, "methods": {"chain": {"config": "c.yaml"}}}))
    values = {}
    for i in ("a", "b"):
        texts = [f"{i} {rule} owl" for rule in rules.RULES if rule != "final"] + [f"{i} final", f"{i} likelier owl", f"{i} first owl"]
        for text in texts:
            values[quality.NllCache.key("policy", f"tell {i}. use owl", text)] = 2.0 if text.endswith("likelier owl") else 3.0
    (out / "nll_cache.json").write_text(json.dumps(values))
    rules.main([str(out / "kw" / "chain" / "steps=2"), str(out / "kw_more" / "chain" / "steps=2"), "--pool", "--grid", str(grid_path),
                "--no-gemma", "--context", "asked",
                "--against", f"{out / 'kw_asked' / 'best_of_n' / 'run'}:2", "--against", f"{out / 'kw_more_asked' / 'best_of_n' / 'run'}:2",
                "--against", f"first={out / 'kw_asked' / 'best_of_n' / 'run'}:1", "--against", f"first={out / 'kw_more_asked' / 'best_of_n' / 'run'}:1"])
    lines = capsys.readouterr().out.splitlines()
    assert "(2 prompts, judge keywords, NLL after asked)" in lines[1]
    table = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in lines if line.startswith("| ") and "---" not in line}
    assert table["Best-of-2"][2] == "1.000" and table["Best-of-2"][6] == "2.000"  # the likelier of the two tied candidates
    assert table["final"][2] == "0.000" and table["final"][6] == "3.000"  # no keyword; read after the asked text
    assert table["best_target"][8] == "+0.000 [p 1.00]" and table["final"][8].startswith("-1.000")  # paired with Best-of-2
    assert table["first"][6] == "3.000"  # Best-of-1, pooled over both cells under its own label


def test_frontier_plots_are_a_grid_with_one_legend_fixed_colours_and_the_recommended_cost(tmp_path, monkeypatch):
    """Four tasks: a 2 x 3 grid of panels (two left blank), one figure legend, each method in one colour
    in every panel and plot, and a dashed line at the recommended cell's cost in that method's colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    tasks = {f"t{i}": {"prompts": "p.jsonl", "judge": "sentiment"} for i in range(4)}
    tasks["t1"]["recommended"] = "m2/steps=4"
    grid = {"tasks": tasks, "methods": {"m1": {"config": "c"}, "m2": {"config": "c", "key": "steps", "budgets": [2, 4]}}}

    def cell(task, method, budget, flops, judge):
        stat = lambda v: {"mean": v, "low": v - 0.1, "high": v + 0.1}  # noqa: E731
        return {"task": task, "method": method, "budget": budget, "complete": True, "flops": stat(flops), "wall": stat(flops / 1e9),
                "depth": stat(24.0), "reward": stat(judge / 2), "judge": stat(judge)}

    table = [cell(t, "m1", "run", 3e9, 0.3) for t in tasks] + [cell(t, "m2", f"steps={k}", k * 1e9, 0.1 * k) for t in tasks for k in (2, 4)]
    figures = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    paths = quality.plot(table, grid, tmp_path, ("flops", "wall"))
    assert [p.name for p in paths] == ["frontier_reward.png", "frontier_judge.png", "frontier_reward_wall.png", "frontier_judge_wall.png"]
    width, height = figures[0].get_size_inches() * 110
    assert (round(width), round(height)) == (1320, 726)  # 3 panels a row, 2 rows: readable at page width
    colours = quality.method_colours(grid)
    for fig in figures:
        panels = fig.axes
        assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in panels)
        assert [t.get_text() for t in fig.legends[0].get_texts()] == ["m1", "m2", "recommended config's cost (dashed, in its method's colour)"]
        assert sum(ax.axison for ax in panels) == 4
        for ax in panels[:4]:
            lines = [line for line in ax.get_lines() if line.get_marker() == "o"]
            assert [to_rgba(line.get_color()) for line in lines] == [to_rgba(colours["m1"]), to_rgba(colours["m2"])]
        dashed = [line for ax in panels for line in ax.get_lines() if line.get_linestyle() == "--"]  # in the panels
        assert len(dashed) == 1 and to_rgba(dashed[0].get_color()) == to_rgba(colours["m2"])
    flops_line = [line for line in figures[1].axes[1].get_lines() if line.get_linestyle() == "--"][0]
    assert list(flops_line.get_xdata()) == [4e9, 4e9]  # at the recommended cell's FLOPs
    assert all(p.exists() for p in paths)


def test_the_shipped_grid_recommends_cells_it_has():
    grid = quality.load_grid(str(Path(__file__).resolve().parent.parent / "configs" / "quality" / "grid.yaml"))
    for task in grid["tasks"]:
        chosen = quality.recommended_cell(grid, task)
        if chosen is None:
            continue
        method, budget = chosen
        spec = grid["methods"][grid["methods"][method].get("from", method)]
        labels = [f"N={n}" for n in spec.get("curve", [])] + [f"{spec.get('key')}={v}" for v in spec.get("budgets", [])]
        assert budget in labels, (task, method, budget)
