"""Several rewards at once: a weighted sum of named terms."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from seaflow.energies.base import ResponseBatch, Reward
from seaflow.models import LoadedModel

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


class RewardSum(Reward):
    """``r(x, y) = sum_k w_k r_k(x, y)``: named rewards combined with weights.

    Helpfulness minus toxicity (``weights: {helpful: 1.0, toxic: -2.0}``), a keyword
    constraint plus sentiment: each term is any reward, configured as usual with
    ``class_path`` / ``init_args``, and keeps its own models. The sum is differentiable where
    every term is (SEA's and the guided methods' ``reward``); with a text term (a classifier
    with its own tokenizer, a verifier) it scores decoded text only and is a
    ``selection_reward`` or the reward of a method that needs no gradient.

    Each term's own value (before its weight) is a *part*: :meth:`value_and_parts` returns
    them with the sum, the trace records them per step (``reward.<name>``) and every record
    keeps those of its returned response (``reward_parts``).

    Args:
        terms: name -> reward; names are letters, digits, ``_`` and ``-``.
        weights: name -> weight; a term left out weighs 1. A negative weight makes a penalty.
    """

    def __init__(self, terms: dict[str, Reward], weights: dict[str, float] | None = None):
        super().__init__()
        if not terms:
            raise ValueError("RewardSum needs at least one term: set model.init_args.reward.init_args.terms as name: {class_path: ...}")
        weights = dict(weights or {})
        for name in terms:
            if not _NAME.fullmatch(str(name)):
                raise ValueError(f"RewardSum term name {name!r} must be letters, digits, '_' or '-' (model.init_args.reward.init_args.terms)")
        unknown = sorted(set(weights) - set(terms))
        if unknown:
            raise ValueError(
                f"RewardSum weights name {', '.join(map(repr, unknown))}, which is not a term (terms: {', '.join(terms)}); "
                "fix model.init_args.reward.init_args.weights"
            )
        for name, term in terms.items():
            if not isinstance(term, Reward):
                raise ValueError(f"RewardSum term {name!r} must be a Reward, got {type(term).__name__}")
        self.terms = nn.ModuleDict(terms)
        self.weights = {name: float(weights.get(name, 1.0)) for name in terms}
        self.differentiable = all(term.differentiable for term in terms.values())

    def describe(self) -> str:
        return "RewardSum(" + ", ".join(f"{name}: {w:g} x {term.describe()}" for (name, term), w in
                                        zip(self.terms.items(), self.weights.values())) + ")"

    def part_names(self) -> list[str]:
        return list(self.terms)

    def setup(self, policy: LoadedModel) -> None:
        for term in self.terms.values():
            term.setup(policy)

    def prepare(self, batch: ResponseBatch) -> dict[str, Any]:
        return {name: term.prepare(batch) for name, term in self.terms.items()}

    def value(self, prepared: dict[str, Any], response: torch.Tensor) -> torch.Tensor:
        return self.value_and_parts(prepared, response)[0]

    def value_and_parts(self, prepared: dict[str, Any], response: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {name: term.value(prepared[name], response).float() for name, term in self.terms.items()}
        total = sum(self.weights[name] * value for name, value in parts.items())
        return total, parts
