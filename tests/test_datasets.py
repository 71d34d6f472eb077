"""``data.path: hf:NAME``: prompts through Hugging Face datasets, from datasets saved by datasets itself."""

import json

import pytest

from seaflow.data import PromptDataModule, PromptFileError, read_prompts

datasets = pytest.importorskip("datasets")

ROWS = {"uid": ["a", "b", "c", "d"], "question": ["describe the city", "tell me about the weather", "write about my dog", "how was the train"],
        "task": ["sentiment"] * 4}


def test_a_saved_dataset_with_a_field_mapping(tmp_path):
    datasets.Dataset.from_dict(ROWS).save_to_disk(str(tmp_path / "saved"))
    prompts = read_prompts(f"hf:{tmp_path / 'saved'}", prompt_field="question", id_field="uid")
    assert [(p["id"], p["prompt"], p["index"], p["task"]) for p in prompts] == [
        (uid, q, i, "sentiment") for i, (uid, q) in enumerate(zip(ROWS["uid"], ROWS["question"]))
    ]


def test_a_saved_dataset_dict_split_and_slice(tmp_path):
    whole = datasets.Dataset.from_dict(ROWS)
    datasets.DatasetDict({"train": whole.select([0]), "test": whole}).save_to_disk(str(tmp_path / "dict"))
    prompts = read_prompts(f"hf:{tmp_path / 'dict'}", prompt_field="question", split="test[1:3]")
    assert [p["prompt"] for p in prompts] == ROWS["question"][1:3]
    assert [p["id"] for p in prompts] == ["2", "3"]  # no id field: the row number in the whole split
    with pytest.raises(PromptFileError, match="no split 'valid'.*data.split"):
        read_prompts(f"hf:{tmp_path / 'dict'}", prompt_field="question", split="valid")


@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_data_files(tmp_path, kind):
    data = datasets.Dataset.from_dict(ROWS)
    path = tmp_path / f"prompts.{kind}"
    data.to_parquet(str(path)) if kind == "parquet" else data.to_json(str(path), lines=True)
    prompts = read_prompts(f"hf:{path}", prompt_field="question", id_field="uid", split="train[:2]")
    assert [p["id"] for p in prompts] == ["a", "b"]


def test_a_hub_id_offline_fails_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(PromptFileError, match=r"hf:nobody/no-such-prompts .*Hugging Face hub.*save_to_disk"):
        read_prompts("hf:nobody/no-such-prompts", prompt_field="question")


def test_predict_reads_a_saved_dataset(tmp_path, tiny_models):
    import yaml

    from seaflow.cli import main

    datasets.Dataset.from_dict(ROWS).save_to_disk(str(tmp_path / "saved"))
    config = {
        "model": {"class_path": "seaflow.methods.Sample", "init_args": {"policy": str(tiny_models["policy"]), "max_new_tokens": 4}},
        "data": {"path": f"hf:{tmp_path / 'saved'}", "prompt_field": "question", "id_field": "uid", "split": "train[:3]"},
        "output": {"output_dir": str(tmp_path / "run")},
        "trainer": {"enable_progress_bar": False},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    main(["predict", "--config", str(tmp_path / "config.yaml")])
    records = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert [(r["id"], r["prompt"], r["task"]) for r in records] == [(u, q, "sentiment") for u, q in zip(ROWS["uid"][:3], ROWS["question"][:3])]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "positive_rate" in summary and "harmful_rate" not in summary
    assert PromptDataModule(path="x", split="test").split == "test"
