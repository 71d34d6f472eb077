"""Reliability: numerical faults, bad input, interruption and resume, determinism, hygiene.

docs/reliability.md describes what happens on each fault; every case there has a test here.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
import yaml

from seaflow import SEA
from seaflow.cli import main
from seaflow.data import PromptDataModule, PromptFileError, read_prompts
from seaflow.energies import LexiconReward
from seaflow.energies.base import Reward
from seaflow.models import ModelLoadError, load_causal_lm, load_sequence_classifier
from seaflow.refine import refine
from seaflow.samplers import HMC, MALA, AdaptiveLangevin, Evaluation, Langevin
from test_cli import read_jsonl, tiny_config

# -- numerical faults ------------------------------------------------------------------------


class NaNAtCall(Reward):
    """The lexicon reward, multiplied by NaN on ``rows`` at the relaxed evaluations numbered
    ``calls`` (1-based): energy and gradient of those rows become NaN, nothing else changes."""

    def __init__(self, rows=(), calls=()):
        super().__init__()
        self.inner = LexiconReward()
        self.rows, self.calls, self.count = list(rows), set(calls), 0

    def setup(self, policy):
        self.inner.setup(policy)

    def prepare(self, batch):
        return self.inner.prepare(batch)

    def value(self, prepared, response):
        value = self.inner.value(prepared, response)
        if response.dim() == 3:  # relaxed evaluations inside refine(), not the discrete scoring
            self.count += 1
            if self.count in self.calls:
                factor = torch.ones_like(value)
                factor[self.rows] = float("nan")
                value = value * factor
        return value


def _batch(policy, prompts=("describe the city", "tell me about the weather today")):
    tok = policy.tokenizer
    ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True),
                      add_special_tokens=False) for p in prompts]
    return {"id": [f"p{i}" for i in range(len(prompts))], "index": list(range(len(prompts))),
            "prompt": list(prompts), "prompt_ids": ids}


def _sea(policy, reward, **kwargs):
    args = dict(reward=reward, chains=2, steps=4, max_new_tokens=6, alpha=5.0,
                sampler=Langevin(step_size=0.5, noise_scale=0.3))
    args.update(kwargs)
    sea = SEA(**args)
    sea.attach(policy)
    return sea


def test_nan_in_one_chain_leaves_the_others_unchanged(tiny_policy):
    clean = _sea(tiny_policy, NaNAtCall()).predict_step(_batch(tiny_policy))
    faulty = _sea(tiny_policy, NaNAtCall(rows=[1], calls=[2])).predict_step(_batch(tiny_policy))  # prompt 0, chain 1, step 1
    assert faulty[0]["faults"] == [{"chain": 1, "iteration": 1, "action": "rollback"}]
    assert clean[0]["faults"] == [] and faulty[1]["faults"] == []
    # the other prompt is untouched, and so is the other chain of the faulty prompt
    skip = {"wall_time_s", "energy_evaluations", "cost"}  # cost and time are the batch's
    assert {k: v for k, v in faulty[1].items() if k not in skip} == {k: v for k, v in clean[1].items() if k not in skip}
    assert faulty[0]["chain_responses"][0] == clean[0]["chain_responses"][0]
    assert faulty[0]["chain_rewards"][0] == clean[0]["chain_rewards"][0]
    # the faulty chain carried on from its last finite state: every output is a number
    assert all(v == v for v in faulty[0]["chain_rewards"] + faulty[0]["chain_ref_logprob_per_token"])
    assert faulty[0]["fallback"] is None


def test_a_chain_that_keeps_failing_is_dropped_and_not_selected(tiny_policy):
    # chain 0 of prompt 0 fails at every step; with max_faults 2 it is dropped at step 1
    records = _sea(tiny_policy, NaNAtCall(rows=[0], calls=range(1, 10)), max_faults=2).predict_step(_batch(tiny_policy))
    assert records[0]["faults"] == [
        {"chain": 0, "iteration": 0, "action": "rollback"}, {"chain": 0, "iteration": 1, "action": "dropped"},
    ]
    assert records[0]["chain"] == 1 and records[0]["fallback"] is None


def test_all_chains_dropped_returns_the_best_initial_sample(tiny_policy):
    records = _sea(tiny_policy, NaNAtCall(rows=[0, 1], calls=range(1, 10)), max_faults=1).predict_step(_batch(tiny_policy))
    record = records[0]
    assert [f["action"] for f in record["faults"]] == ["dropped", "dropped"]
    assert record["fallback"] == "initial_best"
    assert record["response"] == record["initial_best_response"]
    assert record["reward"] == record["initial_best_reward"]
    assert records[1]["fallback"] is None and records[1]["faults"] == []


class GaussianEnergy:
    """``E(x) = |x|^2 / 2`` per chain, NaN on ``chain`` at the evaluations numbered ``calls``."""

    class _Relaxation:
        def set_progress(self, progress):
            pass

    def __init__(self, chain=None, calls=()):
        self.relaxation, self.chain, self.calls, self.count = self._Relaxation(), chain, set(calls), 0
        self.allowed = None

    def __call__(self, x):
        self.count += 1
        energy, grad = 0.5 * x.flatten(1).pow(2).sum(1), x.clone()
        if self.count in self.calls:
            energy[self.chain] = float("nan")
            grad[self.chain] = float("nan")
        return Evaluation(x, energy, grad)


@pytest.mark.parametrize("sampler, calls, rolled_back", [
    (Langevin(step_size=0.1), [3], True),
    (MALA(step_size=0.1), [1], True),  # the start point of the first step
    (HMC(step_size=0.1, leapfrog_steps=2), [1], True),
    (AdaptiveLangevin(step_size=0.1), [3], True),  # the diagonal preconditioner is rolled back too
    (AdaptiveLangevin(step_size=0.1, target_accept=0.6), [4], False),  # a NaN proposal is just rejected
])
def test_every_sampler_isolates_a_faulty_chain(sampler, calls, rolled_back):
    def run(energy_fn):
        x0 = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0))
        return refine(x0, energy_fn, sampler, 5, torch.Generator().manual_seed(1))

    clean, _ = run(GaussianEnergy())
    y, trace = run(GaussianEnergy(chain=0, calls=calls))
    assert torch.isfinite(y).all()
    assert torch.equal(y[1:], clean[1:])
    assert [f["chain"] for f in trace.faults] == ([0] if rolled_back else [])
    assert not trace.dropped.any()


# -- bad prompts files ------------------------------------------------------------------------


@pytest.mark.parametrize("name, content, match", [
    ("missing.jsonl", None, r"missing\.jsonl' does not exist"),
    ("empty.jsonl", "", r"empty\.jsonl: no prompts in the file"),
    ("blank.txt", "\n  \n", r"blank\.txt: no prompts in the file"),
    ("bad.jsonl", '{"prompt": "ok"}\n{"prompt": "oops",\n', r"bad\.jsonl:2: malformed JSON .*'\{\"prompt\": \"oops\",'"),
    ("field.jsonl", '{"text": "hello"}\n', r"field\.jsonl:1: no field 'prompt' \(fields: text\)"),
    ("latin1.txt", "caf\xe9\n".encode("latin-1"), r"latin1\.txt: not UTF-8 text \(byte 3\)"),
    ("empty_prompt.jsonl", '{"id": "a", "prompt": "  "}\n', r"empty_prompt\.jsonl:1: empty prompt \(id 'a', value '  '\)"),
    ("dup.jsonl", '{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', r"dup\.jsonl:2: duplicate id 'a' \(first on line 1\)"),
])
def test_bad_prompts_file_names_the_problem(tmp_path, name, content, match):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(PromptFileError, match=match):
        read_prompts(path)


def test_skip_policy_records_bad_rows_and_keeps_the_rest(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"id": "a", "prompt": "x"}\n{broken\n{"id": "b"}\n{"id": "a", "prompt": "z"}\n{"id": "c", "prompt": ""}\n{"id": "d", "prompt": "w"}\n')
    data = PromptDataModule(path=str(path), on_bad_prompt="skip")
    data.setup()
    assert [p["id"] for p in data.prompts] == ["a", "d"]
    assert [(s["line"], s["id"]) for s in data.skipped] == [(2, None), (3, "b"), (4, "a"), (5, "c")]
    assert "malformed JSON" in data.skipped[0]["reason"] and "duplicate id 'a'" in data.skipped[2]["reason"]
    with pytest.raises(ValueError, match="data.on_bad_prompt must be one of 'error', 'skip', got 'ignore'"):
        PromptDataModule(path=str(path), on_bad_prompt="ignore")


def test_prompt_longer_than_the_context(tmp_path, tiny_policy):
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"id": "long", "prompt": "the dog " * 20}) + "\n" + json.dumps({"id": "short", "prompt": "hi"}) + "\n")
    data = PromptDataModule(path=str(path), chat_template=False)
    data.attach_tokenizer(tiny_policy.tokenizer, context_length=30)
    with pytest.raises(PromptFileError, match=r"prompt 'long' has 40 tokens; with 6 response tokens it exceeds the model's context of 30"):
        data.items(reserve=6)
    data = PromptDataModule(path=str(path), chat_template=False, on_bad_prompt="skip")
    data.attach_tokenizer(tiny_policy.tokenizer, context_length=30)
    assert [item["id"] for item in data.items(reserve=6)] == ["short"]
    assert data.skipped[0]["id"] == "long" and "context of 30" in data.skipped[0]["reason"]


def test_skipped_prompts_are_listed_in_the_summary(tmp_path, tiny_models):
    config = tiny_config(tmp_path, tiny_models, steps=1)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(prompts.read_text() + "not json\n" + json.dumps({"id": "big", "prompt": "the dog " * 200}) + "\n")
    main(["predict", "--config", str(config), "--data.on_bad_prompt", "skip"])
    assert [r["id"] for r in read_jsonl(tmp_path / "run" / "predictions.jsonl")] == ["p0", "p1", "p2", "p3"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [(s.get("line"), s["id"]) for s in summary["skipped"]] == [(5, None), (None, "big")]
    assert "malformed JSON" in summary["skipped"][0]["reason"] and "context of 256" in summary["skipped"][1]["reason"]


def test_missing_chat_template_is_named(tiny_models):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["policy"])
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template; set data.chat_template: false"):
        PromptDataModule(path="unused").attach_tokenizer(tokenizer)


# -- bad configs (through the CLI) ---------------------------------------------------------


@pytest.mark.parametrize("model_args, expected", [
    ({"sampler": {"class_path": "NoSuchSampler"}}, ["model.init_args.sampler: unknown class name 'NoSuchSampler'; available: AdaptiveLangevin, DiscreteLangevin, HMC, Langevin, MALA"]),
    ({"chains": "four"}, ["model.init_args.chains: got 'four'; expected an integer"]),
    ({"chains": -2}, ["model.init_args.chains must be >= 1, got -2"]),
    ({"sampler": {"class_path": "Langevin", "init_args": {"step_size": -0.5}}}, ["Langevin step_size must be a finite number > 0", "got -0.5"]),
    ({"max_new_tokens": 0}, ["model.init_args.max_new_tokens must be >= 1, got 0"]),
    ({"alpha": float("nan")}, ["model.init_args.alpha must be a finite number, got nan"]),
])
def test_bad_config_values_are_named(tmp_path, tiny_models, capsys, model_args, expected):
    config = tiny_config(tmp_path, tiny_models, **model_args)
    # parse errors exit with one line; a value rejected by a constructor raises its ValueError
    with pytest.raises((SystemExit, ValueError)) as raised:
        main(["predict", "--config", str(config)])
    err = capsys.readouterr().err + str(raised.value)
    for text in expected:
        assert text in err


# -- bad models --------------------------------------------------------------------------------


def test_model_path_that_does_not_exist():
    with pytest.raises(ModelLoadError, match=r"model path './no/such/model' does not exist.*'smollm2-135m-instruct'"):
        load_causal_lm("./no/such/model")


def test_hub_id_without_network_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"(?s)'nobody/no-such-model'.*HF_HUB_OFFLINE is set.*local model directory.*'smollm2-135m-instruct'"):
        load_causal_lm("nobody/no-such-model")


def test_reward_model_without_a_score_head(tiny_models):
    with pytest.raises(ModelLoadError, match=r"is a causal LM checkpoint \(LlamaForCausalLM\), not a reward model: it lacks score.weight"):
        load_sequence_classifier(str(tiny_models["policy"]))


def _backbone_and_partial_checkpoints(tiny_models, tmp_path):
    """A bare LlamaModel (no LM head) and the policy with one layer's weights cut out of its file."""
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers import AutoModel

    backbone = tmp_path / "backbone"
    AutoModel.from_pretrained(tiny_models["policy"]).save_pretrained(backbone)
    partial = tmp_path / "partial"
    shutil.copytree(tiny_models["policy"], partial)
    weights = load_file(partial / "model.safetensors")
    save_file({k: v for k, v in weights.items() if ".layers.1." not in k}, partial / "model.safetensors", metadata={"format": "pt"})
    for directory in (backbone,):
        shutil.copy(tiny_models["policy"] / "tokenizer.json", directory)
        shutil.copy(tiny_models["policy"] / "tokenizer_config.json", directory)
    return backbone, partial


def test_a_checkpoint_without_the_weights_its_class_needs_is_refused(tiny_models, tmp_path):
    from seaflow.energies import BridgedRewardModel, PromptedJudge, RewardModel

    backbone, partial = _backbone_and_partial_checkpoints(tiny_models, tmp_path)
    policy = load_causal_lm(str(tiny_models["policy"]))
    cases = [
        (lambda: load_causal_lm(str(tiny_models["reward"])),
         r"the policy '.*reward' is a sequence-classification checkpoint \(LlamaForSequenceClassification, a reward "
         r"model\), not a causal LM: it lacks lm_head.weight \(random if loaded\); give a causal-LM checkpoint"),
        (lambda: load_causal_lm(str(backbone)), r"is a bare backbone without a head \(LlamaModel\), not a causal LM: it lacks lm_head.weight"),
        (lambda: load_causal_lm(str(partial)), r"is a causal LM checkpoint \(LlamaForCausalLM\) with weights missing \(a partial save\?\): "
                                               r"it lacks model.layers.1.input_layernorm.weight, .* and 5 more"),
        (lambda: PromptedJudge(model=str(tiny_models["reward"])).setup(policy), r"the judge model \(PromptedJudge model\) .* not a causal LM"),
        (lambda: RewardModel(model=str(tiny_models["policy"])).setup(policy), r"the reward model \(RewardModel model\) .* not a reward model"),
        (lambda: BridgedRewardModel(model=str(backbone)).setup(policy), r"the reward model \(BridgedRewardModel model\) .*bare backbone.* score.weight"),
    ]
    for load, message in cases:
        with pytest.raises(ModelLoadError, match=message):
            load()


def test_a_classifier_checkpoint_as_the_policy_stops_the_run_in_one_line(tmp_path, tiny_models, capsys):
    config = tiny_config(tmp_path, tiny_models, policy=str(tiny_models["reward"]))
    with pytest.raises(SystemExit) as exited:
        main(["predict", "--config", str(config)])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "seaflow: error: the policy (model.init_args.policy)" in err and "lacks lm_head.weight" in err, err
    assert not (tmp_path / "run" / "predictions.jsonl").exists()


def test_models_load_safetensors_without_remote_code(tiny_models, monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = {}
    original = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    load_causal_lm(str(tiny_models["policy"]))
    assert seen["trust_remote_code"] is False and seen["use_safetensors"] is True
    assert SEA(reward=LexiconReward()).trust_remote_code is False


def test_wandb_logger_is_offline_unless_configured(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    from seaflow.metrics import offline_wandb

    monkeypatch.delenv("WANDB_MODE", raising=False)

    class FakeTrainer:
        loggers = [WandbLogger(save_dir=str(tmp_path)), WandbLogger(save_dir=str(tmp_path), mode="online")]

    offline_wandb(FakeTrainer)
    assert FakeTrainer.loggers[0]._wandb_init["mode"] == "offline"
    assert FakeTrainer.loggers[1]._wandb_init["mode"] == "online"


# -- output directory, out of memory ---------------------------------------------------------


def test_unwritable_output_dir_fails_before_any_compute(tmp_path, tiny_models, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = tiny_config(tmp_path, tiny_models)
    monkeypatch.setattr(SEA, "setup", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(SystemExit) as exited:
        main(["predict", "--config", str(config), "--output.output_dir", str(blocker / "run")])
    assert exited.value.code == 1
    assert re.search(r"output_dir '.*a-file/run' is not writable .*choose another output.output_dir", capsys.readouterr().err)


def test_out_of_memory_names_the_settings_to_lower(tiny_policy, monkeypatch):
    sea = _sea(tiny_policy, LexiconReward())

    def oom(batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(sea, "align", oom)
    with pytest.raises(torch.cuda.OutOfMemoryError, match=r"data.batch_size \(now 2\), model.init_args.chains \(now 2\).*max_new_tokens \(now 6\)"):
        sea.predict_step(_batch(tiny_policy))


# -- crashes, interruption, resume -----------------------------------------------------------


def _slow_config(tmp_path, tiny_models, prompts=6):
    """Batches of one prompt with many steps, so that a run can be stopped in the middle."""
    config = tiny_config(tmp_path, tiny_models, steps=20)
    (tmp_path / "prompts.jsonl").write_text(
        "".join(json.dumps({"id": f"p{i}", "prompt": f"tell me about the dog {i}"}) + "\n" for i in range(prompts))
    )
    data = yaml.safe_load(config.read_text())
    data["data"]["batch_size"] = 1
    config.write_text(yaml.safe_dump(data))
    return config


def _lines(path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_sigkill_then_rerun_gives_every_prompt_once(tmp_path, tiny_models):
    config = _slow_config(tmp_path, tiny_models)
    path = tmp_path / "run" / "predictions.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "seaflow.cli", "predict", "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _lines(path) < 1 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    _, err = process.communicate()
    killed = read_jsonl(path)  # parses: each record is written whole and fsync'ed
    assert 1 <= len(killed) < 6, err[-2000:]
    main(["predict", "--config", str(config)])  # the same command again: the killed run's lock died with it
    records = read_jsonl(path)
    assert [r["id"] for r in records] == [f"p{i}" for i in range(6)]
    assert records[: len(killed)] == killed


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stop_signal_finishes_the_batch_and_says_how_to_resume(tmp_path, tiny_models, capsys, signum):
    """Ctrl-C / ``timeout``: the batch in flight is written, then the run stops with a resume hint."""
    config = _slow_config(tmp_path, tiny_models)
    path = tmp_path / "run" / "predictions.jsonl"

    def send_when_the_first_record_is_written():
        deadline = time.monotonic() + 60
        while _lines(path) < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signum)  # handled in the main thread, which is running the batches

    before = signal.getsignal(signum)
    sender = threading.Thread(target=send_when_the_first_record_is_written)
    sender.start()
    with pytest.raises(SystemExit) as exited:
        main(["predict", "--config", str(config)])
    sender.join()
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert f"{signal.Signals(signum).name} received: finishing the current batch" in err
    assert "To resume, rerun the same command" in err and str(tmp_path / "run" / "config.yaml") in err
    records = read_jsonl(path)
    assert 1 <= len(records) <= 2 and len({r["id"] for r in records}) == len(records)
    assert signal.getsignal(signum) == before  # the handlers are put back


# -- determinism ---------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_predictions(tmp_path, tiny_models):
    outputs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        config = tiny_config(tmp_path / name, tiny_models)
        main(["predict", "--config", str(config), "--output.wall_time", "false"])
        outputs.append((tmp_path / name / "run" / "predictions.jsonl").read_bytes())
    assert outputs[0] == outputs[1] and b"wall_time_s" not in outputs[0]


def test_records_are_strict_json(tmp_path):
    from seaflow.writer import strict_json

    record = strict_json({"trace": {"energy": [1.0, float("nan"), float("inf")]}, "reward": float("-inf")})
    assert json.dumps(record, allow_nan=False) == '{"trace": {"energy": [1.0, null, null]}, "reward": null}'


# -- a config.yaml written before an argument existed --------------------------------------


def _drop(config: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    node = config
    for part in parents:
        node = node[part]
    del node[last]


@pytest.mark.parametrize("dropped", ["model.init_args.patience", "model.init_args.reward.init_args.scale",
                                     "data.response_prefix_tokens"])
def test_resume_accepts_an_argument_added_since_the_run_at_its_default(tmp_path, tiny_models, capsys, dropped):
    """A run directory whose config.yaml lacks an argument (written by an older seaflow) resumes when
    the argument is at its default now; set to anything else it is a different run."""
    from test_cli import read_jsonl, tiny_config

    config = tiny_config(tmp_path, tiny_models, steps=1)
    main(["predict", "--config", str(config), "--data.limit", "2"])
    saved_path = tmp_path / "run" / "config.yaml"
    saved = yaml.safe_load(saved_path.read_text())
    _drop(saved, dropped)
    saved_path.write_text(yaml.safe_dump(saved))
    main(["predict", "--config", str(config)])  # resumes: the two remaining prompts are appended
    assert [r["id"] for r in read_jsonl(tmp_path / "run" / "predictions.jsonl")] == ["p0", "p1", "p2", "p3"]

    saved_path.write_text(yaml.safe_dump(saved))
    value = {"model.init_args.patience": "2", "model.init_args.reward.init_args.scale": "0.5",
             "data.response_prefix_tokens": "1"}[dropped]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["predict", "--config", str(config), f"--{dropped}", value])
    assert f"{dropped}: (not set) -> " in capsys.readouterr().err
