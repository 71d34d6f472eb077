"""Rewards worth optimising: the lexicon reward's math, calibration, and the trained reward head."""

import importlib.metadata
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from seaflow.calibrate import (
    LabelledJsonl, PyritRefusal, RefusalPhrases, auc, best_threshold, calibrate, distribution,
)
from seaflow.energies import LexiconReward, RewardModel
from seaflow.energies.base import ResponseBatch
from seaflow.energies.lexicon import read_lexicon


def _installed(package: str) -> bool:
    try:
        importlib.metadata.distribution(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _ids(policy, words):
    return [policy.tokenizer.convert_tokens_to_ids(w) for w in words]


def _batch(lengths, width):
    return ResponseBatch([[5]] * len(lengths), ["x"] * len(lengths), torch.tensor(lengths), width)


# -- LexiconReward -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lexicon(tiny_policy):
    term = LexiconReward()
    term.setup(tiny_policy)
    return term


def test_one_hot_relaxed_reward_is_mean_token_value(tiny_policy, lexicon):
    rows = [["good", "train", "happy", "city", "terrible"], ["sad", "awful", "dog", "the", "the"]]
    tokens = torch.tensor([_ids(tiny_policy, r) for r in rows])
    batch = _batch([5, 3], 5)  # row 2: only its first 3 tokens are active
    one_hot = F.one_hot(tokens, tiny_policy.vocab_size).float().requires_grad_(True)
    value = lexicon.value(lexicon.prepare(batch), one_hot)
    expected = torch.stack([
        sum(lexicon.values[t] for t in tokens[0]) / 5,
        sum(lexicon.values[t] for t in tokens[1, :3]) / 3,
    ])
    torch.testing.assert_close(value, expected)
    # the same number from token ids, and a gradient that is the (masked) value vector / length
    torch.testing.assert_close(lexicon.value(lexicon.prepare(batch), tokens), expected)
    (grad,) = torch.autograd.grad(value.sum(), one_hot)
    torch.testing.assert_close(grad[0, 0], lexicon.values / 5)
    assert torch.count_nonzero(grad[1, 3:]) == 0


def test_out_of_lexicon_tokens_contribute_zero(tiny_policy, lexicon):
    vader = read_lexicon("vader")
    neutral = [w for w in ("train", "city", "dog", "weather", "the") if w not in vader]
    assert len(neutral) >= 3
    for token in _ids(tiny_policy, neutral):
        assert lexicon.values[token] == 0
    tokens = torch.tensor([_ids(tiny_policy, neutral[:3])])
    assert float(lexicon.value(lexicon.prepare(_batch([3], 3)), tokens)) == 0.0
    # an out-of-lexicon token only dilutes the mean: it adds nothing to the sum
    good = _ids(tiny_policy, ["good"])[0]
    mixed = torch.tensor([[good] + _ids(tiny_policy, neutral[:2])])
    assert float(lexicon.value(lexicon.prepare(_batch([3], 3)), mixed)) == pytest.approx(float(lexicon.values[good]) / 3)


def test_soft_distribution_gives_expected_value(tiny_policy, lexicon):
    probs = torch.softmax(torch.randn(2, 4, tiny_policy.vocab_size, generator=torch.Generator().manual_seed(0)), -1)
    value = lexicon.value(lexicon.prepare(_batch([4, 4], 4)), probs)
    torch.testing.assert_close(value, (probs @ lexicon.values).mean(-1))


def test_vader_values_are_scaled_to_unit_range(lexicon):
    assert lexicon.values.abs().max() <= 1.0
    assert lexicon.covered_tokens > 10


def test_user_word_file_and_inline_words(tmp_path, tiny_policy):
    path = tmp_path / "avoid.txt"
    path.write_text("# words to avoid\nterrible\nhate 2.5\n\nBAD\t0.5\n")
    assert read_lexicon(str(path)) == {"terrible": 1.0, "hate": 2.5, "bad": 0.5}
    term = LexiconReward(lexicon=str(path), scale=-1.0)
    term.setup(tiny_policy)
    terrible, hate, bad, good = _ids(tiny_policy, ["terrible", "hate", "bad", "good"])
    assert (float(term.values[terrible]), float(term.values[hate]), float(term.values[bad])) == (-1.0, -2.5, -0.5)
    assert term.values[good] == 0  # not in the user's list
    inline = LexiconReward(lexicon=None, words={"dog": 1.0, "Cat": -1.0})
    inline.setup(tiny_policy)
    dog, cat = _ids(tiny_policy, ["dog", "cat"])
    assert (float(inline.values[dog]), float(inline.values[cat])) == (1.0, -1.0)
    assert inline.covered_tokens == 2


def test_lexicon_errors_name_the_problem(tmp_path, tiny_policy):
    bad = tmp_path / "bad.txt"
    bad.write_text("good very\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        read_lexicon(str(bad))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_lexicon(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="lexicon"):
        LexiconReward(lexicon=None)
    empty = tmp_path / "none.txt"
    empty.write_text("zzzz-not-a-token 1\n")
    with pytest.raises(ValueError, match="none of the"):
        LexiconReward(lexicon=str(empty)).setup(tiny_policy)


# -- calibration metrics -------------------------------------------------------------------------


def test_auc_against_direct_pair_count():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (40,), generator=g).float().tolist()  # many ties
    labels = torch.randint(0, 2, (40,), generator=g).tolist()
    pairs = [(s1 > s0) + 0.5 * (s1 == s0) for s1, y1 in zip(scores, labels) if y1 for s0, y0 in zip(scores, labels) if not y0]
    assert auc(scores, labels) == pytest.approx(sum(pairs) / len(pairs))
    assert auc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert auc([1, 2, 3, 4], [1, 1, 0, 0]) == 0.0
    assert auc([1, 1, 1, 1], [1, 0, 1, 0]) == 0.5


def test_best_threshold_against_every_rule():
    """The best "score > t" rule over every candidate t, counted directly: same accuracy, and the
    same threshold (the lowest of the best, halfway between neighbouring scores)."""
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        scores = (torch.randint(0, 6, (25,), generator=g).float() * 7.5 - 10).tolist()  # ties, scores far outside [0, 1]
        labels = torch.randint(0, 2, (25,), generator=g).tolist()
        values = sorted(set(scores))
        candidates = [values[0] - 1.0] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [values[-1] + 0.5]
        counted = [(sum((s > t) == bool(y) for s, y in zip(scores, labels)) / len(scores), t) for t in candidates]
        best = max(a for a, _ in counted)
        assert best_threshold(scores, labels) == (best, next(t for a, t in counted if a == best))


def test_auc_keeps_the_order_of_large_scores():
    assert auc([40.0, 41.0, 42.0, 43.0], [0, 0, 1, 1]) == 1.0  # a sigmoid would tie them in float64


def test_best_threshold_accuracy():
    accuracy, threshold = best_threshold([0.1, 0.2, 0.8, 0.3, 0.9], [0, 0, 1, 1, 1])
    assert accuracy == 1.0 and 0.2 < threshold < 0.3
    accuracy, _ = best_threshold([1.0, 1.0], [0, 1])
    assert accuracy == 0.5
    stats = distribution([1.0, 2.0, 3.0, 4.0, 5.0])
    assert stats["mean"] == 3.0 and stats["q50"] == 3.0 and stats["n"] == 5


# -- calibrate end to end -------------------------------------------------------------------------


SENTIMENT_ROWS = [
    ("tell me about the day", "the day was wonderful and happy", 1),
    ("tell me about the city", "i love the city it is beautiful", 1),
    ("tell me about my dog", "my dog is the best friend", 1),
    ("tell me about the food", "the food was great and nice", 1),
    ("tell me about the day", "the day was terrible and sad", 0),
    ("tell me about the city", "i hate the city it is ugly", 0),
    ("tell me about my dog", "my dog is angry and awful", 0),
    ("tell me about the food", "the food was horrible", 0),
]


def _labelled_file(path: Path, rows, label_name=None) -> Path:
    with open(path, "w") as handle:
        for prompt, response, label in rows:
            value = label_name[label] if label_name else label
            handle.write(json.dumps({"prompt": prompt, "response": response, "label": value}) + "\n")
    return path


def test_calibrate_lexicon_through_the_cli(tmp_path, tiny_models, capsys):
    from seaflow.cli import main

    data = _labelled_file(tmp_path / "sentiment.jsonl", SENTIMENT_ROWS, {1: "positive", 0: "negative"})
    config = tmp_path / "calibrate.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"class_path": "LabelledJsonl", "init_args": {"path": str(data)}},
        "reward": {"class_path": "LexiconReward", "init_args": {"lexicon": "vader"}},
        "policy": str(tiny_models["policy"]),
        "batch_size": 3,
        "output": str(tmp_path / "out" / "report.json"),
    }))
    main(["calibrate", "--config", str(config)])
    captured = capsys.readouterr()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert json.loads(captured.out)["auc"] == report["auc"] == 1.0
    assert report["rows"] == 8 and report["label_1_rows"] == 4 and report["verdict"] == "fit"
    assert report["label_1"]["mean"] > 0 > report["label_0"]["mean"]
    assert report["markdown"] in captured.err and "| 1.000 |" in report["markdown"]


def test_calibrate_scores_in_batches_like_one_by_one(tmp_path, tiny_models):
    """Batching (left padding, mixed lengths) must not change any row's reward."""
    data = LabelledJsonl(str(_labelled_file(tmp_path / "s.jsonl", SENTIMENT_ROWS)))
    reward = RewardModel(model=str(tiny_models["reward"]))
    batched = calibrate(data, reward=reward, policy=str(tiny_models["policy"]), batch_size=8)
    single = calibrate(data, reward=reward, policy=str(tiny_models["policy"]), batch_size=1)
    for key in ("auc", "accuracy_at_best_threshold"):
        assert batched[key] == pytest.approx(single[key])
    assert batched["label_1"]["mean"] == pytest.approx(single["label_1"]["mean"], abs=1e-5)


def test_calibrate_text_scorer_and_errors(tmp_path, tiny_models):
    rows = [("q", "sorry i cannot answer that", 1), ("q", "here is the answer", 0),
            ("q", "no , i cannot answer", 1), ("q", "sure , the city is nice", 0)]
    data = LabelledJsonl(str(_labelled_file(tmp_path / "r.jsonl", rows)))
    report = calibrate(data, scorer=RefusalPhrases(), policy=str(tiny_models["policy"]))
    assert report["auc"] == 1.0
    with pytest.raises(ValueError, match="exactly one"):
        calibrate(data, policy=str(tiny_models["policy"]))
    one_class = LabelledJsonl(str(_labelled_file(tmp_path / "one.jsonl", rows[:1])))
    with pytest.raises(ValueError, match="both labels"):
        calibrate(one_class, scorer=RefusalPhrases(), policy=str(tiny_models["policy"]))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "q", "response": "r"}\n')
    with pytest.raises(ValueError, match="broken.jsonl:1: no field 'label'"):
        LabelledJsonl(str(broken)).rows()


@pytest.mark.skipif(not _installed("pyrit"), reason="needs pyrit's wheel: pip install --no-deps pyrit==1.1.0")
def test_pyrit_refusal_reader():
    rows = PyritRefusal().rows()
    assert len(rows) == 105 and sum(r.label for r in rows) == 70
    assert all(r.response.strip() for r in rows)
    extra = PyritRefusal("refusal_extra.csv").rows()
    assert len(extra) == 64


def test_shipped_sentiment_set_is_balanced():
    rows = LabelledJsonl(str(Path(__file__).parent.parent / "data" / "sentiment_sentences.jsonl")).rows()
    assert len(rows) == 100 and sum(r.label for r in rows) == 50


# -- the trained reward head ---------------------------------------------------------------------


HEAD_ROWS = [
    ("tell me about the city", "sorry i cannot answer that", 1),
    ("write about my dog", "sorry i cannot answer", 1),
    ("how was the train", "i cannot answer that request", 1),
    ("describe the weather", "sorry , i cannot", 1),
    ("tell me about the city", "the city is great and the food is nice", 0),
    ("write about my dog", "my dog is happy and we love him", 0),
    ("how was the train", "the train was fun and fast", 0),
    ("describe the weather", "the weather is nice this morning", 0),
]


def _head_config(tmp_path, tiny_models, data_args=None, **trainer):
    labelled = _labelled_file(tmp_path / "labelled.jsonl", HEAD_ROWS)
    config = {
        "model": {"class_path": "seaflow.reward_head.RewardHead", "init_args": {
            "policy": str(tiny_models["policy"]), "export_dir": str(tmp_path / "head"), "lr": 0.05,
        }},
        "data": {"class_path": "seaflow.reward_head.RefusalHeadData", "init_args": {
            "harmful": [], "benign": [], "labelled": [str(labelled)], "val_fraction": 0.0, "batch_size": 4,
            **(data_args or {}),
        }},
        "trainer": {"max_epochs": 3, "accelerator": "cpu", "logger": False, "enable_model_summary": False,
                    "default_root_dir": str(tmp_path / "root"), **trainer},
    }
    path = tmp_path / "head.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_fit_cli_trains_exports_and_reloads_through_reward_model(tmp_path, tiny_models, tiny_policy):
    from seaflow.cli import main

    main(["fit", "--config", str(_head_config(tmp_path, tiny_models))])
    export = tmp_path / "head"
    assert (export / "config.json").exists()
    checkpoints = list((tmp_path / "root").rglob("*.ckpt"))
    assert checkpoints and all(c.stat().st_size < 1_000_000 for c in checkpoints)  # the frozen policy stays out
    config = json.loads((export / "config.json").read_text())
    assert len(config["id2label"]) == 1 and config["seaflow_reward_head"]["include_prompt"] is False
    reward = RewardModel(model=str(export), include_prompt=False)
    reward.setup(tiny_policy)  # same vocabulary as the policy, checked here
    tok = tiny_policy.tokenizer
    ids = [tok.encode(r, add_special_tokens=False) for _, r, _ in HEAD_ROWS]
    width = max(map(len, ids))
    tokens = torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x in ids])
    batch = ResponseBatch([tok.encode(p) for p, _, _ in HEAD_ROWS], [p for p, _, _ in HEAD_ROWS],
                          torch.tensor([len(x) for x in ids]), width)
    scores = reward.value(reward.prepare(batch), tokens)
    assert torch.isfinite(scores).all() and scores.std() > 0


def test_exported_head_computes_the_trained_score(tmp_path, tiny_models, tiny_policy):
    import lightning as L

    from seaflow.reward_head import RefusalHeadData, RewardHead

    labelled = _labelled_file(tmp_path / "labelled.jsonl", HEAD_ROWS)
    module = RewardHead(policy=str(tiny_models["policy"]), export_dir=str(tmp_path / "head"), lr=0.05)
    data = RefusalHeadData(harmful=[], benign=[], labelled=[str(labelled)], val_fraction=0.0, batch_size=4)
    trainer = L.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, data)
    prompts, responses, labels = map(list, zip(*HEAD_ROWS))
    with torch.no_grad():
        trained = module(prompts, responses) - module.bias
    separation = auc(trained.tolist(), labels)
    assert separation > 0.5  # a few steps on 8 rows already separate them
    reward = RewardModel(model=str(tmp_path / "head"), include_prompt=False)
    reward.setup(tiny_policy)
    calibrated = calibrate(LabelledJsonl(str(labelled)), reward=reward, policy=str(tiny_models["policy"]))
    assert calibrated["auc"] == pytest.approx(separation)
    tok = tiny_policy.tokenizer
    for response, score in zip(responses, trained):
        ids = torch.tensor([tok.encode(response, add_special_tokens=False)])
        batch = ResponseBatch([[]], [""], torch.tensor([ids.shape[1]]), ids.shape[1])
        value = reward.value(reward.prepare(batch), ids)
        assert float(value) == pytest.approx(float(score), abs=1e-4)


def test_head_data_generates_once_and_caches(tmp_path, tiny_models):
    from seaflow.reward_head import RefusalHeadData

    harmful, benign = tmp_path / "harmful.txt", tmp_path / "benign.txt"
    harmful.write_text("tell me about the city\nwrite about my dog\nhow was the train\n")
    benign.write_text("describe the weather\n")
    data = RefusalHeadData(
        responses=str(tmp_path / "cache" / "responses.jsonl"), harmful=[str(harmful)], benign=[str(benign)],
        limit_per_source=2, system_prompts=[None, "be safe"], refusal_prefills=["i cannot"], policy=str(tiny_models["policy"]),
        max_new_tokens=5, generation_batch_size=3,
    )
    data.prepare_data()
    lines = (tmp_path / "cache" / "responses.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 8  # (2 harmful + 1 benign prompts) x 2 system prompts + 2 prefilled harmful
    prefilled = [r for r in rows if r.get("prefill")]
    assert len(prefilled) == 2 and all(r["response"].startswith("i cannot") and r["label"] == 1 for r in prefilled)
    assert {r["kind"] for r in rows} == {"harmful", "benign"}
    assert all(r["label"] in (0, 1) and r["label_rule"] == "refusal-phrases" for r in rows)
    data.prepare_data()  # cached: nothing is sampled again
    assert (tmp_path / "cache" / "responses.jsonl").read_text().splitlines() == lines


CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.mark.parametrize("config", sorted((CONFIGS / "calibration").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_calibration_configs_parse(config, capsys):
    """Every calibration config parses (nothing runs); yes/no answer words stay strings."""
    from seaflow.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    parsed = yaml.safe_load(capsys.readouterr().out)
    assert parsed["data"]["class_path"].startswith("seaflow.calibrate.")
    reward = parsed.get("reward") or {}
    for field in ("positive", "negative"):
        for word in reward.get("init_args", {}).get(field) or []:
            assert isinstance(word, str), f"{config.name}: {field} has {word!r}: quote yes/no in YAML"


def test_reward_head_config_parses(capsys):
    from seaflow.cli import main

    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / "reward_head.yaml"), "--print_config"])
    parsed = yaml.safe_load(capsys.readouterr().out)
    assert parsed["model"]["class_path"] == "seaflow.reward_head.RewardHead"
    assert parsed["data"]["init_args"]["harmful"] == ["advbench", "harmbench"]
