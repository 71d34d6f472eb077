"""The cached-prompt path equals running whole rows: values, gradients, ragged rows, one-hots."""

import pytest
import torch
import torch.nn.functional as F

from seaflow.layout import Layout, PrefixLayout, active_mask
from seaflow.energies import PromptedJudge, ReferenceLogLikelihood
from seaflow.energies.base import ResponseBatch
from seaflow.models import load_causal_lm

PROMPTS = ("describe the city", "tell me about the weather today and the night at the train", "why", "write about my dog")


def _batch(policy, lengths, width):
    prompts = list(PROMPTS[: len(lengths)])
    prompt_ids = [policy.tokenizer.encode(p) for p in prompts]
    return ResponseBatch(prompt_ids, prompts, torch.tensor(lengths), width)


def _pair(term_class, policy, **kwargs):
    """The same term twice: whole rows (uncached) and cached prompt prefix."""
    plain, cached = term_class(cache_prefix=False, **kwargs), term_class(cache_prefix=True, **kwargs)
    plain.setup(policy)
    cached.setup(policy)
    return plain, cached


def _value_and_grad(term, prepared, y):
    y = y.detach().requires_grad_(True)
    value = term.value(prepared, torch.softmax(y, -1))
    (grad,) = torch.autograd.grad(value.sum(), y)
    return value.detach(), grad


@pytest.fixture(params=["sdpa", "eager"])
def policy(request, tiny_models):
    loaded = load_causal_lm(str(tiny_models["policy"]))
    loaded.model.set_attn_implementation(request.param)
    return loaded


@pytest.mark.parametrize("lengths,width", [([6, 2, 4, 1], 6), ([5, 5, 5], 5), ([1, 1], 1), ([3, 0, 7], 7)])
def test_reference_cached_equals_uncached(policy, lengths, width):
    """Ragged prompts x ragged responses: values and gradients w.r.t. the relaxed response."""
    batch = _batch(policy, lengths, width)
    plain, cached = _pair(ReferenceLogLikelihood, policy)
    plain_state, cached_state = plain.prepare(batch), cached.prepare(batch)
    assert isinstance(plain_state, Layout) and isinstance(cached_state, PrefixLayout)
    y = torch.randn(len(lengths), width, policy.vocab_size, generator=torch.Generator().manual_seed(1)) * 3
    value, grad = _value_and_grad(plain, plain_state, y)
    value_c, grad_c = _value_and_grad(cached, cached_state, y)
    torch.testing.assert_close(value_c, value, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_c, grad, rtol=1e-4, atol=1e-6)
    # inactive positions get no gradient on either path
    inactive = ~active_mask(batch.lengths, width)
    assert grad_c[inactive].abs().max() == 0 if inactive.any() else True


def test_next_token_logits_cached_equals_uncached(policy):
    """Every position, inactive ones included (they repeat the last active position)."""
    batch = _batch(policy, [6, 2, 4, 1], 6)
    plain, cached = _pair(ReferenceLogLikelihood, policy)
    tokens = torch.randint(4, policy.vocab_size, (4, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = plain.prepare(batch).next_token_logits(policy.model, tokens)
        got = cached.prepare(batch).next_token_logits(policy.model, tokens)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_cached_one_hot_equals_ids_and_direct_loglik(tiny_policy):
    batch = _batch(tiny_policy, [6, 3, 5], 6)
    _, cached = _pair(ReferenceLogLikelihood, tiny_policy)
    prepared = cached.prepare(batch)
    tokens = torch.randint(4, tiny_policy.vocab_size, (3, 6), generator=torch.Generator().manual_seed(2))
    from_ids = cached.value(prepared, tokens)
    from_one_hot = cached.value(prepared, F.one_hot(tokens, tiny_policy.vocab_size).float())
    torch.testing.assert_close(from_ids, from_one_hot, rtol=1e-5, atol=1e-5)
    for row in range(3):  # against feeding ids one row at a time, no padding, no cache
        n = int(batch.lengths[row])
        ids = torch.tensor([batch.prompt_ids[row] + tokens[row, :n].tolist()])
        logp = torch.log_softmax(tiny_policy.model(input_ids=ids).logits[0].float(), -1)
        start = len(batch.prompt_ids[row])
        expected = sum(float(logp[start - 1 + t, tokens[row, t]]) for t in range(n))
        assert abs(float(from_ids[row]) - expected) < 1e-4


def test_cache_is_not_mutated_across_evaluations(tiny_policy):
    batch = _batch(tiny_policy, [4, 2], 4)
    _, cached = _pair(ReferenceLogLikelihood, tiny_policy)
    prepared = cached.prepare(batch)
    before = [(k.clone(), v.clone()) for k, v in prepared.key_values]
    y = torch.randn(2, 4, tiny_policy.vocab_size)
    first, _ = _value_and_grad(cached, prepared, y)
    for _ in range(3):
        again, _ = _value_and_grad(cached, prepared, y)
        assert torch.equal(again, first)
    for (k0, v0), (k, v) in zip(before, prepared.key_values):
        assert torch.equal(k0, k) and torch.equal(v0, v) and k.shape == k0.shape


def test_row_alone_equals_row_in_batch(tiny_policy):
    """Left padding of the prompt block and masked trailing slots do not leak into other rows."""
    batch = _batch(tiny_policy, [6, 2, 4], 6)
    _, cached = _pair(ReferenceLogLikelihood, tiny_policy)
    tokens = torch.randint(4, tiny_policy.vocab_size, (3, 6), generator=torch.Generator().manual_seed(3))
    together = cached.value(cached.prepare(batch), tokens)
    for row in range(3):
        alone = ResponseBatch(batch.prompt_ids[row : row + 1], batch.prompts[row : row + 1], batch.lengths[row : row + 1], 6)
        torch.testing.assert_close(cached.value(cached.prepare(alone), tokens[row : row + 1]), together[row : row + 1], rtol=1e-5, atol=1e-5)


def test_cache_belongs_to_its_model(tiny_policy, tiny_models):
    batch = _batch(tiny_policy, [3, 3], 3)
    _, cached = _pair(ReferenceLogLikelihood, tiny_policy)
    prepared = cached.prepare(batch)
    other = load_causal_lm(str(tiny_models["policy"]))
    with pytest.raises(ValueError, match="another model"):
        prepared.next_token_logits(other.model, torch.zeros(2, 3, dtype=torch.long))


def test_judge_cached_equals_uncached(tiny_policy):
    batch = _batch(tiny_policy, [6, 2, 4], 6)
    plain, cached = _pair(PromptedJudge, tiny_policy)
    plain_state, cached_state = plain.prepare(batch), cached.prepare(batch)
    assert isinstance(cached_state, PrefixLayout) and cached_state.after_ids.shape[1] > 0
    y = torch.randn(3, 6, tiny_policy.vocab_size, generator=torch.Generator().manual_seed(4)) * 3
    value, grad = _value_and_grad(plain, plain_state, y)
    value_c, grad_c = _value_and_grad(cached, cached_state, y)
    torch.testing.assert_close(value_c, value, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_c, grad, rtol=1e-4, atol=1e-6)
    tokens = y.argmax(-1)
    torch.testing.assert_close(
        cached.value(cached_state, tokens),
        cached.value(cached_state, F.one_hot(tokens, tiny_policy.vocab_size).float()), rtol=1e-5, atol=1e-5,
    )


def test_judge_without_chat_template_cached_equals_uncached(tiny_policy):
    batch = _batch(tiny_policy, [5, 3], 5)
    plain, cached = _pair(PromptedJudge, tiny_policy, use_chat_template=False)
    tokens = torch.randint(4, tiny_policy.vocab_size, (2, 5), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(
        cached.value(cached.prepare(batch), tokens), plain.value(plain.prepare(batch), tokens), rtol=1e-5, atol=1e-5
    )


def test_energy_function_same_trajectory_with_and_without_cache(tiny_policy):
    """Three Langevin steps give the same iterates with either reference path."""
    from seaflow.refine import EnergyFunction, refine
    from seaflow.relaxations import StraightThrough
    from seaflow.samplers import Langevin

    batch = _batch(tiny_policy, [6, 3, 5, 2], 6)
    y0 = torch.randn(4, 6, tiny_policy.vocab_size, generator=torch.Generator().manual_seed(6))
    outs = []
    for term in _pair(ReferenceLogLikelihood, tiny_policy):
        fn = EnergyFunction(batch, StraightThrough(), None, term, alpha=0.0, reference_weight=1.0)
        y, _ = refine(y0.clone(), fn, Langevin(step_size=0.5, noise_scale=0.1), 3, torch.Generator().manual_seed(7))
        outs.append(y)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
