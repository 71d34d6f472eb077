"""The best-of-pool start (seaflow/methods/pool.py) in SEA: Best-of-N's candidates, the best of them kept, its cost counted."""

import pytest

from seaflow.energies import LexiconReward
from seaflow.methods import SEA, BestOfN
from test_methods import direct


def sea(**kwargs):
    args = dict(policy="tiny", reward=LexiconReward(), alpha=5.0, chains=2, steps=2, decode="best", max_new_tokens=6)
    args.update(kwargs)
    return SEA(**args)


def test_sea_starts_from_the_best_of_the_pool(tiny_policy):
    pooled, _ = direct(sea(init_pool=6), tiny_policy)
    bon, _ = direct(BestOfN(policy="tiny", reward=LexiconReward(), n=6, max_new_tokens=6), tiny_policy)
    for s, b in zip(pooled, bon):
        assert s["pool_rewards"] == pytest.approx(b["candidate_rewards"])
        assert s["chain_initial_rewards"] == pytest.approx(sorted(b["candidate_rewards"], reverse=True)[:2])
        assert [b["candidate_rewards"][c] for c in s["chain_initial_candidates"]] == pytest.approx(s["chain_initial_rewards"])
        # the initial_* fields stay the plain sample, candidate 0
        assert s["initial_reward"] == pytest.approx(b["initial_reward"])
        assert s["initial_ref_logprob_per_token"] == pytest.approx(b["initial_ref_logprob_per_token"], abs=1e-5)
        assert s["initial_best_reward"] == pytest.approx(max(b["candidate_rewards"]))
        assert s["init_pool"] == 6


def test_the_pool_is_counted_in_the_cost(tiny_policy):
    plain, _ = direct(sea(), tiny_policy)
    pooled, _ = direct(sea(init_pool=8), tiny_policy)
    bon2, _ = direct(BestOfN(policy="tiny", reward=LexiconReward(), n=2, max_new_tokens=6), tiny_policy)
    bon8, _ = direct(BestOfN(policy="tiny", reward=LexiconReward(), n=8, max_new_tokens=6), tiny_policy)
    for p, q, b2, b8 in zip(plain, pooled, bon2, bon8):
        sampled = b8["cost"]["models"]["policy"]["forward_tokens"] - b2["cost"]["models"]["policy"]["forward_tokens"]
        extra = q["cost"]["models"]["policy"]["forward_tokens"] - p["cost"]["models"]["policy"]["forward_tokens"]
        # the 6 extra candidates' sampling; the refinement differs only by the chains' lengths
        assert sampled > 0 and abs(extra - sampled) <= 2 * 2 * 6 * 3


def test_without_a_pool_nothing_changes(tiny_policy):
    plain, _ = direct(sea(), tiny_policy)
    same, _ = direct(sea(init_pool=2), tiny_policy)
    assert [r["response"] for r in plain] == [r["response"] for r in same]
    assert all("pool_rewards" not in r for r in same)


@pytest.mark.parametrize("kwargs", [dict(init_pool=1), dict(init_pool=4, init="random"), dict(init_pool=4, reward=None, alpha=0.0)])
def test_sea_rejects_a_bad_pool(kwargs):
    with pytest.raises(ValueError, match=r"model\.init_args\.init_pool"):
        sea(**kwargs)
