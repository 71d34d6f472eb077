"""A user's own sampler, defined outside seaflow, selected by class_path, run by `seaflow predict`.

The sampler module is the code block of docs/extending.md, so the tutorial is tested as written.
"""

import importlib
import re
import sys
from pathlib import Path

import yaml
from test_cli import read_jsonl, tiny_config

from seaflow.cli import main
from seaflow.components import list_components

DOC = Path(__file__).parent.parent / "docs" / "extending.md"


def write_user_module(directory: Path) -> Path:
    match = re.search(r"<!-- my_samplers.py -->\n```python\n(.*?)```", DOC.read_text(), re.S)
    assert match, "docs/extending.md lost its my_samplers.py example"
    path = directory / "my_samplers.py"
    path.write_text(match.group(1))
    return path


def test_user_sampler_runs_through_seaflow_predict(tmp_path, tiny_models, monkeypatch):
    user_dir = tmp_path / "project"
    user_dir.mkdir()
    write_user_module(user_dir)
    monkeypatch.syspath_prepend(str(user_dir))
    sys.modules.pop("my_samplers", None)
    config = tiny_config(
        tmp_path, tiny_models,
        sampler={"class_path": "my_samplers.MomentumLangevin", "init_args": {"step_size": 0.5, "momentum": 0.7}},
    )
    main(["predict", "--config", str(config)])

    user_module = importlib.import_module("my_samplers")
    steps = yaml.safe_load(config.read_text())["model"]["init_args"]["steps"]
    assert user_module.MomentumLangevin.steps_taken == 2 * steps  # 4 prompts in 2 batches
    records = read_jsonl(tmp_path / "run" / "predictions.jsonl")
    assert len(records) == 4
    for record in records:
        assert len(record["trace"]["velocity_norm"]) == steps  # the user's own diagnostic
        assert record["trace"]["velocity_norm"][-1] > 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["init_args"]["sampler"]["class_path"] == "my_samplers.MomentumLangevin"
    assert saved["model"]["init_args"]["sampler"]["init_args"]["momentum"] == 0.7
    assert "MomentumLangevin" in list_components().split("samplers:")[1].splitlines()[0]


def test_builtin_samplers_and_relaxations_are_listed(capsys):
    main(["list"])
    out = capsys.readouterr().out
    samplers = next(line for line in out.splitlines() if line.startswith("samplers:"))
    relaxations = next(line for line in out.splitlines() if line.startswith("relaxations:"))
    for name in ("Langevin", "MALA", "HMC", "AdaptiveLangevin"):
        assert name in samplers
    for name in ("StraightThrough", "Softmax", "GumbelSoftmax"):
        assert name in relaxations


def test_builtin_samplers_by_short_name(tmp_path, tiny_models):
    """Every built-in sampler and the Gumbel relaxation run end to end by their short names."""
    for name, args in {"MALA": {"step_size": 0.5, "noise_scale": 0.1}, "HMC": {"step_size": 0.5, "leapfrog_steps": 2},
                       "AdaptiveLangevin": {"step_size": 0.1, "target_accept": 0.6}}.items():
        run = tmp_path / name
        run.mkdir()
        config = tiny_config(run, tiny_models, sampler={"class_path": name, "init_args": args},
                             relaxation={"class_path": "GumbelSoftmax", "init_args": {"temperature": 0.5}})
        main(["predict", "--config", str(config), "--data.limit", "2"])
        records = read_jsonl(run / "run" / "predictions.jsonl")
        assert len(records) == 2 and len(records[0]["trace"]["energy"]) == 3
        assert len(records[0]["trace"]["accept"]) == 3  # all three report acceptance here
