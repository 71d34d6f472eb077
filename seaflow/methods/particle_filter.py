"""``seaflow.methods.ParticleFilter``: sequential Monte Carlo over partial responses (Puri et al., 2025)."""

from __future__ import annotations

import math
from typing import Literal

from seaflow import rng, tempered
from seaflow.checks import require, require_one_of
from seaflow.methods.search import PartialSearch, first_best


class ParticleFilter(PartialSearch):
    """A particle filter: ``particles`` partial responses per prompt, resampled by a reward-tempered
    weight every ``block`` tokens.

    Target: ``pi(y) ∝ pi_ref(y) exp(r(y) / lambda)`` with ``lambda = reward_temperature``. The
    particles are policy samples (the proposal is the policy itself); after every block of
    ``block`` tokens each particle's text so far is scored (``partial_reward``, by default the
    reward on the text so far) and weighted:

    1. ``potential: difference`` (sequential Monte Carlo on the twisted targets
       ``pi_ref(y_<=t) exp(r(y_<=t) / lambda)``): the log weight grows by the increment
       ``(r_t - r_s) / lambda`` since the particle's last scoring ``s``; after a resampling the
       weights are equal again. At the end the weights are those of the target above, so
       ``final: sample`` draws from it (consistently as ``particles`` grows).
    2. ``potential: value`` (Puri et al.'s rule with a reward model's score): the log weight is
       ``r_t / lambda``, whatever came before.

    When the effective sample size ``1 / sum w_i^2`` is below ``ess_threshold * particles`` the
    prompt's particles are resampled (``systematic`` or ``multinomial``, from the prompt's own
    stream): a copy continues from its ancestor's prefix and keys/values (no re-reading) and draws
    its next tokens from its own slot's stream, so copies diverge. After the last block the
    particle with the highest reward is returned (``final: best``), or one drawn by the final
    weights (``final: sample``). A particle that ended keeps its response and reward; a NaN
    reward has weight 0.

    Particle ``i`` starts as Best-of-N's candidate ``i``: with ``ess_threshold: 0`` (never
    resample), or ``reward_temperature: .inf`` (equal weights), the particles are
    Best-of-``particles``'s candidates and ``final: best`` returns Best-of-``particles``'s answer
    at its cost. Records add ``particle`` (the returned slot), ``particle_rewards``, ``ess`` (at
    each block boundary before resampling), ``resampled_at`` (response tokens at each
    resampling) and ``reward_temperature``.

    Args:
        particles: particles per prompt.
        block: tokens decoded between two weightings.
        reward_temperature: lambda, in the reward's units (> 0; ``.inf`` ignores the reward).
        potential: ``difference`` or ``value`` (above).
        resampling: ``systematic`` or ``multinomial``.
        ess_threshold: resample when the effective sample size is below this share of the
            particles (1: at every block unless the weights are equal; 0: never).
        final: ``best`` or ``sample``.
        (others: see :class:`~seaflow.methods.search.PartialSearch`, :class:`DiscreteMethod`
        and :class:`AlignmentMethod`)
    """

    infinite_settings = ("reward_temperature",)  # .inf is a value here (seaflow.checks: others are refused)

    def __init__(self, particles: int = 16, block: int = 4, reward_temperature: float = 0.1,
                 potential: Literal["difference", "value"] = "difference",
                 resampling: Literal["systematic", "multinomial"] = "systematic", ess_threshold: float = 0.5,
                 final: Literal["best", "sample"] = "best", **kwargs):
        super().__init__(**kwargs)
        require(particles >= 1, "model.init_args.particles", particles, ">= 1")
        require(block >= 1, "model.init_args.block", block, ">= 1")
        require(reward_temperature > 0, "model.init_args.reward_temperature", reward_temperature, "> 0 (.inf ignores the reward)",
                finite=False)
        require_one_of("model.init_args.potential", potential, ("difference", "value"))
        require_one_of("model.init_args.resampling", resampling, tempered.RESAMPLERS)
        require_one_of("model.init_args.final", final, ("best", "sample"))
        require(0 <= ess_threshold <= 1, "model.init_args.ess_threshold", ess_threshold, "in [0, 1]")
        self.particles = particles
        self.rows_per_prompt = particles
        self.block = block
        self.reward_temperature = reward_temperature
        self.potential = potential
        self.resampling = resampling
        self.ess_threshold = ess_threshold
        self.final = final

    def method_name(self) -> str:
        return f"ParticleFilter-{self.particles}"

    def search(self, prompt_ids, prompts, keys, forced, on_token):
        count = self.particles
        state = self.begin(prompt_ids, keys, forced)
        owners = [p for p in range(len(keys)) for _ in range(count)]
        row_ids, row_prompts = [prompt_ids[p] for p in owners], [prompts[p] for p in owners]
        streams = [rng.prompt_stream(self.seed, key, "particle-filter") for key in keys]
        log_weight = [[0.0] * count for _ in keys]
        level = [[0.0] * count for _ in keys]  # each particle's r / lambda at its last scoring
        ess: list[list[float]] = [[] for _ in keys]
        resampled_at: list[list[int]] = [[] for _ in keys]
        while True:
            state.advance(self.block, on_token)
            final = state.done
            scores = self.score_so_far(state, row_ids, row_prompts, final=final)
            index = []
            for p in range(len(keys)):
                now = tempered.log_weights(scores[p * count : (p + 1) * count], self.reward_temperature)
                if self.potential == "difference":
                    log_weight[p] = [w + increment(b, a) for w, a, b in zip(log_weight[p], level[p], now)]
                else:
                    log_weight[p] = now
                level[p] = now
                ancestors = list(range(count))
                if not final:
                    weights = tempered.normalise(log_weight[p])
                    ess[p].append(tempered.effective_sample_size(weights))
                    if ess[p][-1] < self.ess_threshold * count * (1 - 1e-9):
                        ancestors = tempered.RESAMPLERS[self.resampling](weights, count, streams[p])
                        log_weight[p] = [0.0] * count
                        level[p] = [level[p][a] for a in ancestors]
                        resampled_at[p].append(state.step)
                index += [p * count + a for a in ancestors]
            if final:
                break
            if any(i != row for row, i in enumerate(index)):
                state.select(index, generators=state.generators)  # copies keep their slot's own stream
        tokens, lengths = state.tokens.tolist(), state.lengths.tolist()
        results = []
        for p in range(len(keys)):
            mine = scores[p * count : (p + 1) * count]
            if self.final == "best":
                chosen = first_best(mine)
            else:
                chosen = tempered.draw(tempered.normalise(log_weight[p]), streams[p].random())
            row = p * count + chosen
            fields = {"particle": chosen, "particle_rewards": mine, "ess": [round(e, 3) for e in ess[p]],
                      "resampled_at": resampled_at[p], "reward_temperature": self.reward_temperature}
            results.append((tokens[row][: int(lengths[row])], mine[chosen], fields))
        return results


def increment(now: float, before: float) -> float:
    """``now - before`` in log weight; a particle whose reward became NaN gets weight 0."""
    if now == -math.inf:
        return -math.inf
    return now - before if before != -math.inf else now
