"""The LLM recipe's command line.

``python -m lightning_curricula.recipes.llm fit --config recipes/llm/configs/curriculum.yaml``.

A ``LightningCLI`` over `CausalLMFineTuner` and `InstructionDataModule`, built like the vision
recipe's: it always tracks training dynamics (``--dynamics.*`` configures the `TrainingDynamics`
callback), always reports the rank correlation of the learned difficulty with the known one
(``--report.*``, `DifficultyReport`), always reloads the train loader every epoch (a curriculum's
epochs have different lengths), logs to TensorBoard under ``runs/llm`` by default, and records the
held-out accuracies against sample passes (`EpochHistory`; on the testbed, ``val/families/accuracy``, the
mean over its families that the always-on `FamilyMeans` logs). The model's name is also the data
module's tokenizer. Every argument can be set in the YAML file or on the command line
(``--data.train_size 128``). When ``fit`` ends, the model is written as Hugging Face folders under the
run's log directory (``hf_model/``, or with LoRA ``hf_adapter/`` and, with ``--model.merge_lora true``, the
merged ``hf_model/``; ``--model.export_dir`` elsewhere, ``--model.hf_export false`` not at all).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning_curricula.recipes.llm.datamodule import InstructionDataModule
from lightning_curricula.recipes.llm.metrics import FAMILIES_SPLIT, FamilyMeans
from lightning_curricula.recipes.llm.module import CausalLMFineTuner
from lightning_curricula.recipes.llm.precision import choose_precision
from lightning_curricula.recipes.llm.report import DifficultyReport
from lightning_curricula.recipes.vision.history import EpochHistory
from typing_extensions import override

from lightning_curricula import DynamicsVisuals, TrainingDynamics

__all__ = ["DEFAULT_LOG_DIR", "HISTORY_METRICS", "LLMRecipeCLI", "main"]

DEFAULT_LOG_DIR = "runs/llm"
#: What `EpochHistory` records each epoch (``train/tokens`` is the epoch's token count, all ranks).
HISTORY_METRICS = (
    "val/easy/accuracy",
    "val/hard/accuracy",
    "val/easy/loss",
    "val/hard/loss",
    f"val/{FAMILIES_SPLIT}/accuracy",
    f"val/{FAMILIES_SPLIT}/loss",
    "train/loss",
    "train/tokens",
)


class LLMRecipeCLI(LightningCLI):
    """``LightningCLI`` for the LLM recipe, with training dynamics, the difficulty report and per-epoch loaders.

    Compared with a plain ``LightningCLI(CausalLMFineTuner, InstructionDataModule)``:

    - ``--dynamics.*`` configures a `TrainingDynamics` and ``--report.*`` a `DifficultyReport`, both
      always on the Trainer;
    - ``--trainer.reload_dataloaders_every_n_epochs`` is forced to 1 (with a warning if set
      otherwise), so that each epoch's loader is sized from its plan;
    - the logger defaults to TensorBoard in ``runs/llm``, logging every 5 steps; `EpochHistory` (the
      `history` attribute) logs ``val/hard/accuracy`` against sample passes (on the testbed
      ``val/families/accuracy``);
    - `FamilyMeans` is always on: on the testbed it logs ``val/families/<metric>`` and
      ``test/families/<metric>``, the mean of each per-family metric over the families;
    - ``data.tokenizer`` follows ``model.model``;
    - ``seed_everything`` defaults to 0, not to a random seed;
    - ``trainer.precision``, when not given, is chosen for the device (`choose_precision`) and logged;
      ``--auto_precision false`` keeps Lightning's ``32-true``;
    - the optimiser and schedule are the module's (no ``--optimizer`` / ``--lr_scheduler``).

    Args:
        args: command-line arguments (``sys.argv[1:]`` when ``None``), a list or a dict.
        run: run the subcommand; with ``False``, only build `model`, `datamodule` and `trainer`.
        history: the `EpochHistory` callback to put on the Trainer (a new one when ``None``).
        trainer_defaults: more Trainer defaults; ``callbacks`` here are added to the Trainer.
        **kwargs: passed to ``LightningCLI``.

    Example:
        >>> cli = LLMRecipeCLI(args=["--model.model", "tiny-random-llama", "--trainer.logger", "false"], run=False)
        >>> type(cli.model).__name__, cli.trainer.reload_dataloaders_every_n_epochs
        ('CausalLMFineTuner', 1)
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
        self._own_history = history is None
        self.history = (
            history
            if history is not None
            else EpochHistory(
                monitor="val/hard/accuracy", tag="val/hard_accuracy_by_sample_passes", metrics=HISTORY_METRICS
            )
        )
        extra = dict(trainer_defaults or {})
        callbacks = extra.pop("callbacks", [])
        defaults: dict[str, Any] = {
            "reload_dataloaders_every_n_epochs": 1,
            "log_every_n_steps": 5,
            "logger": {
                "class_path": f"{TensorBoardLogger.__module__}.{TensorBoardLogger.__name__}",
                "init_args": {"save_dir": DEFAULT_LOG_DIR, "name": ""},
            },
            **extra,
            "callbacks": [
                self.history,
                FamilyMeans(),
                *(callbacks if isinstance(callbacks, Sequence) else [callbacks]),
            ],
        }
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)
        super().__init__(
            CausalLMFineTuner, InstructionDataModule, trainer_defaults=defaults, args=args, run=run, **kwargs
        )

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(TrainingDynamics, "dynamics")
        parser.add_lightning_class_args(DynamicsVisuals, "visuals")  # after the tracker: it draws its epochs
        parser.add_lightning_class_args(DifficultyReport, "report")
        parser.link_arguments("model.model", "data.tokenizer")
        parser.add_argument(
            "--auto_precision",
            type=bool,
            default=True,
            help="When --trainer.precision is not given, choose it for the device (recipes/llm/precision.py): "
            "bf16-mixed on a GPU with bf16 or a CPU with AMX or AVX-512-BF16, else 16-mixed or 32-true.",
        )

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
        if config.trainer.precision is None and config.auto_precision:
            precision, reason = choose_precision(str(config.trainer.accelerator))
            config.trainer.precision = precision
            rank_zero_info(f"trainer.precision={precision}: {reason} (--trainer.precision to choose another).")

    def before_fit(self) -> None:
        """On the testbed, the CLI's own `EpochHistory` follows the families' mean (a given history is left alone)."""
        if self._own_history and isinstance(self.datamodule, InstructionDataModule) and self.datamodule.families:
            measure = "accuracy" if getattr(self.model, "max_new_tokens", 1) > 0 else "loss"
            self.history.monitor = f"val/{FAMILIES_SPLIT}/{measure}"
            self.history.tag = f"val/{FAMILIES_SPLIT}_{measure}_by_sample_passes"


def main(args: ArgsType = None) -> None:
    """Entry point of ``python -m lightning_curricula.recipes.llm``."""
    LLMRecipeCLI(args=args)
