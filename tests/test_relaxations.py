"""Relaxations: the forward value each one promises, Gumbel-max sampling, top-k restriction."""

import math

import pytest
import torch

from seaflow.components import available
from seaflow.relaxations import GumbelSoftmax, Relaxation, Softmax, StraightThrough
from seaflow.schedules import Linear

ALL = [StraightThrough(), Softmax(temperature=0.7), GumbelSoftmax(), GumbelSoftmax(hard=False, temperature=0.5)]
IDS = ["straight-through", "softmax", "gumbel-hard", "gumbel-soft"]


def _logits(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2


@pytest.mark.parametrize("relaxation", ALL, ids=IDS)
def test_rows_are_distributions_with_gradients(relaxation):
    logits = _logits(3, 4, 11).requires_grad_(True)
    probs = relaxation(logits, generator=torch.Generator().manual_seed(1))
    assert probs.shape == logits.shape
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 4))
    assert torch.all(probs >= 0)
    weights = torch.randn(11, generator=torch.Generator().manual_seed(2))
    (grad,) = torch.autograd.grad((probs * weights).sum(), logits)
    assert grad.abs().sum() > 0 and grad.isfinite().all()


@pytest.mark.parametrize("relaxation", ALL, ids=IDS)
def test_disallowed_tokens_get_zero_mass_and_zero_gradient(relaxation):
    logits = _logits(3, 4, 11).requires_grad_(True)
    allowed = torch.zeros(3, 4, 11, dtype=torch.bool)
    allowed[..., 2:5] = True
    allowed[0, 0, :] = True  # a position without restriction
    logits_big = logits.detach().clone()
    logits_big[..., 7] = 50.0  # the unrestricted favourite is disallowed (except at [0, 0])
    logits_big.requires_grad_(True)
    probs = relaxation(logits_big, generator=torch.Generator().manual_seed(1), allowed=allowed)
    assert torch.all(probs[~allowed] == 0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 4))
    (grad,) = torch.autograd.grad((probs * torch.arange(11.0)).sum(), logits_big)
    assert torch.all(grad[~allowed] == 0) and grad.isfinite().all()


def test_allowed_broadcasts_and_rejects_empty_positions():
    logits = _logits(2, 3, 6)
    allowed = torch.tensor([True, True, False, False, True, False])  # same for every position
    probs = Softmax()(logits, allowed=allowed)
    assert torch.all(probs[..., ~allowed] == 0)
    empty = torch.ones(2, 3, 6, dtype=torch.bool)
    empty[1, 2] = False
    with pytest.raises(ValueError, match="without any token"):
        StraightThrough()(logits, allowed=empty)
    with pytest.raises(ValueError, match="boolean"):
        StraightThrough()(logits, allowed=empty.float())


def test_top_k_mask_keeps_the_current_token():
    scores = torch.tensor([[[5.0, 4.0, 3.0, 2.0, 1.0]], [[1.0, 2.0, 3.0, 4.0, 5.0]]])
    mask = Relaxation.top_k_mask(scores, 2, include=torch.tensor([[4], [4]]))
    assert mask[0, 0].tolist() == [True, True, False, False, True]
    assert mask[1, 0].tolist() == [False, False, False, True, True]
    with pytest.raises(ValueError, match="k >= 1"):
        Relaxation.top_k_mask(scores, 0)


def test_straight_through_forward_is_exactly_one_hot():
    logits = _logits(4, 6, 50).requires_grad_(True)
    probs = StraightThrough(temperature=2.0)(logits)
    expected = torch.nn.functional.one_hot(logits.argmax(-1), 50).float()
    assert torch.equal(probs, expected)
    # the backward pass is the softmax's
    weights = torch.randn(50)
    (grad,) = torch.autograd.grad((probs * weights).sum(), logits)
    soft_logits = logits.detach().clone().requires_grad_(True)
    (soft_grad,) = torch.autograd.grad((torch.softmax(soft_logits / 2.0, -1) * weights).sum(), soft_logits)
    torch.testing.assert_close(grad, soft_grad)


def test_gumbel_hard_forward_is_exactly_one_hot_with_soft_gradient():
    logits = _logits(4, 6, 50).requires_grad_(True)
    probs = GumbelSoftmax(temperature=0.5)(logits, generator=torch.Generator().manual_seed(3))
    assert torch.equal(probs.sum(-1), torch.ones(4, 6)) and set(probs.detach().unique().tolist()) == {0.0, 1.0}
    (grad,) = torch.autograd.grad((probs * torch.randn(50)).sum(), logits)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("temperature", [0.3, 2.0])
def test_gumbel_hard_samples_follow_the_categorical(temperature):
    """argmax(y + g) ~ Categorical(softmax(y)) at any temperature: Pearson chi-square test."""
    vocab, draws = 8, 20000
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0, -4.0])
    probs = GumbelSoftmax(temperature=temperature)(logits.expand(draws, vocab), generator=torch.Generator().manual_seed(0))
    counts = probs.sum(0)
    expected = torch.softmax(logits, -1) * draws
    statistic = float(((counts - expected) ** 2 / expected).sum())
    assert statistic < 24.3, f"chi-square {statistic:.1f} with 7 dof (0.1% critical value 24.3)"  # chi2(7) 0.999 quantile


def test_gumbel_respects_allowed_in_frequency():
    vocab, draws = 6, 20000
    logits = torch.tensor([3.0, 0.0, 1.0, -1.0, 0.5, 2.0])
    allowed = torch.tensor([False, True, True, True, True, False])
    probs = GumbelSoftmax()(logits.expand(draws, vocab), generator=torch.Generator().manual_seed(1), allowed=allowed)
    counts = probs.sum(0)
    assert torch.all(counts[~allowed] == 0)
    expected = torch.softmax(logits.masked_fill(~allowed, -math.inf), -1)[allowed] * draws
    statistic = float(((counts[allowed] - expected) ** 2 / expected).sum())
    assert statistic < 16.3  # chi2(3) 0.999 quantile


def test_gumbel_uses_the_generator():
    logits = _logits(2, 3, 20)
    relaxation = GumbelSoftmax(hard=False)
    a = relaxation(logits, generator=torch.Generator().manual_seed(5))
    b = relaxation(logits, generator=torch.Generator().manual_seed(5))
    c = relaxation(logits, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_gumbel_temperature_annealing():
    geometric = GumbelSoftmax(temperature=2.0, end_temperature=0.5)
    assert geometric.current_temperature() == pytest.approx(2.0)
    geometric.set_progress(0.5)
    assert geometric.current_temperature() == pytest.approx(1.0)
    geometric.set_progress(1.0)
    assert geometric.current_temperature() == pytest.approx(0.5)
    scheduled = GumbelSoftmax(temperature=Linear(1.0, 0.2))
    scheduled.set_progress(0.5)
    assert scheduled.current_temperature() == pytest.approx(0.6)
    # lower temperature: soft samples closer to one-hot
    logits = _logits(64, 30)
    soft = GumbelSoftmax(temperature=2.0, end_temperature=0.05, hard=False)
    hot = soft(logits, generator=torch.Generator().manual_seed(0)).amax(-1).mean()
    soft.set_progress(1.0)
    cold = soft(logits, generator=torch.Generator().manual_seed(0)).amax(-1).mean()
    assert cold > 0.95 > hot


@pytest.mark.parametrize("kwargs, field", [
    ({"temperature": 0.0}, "temperature"),
    ({"temperature": -1.0}, "temperature"),
    ({"end_temperature": 0.0}, "end_temperature"),
    ({"temperature": Linear(1.0, 0.1), "end_temperature": 0.1}, "end_temperature"),
])
def test_gumbel_rejects_bad_temperatures(kwargs, field):
    with pytest.raises(ValueError, match=field):
        GumbelSoftmax(**kwargs)
    with pytest.raises(ValueError, match="gave -0.5"):
        bad = GumbelSoftmax(temperature=Linear(1.0, -0.5))
        bad.set_progress(1.0)
        bad(_logits(2, 3))


def test_registered():
    assert {"StraightThrough", "Softmax", "GumbelSoftmax"} <= set(available(Relaxation, "forward"))
