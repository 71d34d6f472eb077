"""``seaflow.methods.BestOfN``: N policy samples per prompt, keep the highest reward."""

from __future__ import annotations

import time

import torch

from seaflow.methods.discrete import DiscreteMethod
from seaflow.methods.record import Record


class BestOfN(DiscreteMethod):
    """Best-of-N: sample ``n`` responses per prompt, return the one with the highest discrete reward.

    Candidates are generated ``sample_batch`` rows at a time and scored ``score_batch`` rows
    at a time, so N=64 on many prompts stays within memory. Candidate ``c`` is the same draw
    as SEA's initial chain ``c`` (same seed and prompt id); candidate 0 is the plain
    :class:`Sample`, recorded as ``initial_*`` so the summary reports the win rate over it.
    Ties go to the earlier candidate.

    Args:
        n: candidates per prompt.
        keep_candidates: write every candidate's text to the record (``candidate_responses``);
            candidate rewards are always written.
        (others: see :class:`DiscreteMethod` and :class:`AlignmentMethod`)
    """

    def __init__(self, n: int = 16, keep_candidates: bool = True, **kwargs):
        super().__init__(**kwargs)
        if n < 1:
            raise ValueError(f"n (candidates per prompt) must be >= 1, got {n}")
        self._require_reward()
        self.n = n
        self.keep_candidates = keep_candidates

    def method_name(self) -> str:
        return f"BestOfN-{self.n}"

    @torch.no_grad()
    def predict_step(self, batch: dict[str, list], batch_idx: int = 0, dataloader_idx: int = 0) -> list[Record]:
        started = time.perf_counter()
        n = self.n
        prompt_ids, prompts, keys = self.expand(batch, n)
        tokens, lengths = self.sample_rows(prompt_ids, keys, [row % n for row in range(len(keys))], forced=self.forced_rows(batch, n))
        rewards = self.rewards(prompt_ids, prompts, tokens, lengths).cpu()
        grouped = rewards.view(-1, n)
        best, chosen = self.choose(grouped, batch["id"])
        rows = torch.arange(len(batch["id"])) * n + best
        elapsed = time.perf_counter() - started  # the method's own work; what follows is for metrics
        first = torch.arange(len(batch["id"])) * n
        texts = self.decode_text(tokens, lengths) if self.keep_candidates else None
        initial_ll, _ = self.reference_stats(
            [prompt_ids[int(r)] for r in first], [prompts[int(r)] for r in first], tokens[first], lengths[first]
        )
        extras = []
        for p in range(len(batch["id"])):
            extra = {
                "candidate": int(best[p]),
                "candidate_rewards": grouped[p].tolist(),
                "initial_reward": float(grouped[p, 0]),
                "initial_ref_logprob_per_token": float(initial_ll[p].sum()) / max(int(lengths[first[p]]), 1),
                "n": n,
                **chosen[p],
            }
            if texts is not None:
                extra["candidate_responses"] = texts[p * n : (p + 1) * n]
            extras.append(extra)
        chosen_ids = [prompt_ids[int(r)] for r in rows]
        chosen_prompts = [prompts[int(r)] for r in rows]
        returned = grouped.gather(1, best.unsqueeze(1)).squeeze(1)
        return self.records(batch, chosen_ids, chosen_prompts, tokens[rows], lengths[rows], returned, elapsed, extras)

    def choose(self, rewards: torch.Tensor, ids: list[str]) -> tuple[torch.Tensor, list[dict]]:
        """The returned candidate of each prompt from the ``(prompts, n)`` rewards, and fields for
        its record: the first maximum (ties go to the earlier candidate)."""
        return rewards.argmax(-1), [{} for _ in ids]
