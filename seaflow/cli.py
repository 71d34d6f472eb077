"""``seaflow``: LightningCLI for SEA and the baselines.

    seaflow predict --config configs/demo.yaml      # align the prompts, write JSONL
    seaflow predict --config configs/demo.yaml --print_config
    seaflow list                                      # registered samplers, relaxations, energies, ...
    seaflow report RUN_DIR [RUN_DIR ...] --out DIR    # markdown table and plots from finished runs
    seaflow calibrate --config configs/calibration/lexicon_sentiment.yaml   # reward AUC on labelled rows
    seaflow fit --config configs/reward_head.yaml     # train the refusal reward head

Every pluggable part is a type hint on a constructor (``sampler: Sampler``,
``reward: Reward``, ...), so YAML selects it with ``class_path`` (a short class name works
for anything seaflow or the user has imported) and ``init_args``.
"""

from __future__ import annotations

import os
import re
import sys
from argparse import ArgumentError
from pathlib import Path

import torch

from lightning.pytorch.cli import LightningCLI

import seaflow  # noqa: F401  (registers every built-in component)
from seaflow.data import PromptDataModule
from seaflow.methods.base import AlignmentMethod
from seaflow.writer import JsonlPredictionWriter


class SeaflowCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(JsonlPredictionWriter, "output")
        parser.set_defaults(
            {
                "trainer.inference_mode": False,  # SEA differentiates inside predict_step
                "trainer.logger": False,
                "trainer.enable_checkpointing": False,
                "trainer.enable_model_summary": False,
            }
        )

    def parse_arguments(self, parser, args) -> None:
        """LightningCLI's parsing; an unknown class name gets the list of available ones."""
        action = getattr(parser, "_subcommands_action", None)
        parsers = [parser] + (list(action._name_parser_map.values()) if action is not None else [])
        saved = [p.exit_on_error for p in parsers]
        for p in parsers:
            p.exit_on_error = False
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            for p, value in zip(parsers, saved):
                p.exit_on_error = value
            parser.error(explain_unknown_classes(str(err)))
        finally:
            for p, value in zip(parsers, saved):
                p.exit_on_error = value

    def before_predict(self) -> None:
        if self.trainer.predict_loop.inference_mode:
            raise ValueError(
                "trainer.inference_mode must be false for seaflow predict: the refinement needs gradients"
            )
        offline_wandb(self.trainer)
        # the resolved config travels with the results, so every run can be reproduced
        if self.trainer.global_rank == 0:
            output = Path(self.config["predict"]["output"]["output_dir"])
            try:  # before any model is loaded: a bad output_dir fails in seconds
                output.mkdir(parents=True, exist_ok=True)
                self._parser("predict").save(self.config["predict"], output / "config.yaml", skip_none=False, overwrite=True, multifile=False)
            except OSError as err:
                raise OSError(
                    f"output_dir {str(output)!r} is not writable ({err.strerror or err}): choose another output.output_dir"
                ) from None


def offline_wandb(trainer) -> None:
    """A WandbLogger syncs nothing unless the config asks (``mode: online``) or ``WANDB_MODE`` is set."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and not logger._offline and "mode" not in logger._wandb_init and "WANDB_MODE" not in os.environ:
            logger._wandb_init["mode"] = "offline"


def explain_unknown_classes(message: str) -> str:
    """Append the available names to a parse error about a class name that resolves to nothing."""
    unknown = sorted(set(re.findall(r"Expected a dot import path string: ([\w.]+)", message)))
    if not unknown:
        return message
    names = ", ".join(repr(name) for name in unknown)
    return f"{message}\nunknown class name {names}; available (seaflow list):\n{list_components()}"


def list_components() -> str:
    """Human-readable listing of every registered component family."""
    from seaflow.energies.base import EnergyTerm
    from seaflow.methods.base import AlignmentMethod as Method
    from seaflow.relaxations.base import Relaxation
    from seaflow.samplers.base import Sampler
    from seaflow.samplers.schedules import Schedule

    methods = sorted(cls.__name__ for cls in _subclasses(Method))
    lines = [f"methods:      {', '.join(methods)}"]
    for title, family in (("samplers", Sampler), ("schedules", Schedule), ("relaxations", Relaxation), ("energies", EnergyTerm)):
        lines.append(f"{title + ':':<13} {', '.join(family.available())}")
    return "\n".join(lines)


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def main(args: list[str] | None = None) -> None:
    from_shell = args is None
    args = sys.argv[1:] if args is None else args
    if args[:1] == ["list"]:
        print(list_components())
        return
    if args[:1] == ["report"]:  # compare finished runs (seaflow/report.py)
        from seaflow.report import main as report

        report(args[1:])
        return
    if args[:1] == ["calibrate"]:  # score a reward on labelled rows (seaflow/calibrate.py)
        from seaflow.calibrate import main as calibrate

        calibrate(args[1:])
        return
    if args[:1] in (["fit"], ["validate"]):  # train a LightningModule, e.g. the reward head (seaflow/reward_head.py)
        from seaflow.reward_head import fit_main

        fit_main(args)
        return
    try:
        SeaflowCLI(
            AlignmentMethod,
            PromptDataModule,
            subclass_mode_model=True,
            seed_everything_default=0,
            save_config_callback=None,  # before_predict saves the config next to the predictions
            args=None if from_shell else args,  # LightningCLI reads sys.argv itself when run from the shell
            auto_configure_optimizers=False,
        )
    except torch.cuda.OutOfMemoryError as err:
        if "data.init_args.batch_size" in str(err):  # SEA said which settings already
            raise
        raise torch.cuda.OutOfMemoryError(
            "out of GPU memory: lower data.init_args.batch_size, the method's candidates or chains "
            "(model.init_args.n / chains) or model.init_args.max_new_tokens, then rerun the same "
            f"command to resume ({err})"
        ) from err


if __name__ == "__main__":
    main()
