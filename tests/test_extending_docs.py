"""docs/extending.md as a user follows it: every code block written to a project directory,
its contract tests run by pytest, its config run by `seaflow predict` from that directory."""

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from seaflow.cli import main
from seaflow.components import list_components

DOC = Path(__file__).parent.parent / "docs" / "extending.md"


def blocks() -> dict[str, str]:
    found = dict(re.findall(r"<!-- ([\w.]+) -->\n```\w+\n(.*?)```", DOC.read_text(), re.S))
    assert {"my_samplers.py", "test_my_samplers.py", "my_relaxations.py", "test_my_relaxations.py",
            "my_rewards.py", "test_my_rewards.py", "my_reward_config.yaml", "my_config.yaml"} <= set(found), sorted(found)
    return found


@pytest.fixture
def project(tmp_path, monkeypatch):
    """The user's directory with every file of the page, as the working directory."""
    directory = tmp_path / "project"
    directory.mkdir()
    for name, text in blocks().items():
        (directory / name).write_text(text)
    monkeypatch.chdir(directory)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("my_samplers", "my_relaxations", "my_rewards"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return directory


def run_pytest(path: Path, *extra: str) -> dict[str, str]:
    results = {}

    class Collector:
        def pytest_runtest_logreport(self, report):
            if report.when == "call" or report.outcome != "passed":
                results.setdefault(report.nodeid.split("::")[-1], report.outcome)

    pytest.main(["-q", "-p", "no:cacheprovider", "--rootdir", str(path.parent), str(path), *extra], plugins=[Collector()])
    return results


def test_the_contract_examples_pass(project):
    sys.path.insert(0, str(project))
    for name in ("test_my_relaxations.py", "test_my_rewards.py"):
        results = run_pytest(project / name)
        assert results and set(results.values()) == {"passed"} | ({"skipped"} & set(results.values())), (name, results)
    assert "test_ordered_pairs" in results and results["test_ordered_pairs"] == "passed"
    # the sampler suite without its Gaussian sampling runs (long; the page says momentum would fail them)
    results = run_pytest(project / "test_my_samplers.py", "-k", "not samples_gaussian")
    assert len(results) >= 8 and set(results.values()) == {"passed"}, results


def write_prompts(project: Path) -> None:
    (project / "prompts.jsonl").write_text("".join(
        json.dumps({"id": f"p{i}", "prompt": text}) + "\n" for i, text in enumerate(["describe the city", "how was the train"])
    ))


TINY = ["--model.init_args.max_new_tokens", "6", "--model.init_args.steps", "2", "--model.init_args.chains", "2",
        "--trainer.enable_progress_bar", "false"]


def test_the_sampler_config_runs_next_to_its_module(project, tiny_models):
    write_prompts(project)
    main(["predict", "--config", "my_config.yaml", "--model.init_args.policy", str(tiny_models["policy"]), *TINY])
    records = [json.loads(line) for line in (project / "runs" / "momentum" / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(len(r["trace"]["velocity_norm"]) == 2 for r in records)


def test_the_reward_config_runs_next_to_its_module(project, tiny_models):
    write_prompts(project)
    config = yaml.safe_load((project / "my_reward_config.yaml").read_text())
    assert config["model"]["init_args"]["reward"]["class_path"] == "my_rewards.WordListReward"
    main(["predict", "--config", "my_reward_config.yaml", "--model.init_args.policy", str(tiny_models["policy"]),
          "--model.init_args.max_new_tokens", "6", "--model.init_args.steps", "2", "--model.init_args.chains", "2",
          "--trainer.enable_progress_bar", "false"])
    records = [json.loads(line) for line in (project / "runs" / "words" / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for record in records:  # the reward is the share of listed words among the response's tokens
        words = record["response"].split()
        share = sum(w in {"good", "great", "happy", "wonderful"} for w in words) / max(record["response_tokens"], 1)
        assert record["reward"] == pytest.approx(share, abs=1e-6)


def test_user_classes_are_listed_with_import(project, capsys):
    main(["list", "--import", "my_rewards", "--import=my_relaxations"])
    out = capsys.readouterr().out
    rewards = next(line for line in out.splitlines() if line.startswith("rewards:"))
    relaxations = next(line for line in out.splitlines() if line.startswith("relaxations:"))
    assert "WordListReward" in rewards and "AnnealedSoftmax" in relaxations
    assert "WordListReward" in list_components()
    with pytest.raises(SystemExit):
        main(["list", "--import", "no_such_module_here"])
    assert "no_such_module_here" in capsys.readouterr().err
