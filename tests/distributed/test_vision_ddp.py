"""Vision recipe under DDP: two CPU processes with gloo (``ddp_spawn``), an easy-to-hard curriculum on MNIST-5k.

The recipe's own stateful part, `EpochHistory` (sample passes and per-epoch records, all-reduced once
per epoch), must agree on both ranks and count exactly the planned visits; the curriculum plans from
the synced tables, so both ranks train on the same plan and end with the same weights, and the
OneCycle schedule, sized from the rank's share of the plan, ends at the last step.

Each rank writes what it ended with to a file (`RankStateDump`), and the test compares the ranks.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import RankStateDump, make_trainer
from lightning_curricula.recipes.vision.datamodule import VisionDataModule
from lightning_curricula.recipes.vision.history import EpochHistory
from lightning_curricula.recipes.vision.module import VisionClassifier

from lightning_curricula import Curriculum, CurriculumSampler, TrainingDynamics

WORLD_SIZE = 2
EPOCHS = 3
TRAIN_SIZE = 75  # odd: the plans are padded to an even number of visits
BATCH_SIZE = 16


def policy() -> Curriculum:
    return Curriculum(start=0.4, saturation=1.0)  # 75, then ceil(0.7 * 75) = 53 and all 75 (progress 0.5, 1)


class DumpState(RankStateDump):
    """Each rank writes its history, tables, parameters, batch counts and learning rate at the end of training."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        history = next(c for c in trainer.callbacks if isinstance(c, EpochHistory))
        dynamics = next(c for c in trainer.callbacks if isinstance(c, TrainingDynamics))
        scheduler = trainer.lr_scheduler_configs[0].scheduler
        state = {
            "world_size": trainer.world_size,
            "sample_passes": history.sample_passes,
            "record_passes": [record["sample_passes"] for record in history.records],
            "val_acc": [record["val/acc"] for record in history.records],
            "visits": dynamics.signals()["visits"],
            "parameters": torch.cat([p.detach().flatten() for p in pl_module.parameters()]),
            "batches": self.batches,
            "global_step": trainer.global_step,
            "total_steps": scheduler.total_steps,  # type: ignore[attr-defined]
        }
        self.save(trainer, state)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("vision_ddp")
    data = VisionDataModule(
        "embedded", policy(), seed=0, batch_size=BATCH_SIZE, train_subset=TRAIN_SIZE, test_subset=40
    )
    trainer = make_trainer(
        max_epochs=EPOCHS,
        callbacks=[
            TrainingDynamics(),
            EpochHistory(),
            DumpState(str(directory)),
        ],
        strategy="ddp_spawn",
        devices=WORLD_SIZE,
        reload_dataloaders_every_n_epochs=1,
    )
    trainer.fit(VisionClassifier(lr=0.05), datamodule=data)
    return [torch.load(directory / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]


@pytest.mark.slow
def test_ranks_agree_on_history_tables_and_weights(ranks: list[dict[str, Any]]) -> None:
    rank0, rank1 = ranks
    assert rank0["world_size"] == rank1["world_size"] == WORLD_SIZE
    assert rank0["batches"] == rank1["batches"]  # equal lengths: no rank waits for the other
    assert rank0["record_passes"] == rank1["record_passes"]
    assert rank0["val_acc"] == rank1["val_acc"]
    assert torch.equal(rank0["visits"], rank1["visits"])
    assert torch.equal(rank0["parameters"], rank1["parameters"])


@pytest.mark.slow
def test_history_counts_the_planned_visits_with_padding(ranks: list[dict[str, Any]]) -> None:
    sizes = [policy().epoch_size(TRAIN_SIZE, epoch, EPOCHS) for epoch in range(EPOCHS)]
    assert sizes == [75, 53, 75]
    padded = [WORLD_SIZE * math.ceil(size / WORLD_SIZE) for size in sizes]  # 76, 54, 76
    assert ranks[0]["record_passes"] == [sum(padded[: epoch + 1]) for epoch in range(EPOCHS)]
    assert ranks[0]["sample_passes"] == int(ranks[0]["visits"].sum()) == sum(padded)


@pytest.mark.slow
def test_schedule_ends_at_the_last_step_of_the_rank(ranks: list[dict[str, Any]]) -> None:
    sampler = CurriculumSampler(
        range(TRAIN_SIZE), policy(), dynamics=TrainingDynamics(), num_epochs=EPOCHS, num_replicas=WORLD_SIZE, rank=0
    )
    planned = sampler.planned_steps(BATCH_SIZE)
    assert ranks[0]["batches"] == [3, 2, 3]  # 38, 27 and 38 visits per rank in batches of 16
    assert ranks[0]["global_step"] == planned == 8
    assert ranks[0]["total_steps"] == planned
