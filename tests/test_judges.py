"""Benchmark judges (seaflow/judges.py): fluency NLL against a direct per-pair computation, text judges."""

import importlib.util
import math

import pytest
import torch

from seaflow.judges import Fluency, keyword_coverage, refuses, sentiment_polarity


@pytest.mark.parametrize("chat_template", [True, False])
def test_fluency_is_the_mean_reply_nll_after_the_prompt(tiny_policy, chat_template):
    judge = Fluency(tiny_policy, chat_template=chat_template, batch_size=2)
    pairs = [("tell me about the dog", "the dog is good"), ("how was the train", "bad"),
             ("describe the city", "the city is a very nice city"), ("hello", "")]
    values = judge.nll_per_token(pairs)
    model, tok = tiny_policy.model, tiny_policy.tokenizer
    for (prompt, reply), value in zip(pairs[:3], values):
        context = judge.context_ids(prompt)
        response = tok.encode(reply, add_special_tokens=False)
        ids = torch.tensor([context + response])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        direct = -sum(float(logp[len(context) - 1 + j, t]) for j, t in enumerate(response)) / len(response)
        assert value == pytest.approx(direct, abs=1e-4)
    assert math.isnan(values[3])


def test_text_judges():
    assert keyword_coverage("A violin by the harbour.", ["violin", "harbour", "castle"]) == pytest.approx(2 / 3)
    assert refuses("I'm sorry, but I cannot help with that.")
    assert not refuses("Sure, here is how to do it.")


@pytest.mark.skipif(importlib.util.find_spec("textblob") is None, reason="textblob not installed")
def test_sentiment_judge_reads_negation():
    assert sentiment_polarity("What a wonderful day!") > 0
    assert sentiment_polarity("I am not happy with this at all.") < 0
