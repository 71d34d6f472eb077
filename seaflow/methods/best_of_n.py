"""``seaflow.methods.BestOfN``: N policy samples per prompt, keep the highest reward."""

from __future__ import annotations

import time
from typing import Literal

import torch

from seaflow.chains import ranked
from seaflow.checks import require, require_one_of
from seaflow.methods.discrete import DiscreteMethod
from seaflow.methods.record import Record

RETURN_RULES = ("best_reward", "likeliest_best")  # model.init_args.returns


class BestOfN(DiscreteMethod):
    """Best-of-N: sample ``n`` responses per prompt, return the one with the highest discrete reward.

    Candidates are generated ``sample_batch`` rows at a time and scored ``score_batch`` rows
    at a time, so N=64 on many prompts stays within memory. Candidate ``c`` is the same draw
    as SEA's initial chain ``c`` (same seed and prompt id); candidate 0 is the plain
    :class:`Sample`, recorded as ``initial_*`` so the summary reports the win rate over it.
    Ties go to the earlier candidate, or with ``returns: likeliest_best`` to the likeliest.

    Args:
        n: candidates per prompt.
        keep_candidates: write every candidate's text to the record (``candidate_responses``);
            candidate rewards are always written.
        returns: ``best_reward`` (the highest reward, the earlier candidate on a tie) or
            ``likeliest_best`` (the highest reward, among equal rewards the candidate likeliest
            under the policy, ``log pi_ref(y | x)`` read while sampling at no extra model work;
            GuidedSuffixMCMC's rule of the same name). A reward with few values (the fraction of
            keywords present) ties often; the records then add ``candidate_ref_logprobs``.
        (others: see :class:`DiscreteMethod` and :class:`AlignmentMethod`)
    """

    def __init__(self, n: int = 16, keep_candidates: bool = True,
                 returns: Literal["best_reward", "likeliest_best"] = "best_reward", **kwargs):
        super().__init__(**kwargs)
        require(n >= 1, "model.init_args.n", n, ">= 1 (candidates per prompt)")
        require_one_of("model.init_args.returns", returns, RETURN_RULES)
        self._require_reward()
        self.n = n
        self.keep_candidates = keep_candidates
        self.returns = returns

    def method_name(self) -> str:
        return f"BestOfN-{self.n}"

    @torch.no_grad()
    def predict_step(self, batch: dict[str, list], batch_idx: int = 0, dataloader_idx: int = 0) -> list[Record]:
        started = time.perf_counter()
        n = self.n
        prompt_ids, prompts, keys = self.expand(batch, n)
        forced = self.forced_rows(batch, n)
        log_probs = torch.zeros(len(keys), self.response_width(forced), device=self.device) if self.returns == "likeliest_best" else None
        tokens, lengths = self.sample_rows(prompt_ids, keys, [row % n for row in range(len(keys))], forced=forced, log_probs=log_probs)
        rewards = self.rewards(prompt_ids, prompts, tokens, lengths).cpu()
        grouped = rewards.view(-1, n)
        likelihood = None if log_probs is None else log_probs.sum(-1).cpu().view(-1, n)
        best, chosen = self.choose(grouped, batch["id"], likelihood)
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
            if likelihood is not None:
                extra["candidate_ref_logprobs"] = likelihood[p].tolist()
                extra["returns"] = self.returns
            extras.append(extra)
        chosen_ids = [prompt_ids[int(r)] for r in rows]
        chosen_prompts = [prompts[int(r)] for r in rows]
        returned = grouped.gather(1, best.unsqueeze(1)).squeeze(1)
        return self.records(batch, chosen_ids, chosen_prompts, tokens[rows], lengths[rows], returned, elapsed, extras)

    def choose(self, rewards: torch.Tensor, ids: list[str], likelihood: torch.Tensor | None = None) -> tuple[torch.Tensor, list[dict]]:
        """The returned candidate of each prompt from the ``(prompts, n)`` rewards, and fields for
        its record: the first maximum; with ``likelihood`` (``(prompts, n)`` log pi_ref), the
        likeliest of the maxima (then the earlier one). A non-finite reward ranks last."""
        order = ranked(rewards)
        if likelihood is None:
            return order.argmax(-1), [{} for _ in ids]
        top = order == order.max(-1, keepdim=True).values
        return torch.where(top, likelihood, float("-inf")).argmax(-1), [{} for _ in ids]
