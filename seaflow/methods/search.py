"""What the searches over partial responses share (Speculative Rejection, the particle filter).

Both decode many rows per prompt a block of tokens at a time on the KV cache
(:class:`~seaflow.methods.partial.PartialResponses`), score each row's text so far, keep or copy
rows, and go on. Row ``c`` of a prompt starts with Best-of-N's candidate ``c``'s seed, so a row
that is never pruned or resampled is that candidate, token for token.
"""

from __future__ import annotations

import time

import torch

from seaflow import cost
from seaflow.energies.base import Reward
from seaflow.layout import pad_rows
from seaflow.methods.discrete import DiscreteMethod
from seaflow.methods.partial import PartialResponses
from seaflow.methods.record import Record
from seaflow.models import LoadedModel
from seaflow.progress import report


class PartialSearch(DiscreteMethod):
    """Base of :class:`SpeculativeRejection` and :class:`ParticleFilter`; see the module docstring.

    A subclass sets ``rows_per_prompt`` and implements :meth:`search`. Prompts are searched in
    groups of at most ``sample_batch`` rows (at least one prompt per group), one after another.

    Args:
        partial_reward: the reward of a partial response, used at the decision points; None:
            the reward that selects (``selection_reward`` when set, else ``reward``) on the text
            so far. The finished responses are always ranked by the reward that selects.
        share_prompt: run each prompt through the policy once and copy its keys and values to
            its rows (the same tokens, fewer FLOPs), as every method's policy samples do
            (:func:`seaflow.generation.prefill`); false runs every row's prompt.
        (others: see :class:`DiscreteMethod` and :class:`AlignmentMethod`)
    """

    rows_per_prompt: int = 1

    def __init__(self, partial_reward: Reward | None = None, share_prompt: bool = True, **kwargs):
        super().__init__(**kwargs)
        self._require_reward()
        self.partial_reward = partial_reward
        self.share_prompt = share_prompt

    def attach(self, policy: LoadedModel) -> None:
        super().attach(policy)
        if self.partial_reward is not None:
            self.partial_reward.setup(policy)

    def watch_models(self) -> None:
        super().watch_models()
        for role, model in cost.models_of(self.partial_reward, skip=self.policy.model):
            cost.watch(model, role)

    # -- the steps a search uses -------------------------------------------------------------

    def begin(self, prompt_ids: list[list[int]], keys: list[str], forced: list[list[int]] | None) -> PartialResponses:
        """``rows_per_prompt`` rows per prompt, row ``c`` seeded as Best-of-N's candidate ``c``."""
        copies = self.rows_per_prompt
        generators = self.generators([key for key in keys for _ in range(copies)], list(range(copies)) * len(keys), "sample")
        return PartialResponses(
            self.policy.model, prompt_ids, copies, self.response_width(forced), self.eos_ids, self.pad_id,
            generators, temperature=self.temperature, top_p=self.top_p, forced=forced, share_prompt=self.share_prompt,
        )

    def score_so_far(self, state: PartialResponses, prompt_ids: list[list[int]], prompts: list[str],
                     final: bool = False) -> list[float]:
        """Every row's reward on its text so far: ``partial_reward`` (when set and not ``final``),
        else the reward that selects. ``prompt_ids``/``prompts``: one entry per row."""
        tokens, lengths = state.so_far()
        term = self.partial_reward if self.partial_reward is not None and not final else self.selector
        return term.score(prompt_ids, prompts, tokens, lengths, self.score_batch).cpu().tolist()

    def search(self, prompt_ids: list[list[int]], prompts: list[str], keys: list[str], forced: list[list[int]] | None,
               on_token) -> list[tuple[list[int], float, dict]]:
        """Per prompt: the returned response's tokens, its reward and the record's own fields."""
        raise NotImplementedError

    @torch.no_grad()
    def predict_step(self, batch: dict[str, list], batch_idx: int = 0, dataloader_idx: int = 0) -> list[Record]:
        started = time.perf_counter()
        prompt_ids, prompts, keys = batch["prompt_ids"], batch["prompt"], batch["id"]
        forced = self.forced_rows(batch, self.rows_per_prompt)
        size = max(1, self.sample_batch // self.rows_per_prompt)  # prompts per group
        width = self.response_width(forced)
        groups = range(0, len(keys), size)
        results = []
        for number, start in enumerate(cost.side_by_side(groups)):
            chunk = slice(start, start + size)
            rows = slice(start * self.rows_per_prompt, (start + size) * self.rows_per_prompt)
            # the progress bar (seaflow/progress.py) moves per decoded token of every group
            on_token = lambda step, number=number: report(number * width + step, len(groups) * width, "token")  # noqa: E731
            results += self.search(prompt_ids[chunk], prompts[chunk], keys[chunk], forced[rows] if forced else None, on_token)
        tokens, lengths = pad_rows([tokens for tokens, _, _ in results], self.pad_id, width=width, device=self.device)
        elapsed = time.perf_counter() - started
        return self.records(batch, prompt_ids, prompts, tokens, lengths, [reward for _, reward, _ in results], elapsed,
                            [fields for _, _, fields in results])


def first_best(values: list[float]) -> int:
    """Index of the first maximum of ``values`` (ties go to the earlier row); NaN ranks last."""
    ranked = [v if v == v else float("-inf") for v in values]
    return max(range(len(ranked)), key=lambda i: (ranked[i], -i))
