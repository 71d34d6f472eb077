"""The console: a progress bar that moves per refinement step, a quiet default, the end-of-run table, help."""

import io
import json
import logging
import warnings

import pytest
import yaml
from rich.console import Console
from test_cli import read_jsonl, tiny_config

from seaflow import console, progress
from seaflow.cli import main


@pytest.fixture
def bars(monkeypatch):
    """Every StepBar made during the test, drawing on a terminal console in memory."""
    made, screen = [], io.StringIO()
    real_init = console.StepBar.__init__

    def init(self, total, description="seaflow", console_=None):
        real_init(self, total, description, Console(file=screen, force_terminal=True, width=150))
        made.append(self)

    monkeypatch.setattr(console.StepBar, "__init__", init)
    return made, screen


def test_the_bar_moves_per_refinement_step(tmp_path, tiny_models, bars, capsys):
    made, screen = bars
    config = tiny_config(tmp_path, tiny_models)  # 4 prompts, batches of 2, 3 steps
    main(["predict", "--config", str(config), "--trainer.enable_progress_bar", "true"])
    (bar,) = made
    assert bar.total == 4 and bar.done == 4
    assert bar.updates == [(t, 3, "step") for t in (1, 2, 3)] * 2  # every step of both batches
    assert bar.progress.tasks[0].completed == 4
    assert "4/4 prompts" in screen.getvalue()
    assert len(read_jsonl(tmp_path / "run" / "predictions.jsonl")) == 4


def test_best_of_n_moves_per_candidate_block(tmp_path, tiny_models, bars):
    made, _ = bars
    config = yaml.safe_load(tiny_config(tmp_path, tiny_models).read_text())
    config["model"] = {"class_path": "BestOfN", "init_args": {
        "policy": str(tiny_models["policy"]), "reward": config["model"]["init_args"]["reward"],
        "n": 4, "sample_batch": 4, "max_new_tokens": 6,
    }}
    path = tmp_path / "bon.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["predict", "--config", str(path), "--trainer.enable_progress_bar", "true"])
    (bar,) = made
    assert bar.updates == [(4, 8, "candidates"), (8, 8, "candidates")] * 2  # 2 prompts x 4 candidates per batch


def _decoding_run(tmp_path, tiny_models, method: str, **init_args):
    config = yaml.safe_load(tiny_config(tmp_path, tiny_models).read_text())
    config["model"] = {"class_path": method, "init_args": {
        "policy": str(tiny_models["policy"]), "reward": config["model"]["init_args"]["reward"], "max_new_tokens": 6, **init_args,
    }}
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["predict", "--config", str(path), "--trainer.enable_progress_bar", "true"])


def test_args_moves_per_decoded_token(tmp_path, tiny_models, bars):
    made, _ = bars
    _decoding_run(tmp_path, tiny_models, "ARGS", top_k=3, sample_batch=1)  # 2 prompts per batch, one row per block
    (bar,) = made
    per_batch = [u for u in bar.updates if u[1] == 12]
    assert {unit for *_, unit in bar.updates} == {"token"} and len(per_batch) == len(bar.updates)
    done = [d for d, _, _ in bar.updates]
    # each batch counts up over 2 blocks x 6 tokens (a block may end early at EOS, then the next one starts at 6)
    assert all(1 <= d <= 12 for d in done) and done.count(1) == 2 and done.count(7) == 2


def test_cbs_moves_per_round(tmp_path, tiny_models, bars):
    made, _ = bars
    _decoding_run(tmp_path, tiny_models, "CBS", beams=2, samples_per_beam=2, chunk_length=2)
    (bar,) = made
    assert {unit for *_, unit in bar.updates} == {"round"}  # no per-block candidate counts inside a round
    assert [d for d, _, _ in bar.updates][:1] == [1] and all(t == 3 for _, t, _ in bar.updates)


def test_no_bar_when_the_config_turns_it_off(tmp_path, tiny_models, bars):
    made, _ = bars
    main(["predict", "--config", str(tiny_config(tmp_path, tiny_models))])  # enable_progress_bar: false
    assert made == []


def test_align_shows_the_same_bar(tmp_path, tiny_models, bars):
    from seaflow.api import load

    made, _ = bars
    aligner = load(str(tiny_config(tmp_path, tiny_models)))
    aligner.align(["describe the city", "how was the train", "write about my dog"], progress=True)
    (bar,) = made
    assert bar.done == 3 and bar.updates == [(t, 3, "step") for t in (1, 2, 3)] * 2


def test_a_stream_of_unknown_length_grows_the_bar_per_batch(tmp_path, tiny_models, bars):
    from seaflow.api import load

    made, _ = bars
    aligner = load(str(tiny_config(tmp_path, tiny_models)))  # batches of 2
    totals = [made[0].total for _ in aligner.stream((t for t in ("describe the city", "how was the train", "write about my dog")),
                                                    progress=True)]
    (bar,) = made
    assert totals == [2, 2, 3] and bar.done == 3 and bar.progress.tasks[0].total == 3


def test_the_progress_hook_has_no_listener_by_default():
    heard = []
    progress.report(1, 2)
    with progress.listen(lambda *a: heard.append(a)):
        progress.report(1, 2, "step")
    progress.report(2, 2)
    assert heard == [(1, 2, "step")]


def test_the_end_table_reads_summary_json(tmp_path, tiny_models, capsys):
    config = tiny_config(tmp_path, tiny_models)
    main(["predict", "--config", str(config)])
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for key in ("mean_initial_reward", "mean_reward", "mean_initial_ref_logprob_per_token", "mean_ref_logprob_per_token"):
        assert f"{summary[key]:.3f}" in out, key
    assert f"{100 * summary['win_rate_vs_initial_best']:.0f}%" in out
    assert "win rate vs best initial sample" in out and "time per prompt" in out
    assert out.count(str(tmp_path / "run" / "predictions.jsonl")) == 1  # named once, by the table's files line
    assert "records in" not in out  # the writer's own closing line is for runs without the table


def test_quiet_by_default_and_verbose_brings_the_notices_back(tmp_path, tiny_models, capfd, caplog):
    config = tiny_config(tmp_path, tiny_models)
    caplog.set_level(logging.INFO)
    main(["predict", "--config", str(config), "--output.overwrite", "true"])
    logged, err = caplog.text, capfd.readouterr().err
    for noise in ("GPU available", "TPU available", "litlogger", "Seed set"):
        assert noise not in logged and noise not in err, noise
    assert "Loading weights" not in err
    caplog.clear()
    main(["predict", "--config", str(config), "--output.overwrite", "true", "--verbose"])
    logged, err = caplog.text, capfd.readouterr().err
    assert "GPU available" in logged and "litlogger" in logged and "Loading weights" in err
    console.quiet()


def test_quiet_filters_dependencies_warnings_only():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        console.quiet()
        warnings.warn_explicit("old api", DeprecationWarning, "modeling_utils.py", 1, module="transformers.modeling_utils")
        warnings.warn_explicit("old api", FutureWarning, "cli.py", 1, module="lightning.pytorch.cli")
        warnings.warn_explicit("ours", DeprecationWarning, "data.py", 1, module="seaflow.data")
        warnings.warn_explicit("a real problem", UserWarning, "modeling_utils.py", 1, module="transformers.modeling_utils")
        console.verbose()
        warnings.warn_explicit("old api again", DeprecationWarning, "modeling_utils.py", 2, module="transformers.modeling_utils")
    assert [str(w.message) for w in caught] == ["ours", "a real problem", "old api again"]
    record = logging.LogRecord("lightning.pytorch.utilities.rank_zero", logging.INFO, "", 0, "GPU available: False, used: False", None, None)
    assert not console.NoiseFilter().filter(record)
    record.msg = "Predicting DataLoader 0"
    assert console.NoiseFilter().filter(record)


# -- help and list ---------------------------------------------------------------------------


def test_seaflow_help_lists_the_commands(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for command in ("predict", "list", "report", "calibrate", "fit", "validate"):
        line = next(l for l in out.splitlines() if l.strip().startswith(command + " "))
        assert len(line.split(None, 1)[1]) > 20, line  # one line saying what it does
    assert "Lightning Trainer command line tool" not in out
    with pytest.raises(SystemExit):
        main(["frobnicate"])
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_predict_help_shows_the_methods_options_not_training_flags(capsys):
    with pytest.raises(SystemExit) as end:
        main(["predict", "--help"])
    assert end.value.code == 0
    out = capsys.readouterr().out
    for option in ("--model.init_args.chains", "--model.init_args.steps", "--model.init_args.alpha",
                   "--model.init_args.sampler", "--model.init_args.max_new_tokens", "--trainer.accelerator",
                   "--data.path", "--output.output_dir"):
        assert option in out, option
    for training in ("--trainer.max_epochs", "--trainer.gradient_clip_val", "--trainer.accumulate_grad_batches",
                     "--ckpt_path", "--return_predictions"):
        assert training not in out, training
    assert "chains per prompt" in out  # SEA's docstring describes each option


def test_predict_help_follows_the_configs_method(tmp_path, tiny_models, capsys):
    from seaflow.cli import method_class
    from seaflow.methods import BestOfN, SEA

    config = tmp_path / "bon.yaml"
    config.write_text("model:\n  class_path: BestOfN\n")
    assert method_class(["--config", str(config)]) is BestOfN and method_class([]) is SEA
    with pytest.raises(SystemExit):
        main(["predict", "--config", str(config), "--help"])
    out = capsys.readouterr().out
    assert "--model.init_args.n " in out and "--model.init_args.chains" not in out


def test_list_hides_bases_and_separates_rewards(capsys):
    main(["list"])
    lines = {l.split(":", 1)[0]: l.split(":", 1)[1] for l in capsys.readouterr().out.splitlines() if ":" in l}
    assert not {"AlignmentMethod", "DiscreteMethod", "RefinementMethod"} & set(lines["methods"].replace(",", " ").split())
    assert "SEA" in lines["methods"] and "BestOfN" in lines["methods"]
    assert "ReferenceLogLikelihood" in lines["reference"] and "ReferenceLogLikelihood" not in lines["rewards"]
    assert "LexiconReward" in lines["rewards"] and "RewardModel" in lines["rewards"]
    assert "JsonlPredictionWriter" in lines["callbacks"] and "PredictionMetrics" in lines["callbacks"]
    assert "prompt_set:advbench" in lines["prompt sets"]
