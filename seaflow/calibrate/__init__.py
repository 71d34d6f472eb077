"""``seaflow calibrate``: how well does a reward separate good responses from bad ones?

SEA can only be as good as the reward it follows. This command scores a reward on a
labelled set of ``(prompt, response, label)`` rows and reports

* the AUC (probability that a random good row scores above a random bad one, ties count
  one half): 0.5 is chance, below 0.5 the reward points the wrong way;
* the accuracy at the best single threshold (an optimistic upper bound: the threshold is
  chosen on the same rows);
* the score distribution of each class (n, mean, std, quantiles).

Label 1 is the class the reward should favour (a refusal for a safety reward, a positive
sentence for a sentiment reward). A reward below AUC 0.6 is reported as ``unfit``: following
its gradient optimises noise.

What is scored:

* a reward term (``reward:``, any :class:`~seaflow.energies.base.Reward`) through its
  *discrete* path ``value(prepare(batch), token_ids)``, exactly as SEA and Best-of-N score
  their final responses: the prompt is tokenised with the policy's chat template, the
  response with the policy's tokenizer (cut to ``max_response_tokens``);
* or a text scorer (``scorer:``, a :class:`TextScorer`) that reads the response text, e.g.
  the refusal-phrase matcher, as a reference point.

Rows come from a :class:`LabelledSet`: :class:`PyritRefusal` (pyrit's human-labelled
refusal replies, read from the installed wheel; evaluation only), or :class:`LabelledJsonl`
(any JSONL file, e.g. ``data/sentiment_sentences.jsonl``).

    seaflow calibrate --config configs/calibration/lexicon_sentiment.yaml
    seaflow calibrate --data PyritRefusal --scorer RefusalPhrases
    seaflow calibrate --data LabelledJsonl --data.path my.jsonl --reward LexiconReward

Modules: :mod:`~seaflow.calibrate.data` (labelled sets), :mod:`~seaflow.calibrate.scorers`
(text scorers), :mod:`~seaflow.calibrate.metrics` (AUC, ROC, best threshold from
torchmetrics; score distributions), :mod:`~seaflow.calibrate.run` (scoring, the report and
the command).
"""

from seaflow.calibrate.data import LabelledJsonl, LabelledRow, LabelledSet, PyritRefusal
from seaflow.calibrate.metrics import auc, best_threshold, distribution, summarise
from seaflow.calibrate.run import calibrate, encode_prompt, encode_response, main, score_reward
from seaflow.calibrate.scorers import RefusalPhrases, TextScorer, VaderCompound

__all__ = [
    "LabelledRow", "LabelledSet", "LabelledJsonl", "PyritRefusal", "TextScorer", "RefusalPhrases", "VaderCompound",
    "auc", "best_threshold", "distribution", "summarise", "calibrate", "encode_prompt", "encode_response",
    "score_reward", "main",
]
