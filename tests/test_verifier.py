"""ExactAnswerReward: the row's reference answer against the response's final number."""

import pytest
import torch

from seaflow.energies import ExactAnswerReward, KeywordReward, PromptText
from seaflow.energies.base import ResponseBatch
from seaflow.energies.verifier import is_correct, reference_number
from seaflow.methods import SEA, GuidedSuffixMCMC
from seaflow.samplers import Langevin

from tiny import run_method

WORDS = ["<pad>", "so", "the", "answer", "is", "7", "36", "8", "."]


class WordTokenizer:
    """Ids -> words joined by spaces: enough to decode responses for a text reward."""

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(WORDS[i] for i in ids if not (skip_special_tokens and i == 0))


def verifier(**kwargs):
    reward = ExactAnswerReward(**kwargs)
    reward.policy_tokenizer = WordTokenizer()
    return reward


def rows(*targets):
    return [PromptText("q", {"id": f"r{i}", "target": t}) for i, t in enumerate(targets)]


def test_reference_answers_are_numbers_or_worked_solutions():
    assert reference_number("7") == 7 and reference_number(36) == 36.0
    assert reference_number("3 boxes hold 3 * 12 = 36 pens.\n#### 36") == 36
    assert reference_number("no number") is None
    assert is_correct("so the answer is 36 .", "so 3 * 12 = 36\n#### 36")


def test_each_row_is_checked_against_its_own_target():
    reward = verifier()
    # the same response, three rows with different targets
    ids = torch.tensor([[1, 2, 3, 4, 6, 8]] * 3)
    batch = ResponseBatch([[1]] * 3, rows("36", "7", "#### 36"), torch.tensor([6, 6, 6]), 6)
    assert reward.value(reward.prepare(batch), ids).tolist() == [1.0, 0.0, 1.0]
    short = ResponseBatch([[1]], rows("36"), torch.tensor([4]), 6)  # the answer lies past the row's length
    assert reward.value(reward.prepare(short), ids[:1]).tolist() == [0.0]
    scaled = verifier(correct=2.0, incorrect=-1.0)
    assert scaled.value(scaled.prepare(batch), ids).tolist() == [2.0, -1.0, 2.0]


def test_errors_name_the_row_and_the_fix():
    reward = verifier()
    ids = torch.tensor([[5]])
    with pytest.raises(ValueError, match="field 'target'.*row 'x' has none.*GSM8K"):
        reward.value(ResponseBatch([[1]], [PromptText("q", {"id": "x"})], torch.tensor([1]), 1), ids)
    with pytest.raises(ValueError, match="reference answer 'n/a' of row 'r0' states no number"):
        reward.value(ResponseBatch([[1]], rows("n/a"), torch.tensor([1]), 1), ids)
    with pytest.raises(ValueError, match="selection_reward"):
        reward.value(ResponseBatch([[1]], rows("7"), torch.tensor([1]), 1), torch.rand(1, 1, len(WORDS)))
    with pytest.raises(ValueError, match="correct.*above incorrect"):
        ExactAnswerReward(correct=0.0, incorrect=0.0)


@pytest.mark.parametrize("make", [
    lambda: GuidedSuffixMCMC(policy="unused", reward=KeywordReward(keywords=["dog"]), selection_reward=ExactAnswerReward(),
                             chains=2, steps=2, max_new_tokens=4),
    lambda: SEA(policy="unused", reward=KeywordReward(keywords=["dog"]), selection_reward=ExactAnswerReward(),
                sampler=Langevin(step_size=0.1), chains=2, steps=2, max_new_tokens=4),
], ids=["GuidedSuffixMCMC", "SEA"])
def test_a_gradient_method_selects_with_it(tiny_policy, make):
    records, _ = run_method(make(), tiny_policy, rows=[
        {"id": "a", "prompt": "tell me", "target": "7", "index": 0}, {"id": "b", "prompt": "tell me", "target": "8", "index": 1}])
    for record in records:
        assert record["reward"] == float(is_correct(record["response"], record["target"]))
        assert "surrogate_reward" in record  # the keyword term guided, the verifier selected
