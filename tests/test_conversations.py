"""Conversations: a `messages` field in JSONL, JSON and hf: datasets; the reply is the next assistant turn."""

import json

import pytest

from seaflow.data import PromptDataModule, PromptFileError, read_prompts
from seaflow.encoding import encode_chat
from seaflow.methods import BestOfN
from seaflow.energies import LexiconReward

from tiny import run_method

TURNS = [
    {"role": "system", "content": "be nice"},
    {"role": "user", "content": "describe the city"},
    {"role": "assistant", "content": "the city is good"},
    {"role": "user", "content": "tell me about the train"},
]


def _rows():
    return [{"id": "talk", "messages": TURNS, "keywords": ["train"]}, {"id": "plain", "prompt": "write about my dog"}]


def _data(tmp_path, tiny_policy, rows, suffix=".jsonl", **options):
    path = tmp_path / f"p{suffix}"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) if suffix == ".jsonl" else json.dumps(rows))
    data = PromptDataModule(path=str(path), **options)
    data.attach_tokenizer(tiny_policy.tokenizer)
    return data


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_conversation_row_is_its_turns_in_the_template(tmp_path, tiny_policy, suffix):
    tok = tiny_policy.tokenizer
    data = _data(tmp_path, tiny_policy, _rows(), suffix)
    talk, plain = data.items()
    assert talk["prompt"] == "tell me about the train" and talk["messages"] == TURNS  # the text: the last user turn
    # every turn in the template, then the generation prompt of the assistant's turn
    assert talk["prompt_ids"] == tok.apply_chat_template(TURNS, tokenize=True, add_generation_prompt=True, return_dict=False)
    text = tok.decode(talk["prompt_ids"])
    assert text.index("be nice") < text.index("city is good") < text.index("about the train")
    assert "messages" not in plain and plain["prompt_ids"] == data.encode("write about my dog")
    assert dict(talk["prompt"].fields)["messages"] == TURNS  # rewards see the conversation too


def test_system_prompt_and_a_final_reply(tmp_path, tiny_policy):
    decode = tiny_policy.tokenizer.decode
    no_system = TURNS[1:]
    data = _data(tmp_path, tiny_policy, [{"id": "a", "messages": no_system}, {"id": "b", "messages": TURNS}], system_prompt="be happy")
    a, b = data.items()
    assert decode(a["prompt_ids"]).index("be happy") < decode(a["prompt_ids"]).index("describe the city")  # opens one without its own
    assert "be happy" not in decode(b["prompt_ids"]) and "be nice" in decode(b["prompt_ids"])
    answered = TURNS + [{"role": "assistant", "content": "it was fun"}]
    with pytest.raises(PromptFileError, match="ends with 'assistant'.*data.drop_final_reply"):
        _data(tmp_path, tiny_policy, [{"id": "x", "messages": answered}]).items()
    dropped = _data(tmp_path, tiny_policy, [{"id": "x", "messages": answered}], drop_final_reply=True).items()[0]
    assert dropped["messages"] == TURNS and dropped["prompt_ids"] == encode_chat(tiny_policy.tokenizer, TURNS)


@pytest.mark.parametrize("messages, reason", [
    ("hello", "non-empty list.*got str.*CSV"),
    ([], "an empty list"),
    ([{"role": "user"}], "turn 1 of messages must be an object with a 'role' and a text 'content'"),
    ([{"role": "user", "content": " "}], "last user turn is empty"),
    ([{"role": "robot", "content": "beep"}, {"role": "user", "content": "hi"}],
     r"turn 1 of messages has the role 'robot'; the roles a conversation may have are 'system', 'user', 'assistant', 'tool' \(id 'x'\)"),
])
def test_bad_conversations_name_the_row(tmp_path, tiny_policy, messages, reason):
    with pytest.raises(PromptFileError, match=f"p.jsonl:1: .*{reason}"):
        _data(tmp_path, tiny_policy, [{"id": "x", "messages": messages}]).items()
    skipped = _data(tmp_path, tiny_policy, [{"id": "x", "messages": messages}, {"id": "y", "prompt": "hi"}], on_bad_prompt="skip")
    assert [i["id"] for i in skipped.items()] == ["y"] and skipped.skipped[0]["id"] == "x"
    with pytest.raises(PromptFileError, match="needs the policy's chat template"):
        _data(tmp_path, tiny_policy, [{"id": "x", "messages": TURNS}], chat_template=False).items()


def test_an_hf_dataset_of_conversations(tmp_path, tiny_policy):
    import datasets

    datasets.Dataset.from_list([{"id": "talk", "messages": TURNS}, {"id": "two", "messages": TURNS[1:2]}]).save_to_disk(str(tmp_path / "ds"))
    prompts = read_prompts(f"hf:{tmp_path / 'ds'}")
    assert [p["messages"] for p in prompts] == [TURNS, TURNS[1:2]] and prompts[1]["prompt"] == "describe the city"


def test_records_keep_the_conversation_and_resume_checks_it(tmp_path, tiny_models, tiny_policy):
    records, _ = run_method(BestOfN(policy="unused", reward=LexiconReward(), n=2, max_new_tokens=4), tiny_policy,
                            rows=[dict(r, index=i, **({"prompt": TURNS[-1]["content"]} if "messages" in r else {}))
                                  for i, r in enumerate(_rows())])
    assert records[0]["messages"] == TURNS and "messages" not in records[1]
    from seaflow.resume import RunDirectory, RunMismatchError

    run = tmp_path / "run"
    run.mkdir()
    (run / "predictions.jsonl").write_text(json.dumps(records[0]) + "\n")
    changed = [dict(TURNS[0], content="be rude")] + TURNS[1:]
    with pytest.raises(RunMismatchError, match="'talk'"):
        RunDirectory(run).check_prompts([{"id": "talk", "prompt": TURNS[-1]["content"], "messages": changed}])
    RunDirectory(run).check_prompts([{"id": "talk", "prompt": TURNS[-1]["content"], "messages": TURNS}])


def test_align_takes_conversations(tiny_models):
    from seaflow.api import load

    aligner = load({"model": {"class_path": "BestOfN", "init_args": {
        "policy": str(tiny_models["policy"]), "n": 2, "max_new_tokens": 4, "reward": {"class_path": "LexiconReward"}}}})
    records = aligner.align([TURNS, "write about my dog", {"id": "row", "messages": TURNS[1:2]}])
    assert [r["id"] for r in records] == ["0", "1", "row"]
    assert records[0]["messages"] == TURNS and records[0]["prompt"] == TURNS[-1]["content"]
    with pytest.raises(ValueError, match="ends with 'assistant'"):
        aligner.align([TURNS[:3]])


def test_a_conversation_s_proposal_version_keeps_its_earlier_turns(tmp_path, tiny_policy):
    rows = [{"id": "talk", "messages": TURNS, "asked": "tell me about the train and the dog"}]
    data = _data(tmp_path, tiny_policy, rows, proposal_prompt_field="asked", proposal_system_prompt="be happy")
    item = data.items()[0]
    proposal = tiny_policy.tokenizer.decode(item["proposal_prompt_ids"])
    assert "city is good" in proposal and "train and the dog" in proposal and "be happy" in proposal and "be nice" not in proposal
    plain = _data(tmp_path, tiny_policy, rows, proposal_prompt_field="asked").items()[0]
    assert "be nice" in tiny_policy.tokenizer.decode(plain["proposal_prompt_ids"])  # no proposal system message: its own stays
