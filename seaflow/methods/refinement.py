"""What SEA and BiasedDecoding share: chains that move a continuous variable with a sampler.

A refinement method moves, for every prompt, ``chains`` chains of a continuous variable (SEA:
the response logits; BiasedDecoding: a bias on the policy's logits) with a
:class:`~seaflow.samplers.base.Sampler` through :func:`seaflow.refine.refine` on an energy built
with a :class:`~seaflow.relaxations.base.Relaxation`, scores the discrete tokens the chains end
at, returns each prompt's best chain by discrete reward (:meth:`RefinementMethod.select`) and
records every chain's summary and trace (:meth:`RefinementMethod.records`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from seaflow.chains import ranked
from seaflow.checks import require
from seaflow.methods.base import AlignmentMethod
from seaflow.methods.record import Record, make_record
from seaflow.relaxations.base import Relaxation
from seaflow.relaxations.straight_through import StraightThrough
from seaflow.samplers.base import Sampler
from seaflow.samplers.langevin import Langevin


class RefinementMethod(AlignmentMethod):
    """Base of the methods whose chains a sampler moves (see the module docstring).

    Besides :class:`AlignmentMethod`'s arguments:

    Args:
        sampler: the sampler moving the chains' variable (default: Langevin).
        relaxation: how the variable becomes the tokens the models read (default: straight-through).
        alpha: reward weight in the energy; 0 is the "w/o reward" ablation (the reward still selects).
        reference_weight: weight of ``-log pi_ref`` in the energy; 0 is the "w/o reference" ablation.
        chains: chains per prompt.
        steps: sampler steps T.
        trace_every: keep every n-th iteration in the per-prompt trace.
        max_faults: a chain whose energy, gradient or new state is non-finite is rolled back
            to its last finite state with half the step size; after ``max_faults`` such faults
            in a row it is dropped (frozen and left out of selection). Logged in ``faults``.
    """

    def __init__(
        self,
        sampler: Sampler | None = None,
        relaxation: Relaxation | None = None,
        alpha: float = 1.0,
        reference_weight: float = 1.0,
        chains: int = 4,
        steps: int = 10,
        trace_every: int = 1,
        max_faults: int = 3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        require(chains >= 1, "model.init_args.chains", chains, ">= 1")
        require(steps >= 0, "model.init_args.steps", steps, ">= 0")
        require(isinstance(alpha, (int, float)), "model.init_args.alpha", alpha, "a finite number")
        require(isinstance(reference_weight, (int, float)), "model.init_args.reference_weight", reference_weight, "a finite number")
        require(max_faults >= 1, "model.init_args.max_faults", max_faults, ">= 1")
        if self.reward is None and alpha != 0:
            raise ValueError(f"{type(self).__name__} needs a reward (set model.init_args.reward) unless alpha is 0")
        if alpha != 0:
            self.require_gradient(type(self).__name__)
        self.sampler = sampler if sampler is not None else Langevin()
        self.relaxation = relaxation if relaxation is not None else StraightThrough()
        self.alpha = alpha
        self.reference_weight = reference_weight
        self.chains = chains
        self.steps = steps
        self.trace_every = max(1, trace_every)
        self.max_faults = max_faults

    def select(self, reward0: torch.Tensor, reward: torch.Tensor, dropped: torch.Tensor | None) -> Selection:
        """Per prompt, the chain with the highest discrete reward after refinement; the best initial
        sample when no chain is usable. Dropped chains (numerical faults) and non-finite rewards never win."""
        chains = self.chains
        n_prompts = len(reward) // chains
        dropped = dropped.cpu() if dropped is not None else torch.zeros(len(reward), dtype=torch.bool)
        usable = ranked(reward).masked_fill(dropped, float("-inf")).view(n_prompts, chains)
        usable0 = ranked(reward0).view(n_prompts, chains)
        best_initial = [p * chains + int(usable0[p].argmax()) for p in range(n_prompts)]
        fallback = [not bool(torch.isfinite(usable[p]).any()) for p in range(n_prompts)]
        rows = [best_initial[p] if fallback[p] else p * chains + int(usable[p].argmax()) for p in range(n_prompts)]
        return Selection(rows=rows, best_initial=best_initial, fallback=fallback)

    def records(self, batch, tokens0, lengths0, initial, tokens, lengths, final, trace, elapsed, evaluations, pool=None) -> list[Record]:
        """One record per prompt: the selected chain (:meth:`select`) and every chain's summary."""
        chains, n_prompts = self.chains, len(batch["id"])
        texts0 = self.decode_text(tokens0, lengths0)
        plain = None  # with a pool: the plain sample (candidate 0) of each prompt, for the initial_* fields
        if pool is not None and pool.rewards is not None:
            first_ll, _ = self.reference_stats(batch["prompt_ids"], batch["prompt"], pool.first_tokens, pool.first_lengths)
            plain = {
                "text": self.decode_text(pool.first_tokens, pool.first_lengths),
                "ll": self.per_token(first_ll, pool.first_lengths),
            }
        texts = self.decode_text(tokens, lengths)
        ll0 = self.per_token(initial["ref_token_logprobs"], lengths0)
        ll = self.per_token(final["ref_token_logprobs"], lengths)
        reward0 = initial["reward"].float().cpu()
        reward = final["reward"].float().cpu()
        selection = self.select(reward0, reward, trace.dropped)
        stacked = trace.stacked()
        out = []
        for p in range(n_prompts):
            rows = slice(p * chains, (p + 1) * chains)
            row, first = selection.rows[p], selection.best_initial[p]
            # the returned response: a refined chain, or the best initial sample (its per-position
            # reference statistics come from the discrete scoring of either)
            if selection.fallback[p]:
                picked, picked_tokens, picked_lengths, picked_reward, picked_ll = initial, tokens0, lengths0, reward0, ll0
            else:
                picked, picked_tokens, picked_lengths, picked_reward, picked_ll = final, tokens, lengths, reward, ll
            response = self.response_fields(
                picked_tokens[row], int(picked_lengths[row]), float(picked_reward[row]), picked_ll[row],
                picked["ref_token_logprobs"][row], picked["ref_token_entropy"][row],
            )
            surrogate = {}
            if "surrogate_reward" in final:  # a selection_reward selected; reward guided
                surrogate = {
                    "surrogate_reward": float(picked["surrogate_reward"][row]),
                    "chain_surrogate_rewards": final["surrogate_reward"][rows].tolist(),
                }
            out.append(make_record(
                batch, p, self.method_name(), **response, **surrogate,
                chain=row - p * chains,
                initial_response=texts0[p * chains] if plain is None else plain["text"][p],
                initial_reward=float(reward0[p * chains] if plain is None else pool.rewards[p, 0]),
                initial_ref_logprob_per_token=ll0[p * chains] if plain is None else plain["ll"][p],
                initial_best_response=texts0[first],
                initial_best_reward=float(reward0[first]),
                chain_rewards=reward[rows].tolist(),
                chain_initial_rewards=reward0[rows].tolist(),
                chain_ref_logprob_per_token=ll[rows],
                chain_responses=texts[rows],
                chain_response_tokens=[int(v) for v in lengths[rows]],
                trace={name: values[:: self.trace_every, row].tolist() for name, values in stacked.items()},
                trace_mean_reward=stacked["reward"][:: self.trace_every, rows].mean(1).tolist() if "reward" in stacked else None,
                steps=self.steps,
                energy_evaluations=evaluations,
                faults=[
                    {**event, "chain": event["chain"] - p * chains}
                    for event in trace.faults if rows.start <= event["chain"] < rows.stop
                ],
                fallback="initial_best" if selection.fallback[p] else None,
                **({} if plain is None else {
                    "chain_initial_candidates": [int(c) for c in pool.candidates[rows]],
                    "init_pool": pool.rewards.shape[1],
                    "pool_rewards": pool.rewards[p].tolist(),
                }),
                wall_time_s=elapsed / n_prompts,
            ))
        return out


@dataclass
class Selection:
    """The choice per prompt: the returned row (prompt-major, ``chains`` rows per prompt), the
    best initial sample's row, and whether the returned row is that initial sample (no chain usable)."""

    rows: list[int]
    best_initial: list[int]
    fallback: list[bool]
