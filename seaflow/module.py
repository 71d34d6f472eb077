"""``seaflow.SEA``: Simple Energy Adaptation as a LightningModule."""

from __future__ import annotations

import time
import warnings
from typing import Any, Literal

import torch

from seaflow import generation, layout
from seaflow.energies.base import ResponseBatch, Reward
from seaflow.methods.base import AlignmentMethod, prompt_seed
from seaflow.models import EMBEDDED_DEFAULT
from seaflow.rng import RowGenerators
from seaflow.refine import EnergyFunction, initial_logits, random_logits, refine
from seaflow.relaxations.base import Relaxation
from seaflow.relaxations.straight_through import StraightThrough
from seaflow.samplers.base import Sampler
from seaflow.samplers.langevin import Langevin


class SEA(AlignmentMethod):
    """Inference-time alignment by Langevin refinement of response logits.

    For each prompt: sample ``chains`` responses from the policy (or start from random
    logits), turn them into logits ``y`` that decode exactly to those samples, run
    ``steps`` sampler steps on ``E = -reference_weight * log pi_ref(y|x) - alpha * r(x, y)``
    through the ``relaxation``, decode, score the discrete tokens and return the chain with
    the highest reward. See docs/method.md for the choices the paper leaves open.

    Args:
        policy: the reference policy (see :class:`AlignmentMethod`).
        reward: the reward term r(x, y).
        sampler: the sampler moving ``y`` (default: Langevin).
        relaxation: how ``y`` becomes model inputs (default: straight-through).
        alpha: reward weight; 0 is the "w/o reward" ablation (the reward still selects).
        reference_weight: weight of ``-log pi_ref``; 0 is the "w/o reference" ablation.
        chains: chains per prompt (the paper uses 4; 1 is the single-chain ablation).
        steps: sampler steps T.
        init: ``sample`` (policy samples) or ``random`` (the random-init ablation).
        init_logits: how samples become logits: ``reference`` (the policy's log-probs with the
            sampled token lifted ``init_margin`` above the rest) or ``one_hot`` (``init_scale`` x one-hot).
        init_margin: see ``init_logits``.
        init_scale: scale of ``one_hot`` logits, or the std of random init.
        decode: ``argmax`` of the final logits (the paper); ``best``: the lowest-energy state
            any evaluation visited, initial samples included (exact with a one-hot forward such
            as straight-through); or ``guided`` (left to right among the policy's
            ``decode_top_k`` next tokens given the decoded prefix, choosing by ``y``).
        decode_top_k: candidates per position for guided decoding.
        restrict_top_k: if set, each position may only move among the policy's top-k tokens
            at initialisation (plus the sampled token), as COLD decoding does; needs ``init: sample``.
        trace_every: keep every n-th iteration in the per-prompt trace.
        max_faults: a chain whose energy, gradient or new state is non-finite is rolled back
            to its last finite state with half the step size; after ``max_faults`` such faults
            in a row it is dropped (frozen and left out of selection). Logged in ``faults``.
    """

    def __init__(
        self,
        policy: str = EMBEDDED_DEFAULT,
        reward: Reward | None = None,
        sampler: Sampler | None = None,
        relaxation: Relaxation | None = None,
        alpha: float = 1.0,
        reference_weight: float = 1.0,
        chains: int = 4,
        steps: int = 30,
        init: Literal["sample", "random"] = "sample",
        init_logits: Literal["reference", "one_hot"] = "reference",
        init_margin: float = 1.0,
        init_scale: float = 1.0,
        decode: Literal["argmax", "best", "guided"] = "argmax",
        decode_top_k: int = 10,
        restrict_top_k: int | None = None,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int = 0,
        dtype: str | None = None,
        trace_every: int = 1,
        max_faults: int = 3,
        trust_remote_code: bool = False,
    ):
        super().__init__(
            policy=policy, reward=reward, max_new_tokens=max_new_tokens, temperature=temperature,
            top_p=top_p, seed=seed, dtype=dtype, trust_remote_code=trust_remote_code,
        )
        if chains < 1:
            raise ValueError(f"chains must be >= 1, got {chains}")
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        if alpha != alpha or reference_weight != reference_weight:
            raise ValueError(f"alpha and reference_weight must be numbers, got {alpha} and {reference_weight}")
        if init not in ("sample", "random"):
            raise ValueError(f"init must be 'sample' or 'random', got {init!r}")
        if init_logits not in ("reference", "one_hot"):
            raise ValueError(f"init_logits must be 'reference' or 'one_hot', got {init_logits!r}")
        if decode not in ("argmax", "best", "guided"):
            raise ValueError(f"decode must be 'argmax', 'best' or 'guided', got {decode!r}")
        if restrict_top_k is not None and (restrict_top_k < 1 or init != "sample"):
            raise ValueError(f"restrict_top_k must be >= 1 and needs init: sample, got {restrict_top_k} with init {init!r}")
        if max_faults < 1:
            raise ValueError(f"max_faults must be >= 1, got {max_faults}")
        if reward is None and alpha != 0:
            raise ValueError("SEA needs a reward (set model.init_args.reward) unless alpha is 0")
        self.sampler = sampler if sampler is not None else Langevin()
        self.relaxation = relaxation if relaxation is not None else StraightThrough()
        if self.sampler.needs_one_hot_gradient and not self.relaxation.one_hot_gradient:
            warnings.warn(
                f"{type(self.sampler).__name__} reads the energy's gradient as dE/d(one-hot tokens), but the relaxation "
                f"is {type(self.relaxation).__name__}, whose gradient is a different one; set model.init_args.relaxation "
                f"to OneHot (class_path: OneHot). With a Metropolis test the chains stay exact, the proposals just "
                f"follow a worse guide.",
                stacklevel=2,
            )
        self.alpha = alpha
        self.reference_weight = reference_weight
        self.chains = chains
        self.steps = steps
        self.init = init
        self.init_logits = init_logits
        self.init_margin = init_margin
        self.init_scale = init_scale
        self.decode = decode
        self.decode_top_k = decode_top_k
        self.restrict_top_k = restrict_top_k
        self.trace_every = max(1, trace_every)
        self.max_faults = max_faults

    # -- the method ------------------------------------------------------------------------

    def predict_step(self, batch: dict[str, list], batch_idx: int = 0, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        try:
            return self.align(batch)
        except torch.cuda.OutOfMemoryError as err:
            raise torch.cuda.OutOfMemoryError(
                f"out of GPU memory refining {len(batch['id'])} prompts x {self.chains} chains x "
                f"{self.max_new_tokens} tokens x vocabulary {self.policy.vocab_size}: lower data.init_args.batch_size "
                f"(now {len(batch['id'])}), model.init_args.chains (now {self.chains}) or "
                f"model.init_args.max_new_tokens (now {self.max_new_tokens}), or use a bfloat16 dtype; "
                f"rerun the same command to resume ({err})"
            ) from err

    def align(self, batch: dict[str, list]) -> list[dict[str, Any]]:
        """One record per prompt of ``batch`` (steps 1-5 of the class docstring)."""
        started = time.perf_counter()
        prompt_ids, prompts, keys = self.expand(batch, self.chains)
        rows, width = len(prompt_ids), self.max_new_tokens
        vocab = self.policy.vocab_size
        # one random stream per chain, seeded from (seed, prompt id, chain): a prompt's result does
        # not depend on its batch, the batch size or the number of processes
        generator = RowGenerators(generation.row_generators(
            [prompt_seed(self.seed, key, row % self.chains, "refine") for row, key in enumerate(keys)], device=self.device
        ))

        # 1. init: logits that decode exactly to the policy's samples (or random logits)
        allowed = None
        if self.init == "sample":
            tokens0, lengths = self.sample_responses(prompt_ids, keys, self.chains)
            reference_logits = None
            if self.init_logits == "reference" or self.restrict_top_k:
                with torch.no_grad():
                    rows_layout = self.reference.prepare(ResponseBatch(prompt_ids, prompts, lengths.cpu(), width))
                    reference_logits = layout.next_token_logits(self.policy.model, rows_layout, tokens0)
            if self.restrict_top_k:
                allowed = Relaxation.top_k_mask(reference_logits, self.restrict_top_k, include=tokens0)
            y = initial_logits(
                tokens0, reference_logits if self.init_logits == "reference" else None, vocab,
                margin=self.init_margin, scale=self.init_scale,
            )
        else:
            y = random_logits((rows, width, vocab), self.init_scale, generator, self.device)
            tokens0 = y.argmax(-1)
            lengths = torch.full((rows,), width, dtype=torch.long, device=self.device)
        initial = self.score(prompt_ids, prompts, tokens0, lengths)

        # 2. refine: T sampler steps on the relaxed energy, all prompts x chains at once
        energy_fn = EnergyFunction(
            ResponseBatch(prompt_ids, prompts, lengths.cpu(), width), self.relaxation, self.reward,
            self.reference, self.alpha, self.reference_weight, generator=generator, allowed=allowed,
        )
        y, trace = refine(y, energy_fn, self.sampler, self.steps, generator, max_faults=self.max_faults)

        # 3. decode and 4. score the discrete tokens
        if allowed is not None:
            y = y.masked_fill(~allowed, float("-inf"))
        if self.decode == "best":
            energy_fn.track(y)  # the last iterate is a candidate too
            if energy_fn.best_tokens is None:
                raise ValueError(
                    f"decode: best needs a relaxation whose forward pass is one-hot (StraightThrough, "
                    f"hard GumbelSoftmax), got {type(self.relaxation).__name__}; use decode: argmax or guided"
                )
        tokens, final_lengths = self.decode_logits(y, prompt_ids, lengths, energy_fn.best_tokens)
        final = self.score(prompt_ids, prompts, tokens, final_lengths)

        # 5. select the best chain per prompt by discrete reward
        elapsed = time.perf_counter() - started
        return self.records(batch, tokens0, lengths, initial, tokens, final_lengths, final, trace, elapsed, energy_fn.evaluations)

    def decode_logits(self, y: torch.Tensor, prompt_ids: list[list[int]], lengths: torch.Tensor, best_tokens=None):
        """Response tokens and lengths from the refined logits, by ``self.decode``."""
        if self.decode in ("argmax", "best"):
            tokens = best_tokens if self.decode == "best" else y.argmax(-1)
            active = torch.arange(y.shape[1], device=y.device).unsqueeze(0) < lengths.unsqueeze(1)
            return tokens.masked_fill(~active, self.pad_id), lengths
        return generation.guided_decode(
            self.policy.model, prompt_ids, y, lengths, self.eos_ids, self.pad_id, self.decode_top_k
        )

    def records(self, batch, tokens0, lengths0, initial, tokens, lengths, final, trace, elapsed, evaluations):
        chains, n_prompts = self.chains, len(batch["id"])
        texts0 = self.decode_text(tokens0, lengths0)
        texts = self.decode_text(tokens, lengths)
        ll0 = self.per_token(initial["ref_token_logprobs"], lengths0)
        ll = self.per_token(final["ref_token_logprobs"], lengths)
        reward0 = initial["reward"].float().cpu()
        reward = final["reward"].float().cpu()
        # dropped chains (numerical faults) and non-finite rewards never win the selection
        dropped = trace.dropped.cpu() if trace.dropped is not None else torch.zeros(len(reward), dtype=torch.bool)
        usable = torch.where(torch.isfinite(reward) & ~dropped, reward, float("-inf")).view(n_prompts, chains)
        usable0 = torch.where(torch.isfinite(reward0), reward0, float("-inf")).view(n_prompts, chains)
        firsts = [p * chains + int(usable0[p].argmax()) for p in range(n_prompts)]  # best initial sample
        fallback = [not bool(torch.isfinite(usable[p]).any()) for p in range(n_prompts)]
        chosen = [firsts[p] if fallback[p] else p * chains + int(usable[p].argmax()) for p in range(n_prompts)]
        # the returned response of each prompt: a refined chain, or the best initial sample
        # (its per-position reference statistics come from the discrete scoring above)
        picked = [initial if fallback[p] else final for p in range(n_prompts)]
        token_logprobs = torch.stack([picked[p]["ref_token_logprobs"][chosen[p]] for p in range(n_prompts)])
        token_entropy = torch.stack([picked[p]["ref_token_entropy"][chosen[p]] for p in range(n_prompts)])
        stacked = trace.stacked()
        out = []
        for p in range(n_prompts):
            rows = slice(p * chains, (p + 1) * chains)
            row, first = chosen[p], firsts[p]
            n = int((lengths0 if fallback[p] else lengths)[row])
            kept = {name: values[:: self.trace_every, row].tolist() for name, values in stacked.items()}
            record = self.base_record(batch, p)
            record.update(
                response=texts0[row] if fallback[p] else texts[row],
                chain=row - p * chains,
                reward=float(reward0[row] if fallback[p] else reward[row]),
                ref_logprob_per_token=ll0[row] if fallback[p] else ll[row],
                response_tokens=n,
                ref_token_logprobs=[round(float(v), 5) for v in token_logprobs[p, :n]],
                ref_token_entropy=[round(float(v), 5) for v in token_entropy[p, :n]],
                initial_response=texts0[p * chains],
                initial_reward=float(reward0[p * chains]),
                initial_ref_logprob_per_token=ll0[p * chains],
                initial_best_response=texts0[first],
                initial_best_reward=float(reward0[first]),
                chain_rewards=reward[rows].tolist(),
                chain_initial_rewards=reward0[rows].tolist(),
                chain_ref_logprob_per_token=ll[rows],
                chain_responses=texts[rows],
                chain_response_tokens=[int(v) for v in lengths[rows]],
                trace=kept,
                trace_mean_reward=stacked["reward"][:: self.trace_every, rows].mean(1).tolist() if "reward" in stacked else None,
                steps=self.steps,
                energy_evaluations=evaluations,
                faults=[
                    {**event, "chain": event["chain"] - p * chains}
                    for event in trace.faults if rows.start <= event["chain"] < rows.stop
                ],
                fallback="initial_best" if fallback[p] else None,
                wall_time_s=elapsed / n_prompts,
            )
            out.append(record)
        return out
