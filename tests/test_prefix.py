"""The prefilling attack: ``data.response_prefix`` is the forced start of every method's response.

Sampling continues after it, scoring includes it, and no method (SEA with a continuous or a
discrete sampler, ARGS, CBS, Best-of-N, Sample) changes those positions. Tiny random models.
"""

import json

import pytest
import torch

from seaflow.data import PromptDataModule
from seaflow.energies import LexiconReward
from seaflow.methods import ARGS, CBS, SEA, BestOfN, Sample
from seaflow.samplers.discrete_langevin import DiscreteLangevin
from seaflow.relaxations.one_hot import OneHot
from seaflow.samplers.langevin import Langevin

PROMPTS = ["describe the city", "tell me about the weather", "write about my dog"]
PREFIX = "sure here is how to"
NEW = 5  # free tokens after the forced start


def reward():
    return LexiconReward(lexicon="vader")


def methods():
    common = dict(max_new_tokens=NEW, reward=reward())
    return {
        "Sample": lambda: Sample(**common),
        "BestOfN": lambda: BestOfN(n=3, sample_batch=4, **common),
        "ARGS": lambda: ARGS(top_k=3, weight=1.0, **common),
        "CBS": lambda: CBS(beams=2, samples_per_beam=2, chunk_length=2, **common),
        "SEA-langevin-argmax": lambda: SEA(sampler=Langevin(step_size=5.0, noise_scale=1.0), alpha=5.0, chains=2, steps=3, **common),
        "SEA-best": lambda: SEA(sampler=Langevin(step_size=5.0, noise_scale=1.0), alpha=5.0, chains=2, steps=3, decode="best", **common),
        "SEA-guided": lambda: SEA(sampler=Langevin(step_size=5.0, noise_scale=1.0), alpha=5.0, chains=2, steps=3, decode="guided", decode_top_k=3, **common),
        "SEA-discrete": lambda: SEA(sampler=DiscreteLangevin(step_size=2.0), relaxation=OneHot(), alpha=5.0, chains=2, steps=3,
                                    init_logits="one_hot", **common),
        "SEA-random-init": lambda: SEA(sampler=Langevin(step_size=5.0, noise_scale=1.0), alpha=5.0, chains=2, steps=3, init="random", **common),
        "SEA-pool": lambda: SEA(sampler=Langevin(step_size=5.0, noise_scale=1.0), alpha=5.0, chains=2, steps=3, init_pool=3, **common),
    }


def run(method, policy, prompts=PROMPTS, batch_size=None, rows=None, **data_options):
    """Records of ``method`` on ``prompts`` through the data module (no Lightning), batch by batch."""
    method.attach(policy)
    data = PromptDataModule(path="unused", **data_options)
    data.prompts = rows or [{"id": f"p{i}", "prompt": t, "index": i} for i, t in enumerate(prompts)]
    data.attach_tokenizer(policy.tokenizer)
    items = data.items()
    size = batch_size or len(items)
    records = []
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        records += method.predict_step({key: [item[key] for item in chunk] for key in chunk[0]})
    return records, items


def encode(policy, text):
    return policy.tokenizer.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("name", list(methods()))
def test_every_method_keeps_the_forced_start_and_scores_it(name, tiny_policy):
    method = methods()[name]()
    records, items = run(method, tiny_policy, response_prefix=PREFIX, response_prefix_tokens=3)
    forced = encode(tiny_policy, PREFIX)[:3]
    assert forced and len(forced) == 3
    for record, item in zip(records, items):
        assert record["response_prefix"] == "sure here is"
        ids = record["response_token_ids"]
        assert ids[:3] == forced, (name, record["response"])
        assert record["response"].startswith("sure here is")
        assert 3 <= record["response_tokens"] == len(ids) <= 3 + NEW
        for text in record.get("chain_responses") or record.get("candidate_responses") or []:
            assert text.startswith("sure here is"), (name, text)
        # scoring includes the forced start: the reward of the ids as written, and per-position
        # reference log-probs from the first forced token on
        tokens = torch.tensor([ids])
        lengths = torch.tensor([len(ids)])
        expected = method.reward.score([item["prompt_ids"]], [item["prompt"]], tokens, lengths, 8)
        assert record["reward"] == pytest.approx(float(expected[0]), abs=1e-5)
        with torch.no_grad():
            logits = tiny_policy.model(torch.tensor([item["prompt_ids"] + ids])).logits[0].float()
        logp = torch.log_softmax(logits[len(item["prompt_ids"]) - 1 : -1], -1).gather(-1, tokens.T).squeeze(-1)
        assert record["ref_token_logprobs"] == pytest.approx(logp.tolist(), abs=1e-3)


def test_the_search_still_moves_the_free_positions(tiny_policy):
    """Not vacuous: SEA's chains change tokens after the forced start while the start stays."""
    records, _ = run(methods()["SEA-langevin-argmax"](), tiny_policy, response_prefix=PREFIX, response_prefix_tokens=3)
    changed = [r for r in records for text in r["chain_responses"] if text != r["initial_response"]]
    assert changed


@pytest.mark.parametrize("name", ["Sample", "ARGS"])
def test_greedy_decoding_continues_after_the_forced_start(name, tiny_policy):
    """Greedy Sample and weight-0 ARGS after a forced start = greedy decode of prompt + start."""
    method = Sample(max_new_tokens=NEW, temperature=0) if name == "Sample" else ARGS(max_new_tokens=NEW, top_k=3, weight=0.0)
    records, items = run(method, tiny_policy, response_prefix=PREFIX)
    forced = encode(tiny_policy, PREFIX)
    from seaflow import generation

    for record, item in zip(records, items):
        tokens, lengths = generation.sample(
            tiny_policy.model, [item["prompt_ids"] + forced], NEW, [3], 0, [], temperature=0,
        )
        assert record["response_token_ids"] == forced + tokens[0, : int(lengths[0])].tolist()


@pytest.mark.parametrize("name", ["Sample", "BestOfN", "CBS", "SEA-langevin-argmax"])
def test_zero_forced_tokens_is_the_free_run(name, tiny_policy):
    free, _ = run(methods()[name](), tiny_policy)
    zero, _ = run(methods()[name](), tiny_policy, response_prefix=PREFIX, response_prefix_tokens=0)
    for a, b in zip(free, zero):
        assert b.pop("response_prefix") == ""
        a.pop("wall_time_s"), b.pop("wall_time_s"), a.pop("cost"), b.pop("cost")
        assert a == b


def test_per_prompt_forced_starts_from_a_field_do_not_depend_on_the_batch(tiny_policy):
    rows = [
        {"id": "p0", "prompt": PROMPTS[0], "index": 0, "target": "sure"},
        {"id": "p1", "prompt": PROMPTS[1], "index": 1, "target": "sure here is how to"},
        {"id": "p2", "prompt": PROMPTS[2], "index": 2},
    ]
    together, _ = run(methods()["BestOfN"](), tiny_policy, rows=rows, response_prefix_field="target")
    alone, _ = run(methods()["BestOfN"](), tiny_policy, rows=rows, response_prefix_field="target", batch_size=1)
    assert [r["response_prefix"] for r in together] == ["sure", "sure here is how to", ""]
    assert "target" not in together[0]
    for a, b in zip(together, alone):
        assert a["response_token_ids"] == b["response_token_ids"]
        assert a["response_tokens"] <= len(encode(tiny_policy, a["response_prefix"])) + NEW


def test_methods_that_cannot_keep_a_start_say_so(tiny_policy):
    from seaflow.methods.suffix_mcmc import GuidedSuffixMCMC

    method = GuidedSuffixMCMC(max_new_tokens=NEW, reward=reward(), chains=2, steps=1)
    with pytest.raises(ValueError, match="data.response_prefix"):
        run(method, tiny_policy, response_prefix=PREFIX)


def test_data_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="data.response_prefix_field"):
        PromptDataModule(path="x", response_prefix="Sure", response_prefix_field="target")
    with pytest.raises(ValueError, match="data.response_prefix_tokens"):
        PromptDataModule(path="x", response_prefix="Sure", response_prefix_tokens=-1)
    with pytest.raises(ValueError, match="data.task"):
        PromptDataModule(path="x", task="poetry")


def test_the_context_check_counts_the_forced_start(tiny_policy, tmp_path):
    data = PromptDataModule(path="unused", response_prefix=" ".join(["sure"] * 40), max_new_tokens=10, on_bad_prompt="skip")
    data.prompts = [{"id": "p0", "prompt": " ".join(["the"] * 210), "index": 0}]
    data.attach_tokenizer(tiny_policy.tokenizer, context_length=256)
    prompt_tokens = len(data.encode(data.prompts[0]["prompt"]))
    assert prompt_tokens + 10 <= 256 < prompt_tokens + 50  # fits without the forced start, not with it
    assert data.items() == [] and "50 response tokens" in data.skipped[0]["reason"]
