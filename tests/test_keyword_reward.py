"""KeywordReward: the energy-term contract, its math against direct computation, and its use by methods."""

import json

import pytest
import torch
import torch.nn.functional as F

from seaflow.energies import KeywordReward
from seaflow.energies.base import ResponseBatch
from seaflow.energies.keywords import keyword_hits
from seaflow.methods import BestOfN
from seaflow.methods import SEA
from seaflow.relaxations import OneHot
from seaflow.samplers import DiscreteLangevin, Langevin

from test_methods import PROMPTS, direct


def _ids(policy, words):
    return [policy.tokenizer.convert_tokens_to_ids(w) for w in words]


def _batch(prompts, lengths, width):
    return ResponseBatch([[5]] * len(prompts), prompts, torch.tensor(lengths), width)


@pytest.fixture()
def term(tiny_policy):
    reward = KeywordReward(keywords=["dog"])
    reward.setup(tiny_policy)
    return reward


def test_judge_matches_whole_words_case_insensitively():
    assert keyword_hits("A Volcano erupted.", ["volcano", "violin"]) == [True, False]
    assert keyword_hits("volcanoes and violins", ["volcano", "violin"]) == [False, False]
    assert keyword_hits("the violin-maker", ["violin"]) == [True]


def test_ids_and_one_hot_agree_and_count_only_active_positions(tiny_policy, term):
    rows = [["my", "dog", "is", "good"], ["the", "cat", "the", "dog"], ["dog", "dog", "dog", "dog"]]
    tokens = torch.tensor([_ids(tiny_policy, r) for r in rows])
    batch = _batch(["x", "x", "x"], [4, 3, 4], 4)  # row 1: "dog" sits past its length
    expected = torch.tensor([1.0, 0.0, 1.0])  # a repeated keyword is worth no more than one
    torch.testing.assert_close(term.value(term.prepare(batch), tokens), expected)
    one_hot = F.one_hot(tokens, tiny_policy.vocab_size).float()
    torch.testing.assert_close(term.value(term.prepare(batch), one_hot), expected)


def test_relaxed_value_is_the_occurrence_probability(tiny_policy, term):
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(2, 5, tiny_policy.vocab_size, generator=gen) * 3, -1)
    dog = _ids(tiny_policy, ["dog"])[0]
    value = term.value(term.prepare(_batch(["x", "x"], [5, 2], 5)), probs)
    # independent positions: P(dog somewhere among the active positions) = 1 - prod_t (1 - p_t[dog])
    expected = torch.stack([1 - (1 - probs[0, :, dog]).prod(), 1 - (1 - probs[1, :2, dog]).prod()])
    torch.testing.assert_close(value, expected)


def test_two_token_keyword_and_per_prompt_keywords(tmp_path, tiny_policy):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "p one", "keywords": ["good day"]},
        {"prompt": "p two", "keywords": ["cat", "train"]},
    ]))
    reward = KeywordReward(keywords_file=str(path))
    reward.setup(tiny_policy)
    rows = [["a", "good", "day", "."], ["a", "cat", "on", "day"]]
    tokens = torch.tensor([_ids(tiny_policy, r) for r in rows])
    batch = _batch(["p one", "p two"], [4, 4], 4)
    torch.testing.assert_close(reward.value(reward.prepare(batch), tokens), torch.tensor([1.0, 0.5]))
    one_hot = F.one_hot(tokens, tiny_policy.vocab_size).float()
    torch.testing.assert_close(reward.value(reward.prepare(batch), one_hot), torch.tensor([1.0, 0.5]))
    # soft: the spelling's probability at each start t is p_t[good] * p_{t+1}[day]
    probs = torch.softmax(torch.randn(1, 4, tiny_policy.vocab_size, generator=torch.Generator().manual_seed(1)), -1)
    good, day = _ids(tiny_policy, ["good", "day"])
    q = probs[0, :3, good] * probs[0, 1:, day]
    torch.testing.assert_close(reward.value(reward.prepare(_batch(["p one"], [4], 4)), probs)[0], 1 - (1 - q).prod())


def test_gradient_reaches_every_position_of_an_absent_keyword(tiny_policy, term):
    tokens = torch.tensor([_ids(tiny_policy, ["my", "cat", "is", "good"])])
    one_hot = F.one_hot(tokens, tiny_policy.vocab_size).float().requires_grad_(True)
    value = term.value(term.prepare(_batch(["x"], [4], 4)), one_hot)
    (grad,) = torch.autograd.grad(value.sum(), one_hot)
    dog = _ids(tiny_policy, ["dog"])[0]
    torch.testing.assert_close(grad[0, :, dog], torch.ones(4))  # d/dp_t[dog] of 1 - prod(1 - p) at p = 0
    assert torch.count_nonzero(grad[0, :, [i for i in range(tiny_policy.vocab_size) if i != dog]]) == 0


def test_errors_name_the_fix(tiny_policy, tmp_path):
    reward = KeywordReward(keywords_file=str(_file(tmp_path)))
    reward.setup(tiny_policy)
    with pytest.raises(ValueError, match="no keywords for the prompt 'other'.*'keywords' field.*keywords_file"):
        reward.prepare(_batch(["other"], [3], 3))
    with pytest.raises(ValueError, match="cannot be written"):
        bad = KeywordReward(keywords=["zzzqqq"])
        bad.setup(tiny_policy)


def _file(tmp_path):
    path = tmp_path / "k.jsonl"
    path.write_text(json.dumps({"prompt": "p", "keywords": ["dog"]}) + "\n")
    return path


def test_methods_optimise_it(tiny_models, tiny_policy):
    bon = BestOfN(policy=str(tiny_models["policy"]), reward=KeywordReward(keywords=["the"]), n=8, max_new_tokens=6)
    records, _ = direct(bon, tiny_policy, prompts=PROMPTS[:2])
    for record in records:
        hits = [bool(keyword_hits(text, ["the"])[0]) for text in record["candidate_responses"]]
        assert record["reward"] == (1.0 if any(hits) else 0.0)
        assert record["candidate_rewards"] == [float(h) for h in hits]
    for sampler, relaxation in [(Langevin(step_size=0.1), None), (DiscreteLangevin(step_size=0.5), OneHot())]:
        kwargs = {"relaxation": relaxation} if relaxation is not None else {}
        sea = SEA(policy=str(tiny_models["policy"]), reward=KeywordReward(keywords=["dog"]), sampler=sampler,
                  chains=2, steps=2, max_new_tokens=5, alpha=5.0, decode="best", **kwargs)
        records, _ = direct(sea, tiny_policy, prompts=PROMPTS[:2])
        for record in records:
            assert record["reward"] == float(keyword_hits(record["response"], ["dog"])[0])
            assert record["faults"] == []
