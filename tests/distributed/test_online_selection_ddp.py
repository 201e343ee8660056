"""`OnlineBatchSelection` under DDP: two CPU processes with gloo (``ddp_spawn``).

Each rank selects within its own batch from its own random stream; the counters are summed over ranks by
exactly one all-reduce per epoch (``trainer.strategy.reduce``, which Lightning precedes by a barrier), and
no collective runs per step (counted by wrapping ``torch.distributed``'s collectives while the callback's
code runs); both ranks end with the same metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
from helpers import ClassificationDataset, make_trainer
from lightning.pytorch.callbacks import Callback
from online_helpers import SelectiveClassifier
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from lightning_curricula import OnlineBatchSelection, WithIndex
from lightning_curricula.step_selection import Selection, kept_count

SIZE = 37  # 19 per rank after DistributedSampler's padding: batches of 8, 8, 3
WORLD_SIZE = 2
EPOCHS = 2
KEEP = 0.5
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce_scatter", "barrier")


class ShardedData(pl.LightningDataModule):
    def train_dataloader(self) -> DataLoader[Any]:
        dataset = WithIndex(ClassificationDataset(SIZE))
        return DataLoader(dataset, batch_size=8, sampler=DistributedSampler(dataset, shuffle=True, seed=0))


class CountingSelection(OnlineBatchSelection):
    """Counts the collectives issued while its own code runs, per epoch and inside `select`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.inside = False
        self.collectives_in_epoch_end: list[list[str]] = []
        self.collectives_in_steps = 0
        self.positions: list[list[int]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for name in COLLECTIVES:
            setattr(dist, name, self._counting(name, getattr(dist, name)))

    def _counting(self, name: str, function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self.inside == "epoch_end":
                self.collectives_in_epoch_end[-1].append(name)
            elif self.inside == "step":
                self.collectives_in_steps += 1
            return function(*args, **kwargs)

        return wrapper

    def select(self, scores: Tensor, *, keep: float | None = None) -> Selection:
        self.inside = "step"  # type: ignore[assignment]
        try:
            selection = super().select(scores, keep=keep)
        finally:
            self.inside = False
        self.positions.append(selection.positions.tolist())
        return selection

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.collectives_in_epoch_end.append([])
        self.inside = "epoch_end"  # type: ignore[assignment]
        try:
            super().on_train_epoch_end(trainer, pl_module)
        finally:
            self.inside = False


class Dump(Callback):
    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        selection = next(c for c in trainer.callbacks if isinstance(c, CountingSelection))  # type: ignore[attr-defined]
        assert isinstance(pl_module, SelectiveClassifier)
        state = {
            "metrics": selection.epoch_metrics,
            "totals": selection.state_dict()["totals"],
            "collectives_in_epoch_end": selection.collectives_in_epoch_end,
            "collectives_in_steps": selection.collectives_in_steps,
            "positions": selection.positions,
            "scored_ids": pl_module.scored_ids,
            "kept_ids": pl_module.kept_ids,
        }
        torch.save(state, self.directory / f"rank{trainer.global_rank}.pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("online_ddp")
    trainer = make_trainer(
        max_epochs=EPOCHS,
        callbacks=[CountingSelection(keep=KEEP, method="random", seed=4), Dump(str(directory))],
        strategy="ddp_spawn",
        devices=WORLD_SIZE,
        use_distributed_sampler=False,
    )
    trainer.fit(SelectiveClassifier(lr=0.1), datamodule=ShardedData())
    return [torch.load(directory / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]


@pytest.mark.slow
def test_one_all_reduce_per_epoch_and_no_collective_per_step(ranks: list[dict[str, Any]]) -> None:
    for state in ranks:
        assert state["collectives_in_epoch_end"] == [["barrier", "all_reduce"]] * EPOCHS
        assert state["collectives_in_steps"] == 0


@pytest.mark.slow
def test_counters_are_summed_over_ranks_and_identical(ranks: list[dict[str, Any]]) -> None:
    kept_per_rank = sum(kept_count(size, KEEP) for size in (8, 8, 3))  # 4 + 4 + 2
    expected = {
        "scored_examples": 38.0,
        "kept_examples": 2.0 * kept_per_rank,
        "kept_share": 2 * kept_per_rank / 38,
        "forward_only_passes": EPOCHS * (38.0 - 2 * kept_per_rank),
        "backward_passes": EPOCHS * 2.0 * kept_per_rank,
    }
    assert ranks[0]["metrics"] == ranks[1]["metrics"] == expected
    assert ranks[0]["totals"] == ranks[1]["totals"] == [EPOCHS * 38, EPOCHS * 2 * kept_per_rank, 0, 0, EPOCHS * 6]


@pytest.mark.slow
def test_each_rank_selects_within_its_own_batch_from_its_own_stream(ranks: list[dict[str, Any]]) -> None:
    for state in ranks:
        for scored, kept in zip(state["scored_ids"], state["kept_ids"], strict=True):
            assert len(kept) == kept_count(len(scored), KEEP)
            assert set(kept) <= set(scored)
    for step in range(len(ranks[0]["scored_ids"])):
        assert not set(ranks[0]["scored_ids"][step]) & set(ranks[1]["scored_ids"][step]) or step % 3 == 2
    assert ranks[0]["positions"] != ranks[1]["positions"]  # streams seeded from (seed, rank, call)
