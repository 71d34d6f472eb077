"""A bad row never sinks a run: a reward's error or non-finite value on one prompt fails that
prompt only (an entry in errors.jsonl), transient faults are retried, a rerun runs exactly the
failed prompts, and a fault-injection soak accounts for every prompt (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import faulty_rewards
from faulty_rewards import is_nan, raises
from seaflow import faults
from seaflow.cli import main
from seaflow.energies import CallableReward, LexiconReward, RewardSum
from seaflow.energies.base import Reward
from seaflow.energies.base import ResponseBatch
from seaflow.methods import SEA, BestOfN
from seaflow.methods.base import isolating_rows
from seaflow.samplers import Langevin
from tiny import run_method

PHRASES = ["tell me about the dog", "the city", "my train was late today and", "the weather"]


def prompt(k: int) -> str:
    """Prompt ``k``: its number (which decides its faults, faulty_rewards) and 1-4 phrases, so rows pad differently."""
    return f"prompt {k}: " + " ".join(PHRASES[: 1 + k % 4])


def callable_reward(function: str = "score", **kwargs) -> CallableReward:
    return CallableReward(function=f"faulty_rewards.{function}", with_prompt=True, **kwargs)


def best_of_n(function: str = "score", **kwargs) -> BestOfN:
    return BestOfN(reward=callable_reward(function, **kwargs), n=3, max_new_tokens=4)


def assert_same_record(got: dict, want: dict) -> None:
    """Equal but for ``cost`` (the batch's, split over its prompts) and floats of the reference
    passes, which other padding changes in the last bits (docs/reliability.md, Determinism)."""
    skip = {"cost", "wall_time_s"}
    assert set(got) - skip == set(want) - skip
    for key in set(got) - skip:
        assert close(got[key], want[key]), (key, got[key], want[key])


def close(a, b) -> bool:
    """``a == b``, floats (in lists and dicts too) to 1e-5; every int, string and token equal."""
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-5, abs=2e-5)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    return a == b


# -- row isolation in the method ---------------------------------------------------------------


@pytest.mark.parametrize("function", ["score", "score_all"])  # one call per row (the fault names it) / per batch (found by halving)
def test_a_reward_that_fails_on_prompts_fails_those_prompts_only(tiny_policy, function):
    prompts = [prompt(k) for k in range(9)]  # 3 raises, 7 returns NaN
    batched = function == "score_all"
    records, _ = run_method(best_of_n(function, batched=batched), tiny_policy, prompts)
    clean, _ = run_method(best_of_n("clean_score"), tiny_policy, prompts)
    assert [r["id"] for r in records] == [f"p{k}" for k in range(9)]  # one output per prompt, in order
    for k, (got, want) in enumerate(zip(records, clean)):
        if raises(k) or is_nan(k):
            assert faults.is_failure(got) and set(got) == {"id", "index", "prompt", "method", "stage", "error"}
            assert got["prompt"] == prompts[k] and got["method"] == "BestOfN-3" and got["stage"] == "model.init_args.reward"
        else:
            assert not faults.is_failure(got)
            assert_same_record(got, want)
    assert records[3]["error"] == f"CallableReward('faulty_rewards.{function}') raised ValueError: reward service said no to prompt 3"
    assert records[7]["error"] == f"CallableReward('faulty_rewards.{function}') returned nan (a reward must be a finite number)"


@pytest.mark.parametrize("batched, expected", [
    (False, [["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7"], ["p0", "p1", "p2", "p4", "p5", "p6", "p7"]]),
    (True, [["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7"], ["p0", "p1", "p2", "p3"], ["p0", "p1"], ["p2", "p3"],
            ["p2"], ["p3"], ["p4", "p5", "p6", "p7"]]),
])
def test_the_batch_runs_again_without_the_named_prompt_or_in_halves(tiny_policy, monkeypatch, batched, expected):
    """A function called row by row names the prompt whose call raised: the batch runs once more
    without it. A batched call that fails names none: the batch runs in halves down to the failing
    prompt, log2 of the batch deep. Either way only that prompt fails."""
    calls = []
    original = BestOfN.predict_step.__wrapped__

    def counted(self, batch, *args, **kwargs):
        calls.append(list(batch["id"]))
        return original(self, batch, *args, **kwargs)

    monkeypatch.setattr(BestOfN, "predict_step", isolating_rows(counted))
    prompts = [prompt(k) for k in (0, 1, 2, 3, 4, 5, 6, 8)]  # prompt 3 (position 3) raises
    records, _ = run_method(best_of_n("score_all" if batched else "score", batched=batched), tiny_policy, prompts)
    assert [faults.is_failure(r) for r in records] == [False, False, False, True, False, False, False, False]
    assert calls == expected


def test_a_term_of_a_reward_sum_is_named_by_its_key(tiny_policy):
    reward = RewardSum(terms={"sentiment": LexiconReward(), "service": callable_reward()})
    records, _ = run_method(BestOfN(reward=reward, n=2, max_new_tokens=4), tiny_policy, [prompt(k) for k in range(4)])
    assert records[3]["stage"] == "model.init_args.reward.init_args.terms.service"
    assert "reward_parts" in records[2] and not faults.is_failure(records[2])


def test_a_gradient_method_isolates_its_selection_reward(tiny_policy):
    def sea(function):
        return SEA(reward=LexiconReward(), selection_reward=callable_reward(function), chains=2, steps=2, max_new_tokens=4,
                   alpha=5.0, sampler=Langevin(step_size=0.5, noise_scale=0.1))

    prompts = [prompt(k) for k in range(4)]
    records, _ = run_method(sea("score"), tiny_policy, prompts)
    clean, _ = run_method(sea("clean_score"), tiny_policy, prompts)
    assert records[3]["stage"] == "model.init_args.selection_reward"
    for k in range(3):
        assert_same_record(records[k], clean[k])


class RaisesOnRelaxedTokens(LexiconReward):
    def value(self, prepared, response):
        if response.is_floating_point():
            raise RuntimeError("a bug in the gradient path")
        return super().value(prepared, response)


def test_an_error_outside_discrete_scoring_still_stops_the_batch(tiny_policy):
    """Only a reward's error on token ids is a row fault; an error in SEA's relaxed evaluation is a bug
    of the run and stops it, as does a non-finite value outside a predict_step."""
    sea = SEA(reward=RaisesOnRelaxedTokens(), chains=2, steps=1, max_new_tokens=4, sampler=Langevin(step_size=0.5))
    with pytest.raises(RuntimeError, match="a bug in the gradient path"):
        run_method(sea, tiny_policy, [prompt(0), prompt(1)])
    reward = callable_reward()
    reward.setup(tiny_policy)
    batch = ResponseBatch([[5]], [prompt(7)], torch.tensor([1]), 1)
    assert torch.isnan(reward.value(reward.prepare(batch), torch.tensor([[5]]))).all()  # not isolating: the value as it is


class InfiniteReward(Reward):
    def value(self, prepared, response):
        return torch.full((response.shape[0],), float("inf"))


def test_an_infinite_reward_is_a_row_fault_too(tiny_policy):
    records, _ = run_method(BestOfN(reward=InfiniteReward(), n=2, max_new_tokens=3), tiny_policy, [prompt(0)])
    assert records[0]["error"] == "InfiniteReward returned inf (a reward must be a finite number)"


# -- transient faults --------------------------------------------------------------------------


def test_retries_recover_a_transient_failure_and_name_the_attempts_when_they_do_not(tiny_policy):
    reward = CallableReward(function="faulty_rewards.clean_score", retries=2, backoff=0.0)
    reward.fn = faulty_rewards.Transient(failures=2)
    assert reward.score_texts(["p"], ["abc"]).tolist() == [3.0] and reward.fn.calls == 3
    reward = CallableReward(function="faulty_rewards.clean_score", retries=1, backoff=0.0)
    reward.fn = faulty_rewards.Transient(failures=5)
    with pytest.raises(faults.ServiceError, match=r"CallableReward\('faulty_rewards.clean_score'\) failed 2 times; "
                                                  r"the last: ConnectionError: try 2: connection reset"):
        reward.score_texts(["p"], ["abc"])
    assert reward.fn.calls == 2


def test_backoff_doubles_between_attempts(monkeypatch):
    waits = []
    monkeypatch.setattr(faults.time, "sleep", waits.append)
    with pytest.raises(faults.ServiceError):
        faults.call_with_retries(faulty_rewards.Transient(failures=9), ("x",), retries=3, backoff=0.5)
    assert waits == [0.5, 1.0, 2.0]


def test_a_call_past_its_timeout_is_abandoned_and_fails_its_prompt(tiny_policy):
    with pytest.raises(TimeoutError, match="no answer within 0.05 s"):
        faults.call_with_retries(faulty_rewards.Transient(delay=2.0), ("x",), timeout=0.05)
    reward = CallableReward(function="faulty_rewards.clean_score", timeout=0.05)
    reward.fn = faulty_rewards.Transient(delay=2.0)
    records, _ = run_method(BestOfN(reward=reward, n=1, max_new_tokens=3), tiny_policy, [prompt(0)])
    assert records[0]["error"] == "CallableReward('faulty_rewards.clean_score') raised TimeoutError: no answer within 0.05 s"


@pytest.mark.parametrize("arguments, message", [
    ({"retries": -1}, "CallableReward retries must be an integer >= 0, got -1"),
    ({"backoff": float("nan")}, "CallableReward backoff must be a number of seconds >= 0, got nan"),
    ({"timeout": 0}, "CallableReward timeout must be a number of seconds > 0, or null (no limit), got 0"),
])
def test_retry_settings_are_checked(arguments, message):
    with pytest.raises(ValueError) as raised:
        CallableReward(function="faulty_rewards.clean_score", **arguments)
    assert str(raised.value) == message


# -- the run: errors.jsonl, summary, rerun, max_failed_rows ----------------------------------


def write_config(tmp_path: Path, tiny_models, function: str, prompts: int, name: str = "config", out: str = "run",
                 batch_size: int = 4, callbacks: list | None = None) -> Path:
    path = tmp_path / "prompts.jsonl"
    if not path.exists():
        path.write_text("".join(json.dumps({"id": f"p{k}", "prompt": prompt(k)}) + "\n" for k in range(prompts)))
    config = {
        "model": {"class_path": "seaflow.methods.BestOfN", "init_args": {
            "policy": str(tiny_models["policy"]), "n": 2, "max_new_tokens": 4,
            "reward": {"class_path": "CallableReward",
                       "init_args": {"function": f"faulty_rewards.{function}", "with_prompt": True}}}},
        "data": {"path": str(path), "batch_size": batch_size},
        "output": {"output_dir": str(tmp_path / out), "wall_time": False},
        "trainer": {"enable_progress_bar": False, **({"callbacks": callbacks} if callbacks else {})},
    }
    config_path = tmp_path / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    return config_path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_failed_prompts_are_listed_counted_and_exactly_they_run_again(tmp_path, tiny_models, monkeypatch, capsys):
    outage, calls = tmp_path / "outage", tmp_path / "calls.txt"
    outage.touch()
    monkeypatch.setenv("SEAFLOW_TEST_OUTAGE", str(outage))
    monkeypatch.setenv("SEAFLOW_TEST_CALLS", str(calls))
    config = write_config(tmp_path, tiny_models, "flaky", prompts=24)
    run = tmp_path / "run"
    main(["predict", "--config", str(config)])
    failed = [f"p{k}" for k in (3, 13, 23)]
    assert [e["id"] for e in read_jsonl(run / "errors.jsonl")] == failed
    assert read_jsonl(run / "errors.jsonl")[0]["error"] == (
        "CallableReward('faulty_rewards.flaky') raised ConnectionError: the reward service is down")
    assert sorted(r["id"] for r in read_jsonl(run / "predictions.jsonl")) == sorted(f"p{k}" for k in range(24) if f"p{k}" not in failed)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["prompts"] == 21 and summary["failed_rows"] == 3 and summary["failed_stages"] == {"model.init_args.reward": 3}
    out = capsys.readouterr()
    assert f"3 prompts failed and have no record (their errors: {run / 'errors.jsonl'})" in out.err
    assert "failed prompts, no record (errors.jsonl)" in out.out

    main(["predict", "--config", str(config)])  # the outage goes on: the same three fail again, listed once
    assert [e["id"] for e in read_jsonl(run / "errors.jsonl")] == failed
    assert "resuming: 21 prompts already in" in capsys.readouterr().err

    outage.unlink()
    calls.unlink()
    before = read_jsonl(run / "predictions.jsonl")
    # the service is back (and the rerun may call it with retries: they do not change a record): exactly the failed prompts run
    main(["predict", "--config", str(config), "--model.init_args.reward.init_args.retries", "2",
          "--model.init_args.reward.init_args.timeout", "30"])
    assert sorted(set(calls.read_text().split())) == ["13", "23", "3"]
    assert "running the 3 that failed again" in capsys.readouterr().err
    records = read_jsonl(run / "predictions.jsonl")
    assert records[: len(before)] == before and sorted(r["id"] for r in records) == sorted(f"p{k}" for k in range(24))
    assert not (run / "errors.jsonl").exists()
    assert json.loads((run / "summary.json").read_text())["failed_rows"] == 0


@pytest.mark.parametrize("limit, written", [("2", 4), ("0.25", 4), ("0", 2)])
def test_max_failed_rows_stops_a_run_that_fails_everywhere_in_one_line(tmp_path, tiny_models, capsys, limit, written):
    config = write_config(tmp_path, tiny_models, "always_fails", prompts=12, batch_size=2)
    with pytest.raises(SystemExit) as exited:
        main(["predict", "--config", str(config), "--output.max_failed_rows", limit])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("seaflow:")]
    assert len(lines) == 1 and "Traceback" not in err and "To resume" not in err, err
    assert lines[0].startswith(f"seaflow: error: {written} prompts failed in this run, more than output.max_failed_rows allows")
    assert "raised RuntimeError: the reward service is not configured" in lines[0] and "rerun the same command" in lines[0]
    assert len(read_jsonl(tmp_path / "run" / "errors.jsonl")) == written


@pytest.mark.parametrize("value", ["1.5", "-1", "true"])
def test_max_failed_rows_takes_a_count_or_a_share(tmp_path, tiny_models, capsys, value):
    config = write_config(tmp_path, tiny_models, "score", prompts=2)
    with pytest.raises(SystemExit):
        main(["predict", "--config", str(config), "--output.max_failed_rows", value])
    assert "output.max_failed_rows" in capsys.readouterr().err


def test_the_python_api_returns_the_error_entry_in_place_of_the_record(tmp_path, tiny_models):
    import seaflow

    config = yaml.safe_load(write_config(tmp_path, tiny_models, "score", prompts=1).read_text())
    del config["data"]["path"], config["output"]
    records = seaflow.load(config).align([prompt(k) for k in range(5)])
    assert [faults.is_failure(r) for r in records] == [False, False, False, True, False]
    assert records[3]["id"] == "3" and "reward service said no" in records[3]["error"]


# -- the soak ------------------------------------------------------------------------------------


def test_soak_200_prompts_with_faults_killed_once_and_resumed(tmp_path, tiny_models):
    """200 prompts, a reward that raises on 10% and returns NaN on 5%, killed (SIGKILL) mid-run and
    resumed: every prompt ends with one record or one error entry, none twice, and the good
    prompts' records are those of a run without faults."""
    stop = [{"class_path": "faulty_rewards.StopAfterBatches", "init_args": {"batches": 20}}]
    killed_config = write_config(tmp_path, tiny_models, "score", prompts=200, name="killed", callbacks=stop)
    config = write_config(tmp_path, tiny_models, "score", prompts=200)
    run = tmp_path / "run"
    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent), tests, os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "seaflow.cli", "predict", "--config", str(killed_config)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (run / "paused").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    _, err = process.communicate()
    records, errors = read_jsonl(run / "predictions.jsonl"), read_jsonl(run / "errors.jsonl")
    assert 0 < len(records) < 170 and errors, err[-2000:]  # stopped mid-run, some prompts failed already

    main(["predict", "--config", str(config)])  # the same run again: resumes
    main(["predict", "--config", str(write_config(tmp_path, tiny_models, "clean_score", prompts=200, name="clean", out="clean"))])
    clean = {r["id"]: r for r in read_jsonl(tmp_path / "clean" / "predictions.jsonl")}
    resumed, errors = read_jsonl(run / "predictions.jsonl"), read_jsonl(run / "errors.jsonl")
    assert resumed[: len(records)] == records  # what the killed run wrote stays as it was
    recorded, failed = [r["id"] for r in resumed], [e["id"] for e in errors]
    assert len(set(recorded)) == len(recorded) and len(set(failed)) == len(failed) and not set(recorded) & set(failed)
    assert set(recorded) | set(failed) == {f"p{k}" for k in range(200)}
    assert set(failed) == {f"p{k}" for k in range(200) if raises(k) or is_nan(k)} and len(failed) == 30
    assert {e["error"].split(" ")[1] for e in errors} == {"raised", "returned"}
    for record in resumed:
        assert_same_record(record, clean[record["id"]])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["prompts"] == 170 and summary["failed_rows"] == 30


def test_the_error_entry_fields_are_those_docs_outputs_md_lists():
    import re

    text = (Path(__file__).parent.parent / "docs" / "outputs.md").read_text()
    section = text[text.index("## errors.jsonl"):]
    named = [name for line in section.splitlines() if line.startswith("| `")
             for name in re.findall(r"`([a-z_]+)`", line.split("|")[1])]
    assert named == [field for field in faults.FAILURE_FIELDS if field != "messages"]
    entry = faults.failure({"id": "a", "index": 0, "prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}, "X", "k", "e")
    assert list(entry) == list(faults.FAILURE_FIELDS) and faults.is_failure(entry)
