"""wandb tracking through ``seaflow predict`` (offline), checked by reading the run directory back."""

import json
import math

import pytest

from wandb_offline import offline_runs, read_run

pytest.importorskip("wandb")


@pytest.fixture()
def offline(monkeypatch):
    """WANDB_MODE=offline for this test; wandb's process-wide session (which keeps the environment it
    started with) is torn down before and after, so neither this test nor the next sees another's mode."""
    import wandb

    wandb.finish()
    wandb.teardown()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield
    wandb.finish()
    wandb.teardown()


def predict(tmp_path, tiny_models, *extra):
    from seaflow.cli import main
    from test_cli import tiny_config

    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tiny_config(tmp_path, tiny_models, steps=3)
    main(["predict", "--config", str(config), "--data.task", "sentiment",
          "--trainer.callbacks+", "seaflow.metrics.PredictionMetrics", *extra])
    records = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    return records, summary


def test_wandb_logger_run_holds_config_metrics_table_and_traces(tmp_path, tiny_models, offline):
    records, summary = predict(tmp_path, tiny_models, "--trainer.logger", "WandbLogger")
    (directory,) = offline_runs(tmp_path / "run")  # one run, next to the records
    run = read_run(directory)
    # the resolved config
    assert run["config"]["model"]["class_path"] == "seaflow.SEA"
    assert run["config"]["data"]["task"] == "sentiment"
    # run-level metrics once: in the summary, never as history rows, no duplicate names
    for name in ("mean_reward", "positive_rate", "distinct_2", "mean_ref_logprob_per_token"):
        assert run["summary"][name] == pytest.approx(summary[name]), name
    assert "harmful_rate" not in run["summary"]
    logged = {key for row in run["history"] for key in row}
    assert not any(key.startswith("predict/") or key in ("mean_reward", "reward") for key in logged)
    # the records Table: one row per prompt, in prompt order
    (table_file,) = (directory / "files" / "media" / "table").glob("records_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"][:2] == ["id", "prompt"] and "initial_response" in table["columns"]
    column = {name: i for i, name in enumerate(table["columns"])}
    assert [row[column["id"]] for row in table["data"]] == [r["id"] for r in records]
    assert [row[column["response"]] for row in table["data"]] == [r["response"] for r in records]
    assert [row[column["reward"]] for row in table["data"]] == pytest.approx([r["reward"] for r in records])
    # traces: one history row per iteration, the mean over prompts of the returned chain's values
    rows = sorted((row for row in run["history"] if "trace/reward" in row), key=lambda row: row["iteration"])
    assert [row["iteration"] for row in rows] == [0, 1, 2]
    for t, row in enumerate(rows):
        assert row["trace/reward"] == pytest.approx(sum(r["trace"]["reward"][t] for r in records) / len(records))
        assert row["trace/energy"] == pytest.approx(sum(r["trace"]["energy"][t] for r in records) / len(records))
        assert math.isfinite(row["trace/grad_norm"])


def test_one_wandb_run_per_predict_without_a_logger(tmp_path, tiny_models, offline):
    predict(tmp_path / "a", tiny_models, "--trainer.callbacks.wandb", "true")
    predict(tmp_path / "b", tiny_models, "--trainer.callbacks.wandb", "true")
    for name in ("a", "b"):
        (directory,) = offline_runs(tmp_path / name / "run")
        run = read_run(directory)
        assert "mean_reward" in run["summary"] and "positive_rate" in run["summary"]
        assert run["config"]["output"]["output_dir"] == str(tmp_path / name / "run")


def test_a_finished_run_is_read_whole_however_late_wandb_closes_it(tmp_path, offline, monkeypatch):
    """wandb-core keeps a run's log in memory until the run's stream closes, and ``run.finish()`` returns
    once the run's exit is acknowledged, only asking the service to close the stream. Here the service
    never hears that request (as when it is slow to act on it), so the file holds only its header until
    ``offline_runs`` has wandb write every run."""
    import wandb
    from wandb.sdk.lib.service.service_connection import ServiceConnection

    monkeypatch.setattr(ServiceConnection, "inform_finish", lambda self, run_id: None)
    run = wandb.init(project="seaflow", dir=str(tmp_path), config={"model": {"class_path": "seaflow.SEA"}})
    run.summary.update({"mean_reward": 0.5})
    run.finish()
    (directory,) = offline_runs(tmp_path)
    read = read_run(directory)
    assert read["config"]["model"] == {"class_path": "seaflow.SEA"} and read["summary"]["mean_reward"] == 0.5
