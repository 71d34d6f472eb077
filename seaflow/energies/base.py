"""The energy-term contract.

SEA refines responses against ``E(x, y) = -w_ref * log pi_ref(y | x) - alpha * r(x, y)``.
Each term of that sum is an :class:`EnergyTerm` whose :meth:`value` is "higher is better"
(a log-likelihood or a reward); the refinement loop turns values into energy with the
weights. A term works in three phases:

1. ``setup(policy)`` once, before any batch: load its own model, or borrow the policy's
   (a term must never load the policy a second time). Check the vocabulary here.
2. ``prepare(batch)`` once per batch: everything that does not depend on the response
   (token layouts, judge templates, cached prefixes).
3. ``value(prepared, response)`` per iteration, where ``response`` is either a relaxed
   token distribution ``(B, L, V)`` (differentiable) or discrete token ids ``(B, L)``.
   It returns one number per row, shape ``(B,)``. Feeding ``one_hot(ids)`` must give the
   same value as feeding ``ids`` (tested for every built-in term).

Subclass :class:`Reward` for reward terms; every subclass is listed in
``EnergyTerm.registry``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from seaflow.models import LoadedModel
from seaflow.registry import Registered


@dataclass
class ResponseBatch:
    """What the energy terms know about a batch of rows (prompts x chains).

    ``prompt_ids`` are the policy-tokenised prompts (chat template applied when configured),
    one list per row; ``prompts`` the raw prompt texts; ``lengths`` the active response
    length of each row and ``max_length`` the width L of the response tensor.
    """

    prompt_ids: list[list[int]]
    prompts: list[str]
    lengths: torch.Tensor
    max_length: int

    def __len__(self) -> int:
        return len(self.prompt_ids)


class EnergyTerm(nn.Module, Registered):
    """Base class of energy terms; see the module docstring for the contract."""

    registry: ClassVar[dict[str, type]] = {}

    def setup(self, policy: LoadedModel) -> None:
        """Load or borrow models; check that they share ``policy``'s vocabulary."""

    def prepare(self, batch: ResponseBatch) -> Any:
        return batch

    def value(self, prepared: Any, response: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def check_vocabulary(policy: LoadedModel, other: LoadedModel | int, what: str) -> None:
        size = other if isinstance(other, int) else other.vocab_size
        if size != policy.vocab_size:
            raise ValueError(
                f"{what} has a vocabulary of {size} tokens but the policy {policy.name!r} has "
                f"{policy.vocab_size}: relaxed tokens can only be fed to models that share the "
                "policy's vocabulary. Use a model with the policy's tokenizer."
            )


class Reward(EnergyTerm):
    """A reward term ``r(x, y)``: higher is better. SEA weights it by ``alpha``."""

    abstract = True

    @torch.no_grad()
    def score(self, prompt_ids: list[list[int]], prompts: list[str], tokens: torch.Tensor, lengths: torch.Tensor,
              batch_size: int) -> torch.Tensor:
        """Discrete reward ``(B,)`` of responses given as ids ``(B, L)``, ``batch_size`` rows per
        pass, each pass cut to its longest response."""
        out = []
        for start in range(0, tokens.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            n = lengths[rows]
            width = max(int(n.max()), 1)
            batch = ResponseBatch(prompt_ids[rows], prompts[rows], n.cpu(), width)
            out.append(self.value(self.prepare(batch), tokens[rows, :width]).float())
        return torch.cat(out)

    @staticmethod
    def _borrow(module: nn.Module, name: str, model: nn.Module) -> None:
        """Keep a reference to ``model`` without registering it as a submodule (no double copy)."""
        object.__setattr__(module, name, model)


def check_device(device: str | None, owner: str) -> str | None:
    """``device`` if torch accepts it as a device (None passes through); a ValueError naming it otherwise."""
    if device is None:
        return None
    try:
        torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{owner} device {device!r} is not a torch device; use e.g. 'cuda:1', 'cpu' or null") from err
    return device
