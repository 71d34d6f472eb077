"""The token bridge (seaflow/energies/bridge.py): policy tokens mapped to another tokenizer's."""

import shutil

import pytest
import torch

from seaflow.energies.base import ResponseBatch
from seaflow.energies.bridge import BridgedRewardModel, TokenBridge
from seaflow.models import load_sequence_classifier

from tiny import build_text_classifier, llama_config


@pytest.fixture(scope="module")
def other_tokenizer_classifier(tmp_path_factory):
    """A tiny decoder classifier whose tokenizer is the BERT-style one (other ids, lower-cased, extra words)."""
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    root = tmp_path_factory.mktemp("bridge")
    text = build_text_classifier(root / "bert")
    path = root / "llama"
    path.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (text / name).exists():
            shutil.copy(text / name, path / name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(3)
    LlamaForSequenceClassification(llama_config(len(tokenizer), num_labels=1, bos_token_id=2, eos_token_id=3)).save_pretrained(path)
    return path


def test_bridge_maps_words_to_the_same_words(tiny_policy, other_tokenizer_classifier):
    target = load_sequence_classifier(str(other_tokenizer_classifier)).tokenizer
    bridge = TokenBridge(tiny_policy.tokenizer, target)
    tok = tiny_policy.tokenizer
    for word in ("good", "dog", "city", "!"):
        (source,) = tok.encode(word, add_special_tokens=False)
        assert target.convert_ids_to_tokens(int(bridge.index[source])) == word and bool(bridge.exact[source])
    ids = tok.encode("the dog is good !", add_special_tokens=False)
    assert bridge.map_ids(torch.tensor(ids)).tolist() == bridge.retokenize(ids)
    report = bridge.agreement([ids, tok.encode("a sad day", add_special_tokens=False)])
    assert report["sequence_match"] == 1.0 and report["token_exact"] == 1.0
    # a one-hot distribution maps to the one-hot of the mapped ids
    one_hot = torch.nn.functional.one_hot(torch.tensor([ids]), tiny_policy.vocab_size).float()
    mapped = bridge.map_relaxed(one_hot)
    assert torch.equal(mapped.argmax(-1)[0], bridge.map_ids(torch.tensor(ids))) and torch.allclose(mapped.sum(-1), torch.ones(1, len(ids)))


def test_bridged_reward_model_equals_the_classifier_on_mapped_tokens(tiny_policy, other_tokenizer_classifier):
    tok = tiny_policy.tokenizer
    reward = BridgedRewardModel(model=str(other_tokenizer_classifier), include_prompt=True, cache_prefix=False)
    reward.setup(tiny_policy)
    loaded = load_sequence_classifier(str(other_tokenizer_classifier))
    prompt = tok.encode("describe the city", add_special_tokens=False)
    response = tok.encode("the city is nice", add_special_tokens=False)
    ids = torch.tensor([response])
    batch = ResponseBatch([prompt], ["describe the city"], torch.tensor([len(response)]), len(response))
    value = float(reward.value(reward.prepare(batch), ids))
    direct_ids = loaded.tokenizer.encode("describe the city", add_special_tokens=False) + reward.bridge.map_ids(ids)[0].tolist()
    assert direct_ids == loaded.tokenizer.encode("describe the city the city is nice", add_special_tokens=False)
    expected = float(loaded.model(input_ids=torch.tensor([direct_ids])).logits[0, 0])
    assert value == pytest.approx(expected, abs=1e-4)
    # relaxed tokens: one-hot gives the same value, and the gradient reaches the policy's vocabulary
    one_hot = torch.nn.functional.one_hot(ids, tiny_policy.vocab_size).float().requires_grad_(True)
    relaxed = reward.value(reward.prepare(batch), one_hot)
    assert float(relaxed) == pytest.approx(value, abs=1e-4)
    relaxed.sum().backward()
    assert one_hot.grad.shape == one_hot.shape and one_hot.grad.abs().sum() > 0
