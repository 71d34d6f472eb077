"""RewardModel: the cached-prompt path equals whole rows; a reward model on a device of its own."""

import pytest
import torch
import torch.nn.functional as F

from seaflow.layout import Layout, PrefixLayout, active_mask
from seaflow.energies import PromptedJudge, RewardModel
from seaflow.energies.base import ResponseBatch

PROMPTS = ("describe the city", "tell me about the weather today and the night at the train", "why", "write about my dog")


def _batch(policy, lengths, width):
    prompts = list(PROMPTS[: len(lengths)])
    prompt_ids = [policy.tokenizer.encode(p) for p in prompts]
    return ResponseBatch(prompt_ids, prompts, torch.tensor(lengths), width)


def _value_and_grad(term, prepared, y):
    y = y.detach().requires_grad_(True)
    value = term.value(prepared, torch.softmax(y, -1))
    (grad,) = torch.autograd.grad(value.sum(), y)
    return value.detach(), grad


def _reward(tiny_models, policy, **kwargs):
    term = RewardModel(model=str(tiny_models["reward"]), **kwargs)
    term.setup(policy)
    return term


@pytest.fixture(params=["sdpa", "eager"])
def attention(request):
    return request.param


@pytest.mark.parametrize("lengths,width", [([6, 2, 4, 1], 6), ([5, 5, 5], 5), ([1, 1], 1), ([3, 0, 7], 7)])
def test_reward_cached_equals_uncached(tiny_policy, tiny_models, attention, lengths, width):
    """Ragged prompts x ragged responses (an empty one too): values and gradients w.r.t. the relaxed response."""
    batch = _batch(tiny_policy, lengths, width)
    plain = _reward(tiny_models, tiny_policy, cache_prefix=False)
    cached = _reward(tiny_models, tiny_policy, cache_prefix=True)
    for term in (plain, cached):
        term.reward_model.set_attn_implementation(attention)
    plain_state, cached_state = plain.prepare(batch), cached.prepare(batch)
    assert isinstance(plain_state, Layout) and isinstance(cached_state, PrefixLayout)
    y = torch.randn(len(lengths), width, tiny_policy.vocab_size, generator=torch.Generator().manual_seed(1)) * 3
    value, grad = _value_and_grad(plain, plain_state, y)
    value_c, grad_c = _value_and_grad(cached, cached_state, y)
    torch.testing.assert_close(value_c, value, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_c, grad, rtol=1e-4, atol=1e-6)
    inactive = ~active_mask(batch.lengths, width)
    if inactive.any():  # positions past a row's length get no gradient on either path
        assert grad_c[inactive].abs().max() == 0 and grad[inactive].abs().max() == 0


def test_reward_cached_one_hot_equals_ids_and_plain_forward(tiny_policy, tiny_models):
    batch = _batch(tiny_policy, [6, 3, 5], 6)
    cached = _reward(tiny_models, tiny_policy)
    prepared = cached.prepare(batch)
    assert isinstance(prepared, PrefixLayout)
    tokens = torch.randint(4, tiny_policy.vocab_size, (3, 6), generator=torch.Generator().manual_seed(2))
    from_ids = cached.value(prepared, tokens)
    from_one_hot = cached.value(prepared, F.one_hot(tokens, tiny_policy.vocab_size).float())
    torch.testing.assert_close(from_one_hot, from_ids, rtol=1e-5, atol=1e-5)
    for row in range(3):  # against the classifier on the row's ids, no padding, no cache
        n = int(batch.lengths[row])
        ids = torch.tensor([batch.prompt_ids[row] + tokens[row, :n].tolist()])
        expected = cached.reward_model(input_ids=ids).logits[0, 0]
        assert abs(float(from_ids[row]) - float(expected)) < 1e-4


def test_reward_cache_is_not_mutated_and_evaluations_repeat(tiny_policy, tiny_models):
    batch = _batch(tiny_policy, [4, 2], 4)
    cached = _reward(tiny_models, tiny_policy)
    prepared = cached.prepare(batch)
    before = [(k.clone(), v.clone()) for k, v in prepared.key_values]
    y = torch.randn(2, 4, tiny_policy.vocab_size)
    first, grad = _value_and_grad(cached, prepared, y)
    for _ in range(2):
        again, grad_again = _value_and_grad(cached, prepared, y)
        assert torch.equal(again, first) and torch.equal(grad_again, grad)
    for (k0, v0), (k, v) in zip(before, prepared.key_values):
        assert torch.equal(k0, k) and torch.equal(v0, v)


def test_reward_falls_back_to_whole_rows_without_a_prompt(tiny_policy, tiny_models):
    """include_prompt: false leaves nothing to cache: whole rows, same values as cache_prefix: false."""
    batch = _batch(tiny_policy, [5, 2], 5)
    cached = _reward(tiny_models, tiny_policy, include_prompt=False)
    plain = _reward(tiny_models, tiny_policy, include_prompt=False, cache_prefix=False)
    state = cached.prepare(batch)
    assert isinstance(state, Layout)
    tokens = torch.randint(4, tiny_policy.vocab_size, (2, 5), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(cached.value(state, tokens), plain.value(plain.prepare(batch), tokens))


def test_reward_model_assigned_directly_still_caches(tiny_policy, tiny_models):
    """A classifier attached without setup() (as the benchmarks do) gets the cached path too."""
    batch = _batch(tiny_policy, [4, 3], 4)
    loaded = _reward(tiny_models, tiny_policy)
    term = RewardModel(model="(in memory)")
    term.reward_model, term.pad_id = loaded.reward_model, 0
    prepared = term.prepare(batch)
    assert isinstance(prepared, PrefixLayout)
    tokens = torch.randint(4, tiny_policy.vocab_size, (2, 4), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(term.value(prepared, tokens), loaded.value(loaded.prepare(batch), tokens))


# -- a model on a device of its own ------------------------------------------------------


def test_reward_on_its_own_device_is_not_a_submodule(tiny_policy, tiny_models):
    batch = _batch(tiny_policy, [6, 2, 4], 6)
    home = _reward(tiny_models, tiny_policy)
    away = _reward(tiny_models, tiny_policy, device="cpu")
    assert "reward_model" in dict(home.named_children())
    assert "reward_model" not in dict(away.named_children()) and not list(away.parameters())
    method = torch.nn.Module()
    method.reward = away  # as inside a LightningModule: moving the method would not reach the model
    assert not list(method.parameters())
    y = torch.randn(3, 6, tiny_policy.vocab_size, generator=torch.Generator().manual_seed(5)) * 3
    value, grad = _value_and_grad(home, home.prepare(batch), y)
    value_away, grad_away = _value_and_grad(away, away.prepare(batch), y)
    assert value_away.device == y.device and grad_away.device == y.device
    torch.testing.assert_close(value_away, value)
    torch.testing.assert_close(grad_away, grad)


def test_judge_on_its_own_device(tiny_policy, tiny_models):
    batch = _batch(tiny_policy, [5, 3], 5)
    home = PromptedJudge(model=str(tiny_models["policy"]))
    away = PromptedJudge(model=str(tiny_models["policy"]), device="cpu")
    for term in (home, away):
        term.setup(tiny_policy)
    assert "judge_model" in dict(home.named_children())
    assert "judge_model" not in dict(away.named_children()) and not list(away.parameters())
    y = torch.randn(2, 5, tiny_policy.vocab_size, generator=torch.Generator().manual_seed(6)) * 3
    value, grad = _value_and_grad(home, home.prepare(batch), y)
    value_away, grad_away = _value_and_grad(away, away.prepare(batch), y)
    torch.testing.assert_close(value_away, value)
    torch.testing.assert_close(grad_away, grad)


def test_device_errors_name_the_value():
    with pytest.raises(ValueError, match="'gpu0'.*not a torch device"):
        RewardModel(model="x", device="gpu0")
    with pytest.raises(ValueError, match="needs a judge model of its own"):
        PromptedJudge(device="cpu")
