"""Aligner.stream: align's records, batch by batch, from any iterable of prompts."""

import pytest
import torch

from seaflow.api import load

TEXTS = ["describe the city", "tell me about the weather", "write about my dog", "how was the train", "tell me about work"]


@pytest.fixture(scope="module")
def aligner(tiny_models):
    return load({"model": {"class_path": "BestOfN", "init_args": {
        "policy": str(tiny_models["policy"]), "n": 2, "max_new_tokens": 4, "reward": {"class_path": "LexiconReward"}}},
        "data": {"batch_size": 2}})


def without_times(record):
    return {k: v for k, v in record.items() if k not in ("wall_time_s", "cost")}


def test_the_records_of_align(aligner):
    aligned = aligner.align(TEXTS)
    streamed = list(aligner.stream(TEXTS))
    assert [without_times(r) for r in streamed] == [without_times(r) for r in aligned]
    assert [r["index"] for r in streamed] == list(range(5))
    assert [r["id"] for r in aligner.stream(iter(TEXTS[:2]), ids=iter(["a", "b"]))] == ["a", "b"]


def test_prompts_are_read_as_batches_are_due(aligner):
    pulled = []

    def prompts():
        for text in TEXTS:
            pulled.append(text)
            yield text

    records = aligner.stream(prompts())
    assert pulled == []  # nothing is read before the first record is asked for
    first = next(records)
    assert first["prompt"] == TEXTS[0] and len(pulled) == 2  # one batch (data.batch_size)
    assert next(records)["id"] == "1" and len(pulled) == 2
    assert [r["id"] for r in records] == ["2", "3", "4"] and len(pulled) == 5


def test_the_caller_keeps_its_grad_mode_and_errors_come_with_their_batch(aligner):
    with torch.no_grad():
        for _ in aligner.stream(TEXTS[:3]):
            assert not torch.is_grad_enabled()
    records = aligner.stream([{"id": "x", "prompt": "describe the city"}, "tell me", {"id": "x", "prompt": "again"}])
    assert [r["id"] for r in (next(records), next(records))] == ["x", "1"]
    with pytest.raises(ValueError, match=r"stream got duplicate ids: \['x'\]"):
        next(records)
    with pytest.raises(ValueError, match="only that many ids"):
        list(aligner.stream(TEXTS[:3], ids=["a"]))
    with pytest.raises(ValueError, match="got 1 prompts but more ids"):
        list(aligner.stream(TEXTS[:1], ids=["a", "b"]))
    assert list(aligner.stream([])) == []


@pytest.mark.slow
def test_stream_on_the_embedded_model():
    """A generator of prompts through the demo config: align's records, batch by batch."""
    from pathlib import Path

    demo = Path(__file__).parent.parent / "configs" / "demo.yaml"
    aligner = load(demo, overrides={"model.init_args.steps": 2, "model.init_args.chains": 2, "model.init_args.max_new_tokens": 8,
                                    "data.batch_size": 1})
    prompts = ["Describe your morning.", "Tell me about Mondays."]
    streamed = aligner.stream(text for text in prompts)
    first = next(streamed)  # the first batch's record, before the second prompt is aligned
    assert first["prompt"] == prompts[0]
    records = [first, *streamed]
    assert [without_times(r) for r in records] == [without_times(r) for r in aligner.align(prompts)]
