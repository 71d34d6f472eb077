"""``seaflow.methods.SpeculativeRejection``: Best-of-N that stops the weak candidates early (Sun et al., 2024)."""

from __future__ import annotations

import math
from typing import Sequence

from seaflow.checks import require
from seaflow.methods.search import PartialSearch, first_best


class SpeculativeRejection(PartialSearch):
    """Speculative Rejection: start ``n`` candidates, prune the ones whose partial reward is low.

    All ``n`` candidates of a prompt are decoded together. At each decision point (a number of
    response tokens decoded) every live candidate's text so far is scored (``partial_reward``,
    by default the reward itself) and the best ``ceil(keep_fraction * live)`` of the prompt's
    candidates go on, the others stop (their rows leave the batch, keys and values included);
    candidates that already ended compete with their whole response. When every kept candidate
    has ended, the best by the reward is returned. Sun et al. (NeurIPS 2024) prune once, when
    the accelerator's memory fills; here the decision points are given in tokens, so the
    search is the same on any device.

    Candidate ``c`` is Best-of-N's candidate ``c`` token for token (same seed; each row draws from
    its own stream), so the survivors are a subset of Best-of-``n``'s candidates chosen by their
    prefixes: with ``keep_fraction: 1`` (or no decision point before the end) this is exactly
    Best-of-``n``, at Best-of-``n``'s cost. Ties in a ranking go to the earlier candidate, a NaN
    reward ranks last. Records add ``survivors`` (the candidates that reached the end),
    ``survivor_rewards`` and ``kept`` (live candidates after each decision point); ``candidate``
    is the returned one's index.

    Cost: ``n`` rows up to the first decision point, then the kept rows; the reward on each
    live partial response at every decision point.

    Args:
        n: candidates started per prompt.
        decision_points: response tokens decoded at each pruning (increasing; points at or past
            ``max_new_tokens`` are ignored).
        keep_fraction: share of the live candidates kept at each decision point, in (0, 1].
        (others: see :class:`~seaflow.methods.search.PartialSearch`, :class:`DiscreteMethod`
        and :class:`AlignmentMethod`)
    """

    def __init__(self, n: int = 64, decision_points: Sequence[int] = (8,), keep_fraction: float = 0.25, **kwargs):
        super().__init__(**kwargs)
        require(n >= 1, "model.init_args.n", n, ">= 1 (candidates started per prompt)")
        points = [int(p) for p in decision_points]
        require(all(p >= 1 for p in points) and points == sorted(set(points)), "model.init_args.decision_points",
                list(decision_points), "increasing token counts >= 1, e.g. [8, 16]")
        require(0 < keep_fraction <= 1, "model.init_args.keep_fraction", keep_fraction, "in (0, 1]")
        self.n = n
        self.rows_per_prompt = n
        self.decision_points = points
        self.keep_fraction = keep_fraction

    def method_name(self) -> str:
        return f"SpeculativeRejection-{self.n}"

    def search(self, prompt_ids, prompts, keys, forced, on_token):
        state = self.begin(prompt_ids, keys, forced)
        live = [list(range(self.n)) for _ in keys]  # candidate index of each row, per prompt, in row order
        kept: list[list[int]] = [[] for _ in keys]
        for point in self.decision_points:
            state.advance(point - state.step, on_token)
            if state.done:
                break
            owners = [p for p, group in enumerate(live) for _ in group]
            scores = self.score_so_far(state, [prompt_ids[p] for p in owners], [prompts[p] for p in owners])
            index, row = [], 0
            for p, group in enumerate(live):
                ranked = rank(scores[row : row + len(group)])
                chosen = sorted(ranked[: math.ceil(self.keep_fraction * len(group))])  # back in candidate order
                index += [row + i for i in chosen]
                live[p] = [group[i] for i in chosen]
                kept[p].append(len(chosen))
                row += len(group)
            state.select(index)
        state.advance(state.width, on_token)
        owners = [p for p, group in enumerate(live) for _ in group]
        rewards = self.score_so_far(state, [prompt_ids[p] for p in owners], [prompts[p] for p in owners], final=True)
        tokens, lengths = state.tokens.tolist(), state.lengths.tolist()
        results, row = [], 0
        for p, group in enumerate(live):
            mine = rewards[row : row + len(group)]
            best = row + first_best(mine)
            fields = {"candidate": group[best - row], "n": self.n, "survivors": group, "survivor_rewards": mine, "kept": kept[p]}
            results.append((tokens[best][: int(lengths[best])], rewards[best], fields))
            row += len(group)
        return results


def rank(scores: list[float]) -> list[int]:
    """Row indices from the highest score down; ties keep the earlier row first, NaN goes last."""
    return sorted(range(len(scores)), key=lambda i: (-(scores[i]) if scores[i] == scores[i] else float("inf"), i))
