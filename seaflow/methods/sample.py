"""``seaflow.methods.Sample``: one plain policy sample per prompt (the paper's "SFT" row)."""

from __future__ import annotations

import time

import torch

from seaflow.methods.discrete import DiscreteMethod
from seaflow.methods.record import Record


class Sample(DiscreteMethod):
    """The policy's own sample, scored with the reward when one is configured.

    The draw is candidate 0 of the ``sample`` stream, i.e. the same response as Best-of-N's
    first candidate and SEA's first initial chain for the same seed and prompt id, so
    comparisons across methods are paired. Set ``temperature: 0`` for the greedy decode.
    Takes :class:`DiscreteMethod`'s arguments; ``reward`` is optional.
    """

    @torch.no_grad()
    def predict_step(self, batch: dict[str, list], batch_idx: int = 0, dataloader_idx: int = 0) -> list[Record]:
        started = time.perf_counter()
        prompt_ids, prompts, keys = batch["prompt_ids"], batch["prompt"], batch["id"]
        tokens, lengths = self.sample_rows(prompt_ids, keys, [0] * len(keys), forced=self.forced_rows(batch))
        if self.selector is not None:
            rewards = self.rewards(prompt_ids, prompts, tokens, lengths).tolist()
        else:
            rewards = [float("nan")] * len(keys)
        elapsed = time.perf_counter() - started
        return self.records(batch, prompt_ids, prompts, tokens, lengths, rewards, elapsed, [{}] * len(keys))
