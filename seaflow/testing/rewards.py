"""The contract every reward term passes: subclass :class:`RewardContract` in a ``test_*.py`` file.

    from seaflow.testing import RewardContract

    class TestMyReward(RewardContract):
        reward_class = MyReward
        reward_kwargs = {"words": ["good", "great"]}

The terms are set up on the tiny random policy of :mod:`seaflow.testing.tiny` (a word-level
English vocabulary with a chat template); override the :meth:`RewardContract.policy`
fixture to use another model. Checks (seaflow/energies/base.py states the contract):

- ``value(prepared, ids)`` is one finite float per row, ``(B,)``;
- one-hot equals ids: ``value(prepared, one_hot(ids))`` equals ``value(prepared, ids)``;
- positions past each row's length are inactive: changing them (ids or distributions)
  changes no value, and the gradient there is zero;
- the gradient with respect to a relaxed response is finite, shaped like it, and reaches it;
- a row's value does not depend on the other rows of its batch (``Reward.score`` in slices
  of one row equals one pass over all of them);
- the pairs of :meth:`RewardContract.ordered_pairs` (if any) are ranked as stated;
- the class is listed by ``seaflow list``.
"""

from __future__ import annotations

import pytest
import torch

from seaflow.encoding import encode_text
from seaflow.energies.base import EnergyTerm, ResponseBatch, Reward


class RewardContract:
    """Common tests of a reward (or any energy term); set :attr:`reward_class` and :attr:`reward_kwargs`."""

    reward_class: type[EnergyTerm]
    reward_kwargs: dict = {}
    prompts = ("describe the city", "tell me about the dog", "how was the train")
    lengths = (7, 4, 1)  # active response tokens per row; the response width is max(lengths) + 2
    atol = 1e-4  # one-hot vs ids: models see embeddings as a product instead of a lookup

    def make_reward(self) -> EnergyTerm:
        return self.reward_class(**self.reward_kwargs)

    def ordered_pairs(self) -> list[tuple[str, str, str]]:
        """``(prompt, better response, worse response)`` triples the reward must rank (default: none)."""
        return []

    @pytest.fixture(scope="class")
    def policy(self):
        """The policy the term is set up with (default: the tiny random policy)."""
        from seaflow.testing.tiny import tiny_policy

        return tiny_policy()

    @pytest.fixture
    def reward(self, policy):
        term = self.make_reward()
        term.setup(policy)
        return term

    # -- inputs ------------------------------------------------------------------------------

    def batch(self, policy) -> ResponseBatch:
        prompt_ids = [encode_text(policy.tokenizer, p, add_special_tokens=True) for p in self.prompts]
        return ResponseBatch(prompt_ids, list(self.prompts), torch.tensor(self.lengths), max(self.lengths) + 2)

    def ordinary_ids(self, policy) -> torch.Tensor:
        special = set(getattr(policy.tokenizer, "all_special_ids", []) or [])
        return torch.tensor([i for i in range(policy.vocab_size) if i not in special and i < len(policy.tokenizer)])

    def response_ids(self, policy, seed: int = 0) -> torch.Tensor:
        """Random ordinary (non-special) tokens ``(B, L)``, padding past each row's length."""
        batch = self.batch(policy)
        pool = self.ordinary_ids(policy)
        generator = torch.Generator().manual_seed(seed)
        ids = pool[torch.randint(0, len(pool), (len(batch), batch.max_length), generator=generator)]
        active = torch.arange(batch.max_length).unsqueeze(0) < batch.lengths.unsqueeze(1)
        pad = policy.tokenizer.pad_token_id if policy.tokenizer.pad_token_id is not None else int(pool[0])
        return ids.masked_fill(~active, pad)

    def relaxed(self, policy, seed: int = 1) -> torch.Tensor:
        batch = self.batch(policy)
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(len(batch), batch.max_length, policy.vocab_size, generator=generator).softmax(-1)

    def inactive(self, policy) -> torch.Tensor:
        batch = self.batch(policy)
        return torch.arange(batch.max_length).unsqueeze(0) >= batch.lengths.unsqueeze(1)

    def value(self, reward, policy, response: torch.Tensor) -> torch.Tensor:
        device = next((p.device for p in policy.model.parameters()), torch.device("cpu"))
        return reward.value(reward.prepare(self.batch(policy)), response.to(device)).float().cpu()

    # -- checks ------------------------------------------------------------------------------

    def test_one_value_per_row(self, reward, policy):
        values = self.value(reward, policy, self.response_ids(policy))
        assert values.shape == (len(self.prompts),), f"value has shape {tuple(values.shape)}, expected ({len(self.prompts)},)"
        assert torch.isfinite(values).all(), f"non-finite values {values.tolist()}"

    def test_one_hot_equals_ids(self, reward, policy):
        ids = self.response_ids(policy)
        one_hot = torch.nn.functional.one_hot(ids, policy.vocab_size).float()
        torch.testing.assert_close(self.value(reward, policy, one_hot), self.value(reward, policy, ids), atol=self.atol, rtol=1e-4)

    def test_inactive_positions_change_nothing(self, reward, policy):
        inactive = self.inactive(policy)
        ids = self.response_ids(policy, seed=0)
        # same active tokens, other (ordinary, not padding) tokens in the inactive positions
        pool = self.ordinary_ids(policy)
        filler = pool[torch.randint(0, len(pool), ids.shape, generator=torch.Generator().manual_seed(9))]
        changed = torch.where(inactive, filler, ids)
        torch.testing.assert_close(self.value(reward, policy, changed), self.value(reward, policy, ids), atol=self.atol, rtol=1e-4)
        probs, noise = self.relaxed(policy, seed=1), self.relaxed(policy, seed=2)
        mixed = torch.where(inactive.unsqueeze(-1), noise, probs)
        torch.testing.assert_close(self.value(reward, policy, mixed), self.value(reward, policy, probs), atol=self.atol, rtol=1e-4)

    def test_gradient_is_finite_and_zero_on_inactive_positions(self, reward, policy):
        probs = self.relaxed(policy).requires_grad_(True)
        values = self.value(reward, policy, probs)
        (grad,) = torch.autograd.grad(values.sum(), probs)
        assert grad.shape == probs.shape
        assert torch.isfinite(grad).all(), "non-finite gradient"
        assert grad.abs().sum() > 0, "no gradient reaches the relaxed response"
        inactive = self.inactive(policy)
        assert torch.all(grad[inactive] == 0), "positions past a row's length get a gradient"

    def test_rows_are_independent(self, reward, policy):
        if not isinstance(reward, Reward):
            pytest.skip("not a Reward: no batched scoring")
        batch, ids = self.batch(policy), self.response_ids(policy)
        device = next((p.device for p in policy.model.parameters()), torch.device("cpu"))
        ids = ids.to(device)
        together = reward.score(batch.prompt_ids, batch.prompts, ids, batch.lengths, batch_size=len(batch)).float().cpu()
        alone = reward.score(batch.prompt_ids, batch.prompts, ids, batch.lengths, batch_size=1).float().cpu()
        torch.testing.assert_close(alone, together, atol=self.atol, rtol=1e-4)

    def test_ordered_pairs(self, reward, policy):
        pairs = self.ordered_pairs()
        if not pairs:
            pytest.skip("no ordered_pairs given")
        for prompt, better, worse in pairs:
            rows = [encode_text(policy.tokenizer, text) for text in (better, worse)]
            width = max(len(r) for r in rows)
            ids = torch.tensor([r + [policy.tokenizer.pad_token_id or 0] * (width - len(r)) for r in rows])
            prompt_ids = [encode_text(policy.tokenizer, prompt, add_special_tokens=True)] * 2
            batch = ResponseBatch(prompt_ids, [prompt, prompt], torch.tensor([len(r) for r in rows]), width)
            values = reward.value(reward.prepare(batch), ids).float()
            assert values[0] > values[1], f"{better!r} scores {float(values[0]):.4g}, not above {worse!r} ({float(values[1]):.4g})"

    def test_listed(self):
        from seaflow.components import available

        assert self.reward_class.__name__ in available(EnergyTerm, "value"), "not listed by seaflow list"
