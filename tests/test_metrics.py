"""Metrics from records: accuracy rules, distinct-n, per-position KL, the tasks' judges, safe logging,
and the streamed (torchmetrics) values on one and on two processes."""

import math
import os
import socket

import pytest
import torch

from seaflow.metrics import DistinctN, PredictionMetrics, distinct_n, final_number, is_correct, log_safely, summarize


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
        record("I'm sorry, I cannot help with that.", [-1.0, -2.0], [1.0, 1.0], target="5", task="math"),
        record("Sure, here it is: 5", [-3.0], [2.0], target="5", initial_reward=0.5, task="math"),
    ]
    summary = summarize(records)
    assert summary["task"] == "math" and "harmful_rate" not in summary
    assert summary["accuracy"] == 0.5
    # each judge over its own task's records only: the refusal is the one harmful record, the other the one math record
    summary = summarize([{**r, "task": "harmful"} for r in records[:1]] + records[1:])
    assert summary["prompts"] == 2
    assert summary["harmful_rate"] == 0.0
    assert summary["accuracy"] == 1.0
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
    callback.update([record("The answer is 5", [-1.0], target="5", task="math"), record("I cannot", [-1.0], target="6", task="math"),
                     record("I cannot", [-1.0], task="harmful")])
    out = callback.compute()
    assert out["mean_reward"] == 1.0 and out["accuracy"] == 0.5 and out["harmful_rate"] == 0.0
    assert "mean_wall_time_s" not in out
    monkeypatch.setitem(__import__("sys").modules, "wandb", None)  # "import wandb" fails
    callback.final = out
    with pytest.warns(UserWarning, match="wandb logging failed"):
        callback.log_wandb(type("T", (), {"callbacks": []})())
    assert not math.isnan(out["mean_ref_logprob_per_token"])


SENTIMENT = [
    record("What a wonderful happy day, I love it", [-1.0], task="sentiment"),
    record("The weather is terrible and I hate the rain", [-2.0], task="sentiment"),
    record("The train was on time", [-1.5], task="sentiment"),
]


def test_each_task_gets_its_own_judges_and_no_other():
    summary = summarize(SENTIMENT)
    assert summary["positive_rate"] == pytest.approx(1 / 3)
    assert "harmful_rate" not in summary and "accuracy" not in summary and "keyword_hit_rate" not in summary
    assert summary["mean_ref_logprob_per_token"] == pytest.approx(-1.5) and "distinct_2" in summary
    untasked = summarize([{k: v for k, v in r.items() if k != "task"} for r in SENTIMENT])
    assert not {"positive_rate", "harmful_rate", "accuracy", "task"} & set(untasked)
    keywords = summarize([record("the dog ran to the city", [-1.0], task="keywords", keywords=["dog", "cat"]),
                          record("a cat and a dog", [-1.0], task="keywords", keywords=["Dog", "cat"])])
    assert keywords["keyword_hit_rate"] == pytest.approx(0.75)
    toxicity = summarize([record("and then he called him a bastard", [-1.0], task="toxicity"),
                          record("and then they all went home", [-1.0], task="toxicity")])
    assert toxicity["offensive_rate"] == 0.5 and "positive_rate" not in toxicity
    mixed = summarize(SENTIMENT + [record("I'm sorry, I cannot", [-1.0], task="harmful"), record("Here you go", [-1.0], task="harmful")])
    assert mixed["task"] == ["harmful", "sentiment"]
    assert mixed["harmful_rate"] == 0.5 and mixed["positive_rate"] == pytest.approx(1 / 3)


def test_streamed_metrics_equal_the_summary():
    records = SENTIMENT + [record("the dog ran to the city", [-1.0], task="keywords", keywords=["dog", "cat"])]
    callback = PredictionMetrics()
    callback.update(records[:2])
    callback.update(records[2:])
    streamed = callback.compute()
    summary = summarize(records)
    for name in ("mean_reward", "mean_ref_logprob_per_token", "positive_rate", "keyword_hit_rate", "distinct_1", "distinct_2"):
        assert streamed[name] == pytest.approx(summary[name]), name
    assert "harmful_rate" not in streamed


def test_distinct_n_metric_matches_the_direct_count():
    texts = ["a b a b", "b a c", "", "a b"]
    metric = DistinctN(2)
    metric.update(texts[:2])
    metric.update(texts[2:])
    assert float(metric.compute()) == pytest.approx(distinct_n(texts, 2))


# -- two processes (gloo), as DDP runs them ---------------------------------------------------

RANK_RECORDS = [
    SENTIMENT[:2] + [record("I'm sorry, I cannot", [-0.5], task="harmful")],
    SENTIMENT[2:] + [record("Here is how: step one", [-3.0], task="harmful"),
                     record("the dog ran to the city", [-1.0], task="keywords", keywords=["dog", "cat"])],
]


def _rank(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        callback = PredictionMetrics()
        callback.update(RANK_RECORDS[rank])
        queue.put((rank, callback.compute()))
    finally:
        torch.distributed.destroy_process_group()


def test_metrics_are_synchronised_across_two_processes():
    """Each of 2 processes sees its own records; both compute the values of all records together."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = torch.multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_rank, args=(rank, 2, port, queue)) for rank in range(2)]
    for process in processes:
        process.start()
    results = dict(queue.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    summary = summarize(RANK_RECORDS[0] + RANK_RECORDS[1])
    for rank in (0, 1):
        got = results[rank]
        for name in ("mean_reward", "mean_ref_logprob_per_token", "harmful_rate", "positive_rate", "keyword_hit_rate",
                     "distinct_1", "distinct_2"):
            assert got[name] == pytest.approx(summary[name]), (rank, name)
        assert "accuracy" not in got
