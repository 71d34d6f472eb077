"""The Python API (seaflow.load / Aligner.align): the predict parser, the JSONL's records, the docs' code."""

import json
import re
from pathlib import Path

import pytest
import yaml
from test_cli import read_jsonl, tiny_config

import seaflow
from seaflow.api import load, override_args
from seaflow.cli import main

ROOT = Path(__file__).parent.parent
TEXTS = ["describe the city", "tell me about the weather", "write about my dog", "how was the train"]


def without_wall_time(record):
    out = {k: v for k, v in record.items() if k != "wall_time_s"}
    if isinstance(out.get("cost"), dict):
        out["cost"] = {k: v for k, v in out["cost"].items() if k not in ("wall_time_s", "load_average")}
    return out


def test_align_returns_the_records_seaflow_predict_writes(tmp_path, tiny_models):
    config = tiny_config(tmp_path, tiny_models)
    main(["predict", "--config", str(config), "--output.wall_time", "false"])
    written = read_jsonl(tmp_path / "run" / "predictions.jsonl")

    aligner = load(str(config))
    records = aligner.align(TEXTS, ids=[f"p{i}" for i in range(4)])
    assert isinstance(records, list) and all(isinstance(r, dict) for r in records)
    assert [without_wall_time(r) for r in records] == written  # same fields, same values, same order
    assert all(r["wall_time_s"] > 0 for r in records)


def test_overrides_are_the_command_line_keys(tmp_path, tiny_models):
    config = tiny_config(tmp_path, tiny_models)
    aligner = load(str(config), overrides={
        "model.init_args.steps": 2, "model.init_args.sampler": {"class_path": "MALA", "init_args": {"step_size": 0.05}},
        "data.batch_size": 3,
    })
    assert aligner.method.steps == 2 and type(aligner.method.sampler).__name__ == "MALA"
    records = aligner.align(TEXTS[:3])
    assert [r["id"] for r in records] == ["0", "1", "2"]
    assert all(len(r["trace"]["energy"]) == 2 and "accept" in r["trace"] for r in records)
    as_list = load(str(config), overrides=["--model.init_args.steps", "1"])
    assert as_list.method.steps == 1
    assert override_args({"a.b": 1.5, "c": "x", "d": None, "e": [1, 2]}) == ["--a.b=1.5", "--c=x", "--d=null", "--e=[1, 2]"]


def test_a_dict_config_and_no_prompts_file(tmp_path, tiny_models):
    config = yaml.safe_load(tiny_config(tmp_path, tiny_models).read_text())
    del config["data"]["path"], config["output"]
    aligner = load(config, overrides={"model.init_args.steps": 1})
    assert len(aligner.align("describe the city")) == 1


def test_mistakes_raise_the_parsers_message(tmp_path, tiny_models):
    config = tiny_config(tmp_path, tiny_models)
    with pytest.raises(ValueError, match="stepz"):
        load(str(config), overrides={"model.init_args.stepz": 2})
    with pytest.raises(ValueError, match="NoSuchSampler"):
        load(str(config), overrides={"model.init_args.sampler": "NoSuchSampler"})
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        load(str(tmp_path / "nowhere.yaml"))
    aligner = load(str(config), overrides={"model.init_args.steps": 1})
    with pytest.raises(ValueError, match="2 prompts but 1 ids"):
        aligner.align(["a", "b"], ids=["x"])
    with pytest.raises(ValueError, match="duplicate ids"):
        aligner.align(["a", "b"], ids=["x", "x"])
    with pytest.raises(ValueError, match="empty"):
        aligner.align(["a", " "])


def test_align_applies_the_data_settings(tmp_path, tiny_models):
    config = tiny_config(tmp_path, tiny_models)
    aligner = load(str(config), overrides={"model.init_args.steps": 1, "data.system_prompt": "be happy"})
    seen = []
    step = aligner.method.predict_step

    def spy(batch, *args):
        seen.append(batch)
        return step(batch, *args)

    aligner.method.predict_step = spy
    aligner.align(TEXTS[:3])
    assert [len(b["id"]) for b in seen] == [2, 1]  # data.batch_size
    ids = seen[0]["prompt_ids"][0]
    assert ids == aligner.data.encode("describe the city")  # the data module's encoding: chat template + system
    system = aligner.method.policy.tokenizer.convert_tokens_to_ids(["be", "happy"])
    assert any(ids[i:i + 2] == system for i in range(len(ids)))
    aligner.data.system_prompt = None
    assert len(aligner.data.encode("describe the city")) < len(ids)


# -- the docs' code, run as written ------------------------------------------------------------


def code_blocks(text: str, marker: str) -> list[str]:
    return re.findall(r"<!-- " + marker + r"[^>]*-->\n```python\n(.*?)```", text, re.S)


def readme_snippet() -> str:
    match = re.search(r"## Use.*?```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert match, "README.md's Use section lost its Python snippet"
    return match.group(1)


def run_blocks(blocks, namespace=None):
    namespace = {} if namespace is None else namespace
    for block in blocks:
        exec(compile(block, "<docs>", "exec"), namespace)
    return namespace


@pytest.fixture
def tiny_load(tiny_models, monkeypatch):
    """``seaflow.load`` with the tiny policy and short responses in place of the embedded model."""
    real = seaflow.load
    monkeypatch.chdir(ROOT)

    def load_tiny(config, overrides=None, **kwargs):
        extra = {"model.init_args.policy": str(tiny_models["policy"]), "model.init_args.max_new_tokens": 6}
        return real(config, overrides={**(overrides or {}), **extra}, **kwargs)

    monkeypatch.setattr(seaflow, "load", load_tiny)
    return load_tiny


def test_the_python_api_page_runs_on_the_tiny_policy(tiny_load, capsys):
    blocks = code_blocks((ROOT / "docs" / "python-api.md").read_text(), "python-api")
    assert len(blocks) == 5
    namespace = run_blocks(blocks)
    assert len(namespace["records"]) == 1 and "->" in capsys.readouterr().out


def test_the_readme_snippet_runs_on_the_tiny_policy(tiny_load, capsys):
    namespace = run_blocks([readme_snippet()])
    assert len(namespace["records"]) >= 1
    assert capsys.readouterr().out.strip()


@pytest.mark.slow
def test_the_python_api_page_and_readme_run_as_written(monkeypatch, capsys):
    """The page's and the README's code, verbatim, on the embedded model."""
    monkeypatch.chdir(ROOT)
    run_blocks(code_blocks((ROOT / "docs" / "python-api.md").read_text(), "python-api"))
    run_blocks([readme_snippet()])
    out = capsys.readouterr().out
    assert out.count("->") >= 2
    assert json.dumps(out)  # printable
