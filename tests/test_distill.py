"""Distilling a text reward into a surrogate head on the frozen policy (seaflow/reward_head/distill.py),
then SEA following the surrogate and selecting with the text reward; on the tiny models."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from seaflow.energies import RewardModel, TextClassifierReward
from seaflow.energies.base import ResponseBatch

from test_methods import run_cli
from test_text_reward import classify
from tiny import build_text_classifier

PROMPTS = ["describe the city", "tell me about the weather", "write about my dog", "how was the train",
           "tell me about the food", "describe your friend", "what about work", "describe the night"]
EVAL_ROWS = [("", "the dog is good", 1), ("", "a great happy day", 1), ("", "the sad city", 0), ("", "bad and awful", 0)]
CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory):
    return build_text_classifier(tmp_path_factory.mktemp("text-classifier"))


def _files(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    evaluate = tmp_path / "eval.jsonl"
    evaluate.write_text("".join(json.dumps({"prompt": p, "response": r, "label": y}) + "\n" for p, r, y in EVAL_ROWS))
    return prompts, evaluate


def _data_args(tmp_path, tiny_models, classifier_path):
    prompts, evaluate = _files(tmp_path)
    return {
        "reward": {"class_path": "TextClassifierReward", "init_args": {"model": str(classifier_path), "label_index": 1}},
        "prompts": [str(prompts)], "samples_per_prompt": 4, "responses": str(tmp_path / "cache" / "responses.jsonl"),
        "policy": str(tiny_models["policy"]), "max_new_tokens": 6, "generation_batch_size": 8,
        "evaluate": [str(evaluate)], "val_fraction": 0.25, "batch_size": 8,
    }


def test_distill_data_scores_the_policys_samples_with_the_text_reward(tmp_path, tiny_models, classifier_path):
    from seaflow.reward_head import DistillData

    args = _data_args(tmp_path, tiny_models, classifier_path)
    args["reward"] = TextClassifierReward(model=str(classifier_path), label_index=1)
    data = DistillData(**args)
    data.prepare_data()
    lines = Path(args["responses"]).read_text().splitlines()
    assert len(lines) == len(PROMPTS) * 4
    data.prepare_data()  # cached: nothing sampled again
    assert Path(args["responses"]).read_text().splitlines() == lines
    data.setup("fit")
    rows = data.train_rows + data.val_rows
    assert 0 < len(data.val_rows) < len(rows)
    assert not {r["prompt"] for r in data.train_rows} & {r["prompt"] for r in data.val_rows}
    assert [r["target"] for r in rows] == pytest.approx(classify(classifier_path, [r["response"] for r in rows]), abs=1e-4)
    evaluation = data.eval_sets["eval.jsonl"]
    assert [r["label"] for r in evaluation] == [1, 1, 0, 0]
    assert [r["target"] for r in evaluation] == pytest.approx(classify(classifier_path, [r for _, r, _ in EVAL_ROWS]), abs=1e-4)


def test_a_validation_split_that_comes_out_empty_is_refused(tmp_path, tiny_models, classifier_path):
    from seaflow.reward_head import DistillData

    args = _data_args(tmp_path, tiny_models, classifier_path)
    args["reward"] = TextClassifierReward(model=str(classifier_path), label_index=1)
    data = DistillData(**{**args, "val_fraction": 0.001})  # no prompt of 8 hashes below 0.001
    data.prepare_data()
    with pytest.raises(ValueError, match=r"DistillData val_fraction 0.001 held out none of the 8 prompts .* set val_fraction: 0"):
        data.setup("fit")
    nothing_held_out = DistillData(**{**args, "val_fraction": 0.0})  # asked for: trains, agreement.json says rows 0
    nothing_held_out.setup("fit")
    assert nothing_held_out.val_rows == [] and nothing_held_out.train_rows


def test_regression_head_fits_and_exports_in_reward_units(tmp_path, tiny_models, tiny_policy, classifier_path):
    import lightning as L

    from seaflow.reward_head import DistillData, RewardHead

    args = _data_args(tmp_path, tiny_models, classifier_path)
    args["reward"] = TextClassifierReward(model=str(classifier_path), label_index=1)
    data = DistillData(**args)
    module = RewardHead(policy=str(tiny_models["policy"]), export_dir=str(tmp_path / "head"), objective="regress",
                        lr=0.05, max_response_tokens=6)
    trainer = L.Trainer(max_epochs=60, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, data)
    rows = data.train_rows
    targets = torch.tensor([r["target"] for r in rows])
    prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
    with torch.no_grad():
        predicted = module(prompts, responses) * module.target_std + module.target_mean
    # the fit explains most of the training variance (a constant would explain none)
    assert float(((predicted - targets) ** 2).mean()) < 0.5 * float(targets.var(unbiased=False))
    # the exported classifier computes the trained score in the reward's units, minus the recorded offset
    config = json.loads((tmp_path / "head" / "config.json").read_text())["seaflow_reward_head"]
    assert config["objective"] == "regress" and "TextClassifierReward" in config["label_1"]
    reward = RewardModel(model=str(tmp_path / "head"), include_prompt=False)
    reward.setup(tiny_policy)
    tok = tiny_policy.tokenizer
    for response, value in list(zip(responses, predicted))[:6]:
        ids = torch.tensor([tok.encode(response, add_special_tokens=False)])
        batch = ResponseBatch([[]], [""], torch.tensor([ids.shape[1]]), ids.shape[1])
        exported = float(reward.value(reward.prepare(batch), ids)) + config["bias"]
        assert exported == pytest.approx(float(value), abs=1e-3)
    report = json.loads((tmp_path / "head" / "agreement.json").read_text())
    assert set(report) == {"validation", "eval.jsonl"}
    assert {"spearman", "pearson", "rows"} <= set(report["validation"])
    assert {"auc", "reward_auc"} <= set(report["eval.jsonl"])


def test_distill_cli_then_sea_with_the_surrogate_and_the_true_selection(tmp_path, tiny_models, classifier_path):
    from seaflow.cli import main

    config = {
        "model": {"class_path": "seaflow.reward_head.RewardHead", "init_args": {
            "policy": str(tiny_models["policy"]), "export_dir": str(tmp_path / "surrogate"), "objective": "regress",
            "lr": 0.05, "max_response_tokens": 6}},
        "data": {"class_path": "seaflow.reward_head.DistillData", "init_args": _data_args(tmp_path, tiny_models, classifier_path)},
        "trainer": {"max_epochs": 5, "accelerator": "cpu", "logger": False, "enable_model_summary": False,
                    "enable_progress_bar": False, "default_root_dir": str(tmp_path / "root")},
    }
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(path)])
    assert (tmp_path / "surrogate" / "agreement.json").exists()
    records = run_cli(
        tmp_path, "seaflow.SEA", policy=str(tiny_models["policy"]), chains=2, steps=2, alpha=2.0,
        reward={"class_path": "RewardModel", "init_args": {"model": str(tmp_path / "surrogate"), "include_prompt": False}},
        selection_reward={"class_path": "TextClassifierReward", "init_args": {"model": str(classifier_path), "label_index": 1}},
    )
    for record in records:
        assert record["reward"] == pytest.approx(classify(classifier_path, [record["response"]])[0], abs=1e-4)
        assert record["chain_rewards"][record["chain"]] == max(record["chain_rewards"])
        assert record["surrogate_reward"] == record["chain_surrogate_rewards"][record["chain"]]
        assert record["cost"]["models"]["reward"]["backward_tokens"] > 0  # the surrogate's gradient
        assert record["cost"]["models"]["classifier"]["forward_tokens"] > 0  # the selection


def test_distill_config_parses(capsys):
    from seaflow.cli import main

    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / "distill_reward.yaml"), "--print_config"])
    parsed = yaml.safe_load(capsys.readouterr().out)
    assert parsed["model"]["init_args"]["objective"] == "regress"
    assert parsed["data"]["init_args"]["reward"]["class_path"].endswith("CallableReward")
