"""``seaflow fit|validate``: LightningCLI over any LightningModule / LightningDataModule."""

from __future__ import annotations

import lightning as L


def fit_main(args: list[str]) -> None:
    """``seaflow fit|validate ...``: LightningCLI over any LightningModule / LightningDataModule."""
    import sys

    from lightning.pytorch.cli import LightningCLI

    from seaflow.metrics import offline_wandb

    class FitCLI(LightningCLI):
        """LightningCLI whose WandbLogger stays offline unless asked (as for ``seaflow predict``)."""

        def before_fit(self) -> None:
            offline_wandb(self.trainer)

        def before_validate(self) -> None:
            offline_wandb(self.trainer)

    FitCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=None if args == sys.argv[1:] else args,  # from the shell, Lightning reads sys.argv itself
    )
