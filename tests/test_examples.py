"""The example configs of configs/examples/ run through `seaflow predict` as shipped: on the tiny
policy (few tokens and steps), and once each on the embedded model (slow)."""

import json
from pathlib import Path

import pytest

from seaflow.cli import main
from seaflow.energies.keywords import keyword_hits

ROOT = Path(__file__).parent.parent
CONFIGS = ROOT / "configs"
EXAMPLES = CONFIGS / "examples"


def predict(name: str | Path, tmp_path: Path, *args: str, policy: str | None = None) -> list[dict]:
    """Run ``configs/examples/<name>`` (or the config at a path) from the repository root with ``args``
    as overrides; the records."""
    config = name if isinstance(name, Path) else EXAMPLES / name
    out = tmp_path / config.stem
    extra = ["--model.init_args.policy", policy] if policy else []
    main(["predict", "--config", str(config), "--output.output_dir", str(out),
          "--trainer.enable_progress_bar", "false", *extra, *args])
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def coverage(record: dict) -> float:
    words = record["keywords"] if isinstance(record["keywords"], list) else [w.strip() for w in record["keywords"].split(",")]
    return sum(keyword_hits(record["response"], words)) / len(words)


def check_keyword_rows(records: list[dict], exact: bool = True) -> None:
    """Each row scored with its own keywords. GuidedSuffixMCMC reports the reward of its
    Metropolis target, KeywordReward on one-hot tokens: with a subword tokenizer a keyword's
    token inside a longer word ("night" in "nightclub") counts there and not in the exact
    judge, so only the word-level tiny tokenizer makes the two equal."""
    assert [r["id"] for r in records] == ["street-dog", "street-train", "lunch"]
    assert records[0]["prompt"] == records[1]["prompt"] and records[0]["keywords"] != records[1]["keywords"]
    for record in records:
        assert 0 <= record["reward"] <= 1
        if exact:
            assert record["reward"] == pytest.approx(coverage(record)), record["id"]


def test_keywords_per_row_on_the_tiny_policy(tmp_path, tiny_models, monkeypatch):
    monkeypatch.chdir(ROOT)
    records = predict("keywords_per_row.yaml", tmp_path, "--model.init_args.max_new_tokens", "4",
                      "--model.init_args.steps", "2", policy=str(tiny_models["policy"]))
    check_keyword_rows(records)
    summary = json.loads((tmp_path / "keywords_per_row" / "summary.json").read_text())
    assert summary["keyword_hit_rate"] == pytest.approx(sum(map(coverage, records)) / 3)


@pytest.mark.slow
def test_keywords_per_row_on_the_embedded_model(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    records = predict("keywords_per_row.yaml", tmp_path, "--model.init_args.max_new_tokens", "12",
                      "--model.init_args.steps", "2", "--model.init_args.chains", "2")
    check_keyword_rows(records, exact=False)


def check_math_rows(records: list[dict], summary: dict) -> None:
    from seaflow.energies.verifier import is_correct

    assert [r["id"] for r in records] == ["apples", "pens"] and records[1]["target"].endswith("#### 36")
    for record in records:
        assert record["reward"] == float(is_correct(record["response"], record["target"]))
        assert record["candidate_rewards"] == [float(is_correct(text, record["target"])) for text in record["candidate_responses"]]
    assert summary["accuracy"] == pytest.approx(sum(r["reward"] for r in records) / 2)


def test_math_verifier_on_the_tiny_policy(tmp_path, tiny_models, monkeypatch):
    monkeypatch.chdir(ROOT)
    records = predict("math_verifier.yaml", tmp_path, "--model.init_args.max_new_tokens", "4", "--model.init_args.n", "2",
                      policy=str(tiny_models["policy"]))
    check_math_rows(records, json.loads((tmp_path / "math_verifier" / "summary.json").read_text()))


@pytest.mark.slow
def test_math_verifier_on_the_embedded_model(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    records = predict("math_verifier.yaml", tmp_path, "--model.init_args.max_new_tokens", "40", "--model.init_args.n", "4",
                      "--data.limit", "1")
    assert len(records) == 1
    from seaflow.energies.verifier import is_correct

    assert records[0]["candidate_rewards"] == [float(is_correct(t, "7")) for t in records[0]["candidate_responses"]]


def check_combined(records: list[dict], exact: bool = True) -> None:
    """The record's parts and the trace's; ``exact``: the parts of the returned reply add up to its
    reward (GuidedSuffixMCMC's reward is KeywordReward's one-hot value, which a subword tokenizer
    may set apart from the exact text check, see check_keyword_rows)."""
    import torch

    for record in records:
        parts = record["reward_parts"]
        assert list(parts) == ["sentiment", "keywords"]
        if exact:
            assert record["reward"] == pytest.approx(parts["sentiment"] + 0.5 * parts["keywords"], abs=1e-5)
        trace = {name: torch.tensor(record["trace"][name]) for name in ("reward", "reward.sentiment", "reward.keywords")}
        torch.testing.assert_close(trace["reward.sentiment"] + 0.5 * trace["reward.keywords"], trace["reward"])


def test_combined_rewards_on_the_tiny_policy(tmp_path, tiny_models, monkeypatch):
    monkeypatch.chdir(ROOT)
    records = predict("combined_rewards.yaml", tmp_path, "--model.init_args.max_new_tokens", "4",
                      "--model.init_args.steps", "2", policy=str(tiny_models["policy"]))
    check_combined(records)
    for record in records:  # the tiny tokenizer is word-level: the keyword part is the exact judge
        assert record["reward_parts"]["keywords"] == pytest.approx(coverage(record))


def test_combined_rewards_through_seaflow_load(tmp_path, tiny_models, monkeypatch):
    """seaflow.load of the same config gives the records seaflow predict writes (times apart)."""
    from seaflow.api import load

    monkeypatch.chdir(ROOT)
    args = ["--model.init_args.max_new_tokens", "4", "--model.init_args.steps", "2"]
    written = predict("combined_rewards.yaml", tmp_path, *args, policy=str(tiny_models["policy"]))
    aligner = load(EXAMPLES / "combined_rewards.yaml", overrides=[*args, "--model.init_args.policy", str(tiny_models["policy"])])
    rows = [json.loads(line) for line in (ROOT / "configs" / "prompts" / "keywords_rows.jsonl").read_text().splitlines()]
    returned = aligner.align(rows)
    check_combined(returned)

    def timeless(record):
        return {k: v for k, v in record.items() if k not in ("wall_time_s", "cost")}

    assert [timeless(r) for r in returned] == [timeless(r) for r in written]


@pytest.mark.slow
def test_combined_rewards_on_the_embedded_model(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    records = predict("combined_rewards.yaml", tmp_path, "--model.init_args.max_new_tokens", "12",
                      "--model.init_args.steps", "2", "--model.init_args.chains", "2", "--data.limit", "2")
    check_combined(records, exact=False)


def check_conversations(records: list[dict]) -> None:
    rows = [json.loads(line) for line in (ROOT / "configs" / "prompts" / "conversations.jsonl").read_text().splitlines()]
    for record, row in zip(records, rows):
        assert record["messages"] == row["messages"] and record["prompt"] == row["messages"][-1]["content"]


def test_conversation_on_the_tiny_policy(tmp_path, tiny_models, monkeypatch):
    monkeypatch.chdir(ROOT)
    records = predict("conversation.yaml", tmp_path, "--model.init_args.max_new_tokens", "4",
                      "--model.init_args.steps", "2", policy=str(tiny_models["policy"]))
    assert [r["id"] for r in records] == ["trip", "monday"]
    check_conversations(records)


@pytest.mark.slow
def test_conversation_on_the_embedded_model(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    records = predict("conversation.yaml", tmp_path, "--model.init_args.max_new_tokens", "12",
                      "--model.init_args.steps", "2", "--model.init_args.chains", "2", "--data.limit", "1")
    assert [r["id"] for r in records] == ["trip"]
    check_conversations(records)


def test_adapter_on_the_tiny_policy(tmp_path, tiny_models, monkeypatch):
    from tiny import build_lora_adapter

    monkeypatch.chdir(ROOT)
    adapter = build_lora_adapter(str(tiny_models["policy"]), tmp_path / "lora")
    with_adapter = predict("adapter.yaml", tmp_path, "--model.init_args.max_new_tokens", "4", "--model.init_args.steps", "2",
                           "--model.init_args.adapter", str(adapter), policy=str(tiny_models["policy"]))
    assert len(with_adapter) == 2
    plain = predict("adapter.yaml", tmp_path / "plain", "--model.init_args.max_new_tokens", "4", "--model.init_args.steps", "2",
                    "--model.init_args.adapter", "null", policy=str(tiny_models["policy"]))
    assert [r["ref_token_logprobs"] for r in plain] != [r["ref_token_logprobs"] for r in with_adapter]


@pytest.mark.slow
def test_adapter_on_the_embedded_model(tmp_path, monkeypatch):
    from tiny import build_lora_adapter

    from seaflow.models import EMBEDDED_DEFAULT

    monkeypatch.chdir(ROOT)
    adapter = build_lora_adapter(EMBEDDED_DEFAULT, tmp_path / "lora", scale=0.01)
    records = predict("adapter.yaml", tmp_path, "--model.init_args.max_new_tokens", "12", "--model.init_args.steps", "2",
                      "--model.init_args.chains", "2", "--data.limit", "1", "--model.init_args.adapter", str(adapter))
    assert len(records) == 1 and records[0]["response"]


def check_keyword_chains(records: list[dict], ids: list[str]) -> None:
    """configs/examples/keywords_chains.yaml: the likeliest of the best-reward states, every rule's reply recorded."""
    assert [r["id"] for r in records] == ids
    for record in records:
        assert record["returns"] == "likeliest_best"
        rules = record["alternatives"]
        assert set(rules) == {"best_reward", "likeliest_best", "best_target", "final"}
        assert record["response"] == rules["likeliest_best"]["response"]
        assert record["reward"] == pytest.approx(rules["best_reward"]["reward"])  # the best reward, whichever state holds it
        assert "token_move" in record["trace"]


def check_keyword_best_of_n(records: list[dict], ids: list[str], n: int) -> None:
    """configs/keywords.yaml: Best-of-N's best reward, the likeliest of the tied candidates."""
    assert [r["id"] for r in records] == ids
    for record in records:
        assert record["returns"] == "likeliest_best" and record["n"] == n
        rewards, likelihood = record["candidate_rewards"], record["candidate_ref_logprobs"]
        best = [c for c in range(n) if rewards[c] == max(rewards)]
        assert record["candidate"] == max(best, key=lambda c: likelihood[c])


TINY_KEYWORD_ROWS = ('{"id": "a", "prompt": "describe the city. use the words dog and night.", "keywords": ["dog", "night"]}\n'
                     '{"id": "b", "prompt": "how was the train? use the word food.", "keywords": ["food"]}\n')  # the tiny tokenizer's words


def test_keyword_configs_on_the_tiny_policy(tmp_path, tiny_models, monkeypatch):
    monkeypatch.chdir(ROOT)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(TINY_KEYWORD_ROWS)
    tiny = ["--data.path", str(rows), "--model.init_args.max_new_tokens", "4"]
    policy = str(tiny_models["policy"])
    check_keyword_best_of_n(predict(CONFIGS / "keywords.yaml", tmp_path, *tiny, "--model.init_args.n", "6", policy=policy), ["a", "b"], 6)
    check_keyword_chains(predict("keywords_chains.yaml", tmp_path, *tiny, "--model.init_args.steps", "4", policy=policy), ["a", "b"])


@pytest.mark.slow
def test_keyword_configs_on_the_embedded_model(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    ids = ["kw-garden", "kw-breakfast", "kw-letter", "kw-evening"]
    records = predict(CONFIGS / "keywords.yaml", tmp_path, "--model.init_args.n", "8")
    check_keyword_best_of_n(records, ids, 8)
    assert sum(map(coverage, records)) > 0  # asked, the policy writes some of the words
    records = predict("keywords_chains.yaml", tmp_path, "--model.init_args.steps", "4", "--model.init_args.chains", "2")
    check_keyword_chains(records, ids)
    assert sum(map(coverage, records)) > 0  # asked, the policy writes some of the words


def check_unasked_keyword_chains(records: list[dict], prompts: dict[str, str]) -> None:
    """configs/examples/keywords_unasked.yaml: the target's best visited state, for the prompt as given."""
    assert [r["id"] for r in records] == list(prompts)
    for record in records:
        assert record["prompt"] == prompts[record["id"]]  # the record's prompt is the user's, not the instructed one
        assert record["returns"] == "best_target"
        assert record["response"] == record["alternatives"]["best_target"]["response"]
        assert "token_move" in record["trace"]


TINY_UNASKED_ROWS = ('{"id": "a", "prompt": "describe the city.", "keywords": ["dog", "night"]}\n'
                     '{"id": "b", "prompt": "how was the train?", "keywords": ["food"]}\n')


def test_unasked_keyword_config_on_the_tiny_policy(tmp_path, tiny_models, monkeypatch):
    monkeypatch.chdir(ROOT)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(TINY_UNASKED_ROWS)
    records = predict("keywords_unasked.yaml", tmp_path, "--data.path", str(rows), "--model.init_args.max_new_tokens", "4",
                      "--model.init_args.steps", "4", policy=str(tiny_models["policy"]))
    check_unasked_keyword_chains(records, {"a": "describe the city.", "b": "how was the train?"})


@pytest.mark.slow
def test_unasked_keyword_config_on_the_embedded_model(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    rows = [json.loads(line) for line in (ROOT / "configs" / "prompts" / "keywords_unasked.jsonl").read_text().splitlines()]
    records = predict("keywords_unasked.yaml", tmp_path, "--model.init_args.steps", "4", "--model.init_args.chains", "2")
    check_unasked_keyword_chains(records, {r["id"]: r["prompt"] for r in rows})
    assert sum(map(coverage, records)) > 0  # the instructed proposals bring the words in


def check_asked_search(records: list[dict], ids: list[str], beams: int, rounds: int) -> None:
    """configs/sentiment_asked.yaml: the best of at most ``beams`` kept beams, at most ``rounds`` rounds."""
    assert [r["id"] for r in records] == ids
    for record in records:
        kept = record["beam_rewards"]
        assert 1 <= len(kept) <= beams and 1 <= record["rounds"] <= rounds
        assert record["reward"] == pytest.approx(max(kept)) == pytest.approx(kept[0])  # the best beam, kept first


def demo_ids() -> list[str]:
    return [json.loads(line)["id"] for line in (ROOT / "configs" / "prompts" / "demo.jsonl").read_text().splitlines() if line.strip()]


def test_asked_sentiment_config_on_the_tiny_policy(tmp_path, tiny_models, monkeypatch):
    monkeypatch.chdir(ROOT)
    records = predict(CONFIGS / "sentiment_asked.yaml", tmp_path, "--model.init_args.max_new_tokens", "6",
                      "--model.init_args.chunk_length", "2", "--data.limit", "3", policy=str(tiny_models["policy"]))
    check_asked_search(records, demo_ids()[:3], beams=4, rounds=3)


@pytest.mark.slow
def test_asked_sentiment_config_on_the_embedded_model(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    records = predict(CONFIGS / "sentiment_asked.yaml", tmp_path, "--data.limit", "2")
    check_asked_search(records, demo_ids()[:2], beams=4, rounds=3)
    assert all(r["reward"] > 0 for r in records)  # asked for warmth, the best beams use positive words
