"""Forward-only evaluation of candidate responses (EnergyFunction.energies) equals the full evaluation."""

import pytest
import torch

from seaflow.energies import KeywordReward, LexiconReward, ReferenceLogLikelihood, RewardModel
from seaflow.energies.base import ResponseBatch
from seaflow.layout import PrefixLayout, select_rows
from seaflow.refine import EnergyFunction
from seaflow.relaxations import OneHot

PROMPTS = ("describe the city", "tell me about the weather today and the night at the train", "why", "write about my dog")


def _batch(policy, lengths, width):
    prompts = list(PROMPTS[: len(lengths)])
    return ResponseBatch([policy.tokenizer.encode(p) for p in prompts], prompts, torch.tensor(lengths), width)


def _terms(policy, tiny_models, reward_kind, cache_prefix=True):
    reference = ReferenceLogLikelihood(cache_prefix=cache_prefix)
    reference.setup(policy)
    if reward_kind == "model":
        reward = RewardModel(model=str(tiny_models["reward"]), cache_prefix=cache_prefix)
    elif reward_kind == "keywords":
        reward = KeywordReward(keywords=["happy", "dog"])
    else:
        reward = LexiconReward()
    reward.setup(policy)
    return reward, reference


def _candidates(base, k, vocab, seed):
    """K edits of each base row: one, two or three changed positions anywhere (an unchanged copy too)."""
    g = torch.Generator().manual_seed(seed)
    rows, width = base.shape
    out = base.unsqueeze(1).repeat(1, k, 1)
    for r in range(rows):
        for j in range(1, k):
            for _ in range(1 + j % 3):
                out[r, j, int(torch.randint(width, (1,), generator=g))] = int(torch.randint(4, vocab, (1,), generator=g))
    return out


def _direct(energy_fn, candidates):
    """Energies through the autograd evaluation of one-hot logits, one candidate at a time."""
    vocab = energy_fn.reference.policy.vocab_size
    out = []
    for j in range(candidates.shape[1]):
        y = torch.nn.functional.one_hot(candidates[:, j], vocab).float() * 10
        out.append(energy_fn(y).energy)
    return torch.stack(out, 1)


@pytest.mark.parametrize("reward_kind", ["lexicon", "model", "keywords"])
@pytest.mark.parametrize("lengths,width", [([6, 2, 4, 1], 6), ([5, 5, 5], 5), ([3, 0, 7], 7)])
def test_candidate_energies_equal_the_full_evaluation(tiny_policy, tiny_models, reward_kind, lengths, width):
    batch = _batch(tiny_policy, lengths, width)
    reward, reference = _terms(tiny_policy, tiny_models, reward_kind)
    energy_fn = EnergyFunction(batch, OneHot(), reward, reference, alpha=3.0, reference_weight=1.0, candidate_rows=5)
    vocab = tiny_policy.vocab_size
    base = torch.randint(4, vocab, (len(lengths), width), generator=torch.Generator().manual_seed(0))
    candidates = _candidates(base, 6, vocab, seed=1)
    expected = _direct(energy_fn, candidates)
    assert isinstance(energy_fn.reference_state, PrefixLayout)
    with_base = energy_fn.energies(candidates, base)  # the reference reuses the base up to each edit
    whole = energy_fn.energies(candidates)  # every candidate on whole responses (prompt cache only)
    torch.testing.assert_close(with_base, expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(whole, expected, rtol=1e-5, atol=1e-4)
    assert energy_fn.candidate_evaluations == 2 * candidates.shape[0] * candidates.shape[1]


def test_candidate_energies_without_prompt_cache_and_other_bases(tiny_policy, tiny_models):
    """Whole-row layouts are indexed too; a base unrelated to the candidates gives the same values."""
    batch = _batch(tiny_policy, [6, 3, 5], 6)
    reward, reference = _terms(tiny_policy, tiny_models, "model", cache_prefix=False)
    energy_fn = EnergyFunction(batch, OneHot(), reward, reference, alpha=2.0, reference_weight=0.5)
    vocab = tiny_policy.vocab_size
    candidates = torch.randint(4, vocab, (3, 4, 6), generator=torch.Generator().manual_seed(3))
    expected = _direct(energy_fn, candidates)
    torch.testing.assert_close(energy_fn.energies(candidates, candidates[:, 0]), expected, rtol=1e-5, atol=1e-4)
    cached = EnergyFunction(batch, OneHot(), *_terms(tiny_policy, tiny_models, "model"), alpha=2.0, reference_weight=0.5)
    other = torch.randint(4, vocab, (3, 6), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(cached.energies(candidates, other), expected, rtol=1e-5, atol=1e-4)


def test_candidates_count_as_visited_states(tiny_policy, tiny_models):
    batch = _batch(tiny_policy, [4, 4], 4)
    energy_fn = EnergyFunction(batch, OneHot(), *_terms(tiny_policy, tiny_models, "lexicon"), alpha=1.0, reference_weight=1.0)
    candidates = torch.randint(4, tiny_policy.vocab_size, (2, 5, 4), generator=torch.Generator().manual_seed(5))
    energies = energy_fn.energies(candidates)
    best = energies.argmin(1)
    torch.testing.assert_close(energy_fn.best_energy, energies.min(1).values)
    assert torch.equal(energy_fn.best_tokens, candidates[torch.arange(2), best])


def test_select_rows_of_prepared_states(tiny_policy):
    batch = _batch(tiny_policy, [3, 2], 3)
    reference = ReferenceLogLikelihood()
    reference.setup(tiny_policy)
    state = reference.prepare(batch)
    index = torch.tensor([1, 1, 0])
    picked = select_rows(state, index, 2)
    again = reference.prepare(ResponseBatch([batch.prompt_ids[i] for i in index], [batch.prompts[i] for i in index], batch.lengths[index], 3))
    for name in ("ids", "attention_mask", "prompt_lengths", "lengths", "last_logits"):
        torch.testing.assert_close(getattr(picked, name), getattr(again, name))
    for (k, v), (k2, v2) in zip(picked.key_values, again.key_values):
        torch.testing.assert_close(k, k2)
        torch.testing.assert_close(v, v2)
    words, lengths = select_rows(([["a"], ["b"]], torch.tensor([5, 6])), index, 2)
    assert words == [["b"], ["b"], ["a"]] and lengths.tolist() == [6, 6, 5]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_hot_lookup_gives_the_dense_product_values_and_gradients(tiny_policy, dtype):
    """Straight-through's one-hot forward embedded by a row lookup: the same values and gradients as ``p @ W``."""
    from seaflow.layout import response_embeddings
    from seaflow.relaxations import StraightThrough

    embedding = torch.nn.Embedding(tiny_policy.vocab_size, 8).to(dtype).requires_grad_(False)
    y = torch.randn(3, 5, tiny_policy.vocab_size, generator=torch.Generator().manual_seed(0))
    weights = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(1)).to(dtype)
    out = {}
    for lookup in (True, False):
        leaf = y.clone().requires_grad_(True)
        embedded = response_embeddings(embedding, StraightThrough()(leaf), lookup=lookup)
        (grad,) = torch.autograd.grad((embedded * weights).float().sum(), leaf)
        out[lookup] = (embedded, grad)
    assert torch.equal(out[True][0], out[False][0])
    torch.testing.assert_close(out[True][1], out[False][1])
    soft = torch.softmax(y, -1)  # not one-hot: the dense product either way
    assert torch.equal(response_embeddings(embedding, soft), response_embeddings(embedding, soft, lookup=False))
