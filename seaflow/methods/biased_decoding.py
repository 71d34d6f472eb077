"""``seaflow.methods.BiasedDecoding``: a sampler moves a bias on the policy's logits; the policy writes."""

from __future__ import annotations

import time
from typing import Literal

import torch

from seaflow import rng
from seaflow.checks import require, require_one_of
from seaflow.logit_bias import BiasEnergy
from seaflow.energies.base import ResponseBatch
from seaflow.methods.record import Record
from seaflow.methods.refinement import RefinementMethod
from seaflow.refine import refine


class BiasedDecoding(RefinementMethod):
    """Biased decoding (as in BOLT): gradient steps on a per-position bias, the policy decodes.

    The continuous variable is a bias ``b`` of shape ``(chains, L, V)`` added to the policy's
    own next-token logits. Each energy evaluation decodes left to right with the policy and
    its KV cache: token ``t = argmax(logits(x, y_<t) + b_t)``, fed to position ``t + 1`` through
    the ``relaxation`` (straight-through: forward one-hot, backward ``softmax((logits + b_t) / tau)``),
    so every token is one the policy ranks high after the prefix actually decoded, unless the
    bias at that position overcomes the policy's preference. The energy is SEA's on the
    decoded tokens plus the bias's size in place of a KL term,

        E(b) = -reference_weight * log pi_ref(y | x) - alpha * r(x, y) + (bias_weight / 2) ||b - b0||^2,

    and the ``sampler`` moves ``b`` along ``-dE/db`` (the gradient runs through the whole
    decode). ``b0`` is where the chains start: with ``init: sample`` it is ``temperature x``
    Gumbel noise drawn from the same per-prompt streams as the policy's samples, so each
    chain's first decode is exactly the policy sample that Best-of-N draws as candidate
    ``chain``; with ``init: greedy`` it is zero (the policy's greedy decode, the same for
    every chain). Every evaluation decodes real tokens, so its reward and reference terms
    are the exact discrete scores of the sequence it produced; each chain keeps the sequence
    of lowest discrete energy ``-reference_weight * log pi_ref - alpha * r`` it visited
    (its start included), and the chain with the highest reward is returned.

    A forced start (``data.response_prefix``, the prefilling attack) is the first tokens of
    every decode: the policy reads them and continues, the bias covers only the
    ``max_new_tokens`` free positions after them, and the reward and reference terms score the
    whole response. With ``init: sample`` the first decode is then Best-of-N's candidate
    ``chain`` after the same start.

    Cost per step: one decode of ``L`` tokens through the policy with the graph kept, its
    backward pass, and the reward on the decoded tokens; plus one decode without gradient
    for the last iterate.

    Besides :class:`RefinementMethod`'s arguments (the ``sampler`` moving the bias, default
    Langevin, any sampler of ``seaflow.samplers`` for continuous states; the ``relaxation`` of
    ``logits + b`` into the token fed on, whose forward value must be one-hot: ``StraightThrough``,
    default, ``OneHot``, whose gradient is the identity and so reaches tokens the policy gives
    almost no probability, or hard ``GumbelSoftmax``; ``alpha``, ``reference_weight`` of
    ``-log pi_ref`` of the decoded tokens, ``chains``, ``trace_every``, ``max_faults``) and
    :class:`AlignmentMethod`'s (``policy``, ``reward`` r(x, y), ``max_new_tokens``, the policy's
    ``temperature`` for the starts, ``seed``, ...; ``top_p`` must be 1, the bias is added to the
    full next-token distribution):

    Args:
        bias_weight: weight of ``||b - b0||^2 / 2``; 0 leaves the bias free.
        through_policy: the gradient of each position's choice also flows through the policy's
            logits into the earlier positions (BOLT). False: ``b_t`` alone carries it; with
            ``relaxation: OneHot`` each ``b_t`` then receives the gradient of the energy with
            respect to the decoded one-hot tokens, which reaches tokens the policy almost
            never writes (see docs/method.md).
        steps: sampler steps.
        init: ``sample`` (each chain starts at a policy sample, see above) or ``greedy``.
    """

    def __init__(
        self,
        bias_weight: float = 0.0,
        through_policy: bool = True,
        steps: int = 10,
        init: Literal["sample", "greedy"] = "sample",
        **kwargs,
    ):
        super().__init__(steps=steps, **kwargs)
        require_one_of("model.init_args.init", init, ("sample", "greedy"))
        if self.top_p != 1.0:
            raise ValueError(
                f"BiasedDecoding adds its bias to the full next-token distribution: model.init_args.top_p must be 1.0, got {self.top_p}"
            )
        require(bias_weight >= 0, "model.init_args.bias_weight", bias_weight, ">= 0")
        self.bias_weight = bias_weight
        self.through_policy = through_policy
        self.init = init

    def predict_step(self, batch: dict[str, list], batch_idx: int = 0, dataloader_idx: int = 0) -> list[Record]:
        return self.align(batch)

    def start_bias(self, keys: list[str], forced: list[list[int]] | None = None) -> torch.Tensor | None:
        """``b0``: ``temperature x`` the Gumbel noise with which the policy samples chain ``c``
        (per position, the draw :func:`seaflow.generation.sample` makes at that step), or None.
        With ``forced`` starts row ``i``'s bias begins at the draw of its first free step."""
        if self.init == "greedy" or self.temperature == 0:
            return None
        generators = self.generators(keys, [row % self.chains for row in range(len(keys))], "sample")
        rows, vocab = len(keys), self.policy.vocab_size
        noise = [rng.gumbel((rows, vocab), generators, self.device) for _ in range(self.response_width(forced))]
        noise = torch.stack(noise, dim=1)
        if forced:  # sample draws at the forced steps too: row i's free steps are k_i, k_i + 1, ...
            steps = torch.tensor([len(ids) for ids in forced], device=self.device).unsqueeze(1) + torch.arange(self.max_new_tokens, device=self.device)
            noise = noise.gather(1, steps.unsqueeze(-1).expand(-1, -1, vocab))
        return self.temperature * noise

    def align(self, batch: dict[str, list]) -> list[Record]:
        """One record per prompt of ``batch``."""
        started = time.perf_counter()
        prompt_ids, prompts, keys = self.expand(batch, self.chains)
        forced = self.forced_rows(batch, self.chains)  # data.response_prefix: decoded as is, never biased
        rows, width, vocab = len(prompt_ids), self.response_width(forced), self.policy.vocab_size
        generator = rng.RowGenerators(self.generators(keys, [row % self.chains for row in range(rows)], "refine"))
        full = torch.full((rows,), width, dtype=torch.long)
        energy_fn = BiasEnergy(
            self.policy.model, ResponseBatch(prompt_ids, prompts, full, width), self.relaxation, self.reward,
            self.alpha, self.reference_weight, self.bias_weight, self.eos_ids, self.pad_id,
            base=self.start_bias(keys, forced), generator=generator, through_policy=self.through_policy, forced=forced,
        )
        delta = torch.zeros(rows, self.max_new_tokens, vocab, device=self.device)  # the free positions
        if self.steps == 0:
            energy_fn.track(delta)
        delta, trace = refine(delta, energy_fn, self.sampler, self.steps, generator, max_faults=self.max_faults)
        if self.steps > 0:
            energy_fn.track(delta)  # the last iterate is a candidate too
        tokens0, lengths0 = energy_fn.first_tokens, energy_fn.first_lengths
        tokens, lengths = energy_fn.best_tokens, energy_fn.best_lengths
        initial = self.score(prompt_ids, prompts, tokens0, lengths0)
        final = self.score(prompt_ids, prompts, tokens, lengths)
        elapsed = time.perf_counter() - started
        return self.records(batch, tokens0, lengths0, initial, tokens, lengths, final, trace, elapsed, energy_fn.evaluations)
