"""Soft Best-of-N, Speculative Rejection and the particle filter (tiny random policy): their exact
limits, the pruning and resampling rules, the resumable KV-cached decoding under them, and
their cost against a hand count."""

import math
import random

import pytest
import torch

from seaflow import cost, generation, rng, tempered
from seaflow.energies import LexiconReward
from seaflow.methods import BestOfN, ParticleFilter, SoftBestOfN, SpeculativeRejection
from seaflow.rng import prompt_seed
from seaflow.methods.partial import PartialResponses
from seaflow.methods.soft_best_of_n import soft_choice
from seaflow.report import soft_best_of_first

from test_methods import PROMPTS, direct

WIDTH = 8


def responses(records):
    return [r["response"] for r in records]


def without_eos(method):
    """``method`` with an EOS id the policy never emits: every row runs ``max_new_tokens`` (for hand counts)."""
    method.__class__ = type(type(method).__name__, (type(method),), {"eos_ids": property(lambda self: [10**6])})
    return method


@pytest.fixture(scope="module")
def best_of_6(tiny_policy):
    return direct(BestOfN(policy="tiny", reward=LexiconReward(), n=6, max_new_tokens=WIDTH), tiny_policy)[0]


# -- tempered choices -------------------------------------------------------------------------


def test_tempered_weights_limits_and_non_finite_rewards():
    assert tempered.tempered_weights([1.0, 3.0, 3.0, 2.0], 0) == [0.0, 1.0, 0.0, 0.0]  # Best-of-N: the first maximum
    assert tempered.tempered_weights([1.0, float("nan"), 3.0], math.inf) == [0.5, 0.0, 0.5]
    weights = tempered.tempered_weights([0.0, math.log(3.0)], 1.0)
    assert weights == pytest.approx([0.25, 0.75])
    assert tempered.tempered_weights([float("nan")] * 2, 1.0) == [0.5, 0.5]


@pytest.mark.parametrize("count", [1, 3, 6, 7, 64, 100])
def test_systematic_resampling_of_equal_weights_keeps_every_particle_once(count):
    for seed in range(5):
        assert tempered.systematic([1.0 / count] * count, count, random.Random(seed)) == list(range(count))


def test_systematic_counts_are_within_one_of_the_expected_and_multinomial_is_unbiased():
    weights = tempered.tempered_weights([0.1, 0.5, 0.2, 0.9, 0.0], 0.2)
    for seed in range(50):
        drawn = tempered.systematic(weights, 16, random.Random(seed))
        assert len(drawn) == 16 and drawn == sorted(drawn)
        for i, w in enumerate(weights):
            assert abs(drawn.count(i) - 16 * w) < 1
    rng = random.Random(0)
    counts = [0] * 5
    for _ in range(400):
        for i in tempered.multinomial(weights, 10, rng):
            counts[i] += 1
    assert [c / 4000 for c in counts] == pytest.approx(weights, abs=0.02)


# -- Soft Best-of-N ---------------------------------------------------------------------------


def test_soft_best_of_n_at_temperature_zero_is_best_of_n(tiny_policy, best_of_6):
    soft, _ = direct(SoftBestOfN(policy="tiny", reward=LexiconReward(), n=6, max_new_tokens=WIDTH, reward_temperature=0.0), tiny_policy)
    for s, b in zip(soft, best_of_6):
        assert (s["response"], s["candidate"], s["reward"]) == (b["response"], b["candidate"], b["reward"])
        assert s["candidate_rewards"] == b["candidate_rewards"]
        assert s["candidate_probability"] == 1.0 and s["method"] == "SoftBestOfN-6"
        assert s["cost"]["flops"] == b["cost"]["flops"]  # the same candidates, the same model work


def test_soft_best_of_n_draws_softmax_per_prompt_and_a_report_replays_it(tiny_policy, best_of_6):
    method = SoftBestOfN(policy="tiny", reward=LexiconReward(), n=6, max_new_tokens=WIDTH, reward_temperature=0.05)
    together, _ = direct(method, tiny_policy)
    alone, _ = direct(method, tiny_policy, batch_size=1)
    assert responses(together) == responses(alone)  # seeded per prompt, not per batch
    for s, b in zip(together, best_of_6):
        weights = tempered.tempered_weights(b["candidate_rewards"], 0.05)
        assert s["candidate_rewards"] == b["candidate_rewards"]  # the same candidates
        assert s["candidate_probability"] == pytest.approx(weights[s["candidate"]])
        assert s["reward"] == b["candidate_rewards"][s["candidate"]]
        assert s["response"] == b["candidate_responses"][s["candidate"]]
        # read off the Best-of-N run at no cost, exactly as the method draws
        assert soft_best_of_first(b, 6, 0.05, seed=0) == (s["candidate"], s["reward"])
    # the draw follows the softmax: over many prompt ids, candidate frequencies match the weights
    rewards = [0.0, 0.1, 0.3]
    picks = [soft_choice(rewards, 0.1, 0, f"p{i}")[0] for i in range(3000)]
    assert [picks.count(i) / 3000 for i in range(3)] == pytest.approx(tempered.tempered_weights(rewards, 0.1), abs=0.03)


# -- resumable decoding ------------------------------------------------------------------------


def partial_state(tiny_policy, prompt_ids, copies, seeds, share_prompt=False, width=WIDTH):
    gens = rng.row_generators(seeds)
    return PartialResponses(tiny_policy.model, prompt_ids, copies, width, [3], 0, gens, share_prompt=share_prompt)


def test_partial_responses_advanced_in_blocks_are_generation_sample(tiny_policy):
    prompt_ids = [tiny_policy.tokenizer(p)["input_ids"] for p in PROMPTS[:3]]
    seeds = [11, 12, 13, 14, 15, 16]
    rows = [ids for ids in prompt_ids for _ in range(2)]
    tokens, lengths = generation.sample(tiny_policy.model, rows, WIDTH, [3], 0, rng.row_generators(seeds))
    for share in (False, True):
        state = partial_state(tiny_policy, prompt_ids, 2, seeds, share_prompt=share)
        for block in (3, 1, 2, 5):
            state.advance(block)
        assert state.done
        assert torch.equal(state.tokens, tokens) and torch.equal(state.lengths, lengths)


def test_a_copied_row_continues_its_ancestor_with_its_own_stream(tiny_policy):
    """After select, a row's continuation is what the policy samples after prompt + the ancestor's
    prefix with the row's own generator (the cache carries the prefix; nothing is re-read)."""
    prompt = tiny_policy.tokenizer(PROMPTS[0])["input_ids"]
    seeds = [21, 22, 23]
    state = partial_state(tiny_policy, [prompt], 3, seeds, width=10)
    state.advance(4)
    assert not state.finished.any()
    prefix = state.tokens[1, :4].tolist()
    state.select([1, 1, 1], generators=state.generators)
    state.advance(6)
    for row, seed in enumerate(seeds):
        g = rng.row_generators([seed])[0]
        for _ in range(4):  # the draws the row made before the copy
            rng.gumbel((1, tiny_policy.model.config.vocab_size), [g], "cpu")
        expected, n = generation.sample(tiny_policy.model, [prompt + prefix], 6, [3], 0, [g])
        assert state.tokens[row, :4].tolist() == prefix
        assert state.tokens[row, 4 : 4 + int(n[0])].tolist() == expected[0, : int(n[0])].tolist()
    assert len({tuple(r) for r in state.tokens[:, 4:].tolist()}) > 1  # copies diverge


# -- Speculative Rejection ---------------------------------------------------------------------


def test_speculative_rejection_without_pruning_is_best_of_n(tiny_policy, best_of_6):
    for options in ({"keep_fraction": 1.0, "decision_points": [2, 5]}, {"keep_fraction": 0.5, "decision_points": [WIDTH]}):
        records, _ = direct(SpeculativeRejection(policy="tiny", reward=LexiconReward(), n=6, max_new_tokens=WIDTH, **options), tiny_policy)
        assert responses(records) == responses(best_of_6)
        assert [r["candidate"] for r in records] == [r["candidate"] for r in best_of_6]
        assert [r["cost"]["flops"] for r in records] == [r["cost"]["flops"] for r in best_of_6]


def test_speculative_rejection_keeps_exactly_the_top_fraction(tiny_policy, best_of_6):
    n, points, keep = 6, [2, 4], 0.5
    method = SpeculativeRejection(policy="tiny", reward=LexiconReward(), n=n, max_new_tokens=WIDTH, decision_points=points,
                                  keep_fraction=keep)
    records, items = direct(method, tiny_policy)
    reward = method.reward
    for record, item in zip(records, items):
        # candidate c is Best-of-N's candidate c: score its prefixes directly
        tokens, lengths = method.sample_rows([item["prompt_ids"]] * n, [item["id"]] * n, list(range(n)))
        live = list(range(n))
        for point in points:
            partial = reward.score([item["prompt_ids"]] * n, [item["prompt"]] * n, tokens[:, :point],
                                   lengths.clamp(max=point), 64).tolist()
            ranked = sorted(live, key=lambda c: (-partial[c], c))
            live = sorted(ranked[: math.ceil(keep * len(live))])
        assert record["survivors"] == live
        assert record["kept"] == [3, 2]
        full = [best_of_6[item["index"]]["candidate_rewards"][c] for c in live]
        assert record["survivor_rewards"] == pytest.approx(full)
        assert record["reward"] == max(record["survivor_rewards"])
        assert record["response"] == best_of_6[item["index"]]["candidate_responses"][record["candidate"]]


def test_speculative_rejection_cost_is_the_hand_count(tiny_policy):
    n, point, keep, prompts = 6, 3, 0.5, PROMPTS[:2]
    for share in (False, True):
        method = without_eos(SpeculativeRejection(policy="tiny", reward=LexiconReward(), n=n, max_new_tokens=WIDTH,
                                                  decision_points=[point], keep_fraction=keep, share_prompt=share))
        records, items = direct(method, tiny_policy, prompts=prompts)
        width = max(len(it["prompt_ids"]) for it in items)
        kept = math.ceil(keep * n)
        # decode calls: the prefill gives token 1; each later token runs the previous one (n rows up
        # to the decision point, the kept rows after it)
        calls = [(n * len(prompts), width + j) for j in range(1, point)] + [(kept * len(prompts), width + j) for j in range(point, WIDTH)]
        prefill_rows = len(prompts) * (1 if share else n)
        expected_tokens = prefill_rows * width + sum(rows for rows, _ in calls)
        shape = cost.model_shape(tiny_policy.model, "policy")
        h, v = tiny_policy.model.config.hidden_size, tiny_policy.model.config.vocab_size
        heads = prefill_rows + sum(rows for rows, _ in calls)
        attention = 4 * shape.attention_width * (prefill_rows * width * width + sum(rows * keys for rows, keys in calls))
        expected_flops = 2 * shape.body_params * expected_tokens + attention + 2 * h * v * heads
        total = cost.add(records[0]["cost"], records[1]["cost"])
        assert total["forward_tokens"] == expected_tokens
        assert total["flops"] == expected_flops
        assert records[0]["cost"]["sequential_depth"] == WIDTH  # a prefill and WIDTH - 1 cached steps; the lexicon runs no model
        assert records[0]["kept"] == [kept]


# -- the particle filter ---------------------------------------------------------------------


@pytest.mark.parametrize("options", [{"ess_threshold": 0.0, "reward_temperature": 0.01},
                                     {"ess_threshold": 1.0, "reward_temperature": math.inf}])
def test_particle_filter_without_resampling_is_best_of_n(tiny_policy, best_of_6, options):
    records, _ = direct(ParticleFilter(policy="tiny", reward=LexiconReward(), particles=6, block=2, max_new_tokens=WIDTH, **options), tiny_policy)
    assert responses(records) == responses(best_of_6)
    for r, b in zip(records, best_of_6):
        assert r["particle_rewards"] == b["candidate_rewards"] and r["particle"] == b["candidate"]
        assert r["resampled_at"] == [] and r["cost"]["flops"] == b["cost"]["flops"]


def test_particle_filter_resamples_by_tempered_weights_and_is_seeded_per_prompt(tiny_policy, best_of_6):
    method = ParticleFilter(policy="tiny", reward=LexiconReward(), particles=6, block=2, max_new_tokens=WIDTH,
                            reward_temperature=0.02, ess_threshold=1.0)
    records, _ = direct(method, tiny_policy)
    alone, _ = direct(method, tiny_policy, batch_size=2)
    assert responses(records) == responses(alone)
    assert all(r["resampled_at"] for r in records) and all(set(r["resampled_at"]) <= {2, 4, 6} for r in records)
    assert all(len(r["ess"]) == 3 and all(1 <= e <= 6 + 1e-9 for e in r["ess"]) for r in records)
    mean = lambda rs: sum(r["reward"] for r in rs) / len(rs)  # noqa: E731
    assert mean(records) > mean(best_of_6)  # at Best-of-6's cost
    assert [r["cost"]["flops"] for r in records] == pytest.approx([b["cost"]["flops"] for b in best_of_6], rel=0.2)
    sampled, _ = direct(ParticleFilter(policy="tiny", reward=LexiconReward(), particles=6, block=2, max_new_tokens=WIDTH,
                                       reward_temperature=0.02, ess_threshold=1.0, final="sample"), tiny_policy)
    assert all(s["reward"] in s["particle_rewards"] for s in sampled)


@pytest.mark.parametrize("share_prompt", [True, False])
def test_particle_filter_cost_is_the_hand_count(tiny_policy, share_prompt):
    particles, prompts = 4, PROMPTS[:2]
    method = without_eos(ParticleFilter(policy="tiny", reward=LexiconReward(), particles=particles, block=3, max_new_tokens=WIDTH,
                                        reward_temperature=0.01, ess_threshold=1.0, share_prompt=share_prompt))
    records, items = direct(method, tiny_policy, prompts=prompts)
    rows, width = particles * len(prompts), max(len(it["prompt_ids"]) for it in items)
    total = cost.add(records[0]["cost"], records[1]["cost"])
    # resampling copies keys and values: the model work is Best-of-4's, a prefill (one per prompt when
    # shared, else one per row) and WIDTH - 1 cached steps per row
    prefilled = len(prompts) if share_prompt else rows
    assert total["forward_tokens"] == prefilled * width + rows * (WIDTH - 1)
    assert total["models"]["policy"]["head_tokens"] == prefilled + rows * (WIDTH - 1)
    assert records[0]["cost"]["sequential_depth"] == WIDTH


def test_search_methods_validate_their_arguments():
    with pytest.raises(ValueError, match=r"model.init_args.reward_temperature must be >= 0 \(0: Best-of-N\), got -1"):
        SoftBestOfN(policy="tiny", reward=LexiconReward(), reward_temperature=-1)
    with pytest.raises(ValueError, match=r"model.init_args.decision_points must be increasing.*got \[8, 4\]"):
        SpeculativeRejection(policy="tiny", reward=LexiconReward(), decision_points=[8, 4])
    with pytest.raises(ValueError, match=r"model.init_args.keep_fraction must be in \(0, 1\], got 0"):
        SpeculativeRejection(policy="tiny", reward=LexiconReward(), keep_fraction=0)
    with pytest.raises(ValueError, match="model.init_args.reward_temperature must be > 0"):
        ParticleFilter(policy="tiny", reward=LexiconReward(), reward_temperature=0)
    with pytest.raises(ValueError, match="model.init_args.resampling must be one of 'systematic', 'multinomial', got 'stratified'"):
        ParticleFilter(policy="tiny", reward=LexiconReward(), resampling="stratified")
    with pytest.raises(ValueError, match="ParticleFilter selects by reward"):
        ParticleFilter(policy="tiny", reward=None)

