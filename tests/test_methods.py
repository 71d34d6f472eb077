"""The baselines (Sample, BestOfN, ARGS, CBS) on tiny random models: through the CLI and directly."""

import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml

from seaflow import generation
from seaflow.cli import main
from seaflow.energies import CallableReward, LexiconReward
from seaflow.methods import ARGS, CBS, BestOfN, Sample
from seaflow.methods.record import FIELDS, Cost, make_record

from tiny import run_method

PROMPTS = ["describe the city", "tell me about the weather", "write about my dog", "how was the train"]
CORE_FIELDS = ("id", "index", "prompt", "method", "response", "response_token_ids", "reward", "ref_logprob_per_token",
               "response_tokens", "wall_time_s", "ref_token_logprobs", "ref_token_entropy")
DOCS = Path(__file__).parent.parent / "docs"


def write_prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": t}) + "\n" for i, t in enumerate(PROMPTS)))
    return path


def run_cli(tmp_path: Path, class_path: str, **init_args) -> list[dict]:
    args = {"policy": init_args.pop("policy"), "max_new_tokens": 6,
            "reward": {"class_path": "LexiconReward", "init_args": {"lexicon": "vader"}}}
    args.update(init_args)
    config = {
        "model": {"class_path": class_path, "init_args": args},
        "data": {"path": str(write_prompts(tmp_path)), "batch_size": 3},
        "output": {"output_dir": str(tmp_path / "run")},
        "trainer": {"enable_progress_bar": False},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["predict", "--config", str(path)])
    return [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]


def direct(method, tiny_policy, prompts=PROMPTS, batch_size=None):
    """Run ``method`` without Lightning on the tiny policy; records in prompt order."""
    return run_method(method, tiny_policy, prompts, batch_size)


@pytest.mark.parametrize(
    "class_path, init_args",
    [
        ("seaflow.methods.Sample", {}),
        ("seaflow.methods.BestOfN", {"n": 3, "sample_batch": 4}),
        ("ARGS", {"top_k": 3, "weight": 1.0}),
        ("seaflow.methods.CBS", {"beams": 2, "samples_per_beam": 2, "chunk_length": 2}),
        ("SoftBestOfN", {"n": 3, "reward_temperature": 0.1}),
        ("SpeculativeRejection", {"n": 4, "decision_points": [2], "keep_fraction": 0.5}),
        ("ParticleFilter", {"particles": 3, "block": 2, "sample_batch": 4}),
    ],
)
def test_cli_writes_core_fields(tmp_path, tiny_models, class_path, init_args):
    records = run_cli(tmp_path, class_path, policy=str(tiny_models["policy"]), **init_args)
    assert [r["id"] for r in records] == ["p0", "p1", "p2", "p3"]
    for record in records:
        for field in CORE_FIELDS:
            assert field in record, (class_path, field)
        assert len(record["ref_token_logprobs"]) == len(record["response_token_ids"]) == record["response_tokens"] <= 6
        known = [key for key in record if key in FIELDS]
        assert known == sorted(known, key=FIELDS.index), f"{class_path}: fields out of schema order: {known}"
        assert set(record) - set(FIELDS) == set(), f"{class_path}: fields outside the schema"
        assert math.isclose(sum(record["ref_token_logprobs"]) / max(record["response_tokens"], 1),
                            record["ref_logprob_per_token"], abs_tol=1e-3)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["prompts"] == 4
    assert summary["method"] == records[0]["method"]


def test_best_of_n_keeps_the_max_and_candidate_zero_is_the_sample(tiny_policy):
    best, _ = direct(BestOfN(policy="tiny", reward=LexiconReward(), n=5, sample_batch=7, max_new_tokens=6), tiny_policy)
    plain, _ = direct(Sample(policy="tiny", reward=LexiconReward(), max_new_tokens=6), tiny_policy)
    for b, s in zip(best, plain):
        assert len(b["candidate_rewards"]) == 5
        assert b["reward"] == max(b["candidate_rewards"])
        assert b["candidate"] == b["candidate_rewards"].index(b["reward"])
        assert b["response"] == b["candidate_responses"][b["candidate"]]
        assert b["candidate_responses"][0] == s["response"]
        assert b["initial_reward"] == pytest.approx(s["reward"])
    assert len({r for b in best for r in b["candidate_responses"]}) > 4  # the candidates differ


def test_best_of_n_likeliest_best_returns_the_likeliest_of_the_best(tiny_policy):
    from seaflow.report import best_of_first

    n, width = 6, 6
    nonempty = CallableReward("builtins.bool")  # 1 for any non-empty reply: most candidates tie
    method = BestOfN(policy="tiny", reward=nonempty, n=n, max_new_tokens=width, returns="likeliest_best")
    records, items = direct(method, tiny_policy)
    plain, _ = direct(BestOfN(policy="tiny", reward=nonempty, n=n, max_new_tokens=width), tiny_policy)
    assert [r["candidate"] for r in plain] == [r["candidate_rewards"].index(1.0) for r in plain]  # best_reward: the earlier
    prompt_ids, _, keys = method.expand({k: [it[k] for it in items] for k in items[0]}, n)
    with torch.no_grad():  # the same draws; log pi_ref(y | x) by one plain forward pass per candidate
        tokens, lengths = method.sample_rows(prompt_ids, keys, [r % n for r in range(len(keys))])
        direct_ll = []
        for row, ids in enumerate(prompt_ids):
            length, start = int(lengths[row]), len(ids) - 1
            logp = torch.log_softmax(tiny_policy.model(torch.tensor([ids + tokens[row, :length].tolist()])).logits[0].float(), -1)
            ll = sum(float(logp[start + t, tokens[row, t]]) for t in range(length))
            if length < width:  # it ended: the probability of EOS there
                ll += float(logp[start + length, method.eos_ids].logsumexp(-1))
            direct_ll.append(ll)
    for p, record in enumerate(records):
        expected, rewards = direct_ll[p * n : (p + 1) * n], record["candidate_rewards"]
        assert record["candidate_ref_logprobs"] == pytest.approx(expected, abs=1e-4)
        likeliest = lambda k: max((c for c in range(k) if rewards[c] == max(rewards[:k])), key=lambda c: expected[c])  # noqa: E731
        assert record["candidate"] == likeliest(n)
        assert best_of_first(record, n)[0] == record["candidate"]  # the report reads the same rule off the record
        assert best_of_first(record, 3)[0] == likeliest(3)
    assert [r["candidate"] for r in records] != [r["candidate"] for r in plain]
    with pytest.raises(ValueError, match="model.init_args.returns must be one of 'best_reward', 'likeliest_best', got 'final'"):
        BestOfN(policy="tiny", reward=nonempty, returns="final")


def test_results_do_not_depend_on_batch_composition(tiny_policy):
    method = BestOfN(policy="tiny", reward=LexiconReward(), n=3, max_new_tokens=6)
    together, _ = direct(method, tiny_policy)
    alone, _ = direct(method, tiny_policy, batch_size=1)
    assert [r["response"] for r in together] == [r["response"] for r in alone]


def test_args_without_reward_weight_is_the_greedy_decode(tiny_policy):
    records, items = direct(ARGS(policy="tiny", reward=None, weight=0.0, top_k=4, max_new_tokens=6), tiny_policy)
    tokens, lengths = generation.sample(
        tiny_policy.model, [item["prompt_ids"] for item in items], 6, [3], 0, [], temperature=0.0
    )
    greedy = [tiny_policy.tokenizer.decode(t[: int(n)].tolist(), skip_special_tokens=True) for t, n in zip(tokens, lengths)]
    assert [r["response"] for r in records] == greedy
    assert all(r["reward"] is None for r in records)


def test_args_with_a_dominant_weight_reaches_the_lexicon_maximum(tiny_policy):
    reward = LexiconReward()
    vocab = tiny_policy.vocab_size
    records, _ = direct(ARGS(policy="tiny", reward=reward, weight=1e4, top_k=vocab, max_new_tokens=4), tiny_policy)
    best_value = float(reward.values.max())
    assert best_value > 0
    for record in records:
        assert record["reward"] == pytest.approx(best_value, abs=1e-5)


def test_args_sampled_is_seeded_per_prompt_and_differs_from_greedy(tiny_policy):
    make = lambda seed: ARGS(policy="tiny", reward=LexiconReward(), weight=1.0, top_k=8, mode="sample", seed=seed, max_new_tokens=6)  # noqa: E731
    first, _ = direct(make(0), tiny_policy)
    again, _ = direct(make(0), tiny_policy, batch_size=1)
    other, _ = direct(make(1), tiny_policy)
    greedy, _ = direct(ARGS(policy="tiny", reward=LexiconReward(), weight=1.0, top_k=8, max_new_tokens=6), tiny_policy)
    responses = lambda rs: [r["response"] for r in rs]  # noqa: E731
    assert responses(first) == responses(again)
    assert responses(first) != responses(other)
    assert responses(first) != responses(greedy)


def test_cbs_keeps_w_beams_and_returns_the_best(tiny_policy):
    records, _ = direct(CBS(policy="tiny", reward=LexiconReward(), beams=3, samples_per_beam=2, chunk_length=2, max_new_tokens=6), tiny_policy)
    for record in records:
        assert len(record["beam_rewards"]) == 3
        assert record["reward"] == max(record["beam_rewards"])
        assert record["beam_rewards"] == sorted(record["beam_rewards"], reverse=True)
        assert 1 <= record["rounds"] <= 3
        assert record["candidates_scored"] <= 3 * 2 * record["rounds"]


def test_cbs_with_one_beam_and_one_chunk_is_best_of_n(tiny_policy):
    cbs, _ = direct(CBS(policy="tiny", reward=LexiconReward(), beams=1, samples_per_beam=5, chunk_length=6, max_new_tokens=6), tiny_policy)
    bon, _ = direct(BestOfN(policy="tiny", reward=LexiconReward(), n=5, max_new_tokens=6), tiny_policy)
    assert [r["response"] for r in cbs] == [r["response"] for r in bon]
    assert [r["reward"] for r in cbs] == pytest.approx([r["reward"] for r in bon])


def test_baselines_validate_their_arguments():
    with pytest.raises(ValueError, match=r"model.init_args.n must be >= 1 \(candidates per prompt\), got 0"):
        BestOfN(policy="tiny", reward=LexiconReward(), n=0)
    with pytest.raises(ValueError, match="BestOfN selects by reward"):
        BestOfN(policy="tiny", reward=None)
    with pytest.raises(ValueError, match="model.init_args.mode must be one of 'greedy', 'sample', got 'beam'"):
        ARGS(policy="tiny", reward=LexiconReward(), mode="beam")
    with pytest.raises(ValueError, match="model.init_args.chunk_length must be >= 1, got 0"):
        CBS(policy="tiny", reward=LexiconReward(), chunk_length=0)
    with pytest.raises(ValueError, match="model.init_args.sample_batch must be >= 1"):
        Sample(policy="tiny", sample_batch=0)


SHIPPED = sorted((Path(__file__).parent.parent / "configs").glob("baselines/*.yaml")) + sorted(
    (Path(__file__).parent.parent / "configs").glob("advbench/*.yaml")
)


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_baseline_configs_parse(config, capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--config", str(config), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("seaflow.")
    assert printed["model"]["init_args"]["reward"]["class_path"]
    text = config.read_text()
    uncommented = [line for line in text.splitlines()
                   if ":" in line and not line.lstrip().startswith(("#", "-")) and "#" not in line
                   and not line.rstrip().endswith(":")]
    assert not uncommented, f"{config.name}: keys without a comment: {uncommented}"


def test_shipped_configs_exist():
    assert len(SHIPPED) == 12


def test_response_token_ids_are_the_response(tiny_policy):
    for method in (BestOfN(policy="tiny", reward=LexiconReward(), n=3, max_new_tokens=6),
                   Sample(policy="tiny", reward=LexiconReward(), max_new_tokens=6)):
        records, _ = direct(method, tiny_policy)
        for record in records:
            assert len(record["response_token_ids"]) == record["response_tokens"]
            assert tiny_policy.tokenizer.decode(record["response_token_ids"], skip_special_tokens=True) == record["response"]


def byte_level_tokenizer():
    """A byte-level BPE tokenizer without merges: every UTF-8 byte is a token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def test_a_character_cut_by_the_last_token_is_left_out_of_the_text_but_not_the_ids():
    from types import SimpleNamespace

    tokenizer = byte_level_tokenizer()
    ids = tokenizer.encode("ok \u2600", add_special_tokens=False)  # the sun: 3 UTF-8 bytes, 3 tokens
    assert len(ids) == 6 and tokenizer.decode(ids[:-1]).endswith("\ufffd")
    method = Sample(policy="tiny")
    method.policy = SimpleNamespace(tokenizer=tokenizer)
    tokens = torch.tensor([ids[:-1] + [0], ids])
    assert method.decode_text(tokens, torch.tensor([5, 6])) == ["ok ", "ok \u2600"]
    fields = method.response_fields(tokens[0], 5, 0.5, -1.0, torch.zeros(6), torch.zeros(6))
    assert fields["response"] == "ok " and fields["response_token_ids"] == ids[:-1]
    assert fields["response_tokens"] == 5


def test_records_follow_the_schema_and_docs_mirror_it():
    text = DOCS.joinpath("outputs.md").read_text()
    def first_column(section):
        return [name for line in section.splitlines() if line.startswith("| `")
                for name in re.findall(r"`([a-z_0-9]+)`", line.split("|")[1])]

    assert first_column(text[text.index("## Record fields"): text.index("### `cost`")]) == list(FIELDS)
    assert first_column(text[text.index("### `cost`"): text.index("## summary.json")]) == list(Cost.__annotations__)
    batch = {"id": ["a"], "index": [0], "prompt": ["hi"], "prompt_ids": [[1]], "target": ["42"]}
    record = make_record(batch, 0, "X", wall_time_s=1.0, reward=0.5, response="r")
    assert list(record) == ["id", "index", "prompt", "method", "target", "response", "reward", "wall_time_s"]
    with pytest.raises(KeyError, match="not_a_field .*Record.*docs/outputs.md"):
        make_record(batch, 0, "X", not_a_field=1)
