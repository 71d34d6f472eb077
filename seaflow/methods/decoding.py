"""What the decoding baselines (Sample, BestOfN, ARGS, CBS) share on top of AlignmentMethod.

These methods pick discrete tokens directly (no continuous refinement). They sample with
per-row generators seeded by (run seed, prompt id, candidate index, purpose), so a
prompt's result does not depend on the other prompts in its batch; they score candidates
with the reward term on token ids, in slices of ``score_batch`` rows; and they write the
same core record fields as SEA, plus the per-position reference statistics that
``seaflow.metrics`` turns into the KL-per-position curve.
"""

from __future__ import annotations

import torch

from seaflow import cost, generation
from seaflow.methods.base import AlignmentMethod, prompt_seed
from seaflow.methods.record import Record, make_record
from seaflow.progress import report


class DecodingMethod(AlignmentMethod):
    """Base of the token-level baselines; see the module docstring.

    Besides :class:`AlignmentMethod`'s arguments, passed on as ``**kwargs``:

    Args:
        sample_batch: rows (prompts x candidates) per generation call; bounds memory
            (e.g. BoN-64 on 4 prompts is 256 rows, generated 64 at a time by default).
        score_batch: rows per reward / reference forward pass.
    """

    def __init__(self, sample_batch: int = 64, score_batch: int = 64, **kwargs):
        super().__init__(**kwargs)
        if sample_batch < 1:
            raise ValueError(f"sample_batch must be >= 1, got {sample_batch}")
        if score_batch < 1:
            raise ValueError(f"score_batch must be >= 1, got {score_batch}")
        self.sample_batch = sample_batch
        self.score_batch = score_batch

    def _require_reward(self) -> None:
        if self.selector is None:
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
        forced: list[list[int]] | None = None,
        progress: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy samples for explicit (prompt key, candidate index) rows, ``sample_batch`` at a time.

        Row ``i`` is seeded by ``prompt_seed(seed, keys[i], candidates[i], purpose)``: with
        ``purpose="sample"`` candidate ``c`` is the same draw as SEA's initial chain ``c``
        and as ``AlignmentMethod.sample_responses``. ``forced[i]`` is row ``i``'s forced start
        (``data.response_prefix``): the rows hold it and ``max_new_tokens`` free tokens after it.
        ``progress`` reports each block of rows to the progress bar (a caller with its own unit
        of progress turns it off).
        """
        budget = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        width = budget + (max(map(len, forced)) if forced else 0)
        seeds = [prompt_seed(self.seed, key, c, purpose) for key, c in zip(keys, candidates)]
        tokens, lengths = [], []
        for start in cost.side_by_side(range(0, len(prompt_ids), self.sample_batch)):
            stop = start + self.sample_batch
            chunk = forced[start:stop] if forced else None
            gens = generation.row_generators(seeds[start:stop], device=self.device)
            t, n = generation.sample(
                self.policy.model, prompt_ids[start:stop], budget + (max(map(len, chunk)) if chunk else 0),
                self.eos_ids, self.pad_id, gens, temperature=self.temperature, top_p=self.top_p, forced=chunk,
            )
            tokens.append(torch.nn.functional.pad(t, (0, width - t.shape[1]), value=self.pad_id))
            lengths.append(n)
            if progress:
                report(min(stop, len(prompt_ids)), len(prompt_ids), "candidates")  # the progress bar (seaflow/progress.py)
        return torch.cat(tokens), torch.cat(lengths)

    # -- scoring -----------------------------------------------------------------------

    def rewards(self, prompt_ids: list[list[int]], prompts: list[str], tokens: torch.Tensor, lengths: torch.Tensor,
                guide: bool = False) -> torch.Tensor:
        """Discrete reward ``(B,)`` of responses given as ids, ``score_batch`` rows per pass: the
        :attr:`selector`'s, or with ``guide`` the ``reward`` term's (when set)."""
        self._require_reward()
        term = self.reward if guide and self.reward is not None else self.selector
        return term.score(prompt_ids, prompts, tokens, lengths, self.score_batch)

    @torch.no_grad()
    def reference_stats(self, prompt_ids, prompts, tokens, lengths, chunk=None):
        return super().reference_stats(prompt_ids, prompts, tokens, lengths, chunk or self.score_batch)

    # -- records -----------------------------------------------------------------------

    def records(self, batch, prompt_ids, prompts, tokens, lengths, rewards, elapsed, extras) -> list[Record]:
        """Records for one chosen row per prompt (``tokens``/``lengths``/``rewards`` prompt-aligned);
        ``extras[p]`` holds prompt ``p``'s method-specific fields."""
        logprobs, entropy = self.reference_stats(prompt_ids, prompts, tokens, lengths)
        surrogate = None
        if self.selection_reward is not None and self.reward is not None:
            with cost.uncounted():  # for the record only
                surrogate = self.rewards(prompt_ids, prompts, tokens, lengths, guide=True).tolist()
        n = len(batch["id"])
        records = []
        for p in range(n):
            length = int(lengths[p])
            fluency = float(logprobs[p, :length].sum()) / max(length, 1)
            fields = self.response_fields(tokens[p], length, float(rewards[p]), fluency, logprobs[p], entropy[p])
            if surrogate is not None:
                fields["surrogate_reward"] = surrogate[p]
            records.append(make_record(batch, p, self.method_name(), **fields, **extras[p], wall_time_s=elapsed / n))
        return records
