"""A hybrid start: the best ``keep`` of ``pool`` policy samples per prompt, as a method's initial states.

Candidate ``c`` of a prompt is drawn with the seed of Best-of-N's candidate ``c`` (and of
SEA's initial chain ``c``), so the pool is Best-of-``pool``'s candidates and the chosen
states are its ``keep`` best. :meth:`seaflow.methods.base.AlignmentMethod.best_of_pool` samples
and scores the pool inside the method's ``predict_step``, so its cost is part of the method's
record; :func:`best_of` ranks it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from seaflow.chains import ranked


@dataclass
class Pool:
    """The chosen initial states (prompt-major, ``keep`` per prompt) and what the records report."""

    tokens: torch.Tensor  # (prompts * keep, L)
    lengths: torch.Tensor  # (prompts * keep,)
    candidates: torch.Tensor  # (prompts * keep,) the candidate index of each chosen state
    rewards: torch.Tensor | None  # (prompts, pool) every candidate's reward (cpu); None when all are kept
    first_tokens: torch.Tensor  # (prompts, L) candidate 0 of each prompt: the plain policy sample
    first_lengths: torch.Tensor  # (prompts,)


def best_of(tokens: torch.Tensor, lengths: torch.Tensor, rewards: torch.Tensor | None, pool: int, keep: int) -> Pool:
    """The best ``keep`` of each prompt's ``pool`` samples (rows prompt-major, ``pool`` per prompt).

    Among equal rewards the earlier candidate goes first; a non-finite reward ranks last.
    ``rewards`` None (with ``keep == pool``) keeps every sample in candidate order (the plain
    start from the first samples).
    """
    prompts = tokens.shape[0] // pool
    first = (torch.arange(prompts) * pool).to(tokens.device)
    if rewards is None:
        return Pool(tokens, lengths, torch.arange(pool).repeat(prompts), None, tokens[first], lengths[first])
    table = rewards.view(prompts, pool)
    chosen = torch.sort(ranked(table), dim=1, descending=True, stable=True).indices[:, :keep]
    index = (torch.arange(prompts).unsqueeze(1) * pool + chosen).flatten().to(tokens.device)
    return Pool(tokens[index], lengths[index], chosen.flatten(), table, tokens[first], lengths[first])
