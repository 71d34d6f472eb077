"""What the decoding baselines (Sample, BestOfN, ARGS, CBS) share on top of AlignmentMethod.

These methods pick discrete tokens directly (no continuous refinement). They sample with
per-row generators seeded by (run seed, prompt id, candidate index, purpose), so a
prompt's result does not depend on the other prompts in its batch; they score candidates
with the reward term on token ids, in slices of ``score_batch`` rows; and they write the
same core record fields as SEA, plus the per-position reference statistics that
``seaflow.metrics`` turns into the KL-per-position curve.
"""

from __future__ import annotations

from typing import Any

import torch

from seaflow import generation
from seaflow import layout as L
from seaflow.energies.base import ResponseBatch, Reward
from seaflow.methods.base import AlignmentMethod, prompt_seed
from seaflow.models import EMBEDDED_DEFAULT

def pad_rows(rows: list[list[int]], pad_id: int, width: int | None = None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into ``(B, width)`` plus their lengths ``(B,)``."""
    width = max([len(r) for r in rows] + [1]) if width is None else width
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    return tokens.to(device), lengths.to(device)


class DecodingMethod(AlignmentMethod):
    """Base of the token-level baselines; see the module docstring.

    Args (besides :class:`AlignmentMethod`'s):
        sample_batch: rows (prompts x candidates) per generation call; bounds memory
            (e.g. BoN-64 on 4 prompts is 256 rows, generated 64 at a time by default).
        score_batch: rows per reward / reference forward pass.
    """

    def __init__(
        self,
        policy: str = EMBEDDED_DEFAULT,
        reward: Reward | None = None,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int = 0,
        dtype: str | None = None,
        sample_batch: int = 64,
        score_batch: int = 64,
        trust_remote_code: bool = False,
    ):
        super().__init__(
            policy=policy, reward=reward, max_new_tokens=max_new_tokens, temperature=temperature,
            top_p=top_p, seed=seed, dtype=dtype, trust_remote_code=trust_remote_code,
        )
        if sample_batch < 1:
            raise ValueError(f"sample_batch must be >= 1, got {sample_batch}")
        if score_batch < 1:
            raise ValueError(f"score_batch must be >= 1, got {score_batch}")
        self.sample_batch = sample_batch
        self.score_batch = score_batch

    def _require_reward(self) -> None:
        if self.reward is None:
            raise ValueError(
                f"{type(self).__name__} selects by reward: set model.init_args.reward "
                "(e.g. class_path: LexiconReward)"
            )

    # -- sampling ----------------------------------------------------------------------

    def sample_rows(
        self,
        prompt_ids: list[list[int]],
        keys: list[str],
        candidates: list[int],
        purpose: str = "sample",
        max_new_tokens: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy samples for explicit (prompt key, candidate index) rows, ``sample_batch`` at a time.

        Row ``i`` is seeded by ``prompt_seed(seed, keys[i], candidates[i], purpose)``: with
        ``purpose="sample"`` candidate ``c`` is the same draw as SEA's initial chain ``c``
        and as ``AlignmentMethod.sample_responses``.
        """
        width = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        seeds = [prompt_seed(self.seed, key, c, purpose) for key, c in zip(keys, candidates)]
        tokens, lengths = [], []
        for start in range(0, len(prompt_ids), self.sample_batch):
            stop = start + self.sample_batch
            gens = generation.row_generators(seeds[start:stop], device=self.device)
            t, n = generation.sample(
                self.policy.model, prompt_ids[start:stop], width, self.eos_ids, self.pad_id,
                gens, temperature=self.temperature, top_p=self.top_p,
            )
            tokens.append(t)
            lengths.append(n)
        return torch.cat(tokens), torch.cat(lengths)

    # -- scoring -----------------------------------------------------------------------

    @torch.no_grad()
    def rewards(self, prompt_ids: list[list[int]], prompts: list[str], tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Discrete reward ``(B,)`` of responses given as ids, ``score_batch`` rows per pass."""
        self._require_reward()
        out = []
        for start in range(0, tokens.shape[0], self.score_batch):
            rows = slice(start, start + self.score_batch)
            n = lengths[rows]
            width = max(int(n.max()), 1)
            batch = ResponseBatch(prompt_ids[rows], prompts[rows], n.cpu(), width)
            out.append(self.reward.value(self.reward.prepare(batch), tokens[rows, :width]).float())
        return torch.cat(out)

    @torch.no_grad()
    def reference_stats(self, prompt_ids, prompts, tokens, lengths, chunk=None):
        return super().reference_stats(prompt_ids, prompts, tokens, lengths, chunk or self.score_batch)

    # -- records -----------------------------------------------------------------------

    def record(
        self,
        batch: dict[str, list],
        index: int,
        tokens: torch.Tensor,
        length: int,
        reward: float,
        logprobs: torch.Tensor,
        entropy: torch.Tensor,
        wall_time_s: float,
        **extra: Any,
    ) -> dict[str, Any]:
        """The core fields every method writes, for one prompt's chosen response."""
        length = int(length)
        record = self.base_record(batch, index)
        record.update(
            response=self.decode_text(tokens.unsqueeze(0), torch.tensor([length]))[0],
            reward=None if reward is None or reward != reward else float(reward),  # NaN: no reward term
            ref_logprob_per_token=float(logprobs[:length].sum()) / max(length, 1),
            response_tokens=length,
            ref_token_logprobs=[round(float(v), 5) for v in logprobs[:length]],
            ref_token_entropy=[round(float(v), 5) for v in entropy[:length]],
            wall_time_s=wall_time_s,
        )
        record.update(extra)
        return record

    def records(self, batch, prompt_ids, prompts, tokens, lengths, rewards, elapsed, extras) -> list[dict[str, Any]]:
        """Records for one chosen row per prompt (``tokens``/``lengths``/``rewards`` prompt-aligned)."""
        logprobs, entropy = self.reference_stats(prompt_ids, prompts, tokens, lengths)
        n = len(batch["id"])
        return [
            self.record(batch, p, tokens[p], int(lengths[p]), float(rewards[p]), logprobs[p], entropy[p], elapsed / n, **extras[p])
            for p in range(n)
        ]
