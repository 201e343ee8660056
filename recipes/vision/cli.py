"""The vision recipe's command line.

``python -m lightning_curricula.recipes.vision fit --config recipes/vision/configs/infobatch.yaml``.

A `LightningCLI` over `VisionClassifier` and `VisionDataModule` that always tracks training dynamics
(the ``--dynamics.*`` options configure the `lightning_curricula.TrainingDynamics` callback), always
reloads the train loader every epoch (a curriculum's epochs have different lengths), logs to
TensorBoard under ``runs/vision`` by default, and records accuracy against sample passes
(`EpochHistory`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from lightning_curricula.recipes.vision.datamodule import VisionDataModule
from lightning_curricula.recipes.vision.history import EpochHistory
from lightning_curricula.recipes.vision.module import VisionClassifier
from typing_extensions import override

from lightning_curricula import DynamicsVisuals, TrainingDynamics

__all__ = ["VisionCLI", "main"]

DEFAULT_LOG_DIR = "runs/vision"


class VisionCLI(LightningCLI):
    """`LightningCLI` for the vision recipe, with training dynamics and per-epoch curriculum loaders.

    Compared with a plain ``LightningCLI(VisionClassifier, VisionDataModule)``:

    - ``--dynamics.*`` configures a `TrainingDynamics` callback that is always on the Trainer, and
      ``--visuals.*`` the `DynamicsVisuals` that draws it (histograms, data map, hardest examples);
    - ``--trainer.reload_dataloaders_every_n_epochs`` is forced to 1 (with a warning if set
      otherwise), so that each epoch's loader is sized from its plan;
    - the logger defaults to TensorBoard in ``runs/vision``; `EpochHistory` (the `history`
      attribute) logs ``val/acc_by_sample_passes``;
    - ``model.num_classes`` and ``model.in_channels`` follow the data module;
    - ``data.seed`` defaults to ``seed_everything`` (which defaults to 0, not to a random seed);
    - the optimiser and schedule are the module's (no ``--optimizer`` / ``--lr_scheduler``).

    Args:
        args: command-line arguments (``sys.argv[1:]`` when ``None``), a list or a dict.
        run: run the subcommand (``fit``, ``validate``, ``test``, ``predict``); with ``False``, only
            build `model`, `datamodule` and `trainer`, parsed from ``args`` without a subcommand.
        history: the `EpochHistory` callback to put on the Trainer (a new one when ``None``).
        trainer_defaults: more Trainer defaults; ``callbacks`` here are added to the Trainer.
        **kwargs: passed to ``LightningCLI``.

    Example:
        >>> cli = VisionCLI(args=["--trainer.max_epochs", "1", "--trainer.logger", "false"], run=False)
        >>> type(cli.model).__name__, cli.trainer.reload_dataloaders_every_n_epochs
        ('VisionClassifier', 1)
    """

    def __init__(
        self,
        args: ArgsType = None,
        *,
        run: bool = True,
        history: EpochHistory | None = None,
        trainer_defaults: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.history = history if history is not None else EpochHistory()
        extra = dict(trainer_defaults or {})
        callbacks = extra.pop("callbacks", [])
        defaults: dict[str, Any] = {
            "reload_dataloaders_every_n_epochs": 1,
            "logger": {
                "class_path": f"{TensorBoardLogger.__module__}.{TensorBoardLogger.__name__}",
                "init_args": {"save_dir": DEFAULT_LOG_DIR, "name": ""},
            },
            **extra,
            "callbacks": [self.history, *(callbacks if isinstance(callbacks, Sequence) else [callbacks])],
        }
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)
        super().__init__(VisionClassifier, VisionDataModule, trainer_defaults=defaults, args=args, run=run, **kwargs)

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(TrainingDynamics, "dynamics")
        parser.add_lightning_class_args(DynamicsVisuals, "visuals")  # after the tracker: it draws its epochs
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_channels", "model.in_channels", apply_on="instantiate")

    @override
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        reload = config.trainer.reload_dataloaders_every_n_epochs
        if reload != 1:
            rank_zero_warn(
                f"trainer.reload_dataloaders_every_n_epochs={reload} is replaced by 1: a curriculum plans each "
                "epoch anew, and Lightning must re-read the epoch's length."
            )
            config.trainer.reload_dataloaders_every_n_epochs = 1
        if config.data.seed is None:
            seed = config.seed_everything
            config.data.seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else 0


def main(args: ArgsType = None) -> None:
    """Entry point of ``python -m lightning_curricula.recipes.vision``."""
    VisionCLI(args=args)
