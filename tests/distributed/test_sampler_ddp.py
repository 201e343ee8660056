"""`curriculum_dataloader` under DDP: two CPU processes (``ddp_spawn``, gloo), an odd dataset, budget InfoBatch.

Under ``ddp_spawn`` the parent's objects are not updated, so each rank writes, per epoch, its plan
(``sampler.plan(epoch)``), ``num_training_batches`` and the ``(index, weight)`` pairs it trained on.
Per-example losses come from a fixed table (a model that cannot change them: ``lr=0``), so the
tracker's tables, and therefore the plans, depend only on which examples were visited: a one-process
run must plan exactly the same epochs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import ClassificationDataset, make_trainer
from selection_helpers import one_thread  # noqa: F401
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_curricula import (
    CurriculumSampler,
    InfoBatch,
    Policy,
    StaticPruning,
    TrainingDynamics,
    curriculum_dataloader,
    weighted_mean,
)

SIZE = 37  # odd: a plan of odd length is padded with its first visit for two ranks
WORLD_SIZE = 2
EPOCHS = 5
BATCH_SIZE = 4


def fixed_losses() -> Tensor:
    return torch.rand(SIZE, generator=torch.Generator().manual_seed(11)) * 3  # distinct values


class FixedLossModel(pl.LightningModule):
    """Loss of example ``i`` is ``scale * table[i]``; with ``lr=0`` the scale stays 1, so losses never change."""

    def __init__(self, directory: str, policy: Policy | None = None, *, drop_last_plan: bool = False) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.register_buffer("table", fixed_losses())
        self.policy = InfoBatch(0.8, budget=0.6, anneal=0.2) if policy is None else policy
        self.drop_last_plan = drop_last_plan
        self.directory = Path(directory)
        self.record: dict[str, Any] = {}

    def train_dataloader(self) -> DataLoader[Any]:
        return curriculum_dataloader(
            ClassificationDataset(SIZE),
            self.trainer,
            self.policy,
            seed=3,
            batch_size=BATCH_SIZE,
            drop_last_plan=self.drop_last_plan,
        )

    def on_train_epoch_start(self) -> None:
        sampler = self.trainer.train_dataloader.sampler  # type: ignore[union-attr]
        assert isinstance(sampler, CurriculumSampler)
        plan = sampler.plan(self.current_epoch)
        self.record = {
            "world_size": self.trainer.world_size,
            "plan_indices": plan.indices.clone(),
            "plan_weights": plan.weights.clone(),
            "num_batches": int(self.trainer.num_training_batches),
            "ids": [],
            "weights": [],
        }

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        self.record["ids"].extend(batch["index"].tolist())
        self.record["weights"].extend(batch["weight"].tolist())
        losses = self.scale * self.table[batch["index"]]  # type: ignore[index]
        return {"loss": weighted_mean(losses, batch["weight"]), "losses": losses.detach()}

    def on_train_epoch_end(self) -> None:
        torch.save(self.record, self.directory / f"rank{self.global_rank}_epoch{self.current_epoch}.pt")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def fit(directory: Path, model: FixedLossModel | None = None, **trainer_options: Any) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    trainer = make_trainer(
        max_epochs=EPOCHS,
        callbacks=[TrainingDynamics()],
        reload_dataloaders_every_n_epochs=1,
        **trainer_options,
    )
    trainer.fit(FixedLossModel(str(directory)) if model is None else model)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sampler_ddp")
    fit(root / "ddp", strategy="ddp_spawn", devices=WORLD_SIZE)
    fit(root / "single")
    return root / "ddp", root / "single"


def load(directory: Path, rank: int, epoch: int) -> dict[str, Any]:
    return torch.load(directory / f"rank{rank}_epoch{epoch}.pt", weights_only=True)  # type: ignore[no-any-return]


@pytest.mark.slow
def test_ranks_agree_and_split_each_plan_exactly(runs: tuple[Path, Path]) -> None:
    ddp, _ = runs
    shrunk = False
    for epoch in range(EPOCHS):
        ranks = [load(ddp, rank, epoch) for rank in range(WORLD_SIZE)]
        assert [record["world_size"] for record in ranks] == [WORLD_SIZE] * WORLD_SIZE
        plan_ids, plan_weights = ranks[0]["plan_indices"], ranks[0]["plan_weights"]
        for record in ranks[1:]:
            assert torch.equal(record["plan_indices"], plan_ids), f"epoch {epoch}: the ranks planned differently"
            assert torch.equal(record["plan_weights"], plan_weights)
        size = plan_ids.numel()
        shrunk |= size < SIZE
        per_rank = math.ceil(size / WORLD_SIZE)
        assert [len(record["ids"]) for record in ranks] == [per_rank] * WORLD_SIZE
        assert [record["num_batches"] for record in ranks] == [math.ceil(per_rank / BATCH_SIZE)] * WORLD_SIZE
        # Together the ranks trained the plan, padded with its first visits; each rank took every W-th visit.
        visits = list(zip(plan_ids.tolist(), plan_weights.tolist(), strict=True))
        padded = [visits[i % size] for i in range(per_rank * WORLD_SIZE)]
        for rank, record in enumerate(ranks):
            assert list(zip(record["ids"], record["weights"], strict=True)) == padded[rank::WORLD_SIZE]
        union = Counter(index for record in ranks for index in record["ids"])
        assert union == Counter(plan_ids.tolist()) + Counter(plan_ids[: per_rank * WORLD_SIZE - size].tolist())
    assert shrunk  # the policy did prune: the test covers a plan that changes length under DDP


@pytest.mark.slow
def test_ddp_plans_equal_the_single_process_plans(runs: tuple[Path, Path]) -> None:
    ddp, single = runs
    for epoch in range(EPOCHS):
        distributed = load(ddp, 0, epoch)
        alone = load(single, 0, epoch)
        assert alone["world_size"] == 1
        assert torch.equal(distributed["plan_indices"], alone["plan_indices"]), f"epoch {epoch}"
        assert torch.equal(distributed["plan_weights"], alone["plan_weights"]), f"epoch {epoch}"
    weights = torch.cat([load(single, 0, epoch)["plan_weights"] for epoch in range(EPOCHS)])
    assert bool((weights > 1).any())  # pruned epochs were reweighted


@pytest.mark.slow
def test_static_pruning_keeps_its_subset_when_drop_last_plan_trims_the_selection_epoch(tmp_path: Path) -> None:
    # A regression test: keep=0.3 of 37 is 11 examples; drop_last_plan=True trims a plan of 11 to 10 for two ranks,
    # and the subset used to be read back from the tables, so the trimmed example left it for good.
    policy = StaticPruning("loss", keep=0.3, score_epochs=1)
    fit(tmp_path, FixedLossModel(str(tmp_path), policy, drop_last_plan=True), strategy="ddp_spawn", devices=WORLD_SIZE)
    size = policy.epoch_size(SIZE, 1, EPOCHS)
    assert size == 11
    subset = sorted(load(tmp_path, 0, 1)["plan_indices"].tolist())
    for epoch in range(1, EPOCHS):
        ranks = [load(tmp_path, rank, epoch) for rank in range(WORLD_SIZE)]
        for record in ranks:
            assert record["plan_indices"].numel() == size, f"epoch {epoch}"
            assert sorted(record["plan_indices"].tolist()) == subset
            assert len(record["ids"]) == size // WORLD_SIZE  # trimmed, never padded
        assert torch.equal(ranks[0]["plan_indices"], ranks[1]["plan_indices"])
