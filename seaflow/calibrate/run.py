"""``seaflow calibrate``: score a reward (or a text scorer) on labelled rows and report."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

import torch

from seaflow.calibrate.data import LabelledSet, check_rows
from seaflow.calibrate.metrics import summarise
from seaflow.calibrate.scorers import TextScorer
from seaflow.encoding import encode_chat, encode_text
from seaflow.energies.base import Reward
from seaflow.layout import pad_rows
from seaflow.models import EMBEDDED_DEFAULT, LoadedModel, load_causal_lm

log = logging.getLogger(__name__)


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
