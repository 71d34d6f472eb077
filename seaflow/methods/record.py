"""The record schema: one JSON object per prompt in ``predictions.jsonl``, for every method.

:class:`Record` lists every field a method may write, in the order records carry them;
docs/outputs.md mirrors it (tests/test_methods.py checks both). :func:`make_record` is the
one place records are assembled: it puts the fields in schema order and refuses a field the
schema does not know, so a new field is added here and in docs/outputs.md or not at all.
``reward_parts`` and ``cost`` are added after the method (seaflow/methods/base.py, the cost meter), last.
"""

from __future__ import annotations

from typing import Any, TypedDict

import torch


class ModelCost(TypedDict):
    forward_tokens: float
    backward_tokens: float
    head_tokens: float
    soft_embedding_tokens: float
    flops: float


class Cost(TypedDict, total=False):
    """What producing a record cost (seaflow/cost.py adds it to every method's records)."""

    flops: float
    forward_tokens: float
    backward_tokens: float
    sequential_depth: int
    wall_time_s: float
    models: dict[str, ModelCost]
    device: str
    load_average: float | None


class Record(TypedDict, total=False):
    # every method
    id: str
    index: int
    prompt: str
    method: str
    response_prefix: str
    response: str
    response_token_ids: list[int]
    reward: float | None
    surrogate_reward: float
    ref_logprob_per_token: float
    response_tokens: int
    ref_token_logprobs: list[float]
    ref_token_entropy: list[float]
    # SEA
    chain: int
    initial_response: str
    initial_reward: float
    initial_ref_logprob_per_token: float
    initial_best_response: str
    initial_best_reward: float
    chain_rewards: list[float]
    chain_initial_rewards: list[float]
    chain_surrogate_rewards: list[float]
    chain_ref_logprob_per_token: list[float]
    chain_responses: list[str]
    chain_response_tokens: list[int]
    trace: dict[str, list]
    trace_mean_reward: list[float] | None
    steps: int
    energy_evaluations: int
    faults: list[dict[str, Any]]
    fallback: str | None
    # Best-of-N
    candidate: int
    candidate_rewards: list[float]
    candidate_responses: list[str]
    n: int
    candidate_ref_logprobs: list[float]
    # ARGS
    top_k: int
    weight: float
    # CBS
    beam_rewards: list[float]
    rounds: int
    candidates_scored: int
    # SoftBestOfN (also candidate, candidate_rewards, candidate_responses and n above) and ParticleFilter
    candidate_probability: float
    reward_temperature: float
    # SpeculativeRejection (also candidate and n above)
    survivors: list[int]
    survivor_rewards: list[float]
    kept: list[int]
    # ParticleFilter
    particle: int
    particle_rewards: list[float]
    ess: list[float]
    resampled_at: list[int]
    # GuidedSuffixMCMC (also chain, chain_initial_rewards, chain_rewards, chain_responses,
    # initial_reward, initial_best_reward, trace and steps above; SEA with init_pool writes
    # chain_initial_candidates, init_pool and pool_rewards)
    chain_best_rewards: list[float]
    chain_initial_candidates: list[int]
    chain_acceptance: list[float]
    tries: int
    init_pool: int | None
    init_rank: str
    pool_rewards: list[float]
    returns: str
    alternatives: dict[str, dict[str, Any]]
    token_move_acceptance: list[float | None]
    # every method (output.wall_time: false leaves wall_time_s out, also cost's; reward_parts only
    # with a reward of named terms, added after the method like cost)
    wall_time_s: float
    reward_parts: dict[str, float]
    cost: Cost


FIELDS: tuple[str, ...] = tuple(Record.__annotations__)
# batch keys that are not per-prompt metadata worth copying into records
BATCH_KEYS = {"id", "index", "prompt", "prompt_ids", "response_prefix_ids", "proposal_prompt_ids"}


def make_record(batch: dict[str, list], index: int, method: str, **fields: Any) -> Record:
    """Prompt ``index`` of ``batch`` as a record: id, index, prompt, method, the prompt set's own
    metadata (e.g. GSM8K's answer), then ``fields`` in schema order."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise KeyError(
            f"record field(s) {', '.join(unknown)} not in seaflow.methods.record.Record: "
            "declare them there and in docs/outputs.md"
        )
    record = {"id": batch["id"][index], "index": batch["index"][index], "prompt": batch["prompt"][index], "method": method}
    record.update((key, values[index]) for key, values in batch.items() if key not in BATCH_KEYS and values[index] is not None)
    record.update((name, fields[name]) for name in FIELDS if name in fields)
    return record


def rounded(values: torch.Tensor, n: int) -> list[float]:
    """The first ``n`` per-position values, rounded to 5 decimals (per-token statistics)."""
    return [round(float(v), 5) for v in values[:n]]
