"""``seaflow.SEA``: Simple Energy Adaptation as a LightningModule."""

from __future__ import annotations

import time
import warnings
from typing import Literal

import torch

from seaflow import generation
from seaflow.checks import require, require_one_of
from seaflow.energies.base import ResponseBatch
from seaflow.methods.record import Record
from seaflow.methods.refinement import RefinementMethod
from seaflow.rng import RowGenerators
from seaflow.refine import EnergyFunction, initial_logits, random_logits, refine
from seaflow.relaxations.base import Relaxation


class SEA(RefinementMethod):
    """Inference-time alignment by Langevin refinement of response logits.

    For each prompt: sample ``chains`` responses from the policy (or start from random
    logits), turn them into logits ``y`` that decode exactly to those samples, run
    ``steps`` sampler steps on ``E = -reference_weight * log pi_ref(y|x) - alpha * r(x, y)``
    through the ``relaxation``, decode, score the discrete tokens and return the chain with
    the highest reward. See docs/method.md for the choices the paper leaves open.

    Besides :class:`RefinementMethod`'s arguments (the ``sampler`` moving ``y``, the ``relaxation``
    of ``y`` into model inputs, ``alpha``, ``reference_weight``, ``chains``: the paper uses 4, 1 is
    the single-chain ablation, ``trace_every``, ``max_faults``) and :class:`AlignmentMethod`'s
    (``policy``, ``reward`` r(x, y), ``max_new_tokens``, the policy's ``temperature`` and ``top_p``
    for the initial samples, ``seed``, ...):

    Args:
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
        init_pool: with ``init: sample``, start the chains from the best ``chains`` of this many
            policy samples per prompt (Best-of-N's candidates; sampled and scored inside the
            method, so counted in its cost); null = the first ``chains`` samples. The records'
            ``initial_*`` fields stay the plain sample (candidate 0); ``pool_rewards`` lists all.
        patience: a chain whose lowest energy has not improved for this many steps (or that rejected
            this many proposals in a row) leaves the batch, and later steps run only the other rows
            (seaflow.refine.refine), unless it is its prompt's leader: the chain whose best state so far
            has the highest reward term, the one that would be returned now; null = every chain runs
            every step.
        compile: ``torch.compile`` the energy evaluation (relaxation + energy terms, their backward
            with them) with dynamic shapes: true (inductor) or a backend name; false = eager.
    """

    def __init__(
        self,
        steps: int = 30,
        init: Literal["sample", "random"] = "sample",
        init_logits: Literal["reference", "one_hot"] = "reference",
        init_margin: float = 1.0,
        init_scale: float = 1.0,
        decode: Literal["argmax", "best", "guided"] = "argmax",
        decode_top_k: int = 10,
        restrict_top_k: int | None = None,
        init_pool: int | None = None,
        patience: int | None = None,
        compile: bool | str = False,
        **kwargs,
    ):
        super().__init__(steps=steps, **kwargs)
        chains = self.chains
        require_one_of("model.init_args.init", init, ("sample", "random"))
        require_one_of("model.init_args.init_logits", init_logits, ("reference", "one_hot"))
        require_one_of("model.init_args.decode", decode, ("argmax", "best", "guided"))
        require(restrict_top_k is None or (restrict_top_k >= 1 and init == "sample"), "model.init_args.restrict_top_k",
                restrict_top_k, f">= 1 with init: sample (init is {init!r}) or null")
        if init_pool is not None and (init != "sample" or init_pool < chains or self.selector is None):
            raise ValueError(
                f"model.init_args.init_pool ({init_pool}) needs init: sample, a reward to rank the pool, and "
                f"init_pool >= chains ({chains}); set it to null for the first {chains} samples"
            )
        if self.sampler.needs_one_hot_gradient and not self.relaxation.one_hot_gradient:
            warnings.warn(
                f"{type(self.sampler).__name__} reads the energy's gradient as dE/d(one-hot tokens), but the relaxation "
                f"is {type(self.relaxation).__name__}, whose gradient is a different one; set model.init_args.relaxation "
                f"to OneHot (class_path: OneHot). With a Metropolis test the chains stay exact, the proposals just "
                f"follow a worse guide.",
                stacklevel=2,
            )
        self.init = init
        self.init_logits = init_logits
        self.init_margin = init_margin
        self.init_scale = init_scale
        self.decode = decode
        self.decode_top_k = decode_top_k
        self.restrict_top_k = restrict_top_k
        self.init_pool = init_pool
        require(patience is None or (isinstance(patience, int) and patience >= 1), "model.init_args.patience", patience,
                "an integer >= 1 or null (every chain runs every step)")
        self.patience = patience
        self.compile = compile

    # -- the method ------------------------------------------------------------------------

    def predict_step(self, batch: dict[str, list], batch_idx: int = 0, dataloader_idx: int = 0) -> list[Record]:
        try:
            return self.align(batch)
        except torch.cuda.OutOfMemoryError as err:
            raise torch.cuda.OutOfMemoryError(
                f"out of GPU memory refining {len(batch['id'])} prompts x {self.chains} chains x "
                f"{self.max_new_tokens} tokens x vocabulary {self.policy.vocab_size}: lower data.batch_size "
                f"(now {len(batch['id'])}), model.init_args.chains (now {self.chains}) or "
                f"model.init_args.max_new_tokens (now {self.max_new_tokens}), or use a bfloat16 dtype; "
                f"rerun the same command to resume ({err})"
            ) from err

    def align(self, batch: dict[str, list]) -> list[Record]:
        """One record per prompt of ``batch`` (steps 1-5 of the class docstring)."""
        started = time.perf_counter()
        prompt_ids, prompts, keys = self.expand(batch, self.chains)
        forced = self.forced_rows(batch, self.chains)  # data.response_prefix: pinned, never refined
        rows, width = len(prompt_ids), self.response_width(forced)
        vocab = self.policy.vocab_size
        # one random stream per chain, seeded from (seed, prompt id, chain): a prompt's result does
        # not depend on its batch, the batch size or the number of processes
        chain = [row % self.chains for row in range(rows)]
        generator = RowGenerators(self.generators(keys, chain, "refine"))

        # 1. init: logits that decode exactly to the policy's samples (or random logits)
        allowed, pool = None, None
        if self.init == "sample" and self.init_pool is not None:
            pool = self.best_of_pool(batch, self.init_pool, self.chains)
            tokens0, lengths = pool.tokens, pool.lengths
        elif self.init == "sample":
            tokens0, lengths = self.sample_rows(prompt_ids, keys, chain, forced=forced, progress=False)
        if self.init == "sample":
            reference_logits = None
            if self.init_logits == "reference" or self.restrict_top_k:
                with torch.no_grad():
                    rows_layout = self.reference.prepare(ResponseBatch(prompt_ids, prompts, lengths.cpu(), width))
                    reference_logits = rows_layout.next_token_logits(self.policy.model, tokens0)
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
            if forced:
                lengths = torch.tensor([len(f) + self.max_new_tokens for f in forced], device=self.device)
        if forced:
            allowed = pin_forced(allowed, forced, (rows, width, vocab), self.device)
            if self.init != "sample":
                tokens0 = y.masked_fill(~allowed, float("-inf")).argmax(-1)
        initial = self.score(prompt_ids, prompts, tokens0, lengths)

        # 2. refine: T sampler steps on the relaxed energy, all prompts x chains at once
        energy_fn = EnergyFunction(
            ResponseBatch(prompt_ids, prompts, lengths.cpu(), width), self.relaxation, self.reward,
            self.reference, self.alpha, self.reference_weight, generator=generator, allowed=allowed, compile=self.compile,
        )
        y, trace = refine(y, energy_fn, self.sampler, self.steps, generator, max_faults=self.max_faults,
                          patience=self.patience, group_size=self.chains)

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
        tokens, final_lengths = self.decode_logits(y, prompt_ids, lengths, energy_fn.best_tokens, forced)
        final = self.score(prompt_ids, prompts, tokens, final_lengths)

        # 5. select the best chain per prompt by discrete reward
        elapsed = time.perf_counter() - started
        return self.records(batch, tokens0, lengths, initial, tokens, final_lengths, final, trace, elapsed, energy_fn.evaluations, pool)

    def decode_logits(self, y: torch.Tensor, prompt_ids: list[list[int]], lengths: torch.Tensor, best_tokens=None, forced=None):
        """Response tokens and lengths from the refined logits, by ``self.decode``."""
        if self.decode in ("argmax", "best"):
            tokens = best_tokens if self.decode == "best" else y.argmax(-1)
            active = torch.arange(y.shape[1], device=y.device).unsqueeze(0) < lengths.unsqueeze(1)
            return tokens.masked_fill(~active, self.pad_id), lengths
        return generation.guided_decode(
            self.policy.model, prompt_ids, y, lengths, self.eos_ids, self.pad_id, self.decode_top_k, forced=forced
        )


def pin_forced(allowed: torch.Tensor | None, forced: list[list[int]], shape: tuple[int, int, int], device) -> torch.Tensor:
    """``allowed`` with each row's forced start pinned: at position t < len(forced[i]) only
    ``forced[i][t]`` is allowed, so no relaxation, sampler or decode can change it."""
    rows, width, vocab = shape
    pinned = torch.ones(shape, dtype=torch.bool, device=device) if allowed is None else allowed.clone()
    for i, ids in enumerate(forced):
        if ids:
            positions = torch.arange(len(ids), device=device)
            pinned[i, : len(ids)] = False
            pinned[i, positions, torch.tensor(ids, device=device)] = True
    return pinned
