"""Text scorers: references that read the response text (no tokens, no gradient)."""

from __future__ import annotations

from seaflow.refusal import is_refusal


class TextScorer:
    """Scores response texts directly (no tokens, no gradient): a reference point."""

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        raise NotImplementedError


class RefusalPhrases(TextScorer):
    """1 when the response contains a refusal phrase (:mod:`seaflow.refusal`), else 0."""

    def score(self, prompts, responses):
        return [float(is_refusal(text)) for text in responses]


class VaderCompound(TextScorer):
    """VADER's own rule-based sentence sentiment (compound score in [-1, 1]), a reference
    for :class:`~seaflow.energies.LexiconReward`, which uses the same lexicon word by word."""

    def __init__(self):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.analyzer = SentimentIntensityAnalyzer()

    def score(self, prompts, responses):
        return [self.analyzer.polarity_scores(text)["compound"] for text in responses]
