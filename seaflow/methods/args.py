"""``seaflow.methods.ARGS``: reward-guided decoding, one token at a time (Khanov et al., 2024)."""

from __future__ import annotations

import time
from typing import Literal

import torch

from seaflow import cost, generation
from seaflow.methods.base import prompt_seed
from seaflow.methods.decoding import DecodingMethod
from seaflow.methods.record import Record
from seaflow.progress import report


class ARGS(DecodingMethod):
    """ARGS: at each position, rescore the policy's top-k next tokens with the reward.

    For every candidate token ``v`` among the policy's ``top_k`` most likely next tokens,
    ``score(v) = log pi(v | x, y_<t) + weight * r(x, y_<t + v)``, where ``r`` is the reward
    term on the partial response (discrete, token ids). ``mode: greedy`` takes the best
    score; ``mode: sample`` draws from ``softmax(score / temperature)`` over the k candidates
    with the prompt's own generator. The policy's log-probabilities differ from its logits
    by a per-row constant, so the choice is the same as with raw logits. A candidate that is
    EOS is scored as the response without it. With ``weight: 0`` greedy ARGS is the policy's
    greedy decode.

    Cost: ``top_k`` reward evaluations per row and position (``score_batch`` rows per pass);
    the reward model re-reads the whole partial response each time (no KV cache).

    Args:
        top_k: candidates per position (the ARGS paper's default: 10).
        weight: reward weight w (ARGS: 1.0-1.5).
        mode: ``greedy`` or ``sample``.
        (others: see :class:`DecodingMethod` and :class:`AlignmentMethod`; ``temperature``
        applies to ``mode: sample``)
    """

    def __init__(self, top_k: int = 10, weight: float = 1.0, mode: Literal["greedy", "sample"] = "greedy", **kwargs):
        super().__init__(**kwargs)
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if mode not in ("greedy", "sample"):
            raise ValueError(f"mode must be 'greedy' or 'sample', got {mode!r}")
        if mode == "sample" and self.temperature <= 0:
            raise ValueError(f"mode: sample needs temperature > 0, got {self.temperature}; use mode: greedy instead")
        if weight != 0:
            self._require_reward()
        self.top_k = top_k
        self.weight = weight
        self.mode = mode

    def method_name(self) -> str:
        return "ARGS" if self.mode == "greedy" else "ARGS-sample"

    @torch.no_grad()
    def predict_step(self, batch: dict[str, list], batch_idx: int = 0, dataloader_idx: int = 0) -> list[Record]:
        started = time.perf_counter()
        prompt_ids, prompts, keys = batch["prompt_ids"], batch["prompt"], batch["id"]
        forced = self.forced_rows(batch)
        width = self.response_width(forced)
        tokens, lengths = [], []
        blocks = -(-len(keys) // self.sample_batch)
        for block, start in enumerate(cost.side_by_side(range(0, len(keys), self.sample_batch))):
            rows = slice(start, start + self.sample_batch)
            # the progress bar (seaflow/progress.py) moves per decoded token of every block of rows
            on_token = lambda step, block=block: report(block * width + step + 1, blocks * width, "token")  # noqa: E731
            t, n = self.decode(prompt_ids[rows], prompts[rows], keys[rows], forced[rows] if forced else None, on_token)
            tokens.append(torch.nn.functional.pad(t, (0, width - t.shape[1]), value=self.pad_id))
            lengths.append(n)
        tokens, lengths = torch.cat(tokens), torch.cat(lengths)
        rewards = (
            self.rewards(prompt_ids, prompts, tokens, lengths).tolist()
            if self.selector is not None else [float("nan")] * len(keys)
        )
        elapsed = time.perf_counter() - started
        extras = [{"top_k": self.top_k, "weight": self.weight}] * len(keys)
        return self.records(batch, prompt_ids, prompts, tokens, lengths, rewards, elapsed, extras)

    def decode(self, prompt_ids: list[list[int]], prompts: list[str], keys: list[str], forced: list[list[int]] | None = None,
               on_token=None):
        """Decode ``rows`` prompts; a row's ``forced`` start is emitted as is (no candidate is scored there).
        ``on_token(step)`` is called after every decoded position."""
        forced = forced if forced and any(forced) else None
        rows, width, k = len(prompt_ids), self.response_width(forced), self.top_k
        device = self.device
        start, limit = generation.forced_start(forced, rows, width, device)
        prefix = torch.full((rows, width), self.pad_id, dtype=torch.long, device=device)
        done = torch.zeros(rows, dtype=torch.bool, device=device)
        eos = torch.tensor(self.eos_ids, device=device)
        gens = generation.row_generators([prompt_seed(self.seed, key, 0, "args") for key in keys], device=device)

        def choose(step: int, logits: torch.Tensor) -> torch.Tensor:
            logp = torch.log_softmax(logits, dim=-1)
            top = logp.topk(min(k, logp.shape[-1]), dim=-1)
            scores = top.values.clone()
            pinned = start[:, step] >= 0 if start is not None and step < start.shape[1] else torch.zeros_like(done)
            live = (~done & ~pinned).nonzero().squeeze(-1)
            if self.weight != 0 and live.numel() > 0:
                scores[live] += self.weight * self.candidate_rewards(
                    [prompt_ids[i] for i in live.tolist()], [prompts[i] for i in live.tolist()],
                    prefix[live, :step], top.indices[live], eos,
                ).to(scores.device)
            if self.mode == "greedy":
                pick = scores.argmax(-1)
            else:
                u = torch.stack([torch.rand(scores.shape[-1], generator=g, device=g.device) for g in gens]).to(device)
                gumbel = -torch.log(-torch.log(u.clamp_(1e-20, 1.0)))
                pick = (scores / self.temperature + gumbel).argmax(-1)
            token = top.indices.gather(-1, pick.unsqueeze(-1)).squeeze(-1)
            if pinned.any():
                token = torch.where(pinned, start[:, step], token)
            prefix[:, step] = token
            done.logical_or_(torch.isin(token, eos))
            if limit is not None:
                done.logical_or_(step + 1 >= limit)  # the row's free budget is spent
            if on_token is not None:
                on_token(step)
            return token

        return generation.sample(self.policy.model, prompt_ids, width, self.eos_ids, self.pad_id, [], choose=choose, forced=forced)

    def candidate_rewards(self, prompt_ids, prompts, prefix: torch.Tensor, candidates: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
        """``r(x, prefix + v)`` for every row's ``k`` candidates, ``(rows, k)``."""
        rows, k = candidates.shape
        step = prefix.shape[1]
        tokens = torch.cat([prefix.repeat_interleave(k, dim=0), candidates.reshape(-1, 1)], dim=1)
        is_eos = torch.isin(candidates.reshape(-1), eos)
        lengths = step + (~is_eos).long()  # an EOS candidate ends the response before itself
        expanded_ids = [ids for ids in prompt_ids for _ in range(k)]
        expanded_prompts = [text for text in prompts for _ in range(k)]
        return self.rewards(expanded_ids, expanded_prompts, tokens, lengths, guide=True).view(rows, k)
