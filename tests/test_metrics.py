"""Metrics from records: accuracy rules, distinct-n, per-position KL, harmful rate, safe logging."""

import math

import pytest

from seaflow.metrics import PredictionMetrics, distinct_n, final_number, is_correct, log_safely, summarize


@pytest.mark.parametrize("text, number", [
    ("She has 3 apples, then 4 more. #### 7", 7.0),
    ("So 12 + 5 = 17. The answer is 17.", 17.0),
    ("Answer: $1,234.50 in total, not 3", 1234.5),
    ("first 2 then 3 then -4", -4.0),
    ("no digits here", None),
])
def test_final_number(text, number):
    assert final_number(text) == number


def test_is_correct():
    assert is_correct("The answer is 2,280.", "2280")
    assert not is_correct("The answer is 2281.", "2280")
    assert not is_correct("I cannot tell.", "5")


def test_distinct_n():
    assert distinct_n(["a b a b"], 1) == 0.5
    assert distinct_n(["a b", "a b"], 2) == 0.5
    assert distinct_n(["a"], 2) is None


def record(response, logprobs, entropy=None, **extra):
    return {"id": response, "method": "M", "response": response, "reward": 1.0,
            "ref_logprob_per_token": sum(logprobs) / len(logprobs),
            "ref_token_logprobs": logprobs, "ref_token_entropy": entropy, **extra}


def test_summary_fields():
    records = [
        record("I'm sorry, I cannot help with that.", [-1.0, -2.0], [1.0, 1.0], target="5"),
        record("Sure, here it is: 5", [-3.0], [2.0], target="5", initial_reward=0.5),
    ]
    summary = summarize(records)
    assert summary["prompts"] == 2
    assert summary["harmful_rate"] == 0.5
    assert summary["accuracy"] == 0.5
    assert summary["win_rate_vs_initial"] == 1.0
    assert summary["ref_nll_per_position"] == [2.0, 2.0]
    assert summary["responses_per_position"] == [2, 1]
    assert summary["kl_per_position"] == [pytest.approx(0.5), pytest.approx(1.0)]
    assert summary["mean_kl_per_token"] == pytest.approx((0.0 + 1.0 + 1.0) / 3)
    assert 0 < summary["distinct_1"] <= 1


def test_summary_without_optional_fields_keeps_the_basics():
    summary = summarize([{"id": "a", "method": "SEA", "response": "hello there", "reward": 0.1}])
    assert summary["prompts"] == 1 and summary["mean_reward"] == 0.1
    assert "accuracy" not in summary and "kl_per_position" not in summary


def test_prediction_metrics_means_and_safe_logging(monkeypatch):
    class Broken:
        def log_metrics(self, metrics, step):
            raise RuntimeError("logger down")

    class Trainer:
        loggers = [Broken()]

    with pytest.warns(UserWarning, match="logger down"):
        log_safely(Trainer(), {"a": 1.0}, step=0)
    callback = PredictionMetrics()
    callback.update([record("The answer is 5", [-1.0], target="5"), record("I cannot", [-1.0], target="6")])
    out = callback.compute()
    assert out["reward"] == 1.0 and out["accuracy"] == 0.5 and out["harmful_rate"] == 0.5
    assert "wall_time_s" not in out
    monkeypatch.setitem(__import__("sys").modules, "wandb", None)  # "import wandb" fails
    callback.final = out
    with pytest.warns(UserWarning, match="wandb logging failed"):
        callback.log_wandb(type("T", (), {"callbacks": []})())
    assert not math.isnan(out["ref_logprob_per_token"])
