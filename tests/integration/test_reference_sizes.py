"""Wherever a reference meets a training set, its size is checked at setup: the vision recipe's RHO-LOSS checks the
irreducible losses it restores from a checkpoint against the dataset it resumes on, as it does a file it reads, also
on a Trainer without the recipe's tracker (whose own size check would fail first)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning_curricula.recipes.vision.cli import VisionCLI

from lightning_curricula import OnlineBatchSelection

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "vision" / "configs"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
QUIET += ["--trainer.num_sanity_val_steps", "0", "--trainer.accelerator", "cpu", "--trainer.logger", "false"]


def cli(root: Path, train_subset: int) -> VisionCLI:
    args = ["--config", str(CONFIGS / "rho_loss.yaml"), "--trainer.max_epochs", "2", "--data.batch_size", "32"]
    args += ["--data.train_subset", str(train_subset), "--data.test_subset", "32", "--model.holdout_epochs", "1"]
    args += ["--trainer.default_root_dir", str(root), *QUIET]
    return VisionCLI(args=args, run=False)


def test_a_resumed_rho_loss_run_checks_the_restored_reference_against_its_training_set(tmp_path: Path) -> None:
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_top_k=-1, filename="{epoch}")
    first = cli(tmp_path / "first", 96)  # the recipe's module and data, on a Trainer with only the selection
    trainer = make_trainer(
        tmp_path, max_epochs=1, callbacks=[OnlineBatchSelection(keep=0.5), checkpoints], enable_checkpointing=True
    )
    trainer.fit(first.model, first.datamodule)
    assert first.model.irreducible is not None
    assert len(first.model.irreducible) == 96

    resumed = cli(tmp_path / "second", 64)
    trainer = make_trainer(tmp_path, max_epochs=2, callbacks=[OnlineBatchSelection(keep=0.5)])
    with pytest.raises(ValueError, match="The reference has 96 losses but the training dataset has 64 examples"):
        trainer.fit(resumed.model, resumed.datamodule, ckpt_path=str(tmp_path / "checkpoints" / "epoch=0.ckpt"))
