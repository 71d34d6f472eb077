"""PEFT adapters on the policy and on a reward model: merged at load time, same outputs as peft's."""

import pytest
import torch

from seaflow.energies import RewardModel
from seaflow.energies.base import ResponseBatch
from seaflow.models import ModelLoadError, apply_adapter, load_causal_lm, load_sequence_classifier

from tiny import build_lora_adapter, build_text_classifier

IDS = torch.tensor([[4, 9, 17, 30, 41, 12]])


@pytest.fixture(scope="module")
def adapters(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {"policy": build_lora_adapter(str(tiny_models["policy"]), root / "policy"),
            "reward": build_lora_adapter(str(tiny_models["reward"]), root / "reward", classifier=True)}


def peft_logits(auto, base, adapter, ids=IDS):
    from peft import PeftModel

    with torch.no_grad():
        return PeftModel.from_pretrained(auto.from_pretrained(str(base)), str(adapter)).eval()(input_ids=ids).logits


def test_the_merged_policy_is_peft_s_model(tiny_models, adapters):
    from transformers import AutoModelForCausalLM

    base = load_causal_lm(str(tiny_models["policy"]))
    plain = base.model(input_ids=IDS).logits
    merged = apply_adapter(load_causal_lm(str(tiny_models["policy"])), str(adapters["policy"]), "model.init_args.adapter")
    logits = merged.model(input_ids=IDS).logits
    torch.testing.assert_close(logits, peft_logits(AutoModelForCausalLM, tiny_models["policy"], adapters["policy"]), atol=1e-5, rtol=0)
    assert (logits - plain).abs().max() > 1e-3  # the adapter changes the model
    assert type(merged.model) is type(base.model) and not any(p.requires_grad for p in merged.model.parameters())


def test_errors_name_the_key(tiny_models, adapters, tmp_path):
    with pytest.raises(ModelLoadError, match="model.init_args.adapter .*nowhere.*could not be loaded.*adapter_config.json"):
        apply_adapter(load_causal_lm(str(tiny_models["policy"])), str(tmp_path / "nowhere"), "model.init_args.adapter")
    bert = load_sequence_classifier(str(build_text_classifier(tmp_path / "bert")))
    with pytest.raises(ModelLoadError, match="TextClassifierReward adapter .*could not be loaded onto"):  # no q_proj / v_proj there
        apply_adapter(bert, str(adapters["reward"]), "TextClassifierReward adapter")


def test_a_policy_adapter_through_seaflow_load(tiny_models, adapters):
    from transformers import AutoModelForCausalLM

    from seaflow.api import load

    config = {"model": {"class_path": "BestOfN", "init_args": {
        "policy": str(tiny_models["policy"]), "adapter": str(adapters["policy"]), "n": 2, "max_new_tokens": 5,
        "reward": {"class_path": "LexiconReward"}}}}
    record = load(config).align(["describe the city"])[0]
    plain = load(config, overrides={"model.init_args.adapter": None}).align(["describe the city"])[0]
    # the record's per-token reference log-probabilities are the adapted model's
    from seaflow.data import PromptDataModule

    data = PromptDataModule(path="unused")
    data.attach_tokenizer(load_causal_lm(str(tiny_models["policy"])).tokenizer)
    prompt = data.encode("describe the city")
    ids = torch.tensor([prompt + record["response_token_ids"]])
    logp = torch.log_softmax(peft_logits(AutoModelForCausalLM, tiny_models["policy"], adapters["policy"], ids), -1)[0]
    expected = [float(logp[len(prompt) - 1 + t, token]) for t, token in enumerate(record["response_token_ids"])]
    assert record["ref_token_logprobs"] == pytest.approx(expected, abs=1e-4)
    assert plain["ref_token_logprobs"] != record["ref_token_logprobs"]


def test_a_reward_model_adapter(tiny_models, tiny_policy, adapters):
    from transformers import AutoModelForSequenceClassification

    reward = RewardModel(model=str(tiny_models["reward"]), adapter=str(adapters["reward"]), include_prompt=False, cache_prefix=False)
    reward.setup(tiny_policy)
    value = reward.value(reward.prepare(ResponseBatch([[]], ["x"], torch.tensor([IDS.shape[1]]), IDS.shape[1])), IDS)
    expected = peft_logits(AutoModelForSequenceClassification, tiny_models["reward"], adapters["reward"])[:, 0]
    torch.testing.assert_close(value, expected.float(), atol=1e-5, rtol=0)
    plain = RewardModel(model=str(tiny_models["reward"]), include_prompt=False, cache_prefix=False)
    plain.setup(tiny_policy)
    assert abs(float(plain.value(plain.prepare(ResponseBatch([[]], ["x"], torch.tensor([6]), 6)), IDS)) - float(value)) > 1e-4


def test_the_bridged_reward_model_and_the_text_classifier_take_their_adapters(tiny_models, tiny_policy, adapters, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from seaflow.energies import TextClassifierReward
    from seaflow.energies.bridge import BridgedRewardModel

    bridged = BridgedRewardModel(model=str(tiny_models["reward"]), adapter=str(adapters["reward"]), cache_prefix=False)
    bridged.setup(tiny_policy)
    expected = peft_logits(AutoModelForSequenceClassification, tiny_models["reward"], adapters["reward"])
    torch.testing.assert_close(bridged.reward_model(input_ids=IDS).logits, expected, atol=1e-5, rtol=0)
    bert = build_text_classifier(tmp_path / "bert")
    lora = build_lora_adapter(str(bert), tmp_path / "bert-lora", classifier=True, target_modules=("query", "value"), head="classifier")
    text = ["the city is good", "a sad day"]
    scores = {}
    for name, adapter in (("adapted", str(lora)), ("plain", None)):
        reward = TextClassifierReward(model=str(bert), adapter=adapter, output="logit")
        reward.setup(tiny_policy)
        scores[name] = reward.score_texts(["x", "x"], text)
    encoded = reward.tokenizer(text, padding=True, return_tensors="pt")
    from peft import PeftModel

    with torch.no_grad():
        peft_model = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(str(bert)), str(lora)).eval()
        torch.testing.assert_close(scores["adapted"], peft_model(**encoded).logits[:, 0], atol=1e-5, rtol=0)
    assert (scores["adapted"] - scores["plain"]).abs().max() > 1e-4


def test_a_reward_model_adapter_through_seaflow_load(tiny_models, adapters):
    from seaflow.api import load

    reward = {"class_path": "RewardModel", "init_args": {"model": str(tiny_models["reward"]), "adapter": str(adapters["reward"])}}
    config = {"model": {"class_path": "BestOfN", "init_args": {"policy": str(tiny_models["policy"]), "n": 2, "max_new_tokens": 4,
                                                               "reward": reward}}}
    adapted = load(config).align(["describe the city"])[0]
    plain = load(config, overrides={"model.init_args.reward.init_args.adapter": None}).align(["describe the city"])[0]
    assert adapted["candidate_responses"] == plain["candidate_responses"]  # the same policy samples
    assert adapted["candidate_rewards"] != plain["candidate_rewards"]  # scored by the adapted reward model
