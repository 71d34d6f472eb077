"""``seaflow.methods.ARGS``: reward-guided decoding, one token at a time (Khanov et al., 2024)."""

from __future__ import annotations

import time
from typing import Literal

import torch

from seaflow import cost, generation
from seaflow.checks import require, require_one_of
from seaflow.methods.discrete import DiscreteMethod
from seaflow.methods.record import Record
from seaflow.progress import report


class ARGS(DiscreteMethod):
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
        (others: see :class:`DiscreteMethod` and :class:`AlignmentMethod`; ``temperature``
        applies to ``mode: sample``)
    """

    def __init__(self, top_k: int = 10, weight: float = 1.0, mode: Literal["greedy", "sample"] = "greedy", **kwargs):
        super().__init__(**kwargs)
        require(top_k >= 1, "model.init_args.top_k", top_k, ">= 1")
        require_one_of("model.init_args.mode", mode, ("greedy", "sample"))
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
        choice = RewardGuidedChoice(self, prompt_ids, prompts, self.generators(keys, [0] * len(keys), "args"), on_token)
        return generation.sample(self.policy.model, prompt_ids, self.response_width(forced), self.eos_ids, self.pad_id, [],
                                 forced=forced, choose=choice)

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


class RewardGuidedChoice:
    """ARGS's pick at one step of :func:`seaflow.generation.generate`: the policy's ``top_k`` next
    tokens, each scored ``log pi + weight * r(x, y_<t + v)``, then the best (greedy) or a draw from
    ``softmax(score / temperature)`` with the row's own generator (sample). Rows that have ended
    or whose slot is forced score no candidate."""

    def __init__(self, method: ARGS, prompt_ids: list[list[int]], prompts: list[str], generators, on_token=None):
        self.method, self.prompt_ids, self.prompts = method, prompt_ids, prompts
        self.draws, self.on_token = generation.GumbelSample(generators), on_token

    def __call__(self, step: generation.Step, logits: torch.Tensor) -> torch.Tensor:
        method = self.method
        logp = torch.log_softmax(logits, dim=-1)
        top = logp.topk(min(method.top_k, logp.shape[-1]), dim=-1)
        scores = top.values.clone()
        pinned = step.forced >= 0 if step.forced is not None else torch.zeros_like(step.live)
        live = (step.live & ~pinned).nonzero().squeeze(-1)
        if method.weight != 0 and live.numel() > 0:
            rows = step.rows[live].tolist()
            # every row starts at slot 0: the prefix so far is the first ``step.index`` slots
            scores[live] += method.weight * method.candidate_rewards(
                [self.prompt_ids[i] for i in rows], [self.prompts[i] for i in rows],
                step.tokens[step.rows[live], : step.index], top.indices[live], torch.tensor(method.eos_ids, device=logits.device),
            ).to(scores.device)
        if method.mode == "greedy":
            pick = scores.argmax(-1)
        else:
            pick = (scores / method.temperature + self.draws.noise(step, scores.shape, scores.device)).argmax(-1)
        if self.on_token is not None:
            self.on_token(step.index)
        return top.indices.gather(-1, pick.unsqueeze(-1)).squeeze(-1)
