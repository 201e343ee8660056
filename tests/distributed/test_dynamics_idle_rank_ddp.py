"""`TrainingDynamics` under DDP when one rank trains nothing: every rank still takes part in the epoch end.

Rank 1's ``training_step`` returns ``None`` on every batch, so its tracker never sees an output, while rank 0
returns the full classification contract. The epoch end's collectives must run on both ranks anyway, in the same
order and with the same buffer layout, or rank 0 waits forever in its all-reduce (here: until the process group's
30-second timeout fails the test). The model is frozen and trains nothing (manual optimization, forward under
``no_grad``), so the only collectives are the tracker's.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import ClassificationDataset, Classifier, LossOnlyClassifier, make_trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from lightning_curricula import TrainingDynamics, WithIndex

SIZE = 37
WORLD_SIZE = 2
EPOCHS = 2
BATCH_SIZE = 8
IDLE_RANK = 1


def strategy() -> DDPStrategy:
    """``ddp_spawn`` whose collectives give up after 30 seconds: a rank left waiting fails the test, not hangs it."""
    return DDPStrategy(start_method="spawn", timeout=timedelta(seconds=30))


class IdleRankData(pl.LightningDataModule):
    def train_dataloader(self) -> DataLoader[Any]:
        dataset = WithIndex(ClassificationDataset(SIZE))
        return DataLoader(dataset, batch_size=BATCH_SIZE, sampler=DistributedSampler(dataset, shuffle=True, seed=0))


class IdleRankClassifier(Classifier):
    """A frozen `Classifier` whose rank `IDLE_RANK` skips every batch (returns ``None``); no gradients, no sync."""

    def __init__(self, *, busy: type[Classifier] = Classifier) -> None:
        super().__init__(lr=0.0)
        self.automatic_optimization = False
        self.busy = busy

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor] | None:  # type: ignore[override]
        if self.global_rank == IDLE_RANK:
            return None
        with torch.no_grad():
            return self.busy.training_step(self, batch, batch_idx)


class LossOnlyOnIdleRank(IdleRankClassifier):
    """Rank 0 returns logits; rank 1 trains too but returns losses only: the ranks disagree on the layout."""

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor] | None:  # type: ignore[override]
        with torch.no_grad():
            busy = LossOnlyClassifier if self.global_rank == IDLE_RANK else Classifier
            return busy.training_step(self, batch, batch_idx)


class DumpSignals(Callback):
    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.metrics: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dynamics = next(c for c in trainer.callbacks if isinstance(c, TrainingDynamics))  # type: ignore[attr-defined]
        state = {
            "signals": dynamics.signals(),
            "metrics": {key: float(value) for key, value in trainer.callback_metrics.items()},
        }
        torch.save(state, self.directory / f"rank{trainer.global_rank}_epoch{trainer.current_epoch}.pt")


def busy_rank_visits(epochs: int) -> Counter[int]:
    """How often rank 0 (the only one that returns outputs) visits each id in the first ``epochs`` epochs."""
    dataset = WithIndex(ClassificationDataset(SIZE))
    sampler = DistributedSampler(dataset, num_replicas=WORLD_SIZE, rank=0, shuffle=True, seed=0)
    visits: Counter[int] = Counter()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        visits.update(sampler)
    return visits


def whole_table(directory: Path, epoch: int) -> dict[str, Tensor]:
    """The table after ``epoch``: rank 0's if it holds every id, else the ranks' shards in rank order."""
    ranks = [torch.load(directory / f"rank{rank}_epoch{epoch}.pt", weights_only=True) for rank in range(WORLD_SIZE)]
    shards = [state["signals"] for state in ranks]
    if shards[0]["index"].numel() == SIZE:
        for shard in shards[1:]:
            assert sorted(shard) == sorted(shards[0])
            for key, values in shards[0].items():
                assert torch.equal(shard[key].nan_to_num(-9.0), values.nan_to_num(-9.0)), key
        return shards[0]  # type: ignore[no-any-return]
    return {key: torch.cat([shard[key] for shard in shards]) for key in shards[0]}


@pytest.mark.slow
@pytest.mark.parametrize("sharded", [False, True], ids=["replicated", "sharded"])
def test_a_rank_whose_every_step_returns_none_still_joins_the_epoch_end(sharded: bool, tmp_path: Path) -> None:
    trainer = make_trainer(
        max_epochs=EPOCHS,
        callbacks=[TrainingDynamics(sharded=sharded), DumpSignals(str(tmp_path))],
        strategy=strategy(),
        devices=WORLD_SIZE,
        use_distributed_sampler=False,
    )
    trainer.fit(IdleRankClassifier(), datamodule=IdleRankData())

    dataset = ClassificationDataset(SIZE)
    losses = torch.nn.functional.cross_entropy(Classifier(lr=0.0)(dataset.x), dataset.y, reduction="none").detach()
    for epoch in range(EPOCHS):
        table = whole_table(tmp_path, epoch)
        visits = busy_rank_visits(epoch + 1)
        assert table["index"].tolist() == list(range(SIZE))
        assert table["visits"].tolist() == [visits[index] for index in range(SIZE)]  # rank 0's visits only
        seen = table["visits"] > 0
        assert 0 < int(seen.sum()) < SIZE
        assert table["loss"][~seen].isnan().all()
        torch.testing.assert_close(table["loss"][seen], losses[seen], rtol=1e-5, atol=1e-6)
        assert "margin" in table  # rank 0's classification outputs decided the layout on both ranks
        for rank in range(WORLD_SIZE):
            metrics = torch.load(tmp_path / f"rank{rank}_epoch{epoch}.pt", weights_only=True)["metrics"]
            assert metrics["dynamics/kept_fraction"] == pytest.approx(((SIZE + 1) // 2) / SIZE)


@pytest.mark.slow
def test_ranks_that_disagree_on_returning_logits_fail_together_with_a_clear_error(tmp_path: Path) -> None:
    trainer = make_trainer(
        max_epochs=EPOCHS,
        callbacks=[TrainingDynamics()],
        strategy=strategy(),
        devices=WORLD_SIZE,
        use_distributed_sampler=False,
    )
    with pytest.raises(Exception, match=r"1 of the 2 ranks that trained returned 'logits'"):
        trainer.fit(LossOnlyOnIdleRank(), datamodule=IdleRankData())
