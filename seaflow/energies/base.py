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

Subclass :class:`Reward` for reward terms; ``seaflow list`` shows every subclass that
implements :meth:`EnergyTerm.value`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

import torch
from torch import nn

from seaflow import cost, faults
from seaflow.models import LoadedModel


class PromptText(str):
    """A prompt's text that carries the fields of its row in the prompt file.

    The data module makes every prompt one (:meth:`seaflow.data.PromptDataModule.items`):
    ``fields`` holds the row's id and the fields it keeps (``task``, ``target``,
    ``keywords``, the conversation's ``messages`` and whatever ``data.fields`` declares).
    Everywhere else it is the prompt's text, so the fields travel with it through every
    method's rows (prompts x chains, pools, subsets of chains) into :class:`ResponseBatch`
    without another argument, and a reward reads its row's fields from there
    (:attr:`ResponseBatch.fields`), never from another component.
    """

    fields: Mapping[str, Any]

    def __new__(cls, text: str, fields: Mapping[str, Any] | None = None):
        self = super().__new__(cls, text)
        self.fields = MappingProxyType(dict(fields or {}))
        return self

    def __reduce__(self):
        return PromptText, (str(self), dict(self.fields))


@dataclass
class ResponseBatch:
    """What the energy terms know about a batch of rows (prompts x chains).

    ``prompt_ids`` are the policy-tokenised prompts (chat template applied when configured),
    one list per row; ``prompts`` the raw prompt texts (the last user turn of a
    conversation), each a :class:`PromptText` when it comes from the data module;
    ``lengths`` the active response length of each row and ``max_length`` the width L of the
    response tensor.
    """

    prompt_ids: list[list[int]]
    prompts: list[str]
    lengths: torch.Tensor
    max_length: int

    def __len__(self) -> int:
        return len(self.prompt_ids)

    @property
    def fields(self) -> list[Mapping[str, Any]]:
        """Each row's fields from its prompt row (``{}`` for a plain string prompt); see :class:`PromptText`."""
        return [getattr(prompt, "fields", MappingProxyType({})) for prompt in self.prompts]

    def field(self, name: str, owner: str, hint: str = "") -> list[Any]:
        """Each row's value of the field ``name``; a ValueError naming the first row without it and ``owner``."""
        values = []
        for prompt, fields in zip(self.prompts, self.fields):
            if fields.get(name) is None:
                where = f"row {fields['id']!r}" if "id" in fields else f"the prompt {str(prompt)[:60]!r}"
                raise ValueError(
                    f"{owner} reads the field {name!r} of each prompt row, but {where} has none "
                    f"(its fields: {', '.join(fields) or 'none'}); add {name!r} to every row of data.path"
                    f"{hint}"
                )
            values.append(fields[name])
        return values


class EnergyTerm(nn.Module):
    """Base class of energy terms; see the module docstring for the contract."""

    def setup(self, policy: LoadedModel) -> None:
        """Load or borrow models; check that they share ``policy``'s vocabulary."""

    def prepare(self, batch: ResponseBatch) -> Any:
        return batch

    def value(self, prepared: Any, response: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def check_vocabulary(policy: LoadedModel, other: LoadedModel | int, what: str) -> None:
        """Refuse a model whose embedding size or tokenizer differs from the policy's.

        Relaxed tokens are distributions over the policy's token ids, so the other model must
        read every id as the same token: its token -> string map and its special tokens must
        equal the policy's (equal vocabulary sizes are not enough).
        """
        size = other if isinstance(other, int) else other.vocab_size
        if size != policy.vocab_size:
            raise ValueError(
                f"{what} has a vocabulary of {size} tokens but the policy {policy.name!r} has "
                f"{policy.vocab_size}: relaxed tokens can only be fed to models that share the "
                "policy's vocabulary. Use a model with the policy's tokenizer."
            )
        if isinstance(other, int) or other.tokenizer is None or policy.tokenizer is None:
            return
        differences = tokenizer_differences(policy.tokenizer, other.tokenizer)
        if differences:
            raise ValueError(
                f"{what} has a different tokenizer from the policy {policy.name!r} (both {size} embedding rows): "
                f"{'; '.join(differences)}. Relaxed tokens would mean other tokens to it and its rewards "
                "would be meaningless. Use a model with the policy's tokenizer."
            )


def tokenizer_differences(policy_tokenizer, other_tokenizer, shown: int = 3) -> list[str]:
    """What differs between two tokenizers: the token -> id maps and the special tokens (empty: the same)."""
    out = []
    a, b = policy_tokenizer.get_vocab(), other_tokenizer.get_vocab()
    if a != b:
        by_id_a = {i: t for t, i in a.items()}
        by_id_b = {i: t for t, i in b.items()}
        ids = sorted(i for i in set(by_id_a) | set(by_id_b) if by_id_a.get(i) != by_id_b.get(i))
        examples = ", ".join(f"id {i}: {by_id_a.get(i)!r} vs {by_id_b.get(i)!r}" for i in ids[:shown])
        out.append(f"{len(ids)} of {max(len(a), len(b))} token ids map to other strings (policy vs other: {examples})")
    special_a, special_b = _specials(policy_tokenizer), _specials(other_tokenizer)
    if special_a != special_b:
        changed = sorted(set(special_a.items()) ^ set(special_b.items()), key=str)
        out.append(
            "special tokens differ (" + ", ".join(
                f"{name}: {special_a.get(name)!r} vs {special_b.get(name)!r}" for name in dict.fromkeys(n for n, _ in changed)
            ) + ")"
        )
    return out


def _specials(tokenizer) -> dict[str, object]:
    """Named special tokens (bos, eos, unk) with their ids, and every added token marked special."""
    out: dict[str, object] = {}
    for name in ("bos_token", "eos_token", "unk_token"):
        token = getattr(tokenizer, name, None)
        if token is not None:
            out[name] = (str(token), tokenizer.convert_tokens_to_ids(str(token)))
    for i, token in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(token, "special", False):
            out[f"special id {i}"] = str(token)
    return out


class Reward(EnergyTerm):
    """A reward term ``r(x, y)``: higher is better. SEA weights it by ``alpha``.

    ``differentiable`` says whether ``value`` accepts relaxed tokens and has a gradient with
    respect to them; the text rewards (seaflow/energies/text.py) do not.
    """

    differentiable = True

    def __init_subclass__(cls, **kwargs):
        # on token ids inside a predict_step, an error or a non-finite value is a row fault that
        # fails the prompt it belongs to, not the batch (seaflow/faults.py)
        super().__init_subclass__(**kwargs)
        for name in ("value", "value_and_parts"):
            if name in cls.__dict__:
                setattr(cls, name, faults.guarded(cls.__dict__[name]))

    def describe(self) -> str:
        """A short name for messages."""
        return type(self).__name__

    def part_names(self) -> list[str]:
        """Names of the parts :meth:`value_and_parts` returns (none for a single reward)."""
        return []

    def value_and_parts(self, prepared: Any, response: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``value`` and its named parts ``{name: (B,)}``: none for a single reward; a
        :class:`~seaflow.energies.combined.RewardSum` gives each term's own value."""
        return self.value(prepared, response), {}

    @torch.no_grad()
    def score(self, prompt_ids: list[list[int]], prompts: list[str], tokens: torch.Tensor, lengths: torch.Tensor,
              batch_size: int) -> torch.Tensor:
        """Discrete reward ``(B,)`` of responses given as ids ``(B, L)``, ``batch_size`` rows per
        pass, each pass cut to its longest response."""
        out = []
        for start in cost.side_by_side(range(0, tokens.shape[0], batch_size)):
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
