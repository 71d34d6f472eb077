"""The contract every relaxation passes: subclass :class:`RelaxationContract` in a ``test_*.py`` file.

    from seaflow.testing import RelaxationContract

    class TestMyRelaxation(RelaxationContract):
        relaxation_class = MyRelaxation
        relaxation_kwargs = {"temperature": 0.5}

Checks (seaflow/relaxations/base.py states the contract): ``p`` has the shape of ``y`` and
its rows are distributions; gradients reach ``y`` and are finite; confident logits give their
own tokens (a relaxed one-hot equals the ids); disallowed tokens (``allowed``) get zero mass
forward and zero gradient backward, a broadcast mask works and a position without any allowed
token is refused; the same generator seed gives the same output; ``set_progress`` keeps
every property; the class is listed by ``seaflow list``.
"""

from __future__ import annotations

import pytest
import torch

from seaflow.relaxations.base import Relaxation


class RelaxationContract:
    """Common tests of a relaxation; set :attr:`relaxation_class` (and :attr:`relaxation_kwargs`)."""

    relaxation_class: type[Relaxation]
    relaxation_kwargs: dict = {}
    shape = (3, 5, 13)  # (chains, length, vocab)
    confident_scale = 200.0  # logits this far above the rest must give their token
    atol = 1e-5

    def make_relaxation(self) -> Relaxation:
        return self.relaxation_class(**self.relaxation_kwargs)

    def logits(self, seed: int = 0) -> torch.Tensor:
        return 2 * torch.randn(*self.shape, generator=torch.Generator().manual_seed(seed))

    def relax(self, relaxation: Relaxation, logits: torch.Tensor, allowed=None, seed: int = 1) -> torch.Tensor:
        return relaxation(logits, generator=torch.Generator().manual_seed(seed), allowed=allowed)

    def test_rows_are_distributions(self):
        probs = self.relax(self.make_relaxation(), self.logits())
        assert probs.shape == self.shape, f"p has shape {tuple(probs.shape)}, y has {self.shape}"
        assert torch.isfinite(probs).all() and (probs >= 0).all(), "p has negative or non-finite entries"
        torch.testing.assert_close(probs.sum(-1), torch.ones(self.shape[:-1]), atol=self.atol, rtol=0)

    def test_gradients_reach_the_logits_and_are_finite(self):
        logits = self.logits().requires_grad_(True)
        probs = self.relax(self.make_relaxation(), logits)
        weights = torch.randn(self.shape[-1], generator=torch.Generator().manual_seed(2))
        (grad,) = torch.autograd.grad((probs * weights).sum(), logits)
        assert grad.shape == logits.shape
        assert torch.isfinite(grad).all(), "non-finite gradient"
        assert grad.abs().sum() > 0, "no gradient reaches the logits"

    def test_one_hot_logits_give_their_tokens(self):
        ids = torch.randint(0, self.shape[-1], self.shape[:-1], generator=torch.Generator().manual_seed(3))
        logits = self.confident_scale * torch.nn.functional.one_hot(ids, self.shape[-1]).float()
        probs = self.relax(self.make_relaxation(), logits)
        assert torch.equal(probs.argmax(-1), ids), "confident logits do not give their own tokens"
        assert (probs.gather(-1, ids.unsqueeze(-1)) > 0.99).all(), "a confident token gets less than 0.99 of the mass"

    def test_disallowed_tokens_get_zero_mass_and_zero_gradient(self):
        vocab = self.shape[-1]
        allowed = torch.zeros(self.shape, dtype=torch.bool)
        allowed[..., 2:5] = True
        allowed[0, 0, :] = True  # one unrestricted position
        logits = self.logits()
        logits[..., vocab - 1] = 50.0  # the favourite is disallowed (except at [0, 0])
        logits.requires_grad_(True)
        probs = self.relax(self.make_relaxation(), logits, allowed=allowed)
        assert torch.all(probs[~allowed] == 0), "a disallowed token has mass"
        torch.testing.assert_close(probs.sum(-1), torch.ones(self.shape[:-1]), atol=self.atol, rtol=0)
        (grad,) = torch.autograd.grad((probs * torch.arange(float(vocab))).sum(), logits)
        assert torch.isfinite(grad).all() and torch.all(grad[~allowed] == 0), "a disallowed token gets a gradient"

    def test_allowed_broadcasts_and_empty_positions_are_refused(self):
        relaxation = self.make_relaxation()
        allowed = torch.zeros(self.shape[-1], dtype=torch.bool)
        allowed[[0, 3, 4]] = True  # the same tokens at every position
        probs = self.relax(relaxation, self.logits(), allowed=allowed)
        assert torch.all(probs[..., ~allowed] == 0)
        empty = torch.ones(self.shape, dtype=torch.bool)
        empty[-1, -1] = False
        with pytest.raises(ValueError):
            self.relax(relaxation, self.logits(), allowed=empty)

    def test_same_generator_seed_same_output(self):
        relaxation, logits = self.make_relaxation(), self.logits()
        torch.testing.assert_close(self.relax(relaxation, logits, seed=5), self.relax(relaxation, logits, seed=5), atol=0, rtol=0)

    def test_progress_keeps_the_contract(self):
        relaxation = self.make_relaxation()
        for progress in (0.0, 0.5, 1.0):
            relaxation.set_progress(progress)
            probs = self.relax(relaxation, self.logits())
            assert torch.isfinite(probs).all() and (probs >= 0).all()
            torch.testing.assert_close(probs.sum(-1), torch.ones(self.shape[:-1]), atol=self.atol, rtol=0)

    def test_listed(self):
        from seaflow.components import available

        assert self.relaxation_class.__name__ in available(Relaxation, "forward"), "not listed by seaflow list"
