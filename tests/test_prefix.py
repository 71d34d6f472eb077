"""The prefilling attack: ``data.response_prefix`` is the forced start of every method's response.

Sampling continues after it, scoring includes it, and no method (SEA with a continuous or a
discrete sampler, ARGS, CBS, Best-of-N, Sample, GuidedSuffixMCMC, BiasedDecoding) changes
those positions. Tiny random models.
"""

import pytest
import torch

from seaflow.data import PromptDataModule
from seaflow.energies import LexiconReward
from seaflow.methods import ARGS, CBS, SEA, BestOfN, BiasedDecoding, GuidedSuffixMCMC, Sample
from seaflow.samplers.discrete_langevin import DiscreteLangevin
from seaflow.relaxations.one_hot import OneHot
from seaflow.samplers.langevin import Langevin

from tiny import run_method

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
        "GuidedSuffixMCMC": lambda: GuidedSuffixMCMC(alpha=20.0, chains=2, steps=4, cut_top_k=5, **common),
        "GuidedSuffixMCMC-uniform-pool": lambda: GuidedSuffixMCMC(alpha=20.0, chains=2, steps=4, cut_temperature=None, init_pool=3, **common),
        "BiasedDecoding": lambda: BiasedDecoding(sampler=Langevin(step_size=1.0, noise_scale=0.1), relaxation=OneHot(), alpha=20.0,
                                                 chains=2, steps=3, **common),
        "BiasedDecoding-greedy": lambda: BiasedDecoding(sampler=Langevin(step_size=1.0, noise_scale=0.1), alpha=5.0, chains=2, steps=2,
                                                        init="greedy", **common),
    }


def run(method, policy, prompts=PROMPTS, batch_size=None, rows=None, **data_options):
    """Records of ``method`` on ``prompts`` through the data module (no Lightning), batch by batch."""
    return run_method(method, policy, prompts, batch_size, rows, **data_options)


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


@pytest.mark.parametrize("name", ["GuidedSuffixMCMC", "BiasedDecoding"])
def test_the_search_raises_the_reward_after_the_forced_start(name, tiny_policy):
    """Not vacuous: the chains find responses better than their starts, all beginning with the forced tokens."""
    records, _ = run(methods()[name](), tiny_policy, response_prefix=PREFIX, response_prefix_tokens=3)
    gains = [r["reward"] - r["initial_best_reward"] for r in records]
    assert all(g >= -1e-6 for g in gains) and sum(gains) > 0


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


@pytest.mark.parametrize("name", ["Sample", "BestOfN", "CBS", "SEA-langevin-argmax", "GuidedSuffixMCMC",
                                  "GuidedSuffixMCMC-uniform-pool", "BiasedDecoding"])
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


FIELD_ROWS = [
    {"id": "p0", "prompt": PROMPTS[0], "index": 0, "target": "sure"},
    {"id": "p1", "prompt": PROMPTS[1], "index": 1, "target": "sure here is how to"},
    {"id": "p2", "prompt": PROMPTS[2], "index": 2},
]


@pytest.mark.parametrize("cached", [True, False])
def test_suffix_chains_never_cut_or_change_the_forced_start(tiny_policy, monkeypatch, cached):
    """Per-prompt starts of 1, 5 and 0 tokens in one batch: every proposal of every chain at every
    step keeps its row's start, every cut is after it, and each row holds at most its start + NEW."""
    from seaflow import chains

    if not cached:
        monkeypatch.setattr(chains, "supports_prefix_cache", lambda model: False)
    proposed = []
    propose = chains.SuffixProposals.propose

    def spy(self, tokens, lengths, kv, candidates, cuts, generators, **options):
        out = propose(self, tokens, lengths, kv, candidates, cuts, generators, **options)
        proposed.append((cuts.clone(), out.tokens.clone(), out.lengths.clone()))
        return out

    monkeypatch.setattr(chains.SuffixProposals, "propose", spy)
    method = GuidedSuffixMCMC(alpha=20.0, chains=3, steps=5, cut_top_k=5, max_new_tokens=NEW, reward=reward())
    records, _ = run(method, tiny_policy, rows=FIELD_ROWS, response_prefix_field="target")
    starts = [encode(tiny_policy, row.get("target", "")) if row.get("target") else [] for row in FIELD_ROWS]
    assert [len(s) for s in starts] == [1, 5, 0]
    rows = [s for s in starts for _ in range(3)]
    assert len(proposed) == 5
    moved = 0
    for cuts, tokens, lengths in proposed:
        for i, forced in enumerate(rows):
            assert tokens[i, : len(forced)].tolist() == forced
            assert len(forced) <= int(cuts[i]) <= int(lengths[i]) <= len(forced) + NEW
            moved += int(cuts[i]) < int(lengths[i])
    assert moved  # proposals do rewrite tokens after the start
    for record, forced in zip(records, starts):
        assert record["response_token_ids"][: len(forced)] == forced
        for chain, cuts in enumerate(record["trace"]["cut"]):
            assert all(c >= len(forced) for c in cuts)
        assert record["response_tokens"] <= len(forced) + NEW
    # the result of a prompt does not depend on the batch it is in
    alone, _ = run(method, tiny_policy, rows=FIELD_ROWS, response_prefix_field="target", batch_size=1)
    assert [r["response_token_ids"] for r in records] == [r["response_token_ids"] for r in alone]
    for a, b in zip(records, alone):  # the same path (rewards to float rounding: the batch's width differs)
        assert a["trace"]["cut"] == b["trace"]["cut"] and a["trace"]["accepted"] == b["trace"]["accepted"]
        assert a["trace"]["reward"] == [pytest.approx(chain, abs=1e-6) for chain in b["trace"]["reward"]]


def test_biased_decoding_keeps_per_prompt_starts_and_is_batch_independent(tiny_policy):
    method = methods()["BiasedDecoding"]()
    records, _ = run(method, tiny_policy, rows=FIELD_ROWS, response_prefix_field="target")
    alone, _ = run(method, tiny_policy, rows=FIELD_ROWS, response_prefix_field="target", batch_size=1)
    for record, single, row in zip(records, alone, FIELD_ROWS):
        forced = encode(tiny_policy, row["target"]) if "target" in row else []
        assert record["response_token_ids"][: len(forced)] == forced
        assert record["response_tokens"] <= len(forced) + NEW
        assert record["response_token_ids"] == single["response_token_ids"]
        assert record["reward"] == pytest.approx(single["reward"], abs=1e-5)


def test_biased_decoding_starts_at_the_policy_sample_after_the_forced_start(tiny_policy):
    """With ``init: sample`` each chain's first decode is Best-of-N's candidate ``chain`` after the same start."""
    common = dict(max_new_tokens=NEW, reward=reward())
    biased, _ = run(BiasedDecoding(chains=3, steps=0, alpha=1.0, **common), tiny_policy, rows=FIELD_ROWS, response_prefix_field="target")
    bon, _ = run(BestOfN(n=3, **common), tiny_policy, rows=FIELD_ROWS, response_prefix_field="target")
    for b, n in zip(biased, bon):
        assert b["chain_responses"] == n["candidate_responses"]
        assert b["chain_initial_rewards"] == pytest.approx(n["candidate_rewards"], abs=1e-5)


def test_zero_bias_is_the_greedy_continuation_of_the_forced_start(tiny_policy):
    """biased_decode with bias 0 after per-row starts = the policy's greedy decode of prompt + start."""
    from seaflow import generation
    from seaflow.logit_bias import biased_decode, prompt_state
    from seaflow.relaxations.straight_through import StraightThrough

    model, tok = tiny_policy.model, tiny_policy.tokenizer
    prompts = [tok.encode(t, add_special_tokens=False) for t in PROMPTS]
    forced = [encode(tiny_policy, "sure here"), [], encode(tiny_policy, "sure here is how to")]
    eos, pad = [model.generation_config.eos_token_id], tok.pad_token_id
    bias = torch.zeros(len(prompts), NEW, tiny_policy.vocab_size, requires_grad=True)
    decoded = biased_decode(model, prompt_state(model, prompts, pad), bias, StraightThrough(), eos, pad, forced=forced)
    width = NEW + max(map(len, forced))
    assert decoded.tokens.shape == (3, width)
    for i, (ids, start) in enumerate(zip(prompts, forced)):
        tokens, lengths = generation.sample(model, [ids + start], NEW, eos, pad, [], temperature=0)
        n = int(decoded.lengths[i])
        assert decoded.tokens[i, :n].tolist() == start + tokens[0, : int(lengths[0])].tolist()
        assert bool((decoded.tokens[i, n:] == pad).all())
    # the forced tokens pass no gradient to the bias; the free positions do
    (grad,) = torch.autograd.grad(decoded.reference.sum(), bias)
    assert bool((grad.abs().sum(-1) > 0).any())
    with torch.no_grad():
        logits = torch.log_softmax(model(torch.tensor([prompts[2] + forced[2]])).logits[0].float(), -1)
    first = len(prompts[2]) - 1
    forced_ll = sum(float(logits[first + u, t]) for u, t in enumerate(forced[2]))
    ref = generation.sample(model, [prompts[2]], width, eos, pad, [], temperature=0, forced=[forced[2]])
    assert forced_ll < 0 and torch.equal(ref[0][0, : int(ref[1][0])], decoded.tokens[2, : int(decoded.lengths[2])])


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
