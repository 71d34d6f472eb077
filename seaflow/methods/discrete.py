"""What the methods that work on token ids share on top of AlignmentMethod: GuidedSuffixMCMC, Sample,
BestOfN, ARGS and CBS (SEA and BiasedDecoding move a continuous variable instead: methods/refinement.py).

These methods sample, search over and return discrete responses: they score candidates with
the reward on token ids, ``score_batch`` rows per pass (:meth:`DiscreteMethod.rewards`), and
write one record per prompt for the response they chose (:meth:`DiscreteMethod.records`), with
the per-position reference statistics that ``seaflow.metrics`` turns into the KL-per-position
curve.
"""

from __future__ import annotations

import torch

from seaflow import cost
from seaflow.checks import require
from seaflow.methods.base import AlignmentMethod
from seaflow.methods.record import Record, make_record


class DiscreteMethod(AlignmentMethod):
    """Base of the methods that choose among token sequences; see the module docstring.

    Besides :class:`AlignmentMethod`'s arguments, passed on as ``**kwargs``:

    Args:
        score_batch: rows per reward / reference forward pass.
    """

    def __init__(self, score_batch: int = 64, **kwargs):
        super().__init__(**kwargs)
        require(score_batch >= 1, "model.init_args.score_batch", score_batch, ">= 1")
        self.score_batch = score_batch

    def _require_reward(self) -> None:
        if self.selector is None:
            raise ValueError(
                f"{type(self).__name__} selects by reward: set model.init_args.reward "
                "(e.g. class_path: LexiconReward)"
            )

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
