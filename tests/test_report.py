"""`seaflow report` on runs produced here through the CLI (tiny models)."""

import json
from pathlib import Path

import pytest
import yaml

from seaflow.cli import main
from seaflow.report import (ReportError, best_of_first, best_of_n_curve, between_runs, bootstrap, equal_cost_n, like_for_like, load_run,
                            soft_best_of_first, step_curve, write_report)

PROMPTS = ["describe the city", "tell me about the weather", "write about my dog"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_models) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report-runs")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": t}) + "\n" for i, t in enumerate(PROMPTS)))
    reward = {"class_path": "LexiconReward", "init_args": {"lexicon": "vader"}}
    methods = {
        "sample": ("seaflow.methods.Sample", {}),
        "bon": ("seaflow.methods.BestOfN", {"n": 4}),
        "sea": ("seaflow.SEA", {"chains": 2, "steps": 3, "alpha": 5.0,
                                "sampler": {"class_path": "Langevin", "init_args": {"step_size": 0.5, "noise_scale": 0.1}}}),
    }
    out = {}
    for name, (class_path, extra) in methods.items():
        config = {
            "model": {"class_path": class_path,
                      "init_args": {"policy": str(tiny_models["policy"]), "reward": reward, "max_new_tokens": 5, **extra}},
            "data": {"path": str(prompts), "batch_size": 2, "task": "sentiment"},
            "output": {"output_dir": str(root / name)},
            "trainer": {"enable_progress_bar": False,
                        "callbacks": [{"class_path": "seaflow.metrics.PredictionMetrics", "init_args": {"wandb": True}}]},
        }
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        main(["predict", "--config", str(path)])
        out[name] = root / name
    return out


def test_report_table_and_plots(runs, tmp_path):
    main(["report", str(runs["sample"]), str(runs["bon"]), str(runs["sea"]), "--out", str(tmp_path / "report")])
    text = (tmp_path / "report" / "report.md").read_text()
    first_table = text[text.index("| run |"):].split("\n\n")[0]
    rows = [line for line in first_table.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 3  # header + one row per run
    assert "| bon | BestOfN-4 | 3 |" in text and "| sea | SEA | 3 |" in text and "| sample | Sample | 3 |" in text
    header = rows[0]
    assert "positive rate" in header and "harmful" not in header and "GFLOPs/prompt" in header and "fluency" in header
    bon = load_run(runs["bon"])
    mean, low, high = bootstrap([r["reward"] for r in bon.records])
    assert f"| {mean:.3f} [{low:.3f}, {high:.3f}] |" in next(r for r in rows if r.startswith("| bon "))
    for png in ("reward_vs_cost.png", "nll_per_position.png"):
        data = (tmp_path / "report" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
        assert f"]({png})" in text


def test_report_numbers_match_the_records(runs):
    bon = load_run(runs["bon"])
    rewards = [json.loads(line)["reward"] for line in (runs["bon"] / "predictions.jsonl").read_text().splitlines()]
    assert bon.summary["mean_reward"] == pytest.approx(sum(rewards) / len(rewards))
    # Best-of-4 never loses to its own first candidate, which is the Sample run's response
    from seaflow.report import win_rate

    sample = load_run(runs["sample"])
    assert bon.summary["win_rate_vs_initial"] == win_rate(bon, sample)
    assert all(b["reward"] >= s["reward"] for b, s in zip(bon.records, sample.records))


def test_report_rejects_a_directory_without_predictions(tmp_path):
    with pytest.raises(ReportError, match="has no predictions.jsonl"):
        write_report([tmp_path], tmp_path / "out")


def test_bootstrap_interval():
    assert bootstrap([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    mean, low, high = bootstrap([0.0, 1.0] * 20)
    assert mean == 0.5 and low < 0.5 < high and high - low < 0.4
    assert bootstrap([1.0, None, float("nan"), 3.0])[0] == 2.0
    assert bootstrap([1.0, 5.0, 2.0], seed=3) == bootstrap([1.0, 5.0, 2.0], seed=3)


def test_best_of_n_curve_from_one_run(runs):
    """N=1 is the Sample run (candidate 0 is its draw), N=n the run itself; cost scales with N."""
    bon, sample = load_run(runs["bon"]), load_run(runs["sample"])
    curve = best_of_n_curve(bon)
    assert curve.ticks == ["N=1", "N=2", "N=4"]
    assert curve.reward[0][0] == pytest.approx(sum(r["reward"] for r in sample.records) / 3)
    assert curve.reward[-1][0] == pytest.approx(bon.summary["mean_reward"])
    assert curve.flops[0] == pytest.approx(curve.flops[-1] / 4)
    assert [p[0] for p in curve.reward] == sorted(p[0] for p in curve.reward)


def test_step_curve_follows_the_returned_chain(runs):
    sea = load_run(runs["sea"])
    curve = step_curve(sea)
    assert curve.ticks[-1] == "returned" and len(curve.ticks) == 3 + 1
    assert curve.reward[0][0] == pytest.approx(sum(r["trace"]["reward"][0] for r in sea.records) / 3)
    assert curve.reward[-1][0] == pytest.approx(sea.summary["mean_reward"])
    assert curve.flops == sorted(curve.flops)
    assert step_curve(load_run(runs["bon"])) is None


def test_curves_on_every_cost_axis(runs):
    """Best-of-N's FLOPs and wall time scale with N, its depth does not (the rows run side by side);
    an iterative run's three costs are pro-rated over its steps."""
    curve = best_of_n_curve(load_run(runs["bon"]))
    assert curve.costs["wall"][0] == pytest.approx(curve.costs["wall"][-1] / 4)
    assert len(set(curve.costs["depth"])) == 1 and curve.costs["depth"][0] >= 5
    sea = step_curve(load_run(runs["sea"]))
    assert sea.costs["depth"] == sorted(sea.costs["depth"]) and sea.costs["depth"][0] == pytest.approx(sea.costs["depth"][-1] / 4)


def test_soft_best_of_n_curve_is_read_off_the_candidates(runs):
    bon = load_run(runs["bon"])
    greedy = best_of_n_curve(bon, soft=0.0)
    assert [p[0] for p in greedy.reward] == pytest.approx([p[0] for p in best_of_n_curve(bon).reward])  # lambda 0 is Best-of-N
    flat = best_of_n_curve(bon, soft=1e9)
    expected = [bootstrap([r["candidate_rewards"][soft_best_of_first(r, k, 1e9, 0)[0]] for r in bon.records])[0] for k in (1, 2, 4)]
    assert [p[0] for p in flat.reward] == pytest.approx(expected)
    assert flat.label.endswith("soft lambda=1e+09")


def test_like_for_like_pairs_each_prompt_with_best_of_n_at_equal_cost(runs):
    bon, sea = load_run(runs["bon"]), load_run(runs["sea"])
    for axis, key in (("flops", "flops"), ("wall", "wall_time_s")):
        (row,) = like_for_like([bon, sea], axis)
        theirs = {r["id"]: r for r in bon.records}
        diffs = []
        for record in sea.records:
            n, _ = equal_cost_n(record["cost"][key], theirs[record["id"]], axis)
            assert theirs[record["id"]]["cost"][key] * n / 4 >= record["cost"][key] or n == 4
            diffs.append(record["reward"] - best_of_first(theirs[record["id"]], n)[1])
        assert row["reward"]["diff"] == pytest.approx(sum(diffs) / len(diffs))
        assert row["judge"] is not None and row["reward"]["prompts"] == 3
    (pair,) = between_runs([load_run(runs["sample"]), bon, sea])  # Best-of-N is compared through its curve only
    assert pair["ratio"]["flops"] < 1 and pair["reward"]["prompts"] == 3


def test_report_with_every_axis_soft_curves_and_the_machine(runs, tmp_path):
    main(["report", str(runs["sample"]), str(runs["bon"]), str(runs["sea"]), "--out", str(tmp_path / "r"),
          "--x", "flops,wall,depth", "--soft", "0.05"])
    text = (tmp_path / "r" / "report.md").read_text()
    for png in ("reward_vs_cost.png", "reward_vs_wall.png", "reward_vs_depth.png"):
        assert (tmp_path / "r" / png).read_bytes()[:4] == b"\x89PNG" and f"]({png})" in text
    assert "### Against Best-of-N at equal FLOPs" in text and "### Against Best-of-N at equal wall time" in text
    assert "### Runs against each other" in text and "sequential depth" in text
    assert "cpu (" in text and "load average" in text
    with pytest.raises(SystemExit):
        main(["report", str(runs["bon"]), "--out", str(tmp_path / "x"), "--x", "seconds"])
