"""``seaflow tune``: the budget and its cost lines, the split, the judges, and the whole command on the tiny
models (every candidate, the confirmation, the written config re-run by ``seaflow predict``, the resume)."""

import json

import pytest
import yaml

from seaflow.cli import main
from seaflow.resume import read_records
from seaflow.tune import CONFIRM_P, commented_yaml, split
from seaflow.tune.budget import Budget, CostFit
from seaflow.tune.candidates import CANDIDATES, DEFAULT, Task
from seaflow.tune.judging import judge_from


@pytest.mark.parametrize("text, axis, value", [
    ("400GFLOPs", "flops", 400e9), ("0.01GFLOPs", "flops", 1e7), ("2 TFLOPs", "flops", 2e12), ("5e9flops", "flops", 5e9),
    ("8s", "wall", 8.0), ("0.5s", "wall", 0.5), ("depth:96", "depth", 96.0),
])
def test_a_budget_is_a_number_and_a_unit(text, axis, value):
    budget = Budget.parse(text)
    assert budget.axis == axis and budget.value == pytest.approx(value)


@pytest.mark.parametrize("text", ["400", "400GB", "depth:", "-3s", "0s", "8 seconds", "GFLOPs"])
def test_a_budget_without_a_unit_is_refused_with_the_forms(text):
    with pytest.raises(ValueError, match="400GFLOPs.*8s.*depth:96"):
        Budget.parse(text)


def test_the_cost_line_gives_the_largest_size_within_the_budget_as_direct_search_does():
    fit = CostFit.through((8, 30.0), (2, 12.0))  # 6 + 3 k
    assert (fit.intercept, fit.slope) == (pytest.approx(6.0), pytest.approx(3.0))
    for budget in (5.9, 6.0, 9.0, 35.5, 300.0):
        fitting = [k for k in range(1, 65) if 6 + 3 * k <= budget]
        assert fit.largest_within(budget, 1, 64) == (max(fitting) if fitting else None)
    flat = CostFit.through((2, 24.0), (8, 24.0))  # Best-of-N's depth does not grow with n
    assert not flat.grows() and flat.largest_within(96, 1, 256) == 256 and flat.largest_within(20, 1, 256) is None
    with pytest.raises(ValueError, match="two different sizes"):
        CostFit.through((4, 1.0), (4, 2.0))


def test_the_split_is_seeded_disjoint_and_in_file_order():
    ids = [f"p{i}" for i in range(10)]
    tuning, confirmation = split(ids, 4, 3, seed=0)
    assert len(tuning) == 4 and len(confirmation) == 3 and not set(tuning) & set(confirmation)
    assert tuning == sorted(tuning, key=ids.index) and confirmation == sorted(confirmation, key=ids.index)
    assert split(ids, 4, 3, seed=0) == (tuning, confirmation)
    assert any(split(ids, 4, 3, seed=s)[0] != tuning for s in range(1, 5))


def test_the_judges_name_what_they_rank_by():
    record = {"id": "a", "response": "a good day with the owl", "reward": 0.5, "ref_logprob_per_token": -2.0,
              "keywords": ["owl", "kettle"], "target": "7"}
    auto = judge_from("auto", None)
    assert auto.optimised and "optimised reward" in auto.name and auto(record) == 0.5
    assert judge_from("auto", "keywords")(record) == 0.5 and not judge_from("auto", "keywords").optimised  # coverage 1 of 2
    penalised = judge_from("fluency-penalised:0.1")
    assert penalised(record) == pytest.approx(0.5 - 0.1 * 2.0) and not penalised.optimised
    assert judge_from("verifier")({**record, "response": "so the answer is 7."}) == 1.0
    assert judge_from("text:builtins.len")(record) == len(record["response"])
    assert "alt-profanity-check" in judge_from("toxicity").name  # every kind of seaflow.judges.judge_value
    with pytest.raises(ValueError, match="fluency-penalised:BETA"):
        judge_from("bleu")
    with pytest.raises(ValueError, match="needs a weight"):
        judge_from("fluency-penalised:x")


def test_the_ask_goes_on_the_prompt_for_asked_variants_and_stays_a_proposal_for_steered_ones(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump({"model": {"init_args": {"reward": {"class_path": "LexiconReward"}, "alpha": 3}},
                                    "data": {"path": "p.jsonl", "proposal_system_prompt": "Be warm.", "proposal_instruction": "Use {keywords}."}}))
    task = Task.read(path)
    assert task.data_for("asked") == {"path": "p.jsonl", "system_prompt": "Be warm.", "instruction": "Use {keywords}."}
    assert task.data_for("given") == {"path": "p.jsonl"}
    assert task.data_for("steered") == task.data
    assert task.applicable(CANDIDATES["best_of_n_asked"], asking=False).startswith("changes the prompt")
    config = task.cell_config(CANDIDATES["cbs"], 5, ["a", "b"], tmp_path / "cell")
    assert config["model"]["init_args"]["beams"] == 5 and "alpha" not in config["model"]["init_args"]  # the user's method setting stays behind
    assert config["data"]["ids"] == ["a", "b"] and config["trainer"]["enable_progress_bar"] is False
    no_ask = tmp_path / "plain.yaml"
    no_ask.write_text(yaml.safe_dump({"model": {"init_args": {"reward": {"class_path": "LexiconReward"}}}, "data": {"path": "p.jsonl"}}))
    assert "needs an asked version" in Task(no_ask, yaml.safe_load(no_ask.read_text())).applicable(CANDIDATES["steered_chains"], True)
    without_reward = tmp_path / "bad.yaml"
    without_reward.write_text(yaml.safe_dump({"data": {"path": "p.jsonl"}}))
    with pytest.raises(ValueError, match="model.init_args.reward"):
        Task.read(without_reward)


def test_the_written_config_comments_every_key():
    text = commented_yaml({"a": 1, "b": {"c": "x y", "d": [1, 2], "e": {}}}, {"a": "one", "b.c": "text"}, ["head"], "as given")
    assert yaml.safe_load(text) == {"a": 1, "b": {"c": "x y", "d": [1, 2], "e": {}}}
    assert text.splitlines()[:3] == ["# head", "a: 1".ljust(38) + "  # one", "b:".ljust(38) + "  # as given"]
    assert all("  # " in line for line in text.splitlines()[1:])


@pytest.fixture
def task_file(tmp_path, tiny_models):
    prompts = tmp_path / "prompts.jsonl"
    texts = ["describe the city", "how was the train", "tell me about food", "write about the dog"]
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": t}) + "\n" for i, t in enumerate(texts)))
    config = {"seed_everything": 0,
              "model": {"class_path": "seaflow.methods.BestOfN", "init_args": {
                  "policy": str(tiny_models["policy"]), "reward": {"class_path": "LexiconReward", "init_args": {"lexicon": "vader"}},
                  "max_new_tokens": 6, "n": 4}},
              "data": {"path": str(prompts), "batch_size": 2, "proposal_system_prompt": "Reply in a warm tone."},
              "trainer": {"accelerator": "cpu"}}
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_tune_runs_every_candidate_confirms_the_best_two_and_writes_a_config_predict_reruns(task_file, tmp_path, capsys):
    out = tmp_path / "tune"
    command = ["tune", "--config", str(task_file), "--budget", "0.02GFLOPs", "--prompts", "2", "--out", str(out),
               "--judge", "fluency-penalised:0.1"]
    main(command)
    printed = capsys.readouterr().out
    summary = json.loads((out / "tune.json").read_text())
    assert [r["candidate"] for r in summary["ranked"]] and not summary["left_out"]
    assert sorted(r["candidate"] for r in summary["ranked"]) == sorted(DEFAULT)  # every candidate ran on the tuning prompts
    assert all(r["prompts"] == 2 for r in summary["ranked"])
    means = [r["judge"][0] for r in summary["ranked"]]
    assert means == sorted(means, reverse=True)
    confirmation = summary["confirmation"]
    first, second = summary["ranked"][0]["candidate"], summary["ranked"][1]["candidate"]
    assert (confirmation["first"], confirmation["second"], confirmation["prompts"]) == (first, second, 2)
    assert len(set(summary["tuning"]) | set(summary["confirmation_ids"])) == 4
    # the confirmation's difference is the paired difference of the judge on the confirmation records
    judge = judge_from("fluency-penalised:0.1")
    cells = {r["candidate"]: out / "cells" / r["candidate"] / r["size"] for r in summary["ranked"]}
    records = {name: {r["id"]: r for r in read_records(cells[name] / "predictions.jsonl")} for name in (first, second)}
    diffs = [judge(records[first][i]) - judge(records[second][i]) for i in summary["confirmation_ids"]]
    assert confirmation["diff"] == pytest.approx(sum(diffs) / len(diffs))
    reversed_ = confirmation["diff"] < 0 and confirmation["p"] < CONFIRM_P
    assert summary["recommended"]["candidate"] == (second if reversed_ else first)
    assert "| rank | candidate |" in printed and "recommended:" in printed and "fluency-penalised" in printed
    # the written config: every key commented, and seaflow predict reruns it into the same records
    written = out / "recommended.yaml"
    assert all("  # " in line for line in written.read_text().splitlines() if line.strip() and not line.startswith("#"))
    chosen = summary["recommended"]["candidate"]
    main(["predict", "--config", str(written), "--output.output_dir", str(tmp_path / "again")])
    again = {r["id"]: r for r in read_records(tmp_path / "again" / "predictions.jsonl")}
    cell = {r["id"]: r for r in read_records(cells[chosen] / "predictions.jsonl")}
    assert len(again) == 4 and set(cell) == set(again)  # the winner ran on the tuning and the confirmation prompts
    for pid, record in cell.items():
        assert (again[pid]["response"], again[pid]["reward"]) == (record["response"], record["reward"]), pid
    # a rerun resumes: every run directory is complete, so no predict runs at all
    from seaflow import tune

    def no_predict(config, callbacks):
        raise AssertionError(f"{config} ran again")

    assert tune.main(command[1:], no_predict)["recommended"] == summary["recommended"]


def test_the_dry_run_prints_the_plan_and_its_cost_and_runs_only_the_probes(task_file, tmp_path, capsys):
    out = tmp_path / "tune"
    main(["tune", "--config", str(task_file), "--budget", "0.001GFLOPs", "--prompts", "2", "--out", str(out), "--dry-run",
          "--methods", "best_of_n,suffix_mcmc,steered_chains", "--no-asking"])
    printed = capsys.readouterr().out
    assert "| best_of_n | given | n=" in printed and "estimated:" in printed and "TFLOPs in all" in printed
    assert "suffix_mcmc | given | left out: its smallest size (steps=0) costs" in printed  # over this tiny budget
    assert not (out / "tune.json").exists()
    for directory in (out / "cells").glob("*/*"):
        assert len(read_records(directory / "predictions.jsonl")) == 2  # a probe: one batch (data.batch_size) of tuning prompts
    (size,) = [line.split(" | ")[2] for line in printed.splitlines() if line.startswith("| best_of_n |")]
    n = int(size.removeprefix("n="))
    probes = {k: sum(r["cost"]["flops"] for r in read_records(out / "cells" / "best_of_n" / f"n={k}" / "predictions.jsonl")) / 2
              for k in (2, 8)}
    per_candidate = (probes[8] - probes[2]) / 6
    assert probes[2] + (n - 2) * per_candidate <= 1e6 < probes[2] + (n - 1) * per_candidate  # the largest n within 0.001 GFLOPs


def test_tune_names_a_bad_method_and_too_few_prompts(task_file, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["tune", "--config", str(task_file), "--budget", "1GFLOPs", "--methods", "best_of_n,beam"])
    assert "beam is not a candidate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["tune", "--config", str(task_file), "--budget", "1GFLOPs", "--prompts", "4"])
    assert "--prompts 4: give between 1 and 3" in capsys.readouterr().err


def test_tune_is_listed_and_has_help(capsys):
    main(["--help"])
    assert "tune " in capsys.readouterr().out
    with pytest.raises(SystemExit) as end:
        main(["tune", "--help"])
    assert end.value.code == 0 and "--budget" in capsys.readouterr().out


def test_every_candidate_names_its_evidence_and_sizes_within_its_limits():
    for candidate in CANDIDATES.values():
        assert candidate.evidence.startswith("docs/results.md")
        assert candidate.smallest <= min(candidate.probes) < max(candidate.probes) <= candidate.largest
        assert all(comment for _, comment in candidate.init_args(candidate.smallest, 24).values())


def test_data_ids_select_prompts_and_data_instruction_asks_on_the_prompt_itself(tmp_path):
    from seaflow.data import PromptDataModule, PromptFileError

    path = tmp_path / "prompts.jsonl"
    rows = [{"id": "a", "prompt": "tell a", "keywords": ["owl", "cat"]}, {"id": "b", "prompt": "tell b", "keywords": "fox"},
            {"id": "c", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                     {"role": "user", "content": "tell c"}], "keywords": ["elk"]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = PromptDataModule(path=str(path), ids=["c", "a"], instruction="Use the words {keywords}.")
    data.setup()
    assert [p["id"] for p in data.prompts] == ["a", "c"]  # the file's order
    assert data.prompts[0]["prompt"] == "tell a Use the words owl and cat."
    assert data.prompts[1]["messages"][-1] == {"role": "user", "content": "tell c Use the words elk."}
    assert data.prompts[1]["messages"][:2] == rows[2]["messages"][:2]
    with pytest.raises(PromptFileError, match="data.ids names 'z', which .* does not have"):
        PromptDataModule(path=str(path), ids=["a", "z"]).setup()
    with pytest.raises(PromptFileError, match="no 'topic' field, which data.instruction"):
        PromptDataModule(path=str(path), instruction="About {topic}.").setup()


def test_every_link_into_the_results_names_one_of_its_sections():
    """The README's table, docs/tune.md and every candidate's evidence link to sections docs/results.md has."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    headings = re.findall(r"^#+ (.+)$", (root / "docs" / "results.md").read_text(), flags=re.M)
    anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
    links = re.findall(r"docs/results\.md#([\w-]+)", (root / "README.md").read_text() + (root / "docs" / "tune.md").read_text())
    links += [c.evidence.split("#", 1)[1] for c in CANDIDATES.values() if "#" in c.evidence]
    assert len(links) >= 8 and not sorted(set(links) - anchors)


def test_the_shipped_task_plans_every_candidate_on_the_tiny_policy(tmp_path, tiny_models, capsys, monkeypatch):
    """configs/examples/tune_sentiment.yaml as shipped (its policy swapped for the tiny one): a dry run sizes
    every default candidate, asked and steered ones included, and ranks by TextBlob (its task's judge)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    config = yaml.safe_load((root / "configs" / "examples" / "tune_sentiment.yaml").read_text())
    config["model"]["init_args"].update(policy=str(tiny_models["policy"]), max_new_tokens=6)
    config["data"]["path"] = str(root / config["data"]["path"])
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(config))
    from seaflow import judges

    monkeypatch.setattr(judges, "sentiment_polarity", lambda text: 0.0)  # TextBlob is an optional package
    main(["tune", "--config", str(path), "--budget", "0.05GFLOPs", "--out", str(tmp_path / "tune"), "--dry-run"])
    printed = capsys.readouterr().out
    assert "judge: TextBlob polarity" in printed and "4 tuning prompts, 4 confirmation prompts" in printed
    for name in DEFAULT:
        assert f"| {name} |" in printed and "left out" not in printed.split(f"| {name} |")[1].splitlines()[0]
