"""A lexical-constraint reward: the response should contain given keywords."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from seaflow.energies.base import ResponseBatch, Reward
from seaflow.models import LoadedModel
from seaflow.files import kind_of_non_file, physical_lines


def keyword_hits(text: str, keywords: list[str]) -> list[bool]:
    """Whether each keyword occurs in ``text`` as a whole word (case-insensitive): the exact-match judge."""
    return [re.search(rf"(?<!\w){re.escape(k.strip())}(?!\w)", text, flags=re.IGNORECASE) is not None for k in keywords]


def keyword_list(value: Any) -> list[str] | None:
    """A row's keywords as a list: a list of words, or one comma-separated string; None for another type."""
    if isinstance(value, str):
        return [word.strip() for word in value.split(",") if word.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(word, str) for word in value):
        return [word for word in value if word.strip()]
    return None


def read_keywords(path: str | Path) -> dict[str, list[str]]:
    """Prompt text -> keywords, from a JSONL file whose rows have ``prompt`` and ``keywords``."""
    source = Path(path).expanduser()
    if not source.exists():
        raise FileNotFoundError(f"keywords file {str(path)!r} does not exist")
    kind = kind_of_non_file(source)
    if kind is not None:
        raise ValueError(f"keywords file {str(path)!r} is {kind}, not a file: set KeywordReward keywords_file to a JSONL file")
    table = {}
    for number, line in enumerate(physical_lines(source.read_text(encoding="utf-8")), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        words = row.get("keywords")
        if not isinstance(row.get("prompt"), str) or not isinstance(words, list) or not words:
            raise ValueError(f"{path}:{number}: expected a 'prompt' string and a non-empty 'keywords' list, got {line!r}")
        table[row["prompt"]] = [str(w) for w in words]
    return table


class KeywordReward(Reward):
    """``r = mean over keywords k of P(k occurs in the response)``, in [0, 1].

    On a token distribution ``p`` (relaxed tokens) a keyword written as tokens
    ``(u_1, ..., u_m)`` starts at position t with probability ``q_t = prod_j p_{t+j}[u_j]``
    (positions independent), and occurs somewhere with probability
    ``s_k = 1 - prod_{variant, t} (1 - q_t)`` (a noisy-OR over the response positions and over
    the keyword's spellings: with and without a leading space, lower-case and capitalised).
    ``s_k`` saturates: a second occurrence adds nothing, so repeating a keyword does not pay.
    On one-hot tokens it is exactly 1 when a spelling occurs and 0 otherwise. Its gradient
    with respect to ``p_t[u]`` is ``prod_{t' != t} (1 - q_t')`` for every position t of
    an absent keyword, so the gradient reaches every position (the largest probability over
    positions, a max, would send it to one).

    On token ids the reward is the exact-text check: the decoded response, whole words,
    case-insensitive (:func:`keyword_hits`, also the task's judge). It agrees with the relaxed
    value on one-hot tokens whenever a keyword occurs as one of its listed spellings.

    Which keywords a prompt needs: the row's own ``field`` (``keywords``: a list of words, or
    one string of comma-separated words) from the prompt file (``ResponseBatch.fields``), so
    two rows with the same prompt text may ask for different keywords; ``keywords``, added
    for every prompt; and, for rows without the field, ``keywords_file``: a JSONL file with
    ``prompt`` and ``keywords`` per row, looked up by the raw prompt text (older configs).

    Args:
        keywords: keywords every prompt's response should contain.
        keywords_file: per-prompt keywords looked up by prompt text, for rows without ``field``.
        field: the prompt row's field holding its keywords (a field other than ``task``,
            ``target`` and ``keywords`` must also be listed in ``data.fields``).
    """

    def __init__(self, keywords: list[str] | None = None, keywords_file: str | None = None, field: str = "keywords"):
        super().__init__()
        self.keywords = [str(k) for k in (keywords or [])]
        self.keywords_file = keywords_file
        self.field = field
        self.table = read_keywords(keywords_file) if keywords_file else {}
        self.spellings: dict[str, list[list[int]]] = {}

    def setup(self, policy: LoadedModel) -> None:
        self.tokenizer = policy.tokenizer
        for words in [self.keywords, *self.table.values()]:
            for word in words:
                self._spellings(word)

    def _spellings(self, word: str) -> list[list[int]]:
        if word not in self.spellings:
            word = word.strip()
            variants = {word, " " + word, word.capitalize(), " " + word.capitalize()}
            found = []
            for variant in sorted(variants):
                ids = self.tokenizer.encode(variant, add_special_tokens=False)
                if ids and self.tokenizer.unk_token_id not in ids and ids not in found:
                    found.append(ids)
            if not found:
                raise ValueError(f"keyword {word!r} cannot be written with the policy's tokenizer")
            self.spellings[word] = found
        return self.spellings[word]

    def keywords_for(self, prompt: str, fields: Mapping[str, Any] | None = None) -> list[str]:
        """The keywords of one row: ``keywords``, then the row's ``field`` (else its ``keywords_file`` entry)."""
        fields = fields or {}
        own = fields.get(self.field)
        if own is None or own == "" or own == []:
            own = self.table.get(prompt, [])
        elif keyword_list(own) is not None:
            own = keyword_list(own)
        else:
            raise ValueError(
                f"KeywordReward: the field {self.field!r} of row {fields.get('id')!r} must be a list of words "
                f"or a comma-separated string, got {own!r}; fix the prompt file"
            )
        words = self.keywords + list(own)
        if not words:
            where = f"row {fields['id']!r} ({prompt[:60]!r})" if "id" in fields else f"the prompt {prompt[:60]!r}"
            raise ValueError(
                f"no keywords for {where}: give its row a {self.field!r} field (or set "
                f"model.init_args.reward.init_args.keywords, or a keywords_file that lists its text)"
            )
        return words

    def prepare(self, batch: ResponseBatch) -> tuple[list[list[str]], torch.Tensor]:
        return [self.keywords_for(p, f) for p, f in zip(batch.prompts, batch.fields)], batch.lengths

    def value(self, prepared: tuple[list[list[str]], torch.Tensor], response: torch.Tensor) -> torch.Tensor:
        words, lengths = prepared
        if response.dtype == torch.long:
            texts = [self.tokenizer.decode(row[: int(n)].tolist(), skip_special_tokens=True) for row, n in zip(response, lengths)]
            scores = [sum(keyword_hits(text, w)) / len(w) for text, w in zip(texts, words)]
            return torch.tensor(scores, dtype=torch.float32, device=response.device)
        rows_spellings = [[self.spellings.get(word) or self._spellings(word) for word in row_words] for row_words in words]
        # the columns of the tokens any spelling uses, gathered once: one small tensor, one scatter in the backward
        # (slicing the (B, L, V) input per spelling would build a full-size gradient per slice)
        used = sorted({u for row in rows_spellings for spellings in row for ids in spellings for u in ids})
        column = {u: i for i, u in enumerate(used)}
        sub = response.index_select(-1, torch.tensor(used, device=response.device)).float() if used else None
        out = []
        width = response.shape[1]
        for row, (row_spellings, n) in enumerate(zip(rows_spellings, lengths.tolist())):
            n = min(int(n), width)
            per_word = []
            for spellings in row_spellings:
                misses = []
                for ids in spellings:
                    m = len(ids)
                    if m > n:
                        continue
                    # q_t = prod_j p_{t+j}[u_j] for every start t with room for the whole spelling
                    q = torch.stack([sub[row, j : n - m + 1 + j, column[u]] for j, u in enumerate(ids)]).prod(0)
                    misses.append(1 - q)
                if misses:
                    per_word.append(1 - torch.cat(misses).prod())
                else:
                    per_word.append(response.new_zeros((), dtype=torch.float32))
            out.append(torch.stack(per_word).mean())
        return torch.stack(out)
