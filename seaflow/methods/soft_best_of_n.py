"""``seaflow.methods.SoftBestOfN``: N policy samples, return one drawn with probability softmax(r / lambda)."""

from __future__ import annotations

import torch

from seaflow import rng, tempered
from seaflow.checks import require
from seaflow.methods.best_of_n import BestOfN


def soft_choice(rewards: list[float], reward_temperature: float, seed: int, prompt_id: str) -> tuple[int, float]:
    """``(candidate, probability)`` Soft Best-of-N returns for one prompt's candidate ``rewards``:
    one draw from ``softmax(r / reward_temperature)`` with the prompt's own stream (run seed, prompt
    id), the same whatever the batch, so a report replays it from a Best-of-N run's rewards."""
    stream = rng.prompt_stream(seed, prompt_id, "soft-best-of-n")
    return tempered.choose(rewards, reward_temperature, stream)


class SoftBestOfN(BestOfN):
    """Soft Best-of-N: sample ``n`` responses, return candidate ``i`` with probability
    ``softmax(r / reward_temperature)_i``.

    The candidates are Best-of-N's (candidate ``c`` is the same draw), only the choice
    differs. The draw tempers the reward: it samples the tilted distribution ``pi_ref(y)
    exp(r(y) / lambda)`` as ``n`` grows (self-normalised importance resampling), so a
    proxy reward is not maximised all the way (guarding against over-optimisation).
    ``reward_temperature: 0`` is Best-of-N (the first maximum); ``.inf`` picks a candidate
    uniformly (the plain policy sample, in distribution). A candidate with a non-finite reward
    has probability 0. Records add ``candidate_probability`` and ``reward_temperature``.

    Args:
        reward_temperature: lambda, in the reward's units (>= 0).
        (others: see :class:`BestOfN`, :class:`DiscreteMethod` and :class:`AlignmentMethod`)
    """

    infinite_settings = ("reward_temperature",)  # .inf is a value here (seaflow.checks: others are refused)

    def __init__(self, reward_temperature: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        require(reward_temperature >= 0, "model.init_args.reward_temperature", reward_temperature, ">= 0 (0: Best-of-N)",
                finite=False)
        if self.returns != "best_reward":
            raise ValueError(f"SoftBestOfN draws its candidate from softmax(r / lambda): returns must be best_reward, "
                             f"got {self.returns!r}; remove model.init_args.returns")
        self.reward_temperature = reward_temperature

    def method_name(self) -> str:
        return f"SoftBestOfN-{self.n}"

    def choose(self, rewards: torch.Tensor, ids: list[str], likelihood: torch.Tensor | None = None) -> tuple[torch.Tensor, list[dict]]:
        picks, fields = [], []
        for row, prompt_id in zip(rewards.tolist(), ids):
            candidate, probability = soft_choice(row, self.reward_temperature, self.seed, prompt_id)
            picks.append(candidate)
            fields.append({"candidate_probability": probability, "reward_temperature": self.reward_temperature})
        return torch.tensor(picks, dtype=torch.long), fields
