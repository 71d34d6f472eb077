"""`seaflow report` on runs produced here through the CLI (tiny models)."""

import json
from pathlib import Path

import pytest
import yaml

from seaflow.cli import main
from seaflow.report import ReportError, load_run, write_report

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
            "data": {"path": str(prompts), "batch_size": 2},
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
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 3  # header + one row per run
    assert "| bon | BestOfN-4 | 3 |" in text and "| sea | SEA | 3 |" in text and "| sample | Sample | 3 |" in text
    for png in ("reward_vs_iteration.png", "kl_per_position.png"):
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
