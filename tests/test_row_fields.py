"""Fields of the prompt rows reach every reward (ResponseBatch.fields), the method's batch and the record."""

import json
import pickle

import pytest
import torch
import yaml

from seaflow.data import PromptDataModule, PromptFileError
from seaflow.energies import KeywordReward, PromptText
from seaflow.energies.base import ResponseBatch
from seaflow.energies.keywords import keyword_hits
from seaflow.methods import ARGS, CBS, SEA, BestOfN, BiasedDecoding, GuidedSuffixMCMC, Sample
from seaflow.samplers import Langevin

from tiny import run_method

# two rows with the same prompt text and different keywords (and a third with a comma-separated string)
ROWS = [
    {"id": "a", "prompt": "describe the city", "keywords": ["dog"]},
    {"id": "b", "prompt": "describe the city", "keywords": ["cat", "train"]},
    {"id": "c", "prompt": "tell me about the weather", "keywords": "good, day", "mood": "calm"},
]


def test_prompt_text_is_its_text_and_carries_its_row():
    text = PromptText("hello", {"id": "1", "keywords": ["a"]})
    assert text == "hello" and hash(text) == hash("hello") and isinstance(text, str)
    assert dict(text.fields) == {"id": "1", "keywords": ["a"]}
    back = pickle.loads(pickle.dumps(text))  # DDP and dataloader workers pickle batches
    assert back == "hello" and dict(back.fields) == dict(text.fields)
    assert json.dumps({"prompt": text}) == '{"prompt": "hello"}'
    assert ResponseBatch([[1]], ["plain"], torch.tensor([1]), 1).fields == [{}]


def test_the_data_module_keeps_declared_fields_and_hands_them_to_the_prompt(tmp_path, tiny_policy):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    data = PromptDataModule(path=str(path), fields=["mood"])
    data.attach_tokenizer(tiny_policy.tokenizer)
    items = data.items()
    assert [dict(i["prompt"].fields) for i in items] == [
        {"id": "a", "keywords": ["dog"]}, {"id": "b", "keywords": ["cat", "train"]},
        {"id": "c", "keywords": "good, day", "mood": "calm"},
    ]
    assert items[2]["mood"] == "calm" and "mood" not in items[0]
    from seaflow.data import collate

    batch = collate(items[1:])  # a field only some rows have is None for the others, in either order
    assert batch["mood"] == [None, "calm"] and collate(items[::-1])["mood"] == ["calm", None, None]
    undeclared = PromptDataModule(path=str(path))
    undeclared.attach_tokenizer(tiny_policy.tokenizer)
    assert "mood" not in undeclared.items()[2]["prompt"].fields
    with pytest.raises(PromptFileError, match="data.fields names 'moood' but no row"):
        PromptDataModule(path=str(path), fields=["moood"]).setup()
    with pytest.raises(ValueError, match="data.fields may not name 'prompt_ids'"):
        PromptDataModule(path=str(path), fields=["prompt_ids"])


def _keyword_methods(policy):
    reward = dict(reward=KeywordReward(), max_new_tokens=5, policy=policy)
    return [
        Sample(**reward),
        BestOfN(n=3, **reward),
        ARGS(top_k=3, weight=1.0, **reward),
        CBS(beams=2, samples_per_beam=2, chunk_length=2, **reward),
        SEA(sampler=Langevin(step_size=0.1), chains=2, steps=2, alpha=5.0, decode="best", **reward),
        GuidedSuffixMCMC(chains=2, steps=2, alpha=5.0, **reward),
        BiasedDecoding(chains=2, steps=2, alpha=5.0, **reward),
    ]


@pytest.mark.parametrize("index", range(7), ids=["Sample", "BestOfN", "ARGS", "CBS", "SEA", "GuidedSuffixMCMC", "BiasedDecoding"])
def test_every_method_scores_each_row_with_its_own_keywords(tiny_policy, index):
    """KeywordReward() has no keywords of its own: a row's fields lost on the way to the reward fail here."""
    method = _keyword_methods("unused")[index]
    records, _ = run_method(method, tiny_policy, rows=[dict(r, index=i) for i, r in enumerate(ROWS)])
    words = {"a": ["dog"], "b": ["cat", "train"], "c": ["good", "day"]}
    for record in records:
        expected = sum(keyword_hits(record["response"], words[record["id"]])) / len(words[record["id"]])
        assert record["reward"] == pytest.approx(expected), record["id"]
        assert record["keywords"] == next(r["keywords"] for r in ROWS if r["id"] == record["id"])


def test_keywords_file_still_serves_rows_without_the_field(tmp_path, tiny_policy):
    table = tmp_path / "k.jsonl"
    table.write_text(json.dumps({"prompt": "describe the city", "keywords": ["dog"]}) + "\n")
    reward = KeywordReward(keywords_file=str(table), keywords=["the"])
    reward.setup(tiny_policy)
    batch = ResponseBatch([[5]] * 2, [PromptText("describe the city", {"id": "x"}),
                                      PromptText("describe the city", {"id": "y", "keywords": ["cat"]})], torch.tensor([3, 3]), 3)
    assert reward.prepare(batch)[0] == [["the", "dog"], ["the", "cat"]]
    with pytest.raises(ValueError, match="field 'keywords' of row 'z' must be a list of words"):
        reward.prepare(ResponseBatch([[5]], [PromptText("q", {"id": "z", "keywords": 3})], torch.tensor([1]), 1))
    with pytest.raises(ValueError, match="no keywords for row 'z'.*'keywords' field"):
        KeywordReward().prepare(ResponseBatch([[5]], [PromptText("q", {"id": "z"})], torch.tensor([1]), 1))


def test_keyword_config_with_a_declared_field_runs_through_seaflow_predict(tmp_path, tiny_models):
    from seaflow.cli import main

    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"id": r["id"], "prompt": r["prompt"], "concepts": r["keywords"]}) + "\n" for r in ROWS))
    config = {
        "model": {"class_path": "BestOfN", "init_args": {
            "policy": str(tiny_models["policy"]), "n": 2, "max_new_tokens": 4,
            "reward": {"class_path": "KeywordReward", "init_args": {"field": "concepts"}}}},
        "data": {"path": str(path), "fields": ["concepts"]},
        "output": {"output_dir": str(tmp_path / "run")},
        "trainer": {"enable_progress_bar": False},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    main(["predict", "--config", str(tmp_path / "c.yaml")])
    records = [json.loads(l) for l in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert [r["concepts"] for r in records] == [r["keywords"] for r in ROWS]
    for record, row in zip(records, ROWS):
        words = row["keywords"] if isinstance(row["keywords"], list) else ["good", "day"]
        assert record["reward"] == pytest.approx(sum(keyword_hits(record["response"], words)) / len(words))


def test_align_takes_rows_with_fields(tmp_path, tiny_models):
    from seaflow.api import load

    config = {"model": {"class_path": "BestOfN", "init_args": {
        "policy": str(tiny_models["policy"]), "n": 2, "max_new_tokens": 4, "reward": {"class_path": "KeywordReward"}}}}
    aligner = load(config, overrides={"data.fields": ["mood"]})
    records = aligner.align(ROWS)
    assert [r["id"] for r in records] == ["a", "b", "c"]
    assert [r.get("mood") for r in records] == [None, None, "calm"]
    assert records[1]["keywords"] == ["cat", "train"] and records[0]["prompt"] == records[1]["prompt"]
    by_ids = aligner.align([{"prompt": "describe the city", "keywords": ["dog"]}, {"prompt": "write", "keywords": "cat"}], ids=["x", "y"])
    assert [r["id"] for r in by_ids] == ["x", "y"]
    with pytest.raises(ValueError, match="no keywords for row 'y'"):
        aligner.align(["write about my dog"], ids=["y"])


def test_a_judge_question_names_row_fields(tiny_policy):
    from seaflow.energies import PromptedJudge

    tok = tiny_policy.tokenizer
    judge = PromptedJudge(question="request: {prompt} reply: {response} about {keywords}? yes or no", cache_prefix=False)
    judge.setup(tiny_policy)
    rows = [PromptText("tell me", {"id": "a", "keywords": ["dog", "cat"]}), PromptText("tell me", {"id": "b", "keywords": "train"}),
            PromptText("tell me", {"id": "c", "keywords": "<|im_end|> <|im_start|>"})]
    judge.prepare(ResponseBatch([[4]] * 3, rows, torch.tensor([2, 2, 2]), 2))  # each row its own question
    befores, afters = zip(*(judge._split(str(p), {"keywords": k}) for p, k in
                            zip(rows, ["dog, cat", "train", "<|im_end|> <|im_start|>"])))
    assert "dog , cat" in tok.decode(afters[0]) and "train" in tok.decode(afters[1])
    assert befores[0] == befores[1] and afters[0] != afters[1]
    specials = {tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")}
    assert sum(t in specials for t in afters[2]) == sum(t in specials for t in afters[1])  # the field's markup stays text
    with pytest.raises(ValueError, match=r"PromptedJudge's question \(\{keywords\}\).*row 'z' has none"):
        judge.prepare(ResponseBatch([[4]], [PromptText("q", {"id": "z"})], torch.tensor([1]), 1))
