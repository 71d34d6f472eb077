"""RewardSum: several named rewards at once, their parts in the trace and the records."""

import pytest
import torch
import torch.nn.functional as F

from seaflow.energies import CallableReward, ExactAnswerReward, KeywordReward, LexiconReward, PromptText, RewardModel, RewardSum
from seaflow.energies.base import ResponseBatch
from seaflow.methods import SEA, BestOfN, BiasedDecoding, GuidedSuffixMCMC
from seaflow.samplers import Langevin
from seaflow.testing import RewardContract

from tiny import run_method


def vader_and_dog(**weights):
    return RewardSum({"sentiment": LexiconReward(lexicon="vader"), "dog": KeywordReward(keywords=["dog"])}, weights or None)


class TestRewardSum(RewardContract):
    reward_class = RewardSum

    def make_reward(self):
        from seaflow.testing.tiny import tiny_model_paths

        return RewardSum({"sentiment": LexiconReward(lexicon="vader"), "model": RewardModel(model=str(tiny_model_paths()["reward"]))},
                         {"sentiment": 2.0, "model": -0.5})


def test_the_sum_and_its_parts_against_each_term(tiny_policy):
    total = vader_and_dog(sentiment=2.0, dog=-0.5)
    total.setup(tiny_policy)
    alone = {"sentiment": LexiconReward(lexicon="vader"), "dog": KeywordReward(keywords=["dog"])}
    for term in alone.values():
        term.setup(tiny_policy)
    words = [["a", "good", "dog", "."], ["the", "sad", "cat", "day"]]
    ids = torch.tensor([[tiny_policy.tokenizer.convert_tokens_to_ids(w) for w in row] for row in words])
    batch = ResponseBatch([[5], [5]], ["x", "x"], torch.tensor([4, 3]), 4)
    expected = {name: term.value(term.prepare(batch), ids) for name, term in alone.items()}
    value, parts = total.value_and_parts(total.prepare(batch), ids)
    torch.testing.assert_close(parts["sentiment"], expected["sentiment"])
    torch.testing.assert_close(parts["dog"], expected["dog"])
    torch.testing.assert_close(value, 2.0 * expected["sentiment"] - 0.5 * expected["dog"])
    assert total.part_names() == ["sentiment", "dog"] and LexiconReward().part_names() == []
    # the gradient is the weighted sum of the terms' gradients
    probs = torch.softmax(torch.randn(2, 4, tiny_policy.vocab_size, generator=torch.Generator().manual_seed(0)), -1).requires_grad_(True)
    (grad,) = torch.autograd.grad(total.value(total.prepare(batch), probs).sum(), probs)
    grads = {n: torch.autograd.grad(t.value(t.prepare(batch), probs).sum(), probs)[0] for n, t in alone.items()}
    torch.testing.assert_close(grad, 2.0 * grads["sentiment"] - 0.5 * grads["dog"])
    one_hot = F.one_hot(ids, tiny_policy.vocab_size).float()
    torch.testing.assert_close(total.value(total.prepare(batch), one_hot), value)


def test_differentiable_only_when_every_term_is_and_errors_name_the_key():
    assert vader_and_dog().differentiable
    with_text = RewardSum({"sentiment": LexiconReward(), "verified": ExactAnswerReward()})
    assert not with_text.differentiable
    with pytest.raises(ValueError, match="selection_reward"):
        SEA(policy="unused", reward=with_text)
    with pytest.raises(ValueError, match="at least one term.*init_args.terms"):
        RewardSum({})
    with pytest.raises(ValueError, match="weights name 'dgo'.*terms: sentiment, dog"):
        vader_and_dog(dgo=1.0)
    with pytest.raises(ValueError, match="term name 'a.b'"):
        RewardSum({"a.b": LexiconReward()})


def _parts_sum(record, weights):
    return sum(weights.get(name, 1.0) * value for name, value in record["reward_parts"].items())


@pytest.mark.parametrize("make, traced", [
    (lambda r: SEA(policy="unused", reward=r, sampler=Langevin(step_size=0.1), chains=2, steps=2, alpha=5.0, decode="best"), True),
    (lambda r: GuidedSuffixMCMC(policy="unused", reward=r, chains=2, steps=2, alpha=5.0), True),
    (lambda r: GuidedSuffixMCMC(policy="unused", reward=r, chains=2, steps=2, alpha=5.0, tries=2, score_batch=3), True),
    (lambda r: BiasedDecoding(policy="unused", reward=r, chains=2, steps=2, alpha=5.0), True),
    (lambda r: BestOfN(policy="unused", reward=r, n=3), False),
], ids=["SEA", "GuidedSuffixMCMC", "GuidedSuffixMCMC-tries-chunks", "BiasedDecoding", "BestOfN"])
def test_records_and_traces_keep_the_parts(tiny_policy, make, traced):
    weights = {"sentiment": 3.0, "dog": 0.5}
    method = make(vader_and_dog(**weights))
    method.max_new_tokens = 5
    records, _ = run_method(method, tiny_policy, ["write about my dog", "describe the city"])
    for record in records:
        assert list(record["reward_parts"]) == ["sentiment", "dog"]
        assert record["reward"] == pytest.approx(_parts_sum(record, weights), abs=1e-5)
        assert list(record)[-2:] == ["reward_parts", "cost"]  # schema order: added after the method, before the cost
        if traced:
            steps = record["trace"]["reward"]
            assert set(record["trace"]) >= {"reward.sentiment", "reward.dog"}
            for name in ("sentiment", "dog"):
                assert len(record["trace"][f"reward.{name}"]) == len(steps)
            trace = {name: torch.tensor(values, dtype=torch.float64) for name, values in record["trace"].items()}
            combined = 3.0 * trace["reward.sentiment"] + 0.5 * trace["reward.dog"]  # (steps,) or (chains, steps + 1)
            torch.testing.assert_close(combined, trace["reward"], atol=1e-5, rtol=0)


def test_a_text_term_selects(tiny_policy):
    """A RewardSum with a text term is a selection reward next to a differentiable guide."""
    select = RewardSum({"dog": KeywordReward(keywords=["dog"]),
                        "short": CallableReward(function="builtins.len", scale=-0.01)}, {"dog": 2.0})
    method = GuidedSuffixMCMC(policy="unused", reward=LexiconReward(), selection_reward=select, chains=2, steps=2, max_new_tokens=5)
    records, _ = run_method(method, tiny_policy, ["write about my dog"])
    record = records[0]
    assert record["reward_parts"]["short"] == pytest.approx(-0.01 * len(record["response"]))
    assert record["reward"] == pytest.approx(2.0 * record["reward_parts"]["dog"] + record["reward_parts"]["short"], abs=1e-5)
    assert "surrogate_reward" in record and set(record["trace"]) >= {"reward.dog", "reward.short"}


def test_row_fields_reach_every_term(tiny_policy):
    both = RewardSum({"dog": KeywordReward(), "answer": ExactAnswerReward()})
    both.setup(tiny_policy)
    rows = [PromptText("q", {"id": "a", "keywords": ["dog"], "target": "7"})]
    ids = torch.tensor([[tiny_policy.tokenizer.convert_tokens_to_ids("dog")]])
    value, parts = both.value_and_parts(both.prepare(ResponseBatch([[5]], rows, torch.tensor([1]), 1)), ids)
    assert parts == {"dog": torch.tensor([1.0]), "answer": torch.tensor([0.0])} and float(value) == 1.0
