"""GuidedSuffixMCMC: the exact target on an enumerable case, the cut distribution, the method on tiny models."""

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from seaflow.testing.samplers import P_VALUE, chi2_quantile
from tiny import run_config_on_tiny
from seaflow.energies import LexiconReward
from seaflow.energies.base import Reward
from seaflow.methods import BestOfN, GuidedSuffixMCMC
from seaflow.chains import (
    GradientCuts, MultipleTries, PromptCache, SuffixProposals, TokenMoves, cut_log_probs, cut_scores, prompt_cache,
    resample_suffixes, run_chains, slot_log_probs,
)
from test_methods import direct

ROOT = Path(__file__).parent.parent

# -- an enumerable target: vocabulary {pad, a, b, EOS}, responses of at most 3 tokens (40 of them)

V, EOS, PAD, WIDTH = 4, 3, 0, 3
PROMPT = [1, 2, 1]
ALPHA = 2.0


@pytest.fixture(scope="module")
def small_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=32, pad_token_id=PAD, bos_token_id=1, eos_token_id=EOS,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(3.0)  # a policy that prefers some continuations clearly
    return model


WEIGHTS = torch.randn(WIDTH, V, generator=torch.Generator().manual_seed(1))
# per-position weights of longer responses (a forced start plus WIDTH free tokens)
WEIGHTS_LONG = torch.cat([WEIGHTS, torch.randn(2, V, generator=torch.Generator().manual_seed(2))])


def small_reward(response: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """A reward that is not a sum over tokens and that depends on the length."""
    width = response.shape[1]
    one_hot = torch.nn.functional.one_hot(response, V).float() if response.dtype == torch.long else response
    mask = (torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)).float()
    return torch.tanh(((one_hot * WEIGHTS_LONG[:width]).sum(-1) * mask).sum(-1)) + 0.3 * lengths.float()


def small_score(tokens, lengths, need_grad=True):
    one_hot = torch.nn.functional.one_hot(tokens, V).float().requires_grad_(True)
    with torch.enable_grad():
        value = small_reward(one_hot, lengths)
        (grad,) = torch.autograd.grad(value.sum(), one_hot)
    return value.detach(), (grad if need_grad else None)


def enumerate_target(model, forced=(), width=None):
    """Every response (token tuples), their tensors, and ``pi_ref exp(alpha r)`` normalised, by direct computation.

    With a ``forced`` start every response is ``forced`` + up to WIDTH free tokens, ``pi_ref`` is
    the policy's probability of the free part given prompt and start, and ``r`` scores the
    whole response; the tensors are ``width`` (default: the longest response) wide."""
    forced = tuple(forced)
    width = width or len(forced) + WIDTH
    free = [seq for n in range(WIDTH + 1) for seq in itertools.product([t for t in range(V) if t != EOS], repeat=n)]
    states = [forced + seq for seq in free]
    log_ref = []
    for seq in free:
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([PROMPT + list(forced + seq)])).logits[0].double(), -1)
        start = len(PROMPT) + len(forced) - 1
        total = sum(float(logp[start + u, tok]) for u, tok in enumerate(seq))
        if len(seq) < WIDTH:  # the capped sampler writes EOS only before the cap
            total += float(logp[start + len(seq), EOS])
        log_ref.append(total)
    tokens = torch.full((len(states), width), PAD)
    for i, seq in enumerate(states):
        tokens[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    lengths = torch.tensor([len(s) for s in states])
    log_ref = torch.tensor(log_ref, dtype=torch.float64)
    assert math.isclose(float(log_ref.exp().sum()), 1.0, abs_tol=1e-5)  # the responses are all of them
    target = torch.softmax(log_ref + ALPHA * small_reward(tokens, lengths).double(), 0)
    return states, tokens, lengths, target


def chain_chi_square(model, start, steps, correct_cut=True, cached=True, chains=3000, seed=0, tries=1):
    states, tokens, lengths, target = enumerate_target(model)
    generator = torch.Generator().manual_seed(seed)
    if start == "target":
        index = torch.multinomial(target.float(), chains, replacement=True, generator=generator)
    else:  # every chain starts from the empty response
        index = torch.zeros(chains, dtype=torch.long)
    cache = prompt_cache(model, [PROMPT] * chains, PAD, WIDTH) if cached else PromptCache(None, [PROMPT] * chains)
    cuts = GradientCuts(small_score, ALPHA, temperature=0.3, floor=0.05)
    proposals = SuffixProposals(model, cache, WIDTH, [EOS], PAD)
    run = run_chains(
        proposals, tokens[index], lengths[index], cuts, ALPHA, steps,
        lambda step: [seed * 1_000_003 + step * 7919 + row for row in range(chains)], correct_cut=correct_cut, tries=tries,
    )
    position = {s: i for i, s in enumerate(states)}
    counts = torch.zeros(len(states), dtype=torch.float64)
    for row, n in zip(run.final.tokens, run.final.lengths):
        counts[position[tuple(row[: int(n)].tolist())]] += 1
    expected = target * chains
    statistic = float(((counts - expected) ** 2 / expected).sum())
    return statistic, chi2_quantile(1 - P_VALUE, len(states) - 1), run


FORCED = ([1], [2, 1])  # two forced starts of different lengths, one per half of the chains


def forced_chi_square(model, steps, restrict_reverse=True, chains=3000, seed=0):
    """Chains with forced starts (half of the rows FORCED[0], half FORCED[1], in one batch) from the
    start alone: chi-square of each half's final states against its own enumerated target."""
    width = max(map(len, FORCED)) + WIDTH
    groups = [enumerate_target(model, forced, width) for forced in FORCED]
    rows = [(g, forced) for g, forced in enumerate(FORCED) for _ in range(chains)]
    starts = torch.tensor([len(forced) for _, forced in rows])
    limits = starts + WIDTH
    tokens = torch.full((len(rows), width), PAD)
    for i, (_, forced) in enumerate(rows):
        tokens[i, : len(forced)] = torch.tensor(forced)
    cache = prompt_cache(model, [PROMPT] * len(rows), PAD, width)
    cuts = GradientCuts(small_score, ALPHA, temperature=0.3, floor=0.05, starts=starts, limits=limits)
    # the wrong chain: the forward cut avoids the start, the reverse q(t|y') counts its slots
    reverse = None if restrict_reverse else GradientCuts(small_score, ALPHA, temperature=0.3, floor=0.05, limits=limits)
    proposals = SuffixProposals(model, cache, width, [EOS], PAD, limits=limits)
    run = run_chains(
        proposals, tokens, starts.clone(), cuts, ALPHA, steps,
        lambda step: [seed * 1_000_003 + step * 7919 + row for row in range(len(rows))], reverse_cuts_fn=reverse,
    )
    results = []
    for g, (states, _, _, target) in enumerate(groups):
        position = {s: i for i, s in enumerate(states)}
        counts = torch.zeros(len(states), dtype=torch.float64)
        for (group, _), row, n in zip(rows, run.final.tokens, run.final.lengths):
            if group == g:
                counts[position[tuple(row[: int(n)].tolist())]] += 1  # a changed start has no position: KeyError
        expected = target * chains
        results.append((float(((counts - expected) ** 2 / expected).sum()), chi2_quantile(1 - P_VALUE, len(states) - 1)))
    return results, run, starts


def test_chains_with_forced_starts_sample_the_exact_target(small_lm):
    """Forced starts of 1 and 2 tokens in one batch: the chains never cut them, and each row's final
    states follow pi_ref(y_>=k | x, y_<k) exp(alpha r(y)) over the responses with its start."""
    results, run, starts = forced_chi_square(small_lm, steps=20)
    for statistic, limit in results:
        assert statistic <= limit, f"chi2 {statistic:.1f} > {limit:.1f}"
    assert bool((run.cuts >= starts.unsqueeze(0)).all()) and bool((run.cuts <= (starts + WIDTH).unsqueeze(0)).all())
    assert 0.2 < float(run.acceptance.mean()) < 0.95
    assert torch.allclose(run.final.reward, small_reward(run.final.tokens, run.final.lengths))


def test_without_the_reverse_cut_restriction_the_forced_target_is_missed(small_lm):
    """Drawing cuts after the start but computing q(t|y') over all slots breaks the chain: the test sees it."""
    results, _, _ = forced_chi_square(small_lm, steps=20, restrict_reverse=False)
    for statistic, limit in results:
        assert statistic > limit, f"a reverse cut over the forced slots went unnoticed: chi2 {statistic:.1f} <= {limit:.1f}"


@pytest.mark.parametrize("cached", [True, False])
def test_chains_sample_the_exact_target(small_lm, cached):
    """From one state for all chains, 20 steps: the final states follow pi_ref exp(alpha r) (chi-square)."""
    statistic, limit, run = chain_chi_square(small_lm, "empty", steps=20, cached=cached)
    assert statistic <= limit, f"chi2 {statistic:.1f} > {limit:.1f}"
    assert 0.2 < float(run.acceptance.mean()) < 0.95
    # the kept rewards are the rewards of the kept responses; the best state is the best visited
    assert torch.allclose(run.final.reward, small_reward(run.final.tokens, run.final.lengths))
    assert torch.allclose(run.best_reward, small_reward(run.best_tokens, run.best_lengths))
    assert torch.allclose(run.best_reward, run.rewards.max(0).values)


def test_the_target_is_invariant(small_lm):
    """Chains started exactly at the target stay there after two steps."""
    statistic, limit, _ = chain_chi_square(small_lm, "target", steps=2)
    assert statistic <= limit, f"chi2 {statistic:.1f} > {limit:.1f}"


@pytest.mark.parametrize("start, steps", [("target", 2), ("empty", 20)])
def test_without_the_cut_ratio_the_target_is_missed(small_lm, start, steps):
    """Dropping q(t|y')/q(t|y) from the acceptance ratio gives a chain the chi-square test rejects."""
    statistic, limit, _ = chain_chi_square(small_lm, start, steps=steps, correct_cut=False)
    assert statistic > limit, f"a test without the cut ratio went unnoticed: chi2 {statistic:.1f} <= {limit:.1f}"


# -- several tries per step: multiple-try Metropolis --------------------------------------------


@pytest.mark.parametrize("cached", [True, False])
def test_multiple_tries_sample_the_exact_target(small_lm, cached):
    """Three suffixes per chain and step, one picked by its weight and tested against the other tries and
    the current state: from the empty response, the final states follow pi_ref exp(alpha r)."""
    statistic, limit, run = chain_chi_square(small_lm, "empty", steps=20, cached=cached, tries=3)
    assert statistic <= limit, f"chi2 {statistic:.1f} > {limit:.1f}"
    assert 0.2 < float(run.acceptance.mean()) < 0.98
    assert torch.allclose(run.final.reward, small_reward(run.final.tokens, run.final.lengths))
    # an accepted step moves to the picked try, whose reward the trace keeps
    moved = run.accepted
    assert torch.allclose(run.rewards[1:][moved], run.proposal_rewards[moved])


def test_multiple_tries_without_the_test_miss_the_target(small_lm, monkeypatch):
    """Always moving to the picked try (importance resampling among the new suffixes, the current state left
    out) is not exact: the chi-square test sees it, from chains started at the target."""
    step = MultipleTries.step

    def always(self, *args, **kwargs):
        *rest, log_ratio = step(self, *args, **kwargs)
        return (*rest, torch.full_like(log_ratio, float("inf")))

    monkeypatch.setattr(MultipleTries, "step", always)
    statistic, limit, _ = chain_chi_square(small_lm, "target", steps=2, tries=2)
    assert statistic > limit, f"a step without its multiple-try test went unnoticed: chi2 {statistic:.1f} <= {limit:.1f}"


def test_multiple_tries_without_the_cut_ratio_miss_the_target(small_lm):
    """Weights without q(t | y'): the chi-square test sees it."""
    statistic, limit, _ = chain_chi_square(small_lm, "target", steps=2, correct_cut=False, tries=3)
    assert statistic > limit, f"tries without the cut ratio went unnoticed: chi2 {statistic:.1f} <= {limit:.1f}"


# -- gradient token moves and steered proposals: the same exact target ----------------------

STEER = [2, 2, 1, 2]  # another prompt: the steered proposals' policy p(. | x') differs from pi_ref(. | x)


def moves_chi_square(model, steps, rate=0.0, random_direction=False, steer=False, drop=None, chains=3000, seed=0,
                     temperature=2.0, cached=True, start="empty"):
    """Chains from the empty response with gradient token moves (``rate``) and/or proposals from the
    policy given STEER (``steer``), importance-corrected towards PROMPT's target; ``drop='importance'``
    scores the target's log-probability under STEER instead, which must break the chain."""
    states, tokens, lengths, target = enumerate_target(model)
    if start == "target":
        index = torch.multinomial(target.float(), chains, replacement=True, generator=torch.Generator().manual_seed(seed))
    else:  # every chain starts from the empty response
        index = torch.zeros(chains, dtype=torch.long)
    proposal_prompt = STEER if steer else PROMPT
    cache = (prompt_cache(model, [proposal_prompt] * chains, PAD, WIDTH) if cached
             else PromptCache(None, [proposal_prompt] * chains))
    proposals = SuffixProposals(model, cache, WIDTH, [EOS], PAD)
    target_log_prob = None
    if steer:
        scorer = SuffixProposals(model, prompt_cache(model, [PROMPT] * chains, PAD, WIDTH), WIDTH, [EOS], PAD)
        target_log_prob = lambda t, n: scorer.read(t, n, log_probs=True)[2].sum(1)  # noqa: E731
        if drop == "importance":
            target_log_prob = lambda t, n: proposals.read(t, n, log_probs=True)[2].sum(1)  # noqa: E731
    moves = TokenMoves(rate, ALPHA, temperature, [EOS], random_direction=random_direction) if rate else None
    cuts = GradientCuts(small_score, ALPHA, temperature=0.3, floor=0.05, keep_grad=rate > 0)
    run = run_chains(
        proposals, tokens[index], lengths[index], cuts, ALPHA, steps,
        lambda step: [seed * 1_000_003 + step * 7919 + row for row in range(chains)],
        token_moves=moves, target_log_prob=target_log_prob, track_target=True,
    )
    position = {s: i for i, s in enumerate(states)}
    counts = torch.zeros(len(states), dtype=torch.float64)
    for row, n in zip(run.final.tokens, run.final.lengths):
        counts[position[tuple(row[: int(n)].tolist())]] += 1
    expected = target * chains
    statistic = float(((counts - expected) ** 2 / expected).sum())
    return statistic, chi2_quantile(1 - P_VALUE, len(states) - 1), run


@pytest.mark.parametrize("rate, random_direction, steer", [
    (1.0, False, False), (1.0, True, False), (0.0, False, True), (1.0, False, True),
])
def test_token_moves_and_steered_proposals_leave_the_target_invariant(small_lm, rate, random_direction, steer):
    """Chains started at the target, 3 steps of nothing but gradient token moves (also with a permuted
    gradient), or of suffixes proposed by the policy given another prompt, importance-corrected: still
    pi_ref(y|x) exp(alpha r) (chi-square), so each move is exact on its own."""
    statistic, limit, run = moves_chi_square(small_lm, steps=3, rate=rate, random_direction=random_direction, steer=steer,
                                             start="target")
    assert statistic <= limit, f"chi2 {statistic:.1f} > {limit:.1f}"
    if rate:
        assert bool(run.token_moves.all())
        assert float(run.accepted.float().mean()) > 0.1  # the token moves do move
    assert torch.allclose(run.final.reward, small_reward(run.final.tokens, run.final.lengths))


@pytest.mark.parametrize("cached", [True, False])
def test_mixed_moves_reach_the_exact_target(small_lm, cached):
    """From the empty response, 60 steps mixing token moves (half) and steered suffix proposals: the target."""
    statistic, limit, run = moves_chi_square(small_lm, steps=60, rate=0.5, steer=True, cached=cached, chains=2000)
    assert statistic <= limit, f"chi2 {statistic:.1f} > {limit:.1f}"
    assert 0.4 < float(run.token_moves.float().mean()) < 0.6


def test_a_steered_proposal_without_its_importance_correction_misses_the_target(small_lm):
    """Proposals from the policy given STEER, scored as if STEER were the target's prompt: the test sees it."""
    statistic, limit, _ = moves_chi_square(small_lm, steps=20, steer=True, drop="importance", start="target")
    assert statistic > limit, f"a missing importance correction went unnoticed: chi2 {statistic:.1f} <= {limit:.1f}"


def test_a_token_move_without_its_proposal_ratio_misses_the_target(small_lm):
    """The token move's draw follows the gradient but its reverse is scored as a plain policy draw
    (the q(y_t | y', t) / q(v | y, t) factor left out): the chi-square test sees it."""

    class Biased(TokenMoves):
        calls = 0

        def bias(self, grad, rows, cuts, order):
            # run_chains asks for the forward bias, then for the reverse one: flatten the reverse
            Biased.calls += 1
            values = super().bias(grad, rows, cuts, order)
            if Biased.calls % 2 == 0:
                return torch.where(torch.isfinite(values), torch.zeros_like(values), values)
            return values

    states, tokens, lengths, target = enumerate_target(small_lm)
    chains = 3000
    index = torch.multinomial(target.float(), chains, replacement=True, generator=torch.Generator().manual_seed(0))
    proposals = SuffixProposals(small_lm, prompt_cache(small_lm, [PROMPT] * chains, PAD, WIDTH), WIDTH, [EOS], PAD)
    cuts = GradientCuts(small_score, ALPHA, temperature=0.3, floor=0.05, keep_grad=True)
    run = run_chains(proposals, tokens[index], lengths[index], cuts, ALPHA, 20,
                     lambda step: [step * 7919 + row for row in range(chains)],
                     token_moves=Biased(1.0, ALPHA, 0.5, [EOS]))
    position = {s: i for i, s in enumerate(states)}
    counts = torch.zeros(len(states), dtype=torch.float64)
    for row, n in zip(run.final.tokens, run.final.lengths):
        counts[position[tuple(row[: int(n)].tolist())]] += 1
    statistic = float(((counts - target * chains) ** 2 / (target * chains)).sum())
    assert statistic > chi2_quantile(1 - P_VALUE, len(states) - 1), f"a wrong token-move ratio went unnoticed: chi2 {statistic:.1f}"


def test_best_target_state_is_the_highest_target_density_visited(small_lm):
    states, tokens, lengths, target = enumerate_target(small_lm)
    log_target = dict(zip(states, (target.log()).tolist()))
    _, _, run = moves_chi_square(small_lm, steps=6, rate=0.5, chains=64)
    # best_target_value is log pi_ref(y|x) + alpha r(y): the enumerated log target up to one constant per run
    values = run.best_target_value.double()
    exact = torch.tensor([log_target[tuple(r[: int(n)].tolist())] for r, n in zip(run.best_target_tokens, run.best_target_lengths)])
    assert torch.allclose(values - exact, (values - exact)[0].expand_as(values), atol=1e-4)
    final = torch.tensor([log_target[tuple(r[: int(n)].tolist())] for r, n in zip(run.final.tokens, run.final.lengths)])
    assert bool((exact >= final - 1e-9).all())  # the best visited is at least the final state



def test_likeliest_best_is_the_likeliest_of_the_highest_reward_states_visited(small_lm):
    """With a discrete reward (ties), each chain keeps the visited state of highest reward and, among
    those, of highest log pi_ref: checked against every state the chains visited, rebuilt from the trace."""
    states, tokens, lengths, _ = enumerate_target(small_lm)
    chains, steps = 64, 8
    seen = []

    def discrete_score(t, n, need_grad=True):  # reward in {0, 1}: many ties; the gradient stays the smooth one's
        value, grad = small_score(t, n, need_grad)
        seen.append((t.clone(), n.clone()))
        return (value > 0.5).float(), grad

    proposals = SuffixProposals(small_lm, prompt_cache(small_lm, [PROMPT] * chains, PAD, WIDTH), WIDTH, [EOS], PAD)
    cuts = GradientCuts(discrete_score, ALPHA, temperature=0.3, floor=0.05)
    start = torch.zeros(chains, dtype=torch.long)
    run = run_chains(proposals, tokens[start], lengths[start], cuts, ALPHA, steps,
                     lambda step: [step * 7919 + row for row in range(chains)], track_target=True)
    scorer = SuffixProposals(small_lm, prompt_cache(small_lm, [PROMPT] * len(states), PAD, WIDTH), WIDTH, [EOS], PAD)
    log_pi = {s: float(v) for s, v in zip(states, scorer.read(tokens, lengths, log_probs=True)[2].sum(1))}
    reward = {s: float(small_score(tokens[i:i + 1], lengths[i:i + 1], False)[0] > 0.5) for i, s in enumerate(states)}
    key = lambda s: (reward[s], log_pi[s])  # noqa: E731
    assert len(seen) == steps + 1
    tokens_, lengths_, rewards_, _ = run.likeliest_best
    ties = 0
    for c in range(chains):
        visited = [tuple(seen[0][0][c][: int(seen[0][1][c])].tolist())]
        for step in range(steps):
            if bool(run.accepted[step, c]):
                visited.append(tuple(seen[step + 1][0][c][: int(seen[step + 1][1][c])].tolist()))
        expected = max(visited, key=key)
        assert tuple(tokens_[c][: int(lengths_[c])].tolist()) == expected
        assert float(rewards_[c]) == reward[expected] == float(run.best_reward[c])
        ties += len({s for s in visited if reward[s] == reward[expected]}) > 1
    assert ties > chains // 4  # the rule was exercised: many chains visited several states of their best reward

def test_slot_log_probs_sum_to_the_sequence_log_probability(small_lm):
    states, tokens, lengths, _ = enumerate_target(small_lm)
    cache = prompt_cache(small_lm, [PROMPT] * len(states), PAD, WIDTH)
    proposals = SuffixProposals(small_lm, cache, WIDTH, [EOS], PAD)
    total = proposals.read(tokens, lengths, log_probs=True)[2].sum(1).double()
    assert math.isclose(float(total.exp().sum()), 1.0, abs_tol=1e-4)  # a distribution over all 40 responses
    uncached = SuffixProposals(small_lm, PromptCache(None, [PROMPT] * len(states)), WIDTH, [EOS], PAD)
    assert torch.allclose(uncached.read(tokens, lengths, log_probs=True)[2].sum(1).double(), total, atol=1e-4)


# -- the pieces ------------------------------------------------------------------------------


def test_cut_scores_for_the_lexicon_are_the_valence_gap():
    values = torch.tensor([0.0, 0.5, -1.0, 1.0, 0.2])
    tokens = torch.tensor([[2, 0, 1, 0], [4, 3, 0, 0]])
    lengths = torch.tensor([3, 2])
    alpha = 8.0
    # lexicon reward mean_t v[y_t]: d(alpha r)/d onehot[u, v] = alpha v[v] / n
    grad = alpha * values.expand(2, 4, 5) / lengths.view(2, 1, 1)
    scores = cut_scores(grad, tokens, lengths)
    expected = torch.tensor([[(1.0 + 1.0) / 3 * alpha, 1.0 / 3 * alpha, 0.5 / 3 * alpha, 0.0], [0.8 / 2 * alpha, 0.0, 0.0, 0.0]])
    assert torch.allclose(scores, expected)
    # among candidates {0, 1} only: best value 0.5
    candidates = torch.tensor([0, 1]).expand(2, 4, 2)
    scores = cut_scores(grad, tokens, lengths, candidates)
    assert torch.allclose(scores[0, :3], alpha * torch.tensor([1.5 / 3, 0.5 / 3, 0.0]))
    assert torch.allclose(scores[1, :2], alpha * torch.tensor([0.3 / 2, -0.5 / 2]))


def test_cut_log_probs():
    scores = torch.tensor([[2.0, 0.0, -1.0, 5.0], [1.0, 1.0, 9.0, 9.0], [0.0, 0.0, 0.0, 0.0]])
    lengths = torch.tensor([2, 4, 0])  # slots: 0..2 (EOS at 2); 0..3 (full, no EOS slot); 0 only
    log_q = cut_log_probs(scores, lengths, temperature=0.5, floor=0.2)
    q = log_q.exp()
    assert torch.allclose(q.sum(-1), torch.ones(3))
    assert torch.equal(torch.isfinite(log_q), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]).bool())
    soft = torch.softmax(torch.tensor([2.0, 0.0, -1.0]) / 0.5, 0)
    assert torch.allclose(q[0, :3], 0.8 * soft + 0.2 / 3)
    assert bool((q[1] >= 0.2 / 4 - 1e-7).all())
    uniform = cut_log_probs(scores, lengths, temperature=None, floor=0.2).exp()
    assert torch.allclose(uniform[1], torch.full((4,), 0.25))
    assert torch.allclose(cut_log_probs(scores, lengths, 0.5, floor=1.0).exp(), uniform)


def test_resample_keeps_the_prefix_and_matches_the_uncached_path(tiny_policy):
    model = tiny_policy.model
    prompts = [tiny_policy.tokenizer("describe the city")["input_ids"], tiny_policy.tokenizer("how was the train today")["input_ids"]]
    rows = [prompts[0], prompts[0], prompts[1], prompts[1]]
    width = 6
    tokens = torch.randint(4, tiny_policy.vocab_size, (4, width), generator=torch.Generator().manual_seed(0))
    cuts = torch.tensor([0, 3, 5, 2])
    results = []
    for cache in (prompt_cache(model, rows, 0, width), PromptCache(None, rows)):
        gens = [torch.Generator().manual_seed(s) for s in range(4)]
        results.append(resample_suffixes(model, cache, tokens, cuts, [3], 0, gens, top_k=5))
    (new, lengths, top), (new_ref, lengths_ref, top_ref) = results
    assert torch.equal(new, new_ref) and torch.equal(lengths, lengths_ref)
    for row in range(4):
        n = int(lengths[row])
        assert torch.equal(new[row, : cuts[row]], tokens[row, : cuts[row]])
        assert int(cuts[row]) <= n <= width
        assert bool((new[row, n:] == 0).all()) and not bool((new[row, :n] == 3).any())
        assert torch.equal(top[row, :n], top_ref[row, :n])
    # the candidates are the policy's top-5 given the new prefix (teacher forcing on the new response)
    for row in range(4):
        n = int(lengths[row])
        ids = torch.tensor([rows[row] + new[row, :n].tolist()])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(rows[row]) - 1 : len(rows[row]) - 1 + n]
        assert torch.equal(logits.topk(5, -1).indices, top[row, :n])


def test_chains_on_the_state_cache_match_whole_rows(tiny_policy, monkeypatch):
    """Chains whose proposals run on each state's keys and values (one re-fed token, rows leaving the
    batch as they finish) take the same path as chains that re-run prompt and prefix every step."""
    model, tokenizer = tiny_policy.model, tiny_policy.tokenizer
    texts = ["describe the city", "how was the train today with my friend", "tell me"]
    rows = [tokenizer(t)["input_ids"] for t in texts for _ in range(3)]
    width = 7
    reward = LexiconReward()
    reward.setup(tiny_policy)

    def score(tokens, lengths, need_grad=True):
        one_hot = torch.nn.functional.one_hot(tokens, tiny_policy.vocab_size).float().requires_grad_(True)
        with torch.enable_grad():
            value = reward.value(lengths, one_hot)
            (grad,) = torch.autograd.grad(value.sum(), one_hot)
        return value.detach(), grad

    from transformers import DynamicCache

    narrowed = []
    select = DynamicCache.batch_select_indices
    monkeypatch.setattr(DynamicCache, "batch_select_indices", lambda self, index: (narrowed.append(len(index)), select(self, index))[1])
    start = torch.randint(4, tiny_policy.vocab_size, (len(rows), width), generator=torch.Generator().manual_seed(3))
    lengths = torch.tensor([7, 3, 0, 5, 7, 1, 2, 6, 4])
    start = torch.where(torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1), start, 0)
    runs = []
    for cache in (prompt_cache(model, rows, 0, width), PromptCache(None, rows)):
        proposals = SuffixProposals(model, cache, width, [3], 0, top_k=4)
        cuts = GradientCuts(score, 30.0, temperature=0.5, floor=0.2)
        runs.append(run_chains(proposals, start, lengths, cuts, 30.0, 6, lambda step: [100 * step + r for r in range(len(rows))]))
    cached, whole = runs
    assert cached.final.kv is not None and whole.final.kv is None
    assert torch.equal(cached.cuts, whole.cuts) and torch.equal(cached.accepted, whole.accepted)
    assert torch.equal(cached.final.tokens, whole.final.tokens) and torch.equal(cached.final.lengths, whole.final.lengths)
    assert torch.allclose(cached.log_ratio, whole.log_ratio, atol=1e-5)
    active = (torch.arange(width).unsqueeze(0) < cached.final.lengths.unsqueeze(1)).unsqueeze(-1)
    assert torch.equal(cached.final.candidates * active, whole.final.candidates * active)
    assert bool(cached.accepted.any()) and not bool(cached.accepted.all())
    assert narrowed  # rows did leave the batch


# -- the method on tiny models -------------------------------------------------------------------


def test_no_steps_with_a_pool_is_best_of_n(tiny_policy):
    mcmc, _ = direct(GuidedSuffixMCMC(policy="tiny", reward=LexiconReward(), chains=1, steps=0, init_pool=6, max_new_tokens=6), tiny_policy)
    bon, _ = direct(BestOfN(policy="tiny", reward=LexiconReward(), n=6, max_new_tokens=6), tiny_policy)
    for m, b in zip(mcmc, bon):
        assert m["response"] == b["response"]
        assert m["reward"] == pytest.approx(b["reward"])
        assert m["pool_rewards"] == pytest.approx(b["candidate_rewards"])
        assert m["initial_reward"] == pytest.approx(b["initial_reward"])


def test_cost_counts_the_pool_the_prompt_cache_and_the_steps(tiny_policy):
    """Without steps the method costs Best-of-N's sampling plus one prompt cache and one pass over the chains."""
    width = 6
    bon, items = direct(BestOfN(policy="tiny", reward=LexiconReward(), n=6, max_new_tokens=width), tiny_policy)
    still, _ = direct(GuidedSuffixMCMC(policy="tiny", reward=LexiconReward(), chains=2, steps=0, init_pool=6, max_new_tokens=width), tiny_policy)
    moving, _ = direct(GuidedSuffixMCMC(policy="tiny", reward=LexiconReward(), chains=2, steps=3, init_pool=6, max_new_tokens=width), tiny_policy)
    prompt_width = max(len(item["prompt_ids"]) for item in items)
    for b, s, m in zip(bon, still, moving):
        policy = s["cost"]["models"]["policy"]
        assert policy["forward_tokens"] == b["cost"]["models"]["policy"]["forward_tokens"] + prompt_width + 2 * width
        assert policy["backward_tokens"] == 0
        # each step: per chain one re-fed token plus at most width new ones
        extra = m["cost"]["models"]["policy"]["forward_tokens"] - policy["forward_tokens"]
        assert 3 * 2 <= extra <= 3 * 2 * (width + 1)


def test_pool_start_takes_the_best_candidates(tiny_policy):
    records, _ = direct(GuidedSuffixMCMC(policy="tiny", reward=LexiconReward(), chains=3, steps=0, init_pool=8, max_new_tokens=6), tiny_policy)
    for r in records:
        top = sorted(r["pool_rewards"], reverse=True)[:3]
        assert sorted(r["chain_initial_rewards"], reverse=True) == pytest.approx(top)
        assert [r["pool_rewards"][c] for c in r["chain_initial_candidates"]] == pytest.approx(r["chain_initial_rewards"])


def test_a_pool_ranked_by_target_keeps_the_highest_log_pi_plus_alpha_r(tiny_policy):
    """init_rank: target keeps the pool's candidates of highest log pi_ref(y|x) + alpha r (Best-of-N's
    candidates and their log-likelihoods, read off a likeliest_best run), and pays one pass over the pool."""
    alpha = 3.0
    ranked, _ = direct(GuidedSuffixMCMC(policy="tiny", reward=LexiconReward(), alpha=alpha, chains=2, steps=0, init_pool=6,
                                        init_rank="target", max_new_tokens=6), tiny_policy)
    by_reward, _ = direct(GuidedSuffixMCMC(policy="tiny", reward=LexiconReward(), alpha=alpha, chains=2, steps=0, init_pool=6,
                                           max_new_tokens=6), tiny_policy)
    bon, _ = direct(BestOfN(policy="tiny", reward=LexiconReward(), n=6, returns="likeliest_best", max_new_tokens=6), tiny_policy)
    differs = False
    for r, w, b in zip(ranked, by_reward, bon):
        target = [lp + alpha * rw for lp, rw in zip(b["candidate_ref_logprobs"], b["candidate_rewards"])]
        top = sorted(range(6), key=lambda c: -target[c])[:2]
        assert sorted(r["chain_initial_candidates"]) == sorted(top)
        assert r["pool_rewards"] == pytest.approx(b["candidate_rewards"]) and r["init_rank"] == "target"
        differs |= sorted(r["chain_initial_candidates"]) != sorted(w["chain_initial_candidates"])
        assert r["cost"]["models"]["policy"]["forward_tokens"] > w["cost"]["models"]["policy"]["forward_tokens"]
    assert differs  # the rank is not the reward's on these prompts


def test_a_bad_init_rank_is_refused():
    with pytest.raises(ValueError, match=r"model\.init_args\.init_rank"):
        GuidedSuffixMCMC(policy="tiny", reward=LexiconReward(), init_pool=4, init_rank="likelihood")


@pytest.mark.parametrize("cut_temperature, cut_top_k", [(1.0, 5), (0.5, None), (None, None)])
def test_records_and_best_visited_state(tiny_policy, cut_temperature, cut_top_k):
    reward = LexiconReward()
    method = GuidedSuffixMCMC(policy="tiny", reward=reward, alpha=20.0, chains=3, steps=4, max_new_tokens=6,
                              cut_temperature=cut_temperature, cut_top_k=cut_top_k)
    records, items = direct(method, tiny_policy)
    for r, item in zip(records, items):
        trace = r["trace"]
        assert len(trace["cut"]) == 3 and all(len(c) == 4 for c in trace["cut"])
        assert all(len(c) == 5 for c in trace["reward"])
        visited = [v for chain in trace["reward"] for v in chain]
        assert r["reward"] == pytest.approx(max(visited))
        assert r["reward"] >= max(r["chain_initial_rewards"]) - 1e-6
        for chain in range(3):
            accepted = trace["accepted"][chain]
            assert r["chain_acceptance"][chain] == pytest.approx(sum(accepted) / 4)
            for step, ok in enumerate(accepted):  # an accepted step moves to the proposal, a rejected one stays
                after = trace["reward"][chain][step + 1]
                assert after == pytest.approx(trace["proposal_reward"][chain][step] if ok else trace["reward"][chain][step])
        assert len(r["ref_token_logprobs"]) == r["response_tokens"] <= 6


def test_results_do_not_depend_on_the_batch(tiny_policy):
    method = GuidedSuffixMCMC(policy="tiny", reward=LexiconReward(), chains=2, steps=3, max_new_tokens=6, init_pool=3)
    together, _ = direct(method, tiny_policy)
    alone, _ = direct(method, tiny_policy, batch_size=1)
    assert [r["response"] for r in together] == [r["response"] for r in alone]
    assert [r["trace"] for r in together] == [r["trace"] for r in alone]


def test_tries_run_in_one_batch_and_do_not_depend_on_the_batch(tiny_policy):
    """tries=3: every model call of a step carries the three tries of every chain; records do not depend on
    the batch; tries=1 is the plain chain (its records, field for field, bar ``tries``)."""
    calls = []

    def count(module, args, kwargs, out):
        ids = kwargs.get("input_ids", args[0] if args else None)
        calls.append((ids if ids is not None else kwargs["inputs_embeds"]).shape[0])

    hook = tiny_policy.model.register_forward_hook(count, with_kwargs=True)
    try:
        method = GuidedSuffixMCMC(policy="tiny", reward=LexiconReward(), chains=2, steps=3, max_new_tokens=6, tries=3)
        together, _ = direct(method, tiny_policy)
    finally:
        hook.remove()
    rows = 2 * len(together)
    assert max(calls) == 3 * rows  # the steps' first calls: all tries of all chains
    alone, _ = direct(method, tiny_policy, batch_size=1)
    assert [r["response"] for r in together] == [r["response"] for r in alone]
    assert [r["trace"] for r in together] == [r["trace"] for r in alone]
    assert all(r["tries"] == 3 for r in together)
    plain, _ = direct(GuidedSuffixMCMC(policy="tiny", reward=LexiconReward(), chains=2, steps=3, max_new_tokens=6), tiny_policy)
    one, _ = direct(GuidedSuffixMCMC(policy="tiny", reward=LexiconReward(), chains=2, steps=3, max_new_tokens=6, tries=1), tiny_policy)
    assert [r["trace"] for r in plain] == [r["trace"] for r in one]
    assert [r["trace"] for r in plain] != [r["trace"] for r in together]


def test_the_reward_gradient_in_chunks_is_the_whole_one(tiny_policy):
    """score_batch smaller than the chains: the reward and its gradient come in chunks, the records do not change."""
    whole, _ = direct(GuidedSuffixMCMC(policy="tiny", reward=LexiconReward(), chains=3, steps=3, max_new_tokens=6), tiny_policy)
    rows = []

    class Counted(LexiconReward):
        def value(self, prepared, response):
            rows.append(response.shape[0])
            return super().value(prepared, response)

    chunked, _ = direct(GuidedSuffixMCMC(policy="tiny", reward=Counted(), chains=3, steps=3, max_new_tokens=6, score_batch=2),
                        tiny_policy)
    assert [r["trace"] for r in whole] == [r["trace"] for r in chunked]
    assert rows and max(rows) <= 2


def test_tries_refuse_token_moves():
    with pytest.raises(ValueError, match=r"model\.init_args\.tries 2 proposes plain suffixes only"):
        GuidedSuffixMCMC(policy="tiny", reward=LexiconReward(), tries=2, token_moves=0.5)


def test_a_high_alpha_climbs(tiny_policy):
    reward = LexiconReward()
    records, _ = direct(GuidedSuffixMCMC(policy="tiny", reward=reward, alpha=200.0, chains=2, steps=12, max_new_tokens=6), tiny_policy)
    gains = [r["reward"] - r["initial_best_reward"] for r in records]
    assert all(g >= -1e-6 for g in gains) and sum(gains) > 0


@pytest.mark.parametrize(
    "argument, value, message",
    [
        ("temperature", 0.7, "model.init_args.temperature"),
        ("top_p", 0.9, "model.init_args.top_p"),
        ("cut_floor", 0.0, "model.init_args.cut_floor"),
        ("cut_temperature", 0.0, "model.init_args.cut_temperature"),
        ("init_pool", 2, "model.init_args.init_pool"),
        ("steps", -1, "model.init_args.steps"),
        ("alpha", -1.0, "model.init_args.alpha"),
        ("tries", 0, "model.init_args.tries"),
    ],
)
def test_rejects_bad_values(argument, value, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        GuidedSuffixMCMC(policy="tiny", reward=LexiconReward(), chains=4, **{argument: value})


def test_config_runs_on_tiny_models(tmp_path, tiny_models):
    """configs/demo.yaml, with the tiny policy and a short run, through ``seaflow predict``."""
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    assert config["model"]["class_path"] == "seaflow.methods.GuidedSuffixMCMC"
    records = run_config_on_tiny(config, tmp_path, tiny_models, steps=3, chains=2, max_new_tokens=6, init_pool=4)
    assert [r["id"] for r in records] == ["p0", "p1"]
    assert all(len(r["chain_acceptance"]) == 2 and len(r["pool_rewards"]) == 4 for r in records)


def test_config_with_a_forced_start_runs_through_predict(tmp_path, tiny_models):
    """configs/demo.yaml with data.response_prefix through ``seaflow predict``: every returned response and
    every chain's final state start with the forced tokens, the records carry the start, cuts come after it."""
    from seaflow.models import load_causal_lm

    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    config["data"].update(response_prefix="sure here is how to", response_prefix_tokens=3)
    records = run_config_on_tiny(config, tmp_path, tiny_models, steps=4, chains=2, max_new_tokens=6, init_pool=3)
    forced = load_causal_lm(str(tiny_models["policy"])).tokenizer.encode("sure here is how to", add_special_tokens=False)[:3]
    assert [r["id"] for r in records] == ["p0", "p1"]
    for r in records:
        assert r["response_prefix"] == "sure here is"
        assert r["response_token_ids"][:3] == forced and 3 <= r["response_tokens"] <= 3 + 6
        assert all(text.startswith("sure here is") for text in r["chain_responses"])
        assert all(c >= 3 for cuts in r["trace"]["cut"] for c in cuts)


def test_every_key_of_the_config_is_commented():
    lines = (ROOT / "configs" / "demo.yaml").read_text().splitlines()
    keyed = [l for l in lines if l.strip() and not l.strip().startswith("#") and ":" in l and not l.strip().startswith("-")]
    uncommented = [l for l in keyed if "#" not in l and not l.rstrip().endswith(":")]
    assert not uncommented, uncommented


@pytest.mark.parametrize("returns", ["likeliest_best", "best_target", "final"])
def test_demo_config_with_token_moves_steering_and_return_rules(tmp_path, tiny_models, returns):
    """configs/demo.yaml with gradient token moves, proposals from the policy given a system prompt and
    another return rule: every rule's reply is recorded and the record's reply is the chosen rule's."""
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    config["data"]["proposal_system_prompt"] = "Reply in a warm, positive tone."
    records = run_config_on_tiny(config, tmp_path, tiny_models, steps=4, chains=2, token_moves=0.5, returns=returns,
                                 init_from="proposal_prompt", max_new_tokens=6)
    for record in records:
        assert record["returns"] == returns
        assert set(record["alternatives"]) == {"best_reward", "likeliest_best", "best_target", "final"}
        chosen = record["alternatives"][returns]
        assert record["response"] == chosen["response"] and math.isclose(record["reward"], chosen["reward"], abs_tol=1e-6)
        assert record["alternatives"]["best_reward"]["reward"] >= max(a["reward"] for a in record["alternatives"].values()) - 1e-6
        moves = record["trace"]["token_move"]
        assert len(moves) == 2 and all(len(m) == 4 for m in moves)
        assert len(record["token_move_acceptance"]) == 2
        assert "proposal_prompt_ids" not in record


def test_a_row_without_its_proposal_prompt_is_named(tmp_path, tiny_models):
    from seaflow.data import PromptDataModule, PromptFileError

    path = tmp_path / "prompts.jsonl"
    path.write_text('{"id": "a", "prompt": "hello", "asked": "hello, kindly"}\n{"id": "b", "prompt": "bye"}\n')
    data = PromptDataModule(str(path), policy=str(tiny_models["policy"]), proposal_prompt_field="asked")
    with pytest.raises(PromptFileError, match="'b' has no text in its 'asked' field"):
        data.items()
    data = PromptDataModule(str(path), policy=str(tiny_models["policy"]), proposal_prompt_field="asked", limit=1)
    (item,) = data.items()
    assert item["proposal_prompt_ids"] == data.encode("hello, kindly") != item["prompt_ids"]


def test_a_proposal_instruction_is_filled_from_the_row(tmp_path, tiny_models):
    """data.proposal_instruction: appended to the prompt (or to its proposal field's text), each
    {field} from the row, a list joined as "a and b" / "a, b and c"; a missing field is named."""
    from seaflow.data import PromptDataModule, PromptFileError

    path = tmp_path / "prompts.jsonl"
    path.write_text('{"id": "a", "prompt": "hello", "keywords": ["dog", "night"], "asked": "hello, kindly"}\n'
                    '{"id": "b", "prompt": "bye", "keywords": ["x", "y", "z"], "tone": "warm"}\n'
                    '{"id": "c", "prompt": "hi", "keywords": "food"}\n')
    policy = str(tiny_models["policy"])
    data = PromptDataModule(str(path), policy=policy, proposal_instruction="Use the words {keywords}.")
    a, b, c = data.items()
    assert a["proposal_prompt_ids"] == data.encode("hello Use the words dog and night.")
    assert b["proposal_prompt_ids"] == data.encode("bye Use the words x, y and z.")
    assert c["proposal_prompt_ids"] == data.encode("hi Use the words food.")
    assert a["prompt_ids"] == data.encode("hello")  # the target's prompt is untouched
    both = PromptDataModule(str(path), policy=policy, proposal_prompt_field="asked", proposal_instruction="Use {keywords}.", limit=1)
    assert both.items()[0]["proposal_prompt_ids"] == both.encode("hello, kindly Use dog and night.")
    toned = PromptDataModule(str(path), policy=policy, proposal_instruction="Be {tone}.")
    with pytest.raises(PromptFileError, match=r"'a' has no 'tone' field, which data.proposal_instruction"):
        toned.items()
    with pytest.raises(ValueError, match=r"data.proposal_instruction 'Use \{0\}' has the placeholder"):
        PromptDataModule(str(path), policy=policy, proposal_instruction="Use {0}")
    with pytest.raises(ValueError, match="is not a valid template"):
        PromptDataModule(str(path), policy=policy, proposal_instruction="Use {keywords")


def test_steered_chains_with_a_proposal_instruction(tmp_path, tiny_models):
    """The chains propose from the instructed prompt and record the target prompt's reply."""
    from seaflow.cli import main

    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"id": "a", "prompt": "describe the city.", "keywords": ["dog", "night"]}\n')
    config["model"]["init_args"].update(
        policy=str(tiny_models["policy"]), reward={"class_path": "KeywordReward", "init_args": {"field": "keywords"}},
        steps=3, chains=2, token_moves=0.5, returns="best_target", init_from="proposal_prompt", max_new_tokens=5)
    config["data"].update(path=str(rows), batch_size=1, proposal_instruction="use the words {keywords}.")
    config["output"]["output_dir"] = str(tmp_path / "run")
    config["trainer"]["enable_progress_bar"] = False
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    main(["predict", "--config", str(tmp_path / "config.yaml")])
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert record["prompt"] == "describe the city." and record["returns"] == "best_target"
    assert record["response"] == record["alternatives"]["best_target"]["response"]
