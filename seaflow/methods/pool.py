"""A hybrid start: the best ``keep`` of ``pool`` policy samples per prompt, as a method's initial states.

Candidate ``c`` of a prompt is drawn with the seed of Best-of-N's candidate ``c`` (and of
SEA's initial chain ``c``), so the pool is Best-of-``pool``'s candidates and the chosen
states are its ``keep`` best. Sampling and scoring the pool run inside the method's
``predict_step``, so its cost is part of the method's record.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from seaflow import cost, generation
from seaflow.energies.base import ResponseBatch
from seaflow.methods.base import prompt_seed


@dataclass
class Pool:
    """The chosen initial states (prompt-major, ``keep`` per prompt) and what the records report."""

    tokens: torch.Tensor  # (prompts * keep, L)
    lengths: torch.Tensor  # (prompts * keep,)
    candidates: torch.Tensor  # (prompts * keep,) the candidate index of each chosen state
    rewards: torch.Tensor | None  # (prompts, pool) every candidate's reward (cpu); None when all are kept
    first_tokens: torch.Tensor  # (prompts, L) candidate 0 of each prompt: the plain policy sample
    first_lengths: torch.Tensor  # (prompts,)


@torch.no_grad()
def best_of_pool(method, prompt_ids: list[list[int]], prompts: list[str], keys: list[str], pool: int, keep: int, batch_rows: int = 64,
                 forced: list[list[int]] | None = None, sample_ids: list[list[int]] | None = None) -> Pool:
    """The best ``keep`` of ``pool`` samples for each prompt (``prompt_ids``/``prompts``/``keys``: one entry per prompt).

    ``method`` is an :class:`~seaflow.methods.base.AlignmentMethod` with a reward (its
    ``selection_reward`` when set ranks the pool). Rows are
    sampled and scored ``batch_rows`` at a time. Among equal rewards the earlier candidate
    goes first; a non-finite reward ranks last. ``forced[p]`` is prompt ``p``'s forced response
    start (``data.response_prefix``): every sample begins with it. With ``keep == pool`` every sample is kept in
    candidate order and nothing is scored (the plain start from the first samples).
    ``sample_ids[p]`` (default ``prompt_ids[p]``) is the prompt the samples are drawn after (a
    proposal prompt); the reward always scores them as replies to ``prompt_ids[p]``.
    """
    if not 1 <= keep <= pool:
        raise ValueError(f"the pool needs 1 <= keep ({keep}) <= pool ({pool})")
    if method.selector is None and keep < pool:
        raise ValueError("a best-of-pool start ranks samples by reward: set model.init_args.reward")
    rows = [(p, c) for p in range(len(prompt_ids)) for c in range(pool)]
    width = method.response_width(forced)
    tokens, lengths, rewards = [], [], []
    for start in cost.side_by_side(range(0, len(rows), batch_rows)):
        chunk = rows[start : start + batch_rows]
        ids = [prompt_ids[p] for p, _ in chunk]
        drawn_after = ids if sample_ids is None else [sample_ids[p] for p, _ in chunk]
        gens = generation.row_generators([prompt_seed(method.seed, keys[p], c, "sample") for p, c in chunk], device=method.device)
        starts = [forced[p] for p, _ in chunk] if forced else None
        t, n = generation.sample(
            method.policy.model, drawn_after, method.response_width(starts if starts and any(starts) else None),
            method.eos_ids, method.pad_id, gens, temperature=method.temperature, top_p=method.top_p, forced=starts,
        )
        t = torch.nn.functional.pad(t, (0, width - t.shape[1]), value=method.pad_id)
        if keep < pool:
            width = max(int(n.max()), 1)
            batch = ResponseBatch(ids, [prompts[p] for p, _ in chunk], n.cpu(), width)
            rewards.append(method.selector.value(method.selector.prepare(batch), t[:, :width]).float().cpu())
        tokens.append(t)
        lengths.append(n)
    tokens, lengths = torch.cat(tokens), torch.cat(lengths)
    first = (torch.arange(len(prompt_ids)) * pool).to(tokens.device)
    if keep == pool:
        return Pool(tokens, lengths, torch.arange(pool).repeat(len(prompt_ids)), None, tokens[first], lengths[first])
    table = torch.cat(rewards).view(len(prompt_ids), pool)
    ranked = torch.where(torch.isfinite(table), table, float("-inf"))
    chosen = torch.sort(ranked, dim=1, descending=True, stable=True).indices[:, :keep]
    index = (torch.arange(len(prompt_ids)).unsqueeze(1) * pool + chosen).flatten()
    index = index.to(tokens.device)
    return Pool(tokens[index], lengths[index], chosen.flatten(), table, tokens[first], lengths[first])
