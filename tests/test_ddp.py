"""``trainer.strategy: ddp`` on 2 CPU processes (gloo) through ``seaflow predict``.

Lightning's predict loop shards prompts with ``UnrepeatedDistributedSampler`` (rank r takes
prompts r, r + world, ...; no padding, no duplicates), each rank appends its records to
``predictions.rank<R>.jsonl`` and rank 0 merges them into ``predictions.jsonl`` in prompt order.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from seaflow.cli import main

PROMPTS = ["describe the city", "tell me about the weather", "write about my dog", "how was the train", "tell me about my friend"]


def write_config(directory: Path, tiny_models, devices: int, batch_size: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    prompts = directory / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": t}) + "\n" for i, t in enumerate(PROMPTS)))
    trainer = {"enable_progress_bar": False, "accelerator": "cpu", "devices": devices,
               # run-level metrics streamed over every rank, logged once by rank 0 (tests below read the CSV)
               "callbacks": [{"class_path": "seaflow.metrics.PredictionMetrics"}],
               "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(directory / "logs")}}}
    if devices > 1:
        trainer["strategy"] = "ddp"  # gloo on CPU
    config = {
        "model": {"class_path": "seaflow.SEA", "init_args": {
            "policy": str(tiny_models["policy"]),
            "reward": {"class_path": "LexiconReward", "init_args": {"lexicon": "vader"}},
            "sampler": {"class_path": "Langevin", "init_args": {"step_size": 0.5, "noise_scale": 0.1}},
            "alpha": 5.0, "chains": 2, "steps": 3, "max_new_tokens": 6,
        }},
        "data": {"path": str(prompts), "batch_size": batch_size},
        "output": {"output_dir": str(directory / "run")},
        "trainer": trainer,
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_ddp(config: Path, *extra: str) -> subprocess.CompletedProcess:
    """``seaflow predict`` in a fresh process; Lightning starts the second rank itself."""
    script = Path(sys.executable).parent / "seaflow"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "seaflow.cli"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        command + ["predict", "--config", str(config), *extra], env=env, capture_output=True, text=True, timeout=180,
    )


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


def assert_same_results(got: list[dict], expected: list[dict]) -> None:
    """Same texts and choices; floats equal up to rounding (the ranks run with one thread each)."""
    assert [r["id"] for r in got] == [r["id"] for r in expected]
    for a, b in zip(got, expected):
        for key in ("response", "chain", "chain_responses", "initial_response", "response_tokens"):
            assert a[key] == b[key], (a["id"], key)
        assert a["reward"] == pytest.approx(b["reward"], rel=1e-5, abs=1e-6)
        assert a["ref_logprob_per_token"] == pytest.approx(b["ref_logprob_per_token"], rel=1e-4, abs=1e-5)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, tiny_models):
    """The reference: the same prompts in one process, one prompt per batch."""
    directory = tmp_path_factory.mktemp("one")
    main(["predict", "--config", str(write_config(directory, tiny_models, devices=1, batch_size=1))])
    return records(directory / "run")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, tiny_models):
    directory = tmp_path_factory.mktemp("two")
    config = write_config(directory, tiny_models, devices=2, batch_size=1)
    done = run_ddp(config)
    assert done.returncode == 0, done.stderr[-3000:]
    return config, directory / "run"


def test_ddp_every_prompt_once_in_order_same_as_one_process(two_ranks, single_process):
    """5 prompts on 2 ranks (3 + 2): merged in prompt order, none lost or repeated, no shard left."""
    _, run_dir = two_ranks
    got = records(run_dir)
    assert [r["id"] for r in got] == [f"p{i}" for i in range(len(PROMPTS))]
    assert sorted(p.name for p in run_dir.glob("predictions*.jsonl")) == ["predictions.jsonl"]
    assert (run_dir / ".seaflow.lock").read_text().startswith("pid ")  # rank 0 held the directory for both ranks
    assert json.loads((run_dir / "summary.json").read_text())["prompts"] == len(PROMPTS)
    assert_same_results(got, single_process)


def test_ddp_streamed_metrics_cover_every_rank(two_ranks):
    """The torchmetrics values rank 0 logs at the end equal summary.json's, computed from all records."""
    import csv

    config, run_dir = two_ranks
    (metrics_file,) = (config.parent / "logs").glob("**/metrics.csv")
    rows = list(csv.DictReader(metrics_file.open()))
    logged = {key: float(value) for row in rows for key, value in row.items() if value not in ("", None) and key != "step"}
    summary = json.loads((run_dir / "summary.json").read_text())
    for name in ("mean_reward", "mean_ref_logprob_per_token", "mean_response_tokens", "distinct_1", "distinct_2"):
        assert logged[f"predict/{name}"] == pytest.approx(summary[name], rel=1e-5), name
    assert not any("harmful" in key for key in logged)  # the prompts declare no task: no task judge


@pytest.mark.slow
def test_ddp_resume_after_a_crash(two_ranks, single_process):
    """Keep 2 records and a torn line, rerun on 2 ranks: the other 3 are added, in order, once."""
    config, run_dir = two_ranks
    path = run_dir / "predictions.jsonl"
    kept = path.read_text().splitlines(keepends=True)[:2]
    path.write_text("".join(kept) + '{"id": "p2", "respon')
    done = run_ddp(config)
    assert done.returncode == 0, done.stderr[-3000:]
    got = records(run_dir)
    assert [json.dumps(r) + "\n" for r in got[:2]] == kept
    assert_same_results(got, single_process)


@pytest.mark.slow
def test_ddp_resume_with_fewer_prompts_left_than_ranks(tmp_path, tiny_models, single_process):
    config = write_config(tmp_path, tiny_models, devices=2, batch_size=1)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in single_process[:4]))
    done = run_ddp(config)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["id"] for r in records(run_dir)] == [f"p{i}" for i in range(len(PROMPTS))]


@pytest.mark.slow
def test_ddp_results_do_not_depend_on_batching(tmp_path, tiny_models, single_process):
    config = write_config(tmp_path, tiny_models, devices=2, batch_size=2)
    done = run_ddp(config)
    assert done.returncode == 0, done.stderr[-3000:]
    got = records(tmp_path / "run")
    for a, b in zip(got, single_process):
        assert a["trace"]["grad_norm"] == pytest.approx(b["trace"]["grad_norm"], rel=1e-4)
