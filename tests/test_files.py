"""Every reader of line-based files splits at "\\n" only: U+2028, U+0085 and a lone "\\r" inside a
line are text (str.splitlines would cut a prompt or a JSON string there)."""

import json

from seaflow.calibrate.data import LabelledJsonl
from seaflow.energies.keywords import read_keywords
from seaflow.files import physical_lines
from seaflow.prompt_sets import PromptSet, _parse_lines
from seaflow.reward_head.data import read_cache, read_prompt_source

ODD = "one\u2028two\x85three\x0cfour"


def test_physical_lines():
    assert physical_lines(f"{ODD}\r\nnext\n\nlast") == [ODD, "next", "", "last"]
    assert physical_lines("") == []
    assert physical_lines("a\n") == ["a"]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\r\n" for row in rows), encoding="utf-8")
    return path


def test_labelled_jsonl_keeps_separators_inside_strings(tmp_path):
    path = _jsonl(tmp_path / "labelled.jsonl", [{"prompt": ODD, "response": "r\u2028s", "label": 1}, {"response": "x", "label": 0}])
    rows = LabelledJsonl(str(path)).rows()
    assert [(r.prompt, r.response, r.label) for r in rows] == [(ODD, "r\u2028s", 1), ("", "x", 0)]


def test_keywords_file_keeps_separators_inside_strings(tmp_path):
    path = _jsonl(tmp_path / "keywords.jsonl", [{"prompt": ODD, "keywords": ["a\u2028b"]}])
    assert read_keywords(path) == {ODD: ["a\u2028b"]}


def test_response_cache_and_prompt_files_keep_separators(tmp_path):
    cache = _jsonl(tmp_path / "responses.jsonl", [{"key": "k", "response": ODD}])
    assert read_cache(cache) == [{"key": "k", "response": ODD}]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{ODD}\nsecond\n", encoding="utf-8")
    assert read_prompt_source(str(prompts)) == [ODD, "second"]


def test_wheel_line_sets_keep_separators():
    spec = PromptSet(name="lines", package="pkg", version="1", path="p.txt", task="generic", description="one prompt per line", parse=_parse_lines)
    assert [item["prompt"] for item in _parse_lines(f" {ODD} \n\nsecond\r\n", spec)] == [ODD, "second"]
