"""Text rewards (seaflow/energies/text.py): a classifier with its own tokenizer and a Python
callable select, accept and report in every method; methods that need a gradient refuse them."""

import pytest
import torch

from seaflow.energies import CallableReward, RewardModel, TextClassifierReward
from seaflow.energies.base import ResponseBatch
from seaflow.methods import ARGS, CBS, SEA, BestOfN
from seaflow.methods.biased_decoding import BiasedDecoding
from seaflow.methods.suffix_mcmc import GuidedSuffixMCMC
from seaflow.models import load_sequence_classifier

from test_methods import direct, run_cli
from tiny import build_text_classifier


@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory):
    return build_text_classifier(tmp_path_factory.mktemp("text-classifier"))


def classify(path, texts, label=1, pair=None):
    """The classifier's logit of ``label`` for each text, computed directly, one text at a time."""
    loaded = load_sequence_classifier(str(path))
    out = []
    for i, text in enumerate(texts):
        args = (pair[i], text) if pair else (text,)
        encoded = loaded.tokenizer(*args, return_tensors="pt")
        out.append(float(loaded.model(**encoded).logits[0, label]))
    return out


def test_classifier_has_another_tokenizer(classifier_path, tiny_policy):
    loaded = load_sequence_classifier(str(classifier_path))
    assert loaded.tokenizer.get_vocab() != tiny_policy.tokenizer.get_vocab()
    with pytest.raises(ValueError, match="vocabulary|tokenizer"):  # a same-vocabulary reward model refuses it
        RewardModel(model=str(classifier_path)).setup(tiny_policy)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_classifier_scores_the_decoded_text(classifier_path, tiny_policy, batch_size):
    tok = tiny_policy.tokenizer
    texts = ["the dog is good !", "a sad and boring day", "i love the nice city"]
    ids = [tok.encode(t, add_special_tokens=False) for t in texts]
    width = max(map(len, ids)) + 2
    tokens = torch.tensor([row + [tok.pad_token_id] * (width - len(row)) for row in ids])
    lengths = torch.tensor([len(row) for row in ids])
    reward = TextClassifierReward(model=str(classifier_path), label_index=1, batch_size=batch_size)
    reward.setup(tiny_policy)
    batch = ResponseBatch([[5]] * 3, ["p"] * 3, lengths, width)
    values = reward.value(reward.prepare(batch), tokens)
    decoded = [tok.decode(row, skip_special_tokens=True) for row in ids]
    assert values.tolist() == pytest.approx(classify(classifier_path, decoded), abs=1e-5)
    # the batched score of the Reward contract gives the same values
    assert reward.score([[5]] * 3, ["p"] * 3, tokens, lengths, 2).tolist() == pytest.approx(values.tolist(), abs=1e-5)
    # probability and log-odds are the softmax's
    logits = torch.tensor([classify(classifier_path, decoded, label=k) for k in (0, 1)]).T
    prob = TextClassifierReward(model=str(classifier_path), label_index=1, output="probability")
    prob.setup(tiny_policy)
    assert prob.value(batch, tokens).tolist() == pytest.approx(torch.softmax(logits, -1)[:, 1].tolist(), abs=1e-5)
    odds = TextClassifierReward(model=str(classifier_path), label_index=1, output="log_odds")
    odds.setup(tiny_policy)
    assert odds.value(batch, tokens).tolist() == pytest.approx((logits[:, 1] - logits[:, 0]).tolist(), abs=1e-4)


def test_classifier_max_length_and_prompt_pair(classifier_path, tiny_policy):
    tok = tiny_policy.tokenizer
    text = "the good dog and the sad cat and the city"
    ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
    batch = ResponseBatch([[5]], ["describe the city"], torch.tensor([ids.shape[1]]), ids.shape[1])
    cut = TextClassifierReward(model=str(classifier_path), label_index=1, max_length=5)
    cut.setup(tiny_policy)
    # [CLS] + 3 words + [SEP]
    assert float(cut.value(batch, ids)) == pytest.approx(classify(classifier_path, ["the good dog"])[0], abs=1e-5)
    paired = TextClassifierReward(model=str(classifier_path), label_index=1, include_prompt=True)
    paired.setup(tiny_policy)
    assert float(paired.value(batch, ids)) == pytest.approx(
        classify(classifier_path, [tok.decode(ids[0])], pair=["describe the city"])[0], abs=1e-5)


def test_text_rewards_refuse_relaxed_tokens(classifier_path, tiny_policy):
    reward = CallableReward(function="builtins.len")
    reward.setup(tiny_policy)
    batch = ResponseBatch([[5]], ["p"], torch.tensor([2]), 2)
    with pytest.raises(ValueError, match="selection_reward.*distill_reward.yaml"):
        reward.value(batch, torch.rand(1, 2, tiny_policy.vocab_size))


def test_callable_reward(tiny_policy):
    tok = tiny_policy.tokenizer
    ids = torch.tensor([tok.encode("good dog", add_special_tokens=False) + [0]])
    batch = ResponseBatch([[5]], ["describe"], torch.tensor([2]), 3)
    reward = CallableReward(function="builtins.len", scale=-1.0)
    reward.setup(tiny_policy)
    assert reward.value(batch, ids).tolist() == [-len(tok.decode(ids[0, :2]))]
    pair = CallableReward(function="operator:add", with_prompt=True, batched=True)  # lists: prompts + responses
    pair.setup(tiny_policy)
    with pytest.raises(ValueError, match="returned 2 values for a batch of 1"):
        pair.value(batch, ids)
    for bad, message in (("nodots", "dotted path"), ("seaflow.nope.f", "cannot import"),
                         ("seaflow.judges.nothing", "no attribute"), ("seaflow.judges.__doc__", "not callable")):
        with pytest.raises(ValueError, match=message):
            CallableReward(function=bad)


def text_reward(path):
    return {"class_path": "TextClassifierReward", "init_args": {"model": str(path), "label_index": 1}}


def test_best_of_n_selects_by_the_text_reward(classifier_path, tiny_models, tmp_path):
    records = run_cli(tmp_path, "seaflow.methods.BestOfN", policy=str(tiny_models["policy"]), n=4,
                      reward=text_reward(classifier_path))
    for record in records:
        direct_scores = classify(classifier_path, record["candidate_responses"])
        assert record["candidate_rewards"] == pytest.approx(direct_scores, abs=1e-4)
        assert record["candidate"] == max(range(4), key=lambda c: (direct_scores[c], -c))
        assert record["reward"] == pytest.approx(direct_scores[record["candidate"]], abs=1e-4)
        assert record["cost"]["models"]["classifier"]["forward_tokens"] > 0  # its passes are counted
        assert "surrogate_reward" not in record


@pytest.mark.parametrize("method", ["args", "cbs", "suffix"])
def test_other_methods_select_and_report_with_the_text_reward(classifier_path, tiny_policy, method):
    reward = TextClassifierReward(model=str(classifier_path), label_index=1)
    common = dict(policy="unused", reward=reward, max_new_tokens=5)
    if method == "args":
        m = ARGS(top_k=3, **common)
    elif method == "cbs":
        m = CBS(beams=2, samples_per_beam=2, chunk_length=2, **common)
    else:  # uniform cuts: no gradient needed, the Metropolis test uses the text reward
        m = GuidedSuffixMCMC(chains=2, steps=3, cut_temperature=None, **common)
    records, _ = direct(m, tiny_policy, batch_size=2)
    for record in records:
        assert record["reward"] == pytest.approx(classify(classifier_path, [record["response"]])[0], abs=1e-4)
    if method == "cbs":
        assert all(r["beam_rewards"][0] == r["reward"] for r in records)


@pytest.mark.parametrize("make", [
    lambda reward: SEA(policy="unused", reward=reward, steps=2),
    lambda reward: BiasedDecoding(policy="unused", reward=reward, steps=2),
    lambda reward: GuidedSuffixMCMC(policy="unused", reward=reward, steps=2),
])
def test_gradient_methods_refuse_a_text_reward(make):
    with pytest.raises(ValueError, match=r"has none\. Move it to model.init_args.selection_reward"):
        make(CallableReward(function="builtins.len"))


def test_sea_refines_with_the_surrogate_and_selects_with_the_text_reward(classifier_path, tiny_models, tiny_policy):
    surrogate = RewardModel(model=str(tiny_models["reward"]))
    selection = TextClassifierReward(model=str(classifier_path), label_index=1)
    sea = SEA(policy="unused", reward=surrogate, selection_reward=selection, chains=3, steps=2, max_new_tokens=5, alpha=5.0)
    records, items = direct(sea, tiny_policy, batch_size=2)
    surrogate.setup(tiny_policy)
    for record, item in zip(records, items):
        chain_scores = classify(classifier_path, record["chain_responses"])
        assert record["chain_rewards"] == pytest.approx(chain_scores, abs=1e-4)
        assert record["chain"] == max(range(3), key=lambda c: (chain_scores[c], -c))
        assert record["reward"] == pytest.approx(chain_scores[record["chain"]], abs=1e-4)
        ids = torch.tensor([record["response_token_ids"]])
        batch = ResponseBatch([item["prompt_ids"]], [item["prompt"]], torch.tensor([ids.shape[1]]), ids.shape[1])
        assert record["surrogate_reward"] == pytest.approx(float(surrogate.value(surrogate.prepare(batch), ids)), abs=1e-4)
        assert record["surrogate_reward"] == pytest.approx(record["chain_surrogate_rewards"][record["chain"]], abs=1e-5)
        # the trace follows the surrogate (SEA's energy), not the text reward
        assert "reward" in record["trace"]


def test_suffix_mcmc_accepts_with_the_selection_reward(classifier_path, tiny_models, tiny_policy):
    surrogate = RewardModel(model=str(tiny_models["reward"]))
    selection = TextClassifierReward(model=str(classifier_path), label_index=1)
    m = GuidedSuffixMCMC(policy="unused", reward=surrogate, selection_reward=selection, chains=2, steps=3,
                         max_new_tokens=5, alpha=2.0)
    records, _ = direct(m, tiny_policy, batch_size=2)
    for record in records:
        assert record["reward"] == pytest.approx(classify(classifier_path, [record["response"]])[0], abs=1e-4)
        assert "surrogate_reward" in record
        # every chain's recorded reward trace is the selection reward of its states
        final = classify(classifier_path, record["chain_responses"])
        assert [trace[-1] for trace in record["trace"]["reward"]] == pytest.approx(final, abs=1e-4)
