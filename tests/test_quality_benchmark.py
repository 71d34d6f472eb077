"""The statistics of benchmarks/quality.py's paired comparison against Best-of-N at equal FLOPs."""

import importlib.util
import itertools
import math
import statistics
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("quality", Path(__file__).resolve().parent.parent / "benchmarks" / "quality.py")
quality = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quality)


def test_sign_flip_p_matches_direct_enumeration():
    # all 5 differences positive: only the all-positive and all-negative sign vectors reach |sum|
    assert quality.sign_flip_p([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(2 / 32)
    diffs = [0.3, -0.1, 0.2, 0.0, 0.5, -0.4]
    direct = sum(abs(sum(s * d for s, d in zip(signs, diffs))) >= abs(sum(diffs)) - 1e-12
                 for signs in itertools.product((1, -1), repeat=len(diffs))) / 2 ** len(diffs)
    assert quality.sign_flip_p(diffs) == pytest.approx(direct)
    assert quality.sign_flip_p([0.0] * 4) == 1.0


def test_sign_flip_p_monte_carlo_agrees_with_normal_approximation():
    diffs = [0.2 * ((-1) ** (i % 3 == 0)) + 0.05 for i in range(40)]
    z = abs(sum(diffs)) / math.sqrt(sum(d * d for d in diffs))  # conditional variance of the sign-flip sum
    normal = math.erfc(z / math.sqrt(2))
    assert quality.sign_flip_p(diffs, draws=40000) == pytest.approx(normal, abs=0.03)


def test_equal_flops_n_gives_best_of_n_at_least_the_method_flops():
    record = {"n": 64, "cost": {"flops": 64e9}}  # 1 GFLOP per candidate
    assert quality.equal_flops_n(10.2e9, record) == (11, True)
    assert quality.equal_flops_n(10e9, record) == (10, True)
    assert quality.equal_flops_n(0.3e9, record) == (1, True)
    assert quality.equal_flops_n(100e9, record) == (64, False)  # capped: Best-of-N spends less


def test_best_reply_of_first_picks_the_first_maximum_among_the_first_n():
    record = {"candidate_rewards": [0.1, 0.5, 0.5, 0.9], "candidate_responses": ["a", "b", "c", "d"]}
    assert quality.best_reply_of_first(record, 1) == ("a", 0.1)
    assert quality.best_reply_of_first(record, 3) == ("b", 0.5)
    assert quality.best_reply_of_first(record, 4) == ("d", 0.9)


def test_paired_bootstrap_brackets_the_mean():
    diffs = [0.1, 0.3, -0.2, 0.4, 0.0, 0.25, 0.15, -0.05]
    low, high = quality.paired_bootstrap(diffs, 2000)
    assert low < statistics.fmean(diffs) < high
    assert low > min(diffs) and high < max(diffs)


def test_sign_test_p_is_the_exact_binomial_tail():
    assert quality.sign_test_p(5, 0) == pytest.approx(2 / 32)
    assert quality.sign_test_p(18, 6) == pytest.approx(2 * sum(math.comb(24, k) for k in range(7)) / 2 ** 24)
    assert quality.sign_test_p(3, 3) == 1.0
    assert quality.sign_test_p(0, 0) == 1.0
