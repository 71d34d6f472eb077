"""``seaflow``: LightningCLI for SEA and the baselines.

    seaflow predict --config configs/demo.yaml      # align the prompts, write JSONL
    seaflow predict --config configs/demo.yaml --print_config
    seaflow list                                      # available samplers, relaxations, energies, ...
    seaflow report RUN_DIR [RUN_DIR ...] --out DIR    # markdown table and plots from finished runs
    seaflow calibrate --config configs/calibration/lexicon_sentiment.yaml   # reward AUC on labelled rows
    seaflow fit --config configs/reward_head.yaml     # train the refusal reward head
    seaflow tune --config my_task.yaml --budget 400GFLOPs   # the method for a task at a budget (docs/tune.md)

A mistake in a file, a value, a model name or the output directory prints one message and
exits with status 1; ``--debug`` (anywhere on the command line) or ``SEAFLOW_DEBUG=1`` shows
the traceback instead.

Every pluggable part is a type hint on a constructor (``sampler: Sampler``,
``reward: Reward``, ...), so YAML selects it with ``class_path`` (a short class name works
for anything seaflow or the user has imported) and ``init_args``.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from argparse import ArgumentError
from pathlib import Path

import torch

import yaml
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from seaflow import energies, methods, relaxations, samplers, schedules  # noqa: F401  (every built-in component)
from seaflow.arguments import ConfigError, nested_nulls, refuse_non_finite, summarize_parse_error, warn_switched_class_paths
from seaflow.components import available, list_components, subclasses
from seaflow.data import PromptDataModule
from seaflow.metrics import offline_wandb
from seaflow.methods.base import AlignmentMethod
from seaflow.models import ModelLoadError
from seaflow.resume import RunInUseError, RunMismatchError, config_differences, ways_out
from seaflow.writer import JsonlPredictionWriter, TooManyFailedRows


# declared wiring (parse-time links): the data module loads the policy's tokenizer and reserves room for
# the response; loggers write into the output directory. ``data.run`` is linked on instantiation.
LINKS = (
    ("model.init_args.policy", "data.policy"),
    ("model.init_args.trust_remote_code", "data.trust_remote_code"),
    ("model.init_args.max_new_tokens", "data.max_new_tokens"),
    ("output.output_dir", "trainer.default_root_dir"),
)
LINKED = tuple(target for _, target in LINKS) + ("data.run",)


class SeaflowCLI(LightningCLI):
    """``seaflow predict``: a method, the prompts, the JSONL writer (``output``) and a Trainer.

    The components are wired by declaration: the data module loads the tokenizer of the
    method's policy and reserves its ``max_new_tokens`` (parse-time links), shares the
    writer's run directory (:class:`~seaflow.resume.RunDirectory`, an instantiation link) and
    the trainer's ``default_root_dir`` is the output directory (where loggers write).
    """

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Only ``predict``: a method is never trained (``seaflow fit`` trains a reward head instead)."""
        return {"predict": {"model", "datamodule"}}

    def _prepare_subcommand_parser(self, klass, subcommand: str, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        # Trainer.predict's own arguments (dataloaders, ckpt_path, ...): the data module and the config give them
        hide_training_flags(parser, self._subcommand_method_arguments.get(subcommand, []))
        return parser

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(JsonlPredictionWriter, "output")
        for source, target in LINKS:
            parser.link_arguments(source, target)
        parser.link_arguments("output", "data.run", compute_fn=lambda writer: writer.run, apply_on="instantiate")
        parser.set_defaults(
            {
                "trainer.inference_mode": False,  # SEA differentiates inside predict_step
                "trainer.logger": False,
                "trainer.enable_checkpointing": False,
                "trainer.enable_model_summary": False,
            }
        )

    def parse_arguments(self, parser, args) -> None:
        """LightningCLI's parsing of the command line as :func:`read_arguments` prepares it; a bad value
        is one line (ConfigError, the parser's full report behind ``--debug``)."""
        action = getattr(parser, "_subcommands_action", None)
        parsers = [parser] + (list(action._name_parser_map.values()) if action is not None else [])
        args = read_arguments(sys.argv[1:] if args is None else list(args), parsers)
        saved = [p.exit_on_error for p in parsers]
        for p in parsers:
            p.exit_on_error = False
        try:
            # LightningCLI's parse_arguments without its warning about sys.argv (the prepared copy of it)
            self.config = parser.parse_args(args)
        except ArgumentError as err:
            raise ConfigError(summarize_parse_error(str(err), component_names)) from err
        finally:
            for p, value in zip(parsers, saved):
                p.exit_on_error = value
        subcommand = self.config.get("subcommand")
        refuse_non_finite(self.config.get(subcommand) if subcommand else self.config)  # before anything is built

    def _instantiate_trainer(self, config, callbacks):
        """The Trainer, with seaflow's progress bar (steps within a batch) unless the config turns the
        bar off (``trainer.enable_progress_bar: false``) or brings its own."""
        from lightning.pytorch.callbacks import ProgressBar

        from seaflow.console import SeaflowProgressBar

        given = config.get("callbacks") or []
        given = given if isinstance(given, list) else [given]
        if config.get("enable_progress_bar", True) is not False and not any(isinstance(c, ProgressBar) for c in given + callbacks):
            callbacks = [*callbacks, SeaflowProgressBar()]
        return super()._instantiate_trainer(config, callbacks)

    def before_predict(self) -> None:
        if self.trainer.predict_loop.inference_mode:
            raise ValueError(
                "trainer.inference_mode must be false for seaflow predict: the refinement needs gradients"
            )
        offline_wandb(self.trainer)
        for callback in self.trainer.callbacks:  # the end-of-run table names the files itself
            if isinstance(callback, JsonlPredictionWriter):
                callback.announce = False
        self._started = time.perf_counter()

    def after_predict(self) -> None:
        """The end-of-run table on stdout (rank 0): reward and fluency before -> after, win rate, time, files."""
        from seaflow.console import print_end_table

        writer = next((c for c in self.trainer.callbacks if isinstance(c, JsonlPredictionWriter)), None)
        if writer is None or not self.trainer.is_global_zero:
            return
        elapsed = time.perf_counter() - self._started if hasattr(self, "_started") else None
        print_end_table(writer.output_dir, elapsed, writer.written)


# the Trainer options that matter to predict; ``seaflow predict --help`` lists these (the others,
# about training loops, are still accepted: a config may set them, they do nothing in predict)
PREDICT_TRAINER_OPTIONS = ("accelerator", "strategy", "devices", "num_nodes", "precision", "logger", "callbacks",
                           "enable_progress_bar", "inference_mode", "default_root_dir", "limit_predict_batches",
                           "deterministic", "benchmark", "profiler", "plugins")


def hide_training_flags(parser, hidden: list[str] = ()) -> None:
    """Leave the training-only Trainer options (max_epochs, gradient_clip_val, ...) and the ``hidden``
    keys (``Trainer.predict``'s own: dataloaders, ckpt_path, ...) out of the help; they still parse."""
    from argparse import SUPPRESS

    hidden = set(hidden) | {"ckpt_path", "return_predictions", "dataloaders", "weights_only"}
    for action in parser._actions:
        dest = action.dest or ""
        option = dest.split(".", 1)[1] if dest.startswith("trainer.") else None
        root = dest.split(".", 1)[0]
        if (option is not None and option not in PREDICT_TRAINER_OPTIONS) or dest in hidden or root in hidden:
            action.help = SUPPRESS
    group = getattr(parser, "groups", {}).get("trainer")
    if group is not None:
        group.title = "Lightning's Trainer, for predict (trainer.*)"
        group.description = (
            "Hardware, precision, loggers, callbacks and the progress bar. Training-only options (max_epochs, "
            "gradient_clip_val, ...) are not listed: a method is not trained, they would do nothing."
        )


def method_class(args: list[str]) -> type:
    """The method class a predict command line selects: ``--model``, else the last ``--config``'s
    ``model.class_path``, else SEA."""
    from seaflow.methods import SEA

    name = None
    for i, arg in enumerate(args):
        value = args[i + 1] if i + 1 < len(args) else None
        if arg in ("--config", "-c") and value:
            try:
                data = yaml.safe_load(Path(value).read_text(encoding="utf-8"))
                name = (data.get("model") or {}).get("class_path", name) if isinstance(data, dict) else name
            except (OSError, yaml.YAMLError, AttributeError):
                pass
        elif arg in ("--model", "--model.class_path") and value and not value.startswith("-"):
            name = value
        elif arg.startswith(("--model=", "--model.class_path=")):
            name = arg.split("=", 1)[1]
    if not name:
        return SEA
    short = name.rsplit(".", 1)[-1]
    for cls in subclasses(AlignmentMethod):
        if cls.__name__ == short and (name == short or f"{cls.__module__}.{short}" == name or "." in name):
            return cls
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr) if module else SEA
    except (ImportError, AttributeError):
        return SEA


def method_help(cls: type) -> str:
    """The options of method ``cls`` as ``--model.init_args.NAME`` (its own and its bases')."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="seaflow predict", usage=f"seaflow predict --model {cls.__name__} --model.init_args.NAME VALUE",
                            description=f"{cls.__name__}'s options (model.init_args in a config):")
    parser.add_class_arguments(cls, "model.init_args", fail_untyped=False, sub_configs=True)
    return parser.format_help()


def predict_help(args: list[str]) -> None:
    """``seaflow predict --help``: the predict options (training-only Trainer flags left out), then the
    selected method's own options (``--config``'s method, or SEA)."""
    cls = method_class(args)
    argv, sys.argv = sys.argv, sys.argv[:1] + ["predict", "--help"]
    try:
        build_cli(None)
    except SystemExit as end:
        if end.code not in (0, None):
            raise
    finally:
        sys.argv = argv
    print()
    print(method_help(cls))
    raise SystemExit(0)  # as argparse's --help does


class SaveRunConfig(SaveConfigCallback):
    """Saves the resolved config as ``<output_dir>/config.yaml`` before any model loads.

    The config (minus the keys that do not change a record, :data:`seaflow.resume.NOT_FINGERPRINT`)
    is half of a run's fingerprint; the prompt texts, checked by the data module against the
    records, are the other half. A rerun into a directory whose config.yaml differs fails
    with the differing keys, unless ``output.overwrite`` is true; config.yaml of a different
    run is never overwritten. The same fingerprint resumes.
    """

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.already_saved:
            return
        if not trainer.is_global_zero:
            # rank 0 alone checks and writes; another rank reading config.yaml while rank 0
            # writes it would see a half-written file and report a different run
            self.already_saved = True
            return
        output = self.config["output"]
        directory = Path(output["output_dir"])
        path = directory / self.config_filename
        current = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        if path.is_file() and not output["overwrite"]:
            try:
                saved = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError) as err:
                raise RunMismatchError(f"{path} is not a readable config ({err}). {ways_out(directory)}") from None
            differences = config_differences(saved if isinstance(saved, dict) else {}, current, self.default_of(current))
            if differences:
                shown = "\n    ".join(differences[:12]) + (f"\n    ... and {len(differences) - 12} more" if len(differences) > 12 else "")
                raise RunMismatchError(
                    f"output_dir '{directory}' holds records of a different run; its config.yaml differs in:\n"
                    f"    {shown}\n{ways_out(directory)}"
                )
        try:  # before any model is loaded: a bad output_dir fails in seconds
            directory.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".partial")
            self.parser.save(self.config, partial, skip_none=False, overwrite=True, multifile=False)
            partial.replace(path)  # atomic: a crash never leaves a half-written config.yaml
        except OSError as err:
            raise OSError(
                f"output_dir {str(directory)!r} is not writable ({err.strerror or err}): choose another output.output_dir"
            ) from None
        self.already_saved = True

    def default_of(self, current: dict):
        """``key -> default`` for the flattened keys of ``current``: the parser's own defaults
        (``data.*``, top-level keys) and, under a ``class_path``, the class's signature default."""
        import inspect

        from jsonargparse.typing import import_object

        from seaflow.resume import NO_DEFAULT, _flatten

        flat = _flatten(current)
        try:
            parser_defaults = _flatten(yaml.safe_load(self.parser.dump(self.parser.get_defaults(), skip_none=False, skip_validation=True)))
        except Exception:  # noqa: BLE001 - defaults that do not dump: only class signatures are used
            parser_defaults = {}

        def default(key: str):
            head, sep, name = key.rpartition(".init_args.")
            if sep and "." not in name and isinstance(flat.get(f"{head}.class_path"), str):
                try:
                    parameter = inspect.signature(import_object(flat[f"{head}.class_path"])).parameters.get(name)
                except (ImportError, AttributeError, TypeError, ValueError):
                    return NO_DEFAULT
                if parameter is None or parameter.default is inspect.Parameter.empty:
                    return NO_DEFAULT
                return parameter.default
            return parser_defaults.get(key, NO_DEFAULT)

        return default


def read_arguments(args: list[str], parsers) -> list[str]:
    """The command line (or ``seaflow.load``'s overrides) as the parser should read it: a warning for
    each class a later file or argument switches while earlier settings stay, and ``null`` nested
    below a component kept null (seaflow/arguments.py)."""
    from seaflow.energies.base import EnergyTerm
    from seaflow.relaxations.base import Relaxation
    from seaflow.samplers.base import Sampler
    from seaflow.schedules import Schedule

    warn_switched_class_paths(args, families=(AlignmentMethod, Sampler, Schedule, Relaxation, EnergyTerm))
    return nested_nulls(args, [o for p in parsers for action in p._actions for o in action.option_strings])


def component_names(base: type) -> list[str]:
    """The names ``seaflow list`` gives for the components of ``base`` (for an unknown class name)."""
    from seaflow.energies.base import EnergyTerm
    from seaflow.relaxations.base import Relaxation
    from seaflow.samplers.base import Sampler
    from seaflow.schedules import Schedule

    for family, contract in ((AlignmentMethod, "predict_step"), (Sampler, "step"), (Schedule, "__call__"),
                             (Relaxation, "forward"), (EnergyTerm, "value")):
        if issubclass(base, family):
            return available(base, contract)
    return []


def _list(args: list[str]) -> None:
    """the components a config can select: methods, samplers, relaxations, rewards, callbacks, prompt sets"""
    print(list_components())


def _report(args: list[str]) -> None:
    """markdown table and plots comparing finished runs (seaflow report RUN_DIR ... --out DIR)"""
    from seaflow.report import main as report

    report(args)


def _calibrate(args: list[str]) -> None:
    """how well a reward separates labelled rows: AUC, ROC, best threshold (seaflow/calibrate/)"""
    from seaflow.calibrate import main as calibrate

    calibrate(args)


def _fit(args: list[str]) -> None:
    """train a LightningModule on the policy, e.g. the refusal reward head (configs/reward_head.yaml)"""
    from seaflow.reward_head import fit_main

    fit_main(args)


def _tune(args: list[str]) -> None:
    """choose the method for your task at your budget: candidates on your prompts, the best confirmed (docs/tune.md)"""
    from seaflow.tune import main as tune

    tune(args, predict_quietly)


class CellCLI(SeaflowCLI):
    """``seaflow predict`` as one of many runs of another command: its callbacks added, no end table."""

    extra_callbacks: tuple = ()

    def _instantiate_trainer(self, config, callbacks):
        return super()._instantiate_trainer(config, [*callbacks, *self.extra_callbacks])

    def after_predict(self) -> None:
        pass


def predict_quietly(config: Path, callbacks: list = ()) -> None:
    """``seaflow predict --config config`` in this process with extra Lightning ``callbacks`` (``seaflow tune``'s
    runs); a user error raises its own exception, not jsonargparse's wrapper of it."""
    cli = type("CellCLI", (CellCLI,), {"extra_callbacks": tuple(callbacks)})
    try:
        build_cli(["predict", "--config", str(config)], cli=cli)
    except Exception as err:
        shown = user_error(err)
        if shown is None or shown is err:
            raise
        raise shown from err


def _validate(args: list[str]) -> None:
    """validate a trained reward head (seaflow fit's module) on its validation rows"""
    _fit(["validate"] + args)


def build_cli(args: list[str] | None, run: bool = True, cli: type[SeaflowCLI] = SeaflowCLI) -> SeaflowCLI:
    """The ``seaflow predict`` LightningCLI on ``args``; ``run=False`` with ``cli`` a subclass that
    builds no Trainer parses and builds the method and the data module only (``seaflow.load``)."""
    return cli(
        AlignmentMethod,
        PromptDataModule,
        parser_kwargs={"prog": "seaflow", "description": DESCRIPTION, "predict": {"description": PREDICT_HELP}},
        subclass_mode_model=True,
        seed_everything_default=0,
        save_config_callback=SaveRunConfig,  # config.yaml next to the predictions, never another run's
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def _predict(args: list[str] | None) -> None:
    try:
        build_cli(args)
    except torch.cuda.OutOfMemoryError as err:
        if "data.batch_size" in str(err):  # SEA said which settings already
            raise
        raise torch.cuda.OutOfMemoryError(
            "out of GPU memory: lower data.batch_size, the method's candidates or chains "
            "(model.init_args.n / chains) or model.init_args.max_new_tokens, then rerun the same "
            f"command to resume ({err})"
        ) from err


# commands that are not LightningCLI subcommands of a method (SeaflowCLI.subcommands() has ``predict``)
COMMANDS = {"list": _list, "report": _report, "calibrate": _calibrate, "fit": lambda a: _fit(["fit"] + a),
            "validate": _validate, "tune": _tune}
COMMANDS["fit"].__doc__ = _fit.__doc__
PREDICT_HELP = "align the prompts of a config with a method (SEA or a baseline); writes predictions.jsonl and summary.json"
DESCRIPTION = ("seaflow: inference-time alignment of language models in continuous space "
               "(SEA: Langevin dynamics on response logits) and its baselines.")


def overview() -> str:
    """``seaflow --help``: seaflow's commands, one line each, and the options every command takes."""
    lines = [
        "usage: seaflow COMMAND [options]      (seaflow COMMAND --help: the command's options)",
        "",
        DESCRIPTION,
        "",
        "commands:",
        f"  {'predict':<10} {PREDICT_HELP}",
    ]
    for name, function in COMMANDS.items():
        summary = (function.__doc__ or "").strip().splitlines()
        lines.append(f"  {name:<10} {summary[0] if summary else ''}")
    lines += [
        "",
        "options of every command:",
        "  --import MODULE   import your module first (its samplers, rewards, ... are listed and selectable);",
        "                    the current directory is importable, so class_path: my_module.MyClass works",
        "  --verbose         keep the dependencies' notices (loading bars, Lightning's tips, deprecation warnings)",
        f"  --debug           show the traceback of an error (or {DEBUG_ENV}=1)",
        "",
        "e.g.  seaflow predict --config configs/demo.yaml",
        "      seaflow predict --config configs/demo.yaml --help     (the method's own options: chains, steps, alpha, ...)",
        "      seaflow list --import my_samplers",
    ]
    return "\n".join(lines)
DEBUG_ENV = "SEAFLOW_DEBUG"

# exceptions that describe a mistake in the user's files, values, models or disk: one message, no traceback
USER_ERRORS = (ValueError, OSError, ImportError, ModelLoadError, RunInUseError, TooManyFailedRows, torch.cuda.OutOfMemoryError)


def user_error(err: BaseException) -> BaseException | None:
    """The exception to show a user for ``err``, or None when ``err`` is not a user error.

    Configuration errors reach here wrapped by jsonargparse (``Does not validate against any of
    the Union subtypes ...`` listing the real message among others); the wrapped cause is shown.
    """
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__
    for candidate in chain:
        if isinstance(candidate, USER_ERRORS) and not _is_wrapper(candidate):
            return candidate
    return None


def _is_wrapper(err: BaseException) -> bool:
    message = str(err)
    return err.__cause__ is not None and (
        message.startswith("Does not validate against any of the Union subtypes") or message.startswith("Problem with given class_path")
    )


def take_imports(args: list[str]) -> tuple[list[str], list[str]]:
    """``(args without them, modules)`` of every ``--import MODULE`` / ``--import=MODULE``."""
    rest, modules, i = [], [], 0
    while i < len(args):
        if args[i] == "--import":
            if i + 1 >= len(args):
                raise SystemExit("seaflow: error: --import needs a module name (e.g. --import my_samplers)")
            modules.append(args[i + 1])
            i += 2
            continue
        if args[i].startswith("--import="):
            modules.append(args[i].split("=", 1)[1])
        else:
            rest.append(args[i])
        i += 1
    return rest, modules


def import_user_modules(modules: list[str]) -> None:
    """Make the current directory importable (``class_path: my_samplers.MySampler`` next to a config)
    and import each ``--import`` module, so its classes are listed and selectable by short name."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ImportError(
                f"--import {name}: {err}; run from the directory holding {name.replace('.', '/')}.py or add it to PYTHONPATH"
            ) from err


def main(args: list[str] | None = None) -> None:
    """``seaflow COMMAND ...``; a user error prints one message and exits 1 (``--debug`` or
    ``SEAFLOW_DEBUG=1`` shows the traceback instead)."""
    from_shell = args is None
    args = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in args or os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")
    loud = "--verbose" in args
    args, modules = take_imports([a for a in args if a not in ("--debug", "--verbose")])
    if from_shell:
        sys.argv[1:] = args
    from seaflow.console import quiet, verbose

    if loud:
        verbose()
    else:
        quiet()
    if not args or args[0] in ("-h", "--help", "help"):
        print(overview())
        return
    if args[0] not in COMMANDS and args[0] != "predict":
        print(f"seaflow: error: unknown command {args[0]!r}\n\n{overview()}", file=sys.stderr)
        raise SystemExit(2)
    try:
        import_user_modules(modules)
        if args[0] in COMMANDS:
            COMMANDS[args[0]](args[1:])
        elif "-h" in args or "--help" in args:
            predict_help(args[1:])
        else:
            # from the shell LightningCLI reads sys.argv itself (it warns when given both)
            _predict(None if from_shell else args)
    except Exception as err:
        shown = user_error(err)
        if debug or shown is None:
            raise
        print(f"seaflow: error: {shown}\n(for the traceback: rerun with --debug or {DEBUG_ENV}=1)", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
