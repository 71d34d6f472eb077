"""A bag-of-words reward from a word -> value lexicon mapped onto the policy's vocabulary."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import torch

from seaflow.energies.base import ResponseBatch, Reward
from seaflow.files import kind_of_non_file
from seaflow.models import LoadedModel

VADER = "vader"


def read_lexicon(source: str) -> dict[str, float]:
    """Word -> value from ``vader`` (the VADER valence lexicon, scaled to [-1, 1]) or a file.

    A file holds one entry per line: ``word<TAB or space>value``, or a bare ``word`` (value 1).
    Lines starting with ``#`` are comments.
    """
    if source == VADER:
        try:
            path = Path(importlib.metadata.distribution("vaderSentiment").locate_file("vaderSentiment/vader_lexicon.txt"))
        except importlib.metadata.PackageNotFoundError:
            raise FileNotFoundError("the 'vader' lexicon needs its package: pip install vaderSentiment") from None
        lexicon = {}
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split("\t")
            if len(parts) >= 2:
                lexicon[parts[0].lower()] = float(parts[1]) / 4.0  # VADER valence is in [-4, 4]
        return lexicon
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"lexicon file {source!r} does not exist (or use 'vader')")
    kind = kind_of_non_file(path)
    if kind is not None:
        raise ValueError(f"lexicon file {source!r} is {kind}, not a file: set LexiconReward lexicon to a word<TAB>value file (or 'vader')")
    lexicon = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace("\t", " ").split()
        try:
            lexicon[parts[0].lower()] = float(parts[1]) if len(parts) > 1 else 1.0
        except ValueError:
            raise ValueError(f"{source}:{number}: expected 'word value', got {line!r}") from None
    return lexicon


class LexiconReward(Reward):
    """``r(y) = mean_t <p_t, v>`` where ``v[token]`` is the lexicon value of the token's text.

    A token gets a value when its decoded text, stripped and lower-cased, is a lexicon word;
    all other tokens are worth 0. No model is run, so the reward costs nothing next to the
    reference term, and it shares the policy's vocabulary by construction. Words that the
    policy splits into several tokens are not covered (``covered_tokens`` says how many
    tokens carry a value; set-up fails when none does).

    Args:
        lexicon: ``vader`` (sentiment valence, in [-1, 1]), a path to a word list / word-value
            file (see :func:`read_lexicon`), or null to use ``words`` alone.
        words: inline ``word: value`` entries, added to (and overriding) the lexicon's.
        scale: multiplier on every value (e.g. -1 to penalise a list of words to avoid).
    """

    def __init__(self, lexicon: str | None = VADER, words: dict[str, float] | None = None, scale: float = 1.0):
        super().__init__()
        if lexicon is None and not words:
            raise ValueError("LexiconReward needs a lexicon ('vader' or a file) or inline words")
        self.lexicon = lexicon
        self.words = dict(words or {})
        self.scale = scale
        self.register_buffer("values", torch.zeros(0), persistent=False)

    def setup(self, policy: LoadedModel) -> None:
        words = read_lexicon(self.lexicon) if self.lexicon is not None else {}
        words.update({word.strip().lower(): float(value) for word, value in self.words.items()})
        tokenizer = policy.tokenizer
        values = torch.zeros(policy.vocab_size)
        for token_id in range(min(policy.vocab_size, len(tokenizer))):
            text = tokenizer.decode([token_id]).strip().lower()
            if text in words:
                values[token_id] = words[text] * self.scale
        if not values.any():
            raise ValueError(
                f"none of the {len(words)} lexicon words is a single token of the policy {policy.name!r} "
                "(or all have value 0): the reward would be 0 everywhere"
            )
        device = policy.model.get_input_embeddings().weight.device
        self.values = values.to(device)

    @property
    def covered_tokens(self) -> int:
        return int((self.values != 0).sum())

    def prepare(self, batch: ResponseBatch) -> torch.Tensor:
        return batch.lengths.to(self.values.device)

    def value(self, prepared: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
        lengths = prepared
        if response.dtype == torch.long:
            per_token = self.values[response]
        else:
            per_token = response.float() @ self.values
        mask = torch.arange(response.shape[1], device=response.device).unsqueeze(0) < lengths.unsqueeze(1)
        return (per_token * mask).sum(-1) / lengths.clamp(min=1)
