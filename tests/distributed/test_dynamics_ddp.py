"""`TrainingDynamics` under DDP: two CPU processes with gloo (``ddp_spawn``).

Under ``ddp_spawn`` the parent's callback is not updated after ``fit``, so each rank writes its tables to a
file; the test compares the ranks with each other and with a one-process run over the same visits.
The model is frozen (``lr=0``) so per-example values do not depend on which rank trained first: the
tables then depend only on which examples were visited, how often, and in which epochs.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import (
    COUNT_COLUMNS,
    ClassificationDataset,
    Classifier,
    ShardBatchSampler,
    ShardUnionSampler,
    assert_signals_equal,
    make_trainer,
)
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, DistributedSampler

from lightning_curricula import DynamicsVisuals, TrainingDynamics, WithIndex

SIZE = 37  # odd: DistributedSampler pads one repeat per epoch for two ranks
WORLD_SIZE = 2
EPOCHS = 2
BATCH_SIZE = 8


class ShardedData(pl.LightningDataModule):
    """Builds its sampler inside each rank, after the process group exists, with an explicit seed."""

    def train_dataloader(self) -> DataLoader[Any]:
        dataset = WithIndex(ClassificationDataset(SIZE))
        return DataLoader(dataset, batch_size=BATCH_SIZE, sampler=DistributedSampler(dataset, shuffle=True, seed=0))


class DumpSignals(Callback):
    """Writes this rank's tables after every epoch, and what it trained on at the end."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    @staticmethod
    def _dynamics(trainer: pl.Trainer) -> TrainingDynamics:
        return next(callback for callback in trainer.callbacks if isinstance(callback, TrainingDynamics))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        name = f"rank{trainer.global_rank}_epoch{trainer.current_epoch}.pt"
        torch.save(self._dynamics(trainer).signals(), self.directory / name)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert isinstance(pl_module, Classifier)
        state = {
            "signals": self._dynamics(trainer).signals(),
            "world_size": trainer.world_size,
            "visits": [(visit.epoch, visit.index) for visit in pl_module.visits],
        }
        torch.save(state, self.directory / f"rank{trainer.global_rank}.pt")


def expected_visits(epoch: int) -> Counter[int]:
    """How often each id is visited across both ranks in ``epoch``, padding repeats included."""
    shards = ShardUnionSampler(WithIndex(ClassificationDataset(SIZE)), world_size=WORLD_SIZE, seed=0)
    shards.set_epoch(epoch)
    return Counter(shards)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ddp")
    dynamics = TrainingDynamics()
    trainer = make_trainer(
        max_epochs=EPOCHS,
        callbacks=[dynamics, DumpSignals(str(directory))],
        strategy="ddp_spawn",
        devices=WORLD_SIZE,
        use_distributed_sampler=False,
    )
    trainer.fit(Classifier(lr=0.0, record=True), datamodule=ShardedData())
    return directory


def load(directory: Path, name: str) -> Any:
    return torch.load(directory / name, weights_only=True)


@pytest.mark.slow
def test_both_ranks_ran_and_trained_on_disjoint_shards(ddp_run: Path) -> None:
    ranks = [load(ddp_run, f"rank{rank}.pt") for rank in range(WORLD_SIZE)]
    assert [state["world_size"] for state in ranks] == [WORLD_SIZE] * WORLD_SIZE
    for epoch in range(EPOCHS):
        per_rank = [Counter(index for e, index in state["visits"] if e == epoch) for state in ranks]
        assert [sum(counts.values()) for counts in per_rank] == [(SIZE + 1) // 2] * WORLD_SIZE  # equal lengths
        assert per_rank[0] + per_rank[1] == expected_visits(epoch)


@pytest.mark.slow
def test_tables_are_identical_on_every_rank(ddp_run: Path) -> None:
    for suffix in [*(f"_epoch{epoch}" for epoch in range(EPOCHS)), ""]:
        rank0 = load(ddp_run, f"rank0{suffix}.pt")
        rank1 = load(ddp_run, f"rank1{suffix}.pt")
        assert_signals_equal(rank0.get("signals", rank0), rank1.get("signals", rank1))


@pytest.mark.slow
def test_padded_repeats_count_as_visits_not_epochs(ddp_run: Path) -> None:
    after_first = load(ddp_run, "rank0_epoch0.pt")
    counts = expected_visits(0)
    padded = [index for index, count in counts.items() if count == 2]
    assert len(padded) == WORLD_SIZE * ((SIZE + 1) // 2) - SIZE == 1
    assert after_first["visits"].tolist() == [counts[index] for index in range(SIZE)]
    assert after_first["visits"][padded].tolist() == [2]
    assert after_first["epochs_seen"].tolist() == [1] * SIZE
    final = load(ddp_run, "rank0.pt")["signals"]
    total = expected_visits(0) + expected_visits(1)
    assert final["visits"].tolist() == [total[index] for index in range(SIZE)]
    assert final["epochs_seen"].tolist() == [EPOCHS] * SIZE


@pytest.mark.slow
def test_ddp_tables_equal_a_single_process_run_over_the_same_visits(ddp_run: Path) -> None:
    dynamics = TrainingDynamics()
    dataset = WithIndex(ClassificationDataset(SIZE))
    # Each rank's batches (8, 8 and 3 examples), not the union in batches of 8: the same per-example values.
    batches = ShardBatchSampler(dataset, world_size=WORLD_SIZE, batch_size=BATCH_SIZE)
    make_trainer(max_epochs=EPOCHS, callbacks=[dynamics]).fit(
        Classifier(lr=0.0), DataLoader(dataset, batch_sampler=batches)
    )
    single = dynamics.signals()
    distributed = load(ddp_run, "rank1.pt")["signals"]
    assert sorted(distributed) == sorted(single)
    for key, expected in single.items():
        if key in COUNT_COLUMNS:
            assert torch.equal(distributed[key], expected), key
        else:  # the same per-example values, summed in another order (per rank, then across ranks)
            torch.testing.assert_close(distributed[key], expected, rtol=1e-6, atol=1e-7, equal_nan=True, msg=key)


class CountingDDP(DDPStrategy):
    """``ddp_spawn`` that counts its collectives (test only): Lightning syncs logged metrics through ``reduce``."""

    def __init__(self) -> None:
        super().__init__(start_method="spawn")
        self.collectives: Counter[str] = Counter()

    def reduce(self, *args: Any, **kwargs: Any) -> Any:
        self.collectives["reduce"] += 1
        return super().reduce(*args, **kwargs)

    def all_gather(self, *args: Any, **kwargs: Any) -> Any:
        self.collectives["all_gather"] += 1
        return super().all_gather(*args, **kwargs)

    def broadcast(self, *args: Any, **kwargs: Any) -> Any:
        self.collectives["broadcast"] += 1
        return super().broadcast(*args, **kwargs)

    def barrier(self, *args: Any, **kwargs: Any) -> None:
        self.collectives["barrier"] += 1
        super().barrier(*args, **kwargs)

    def reduce_boolean_decision(self, *args: Any, **kwargs: Any) -> bool:
        self.collectives["reduce_boolean_decision"] += 1
        return super().reduce_boolean_decision(*args, **kwargs)


class EpochEndCollectives(Callback):
    """Counts the collectives from the last batch of an epoch to the start of the next (or the end of training).

    That window holds every callback's ``on_train_epoch_end`` and Lightning's reduction of the epoch's logged
    metrics. It also records the warnings of the whole fit, and writes both to ``rank<N>_collectives.pt``.
    """

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.per_epoch: list[dict[str, int]] = []
        self._at_last_batch: Counter[str] = Counter()
        self._warnings: Any = None
        self._caught: list[warnings.WarningMessage] = []

    @staticmethod
    def _counts(trainer: pl.Trainer) -> Counter[str]:
        strategy = trainer.strategy
        assert isinstance(strategy, CountingDDP)
        return Counter(strategy.collectives)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._warnings = warnings.catch_warnings(record=True)
        self._caught = self._warnings.__enter__()
        warnings.simplefilter("always")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._at_last_batch = self._counts(trainer)

    def _close_epoch(self, trainer: pl.Trainer) -> None:
        self.per_epoch.append(dict(self._counts(trainer) - self._at_last_batch))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch > 0:
            self._close_epoch(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close_epoch(trainer)
        self._warnings.__exit__(None, None, None)
        state = {
            "per_epoch": self.per_epoch,
            "warnings": [str(caught.message) for caught in self._caught],
            "metrics": {key: float(value) for key, value in trainer.callback_metrics.items()},
        }
        torch.save(state, self.directory / f"rank{trainer.global_rank}_collectives.pt")


@pytest.mark.slow
def test_an_epoch_end_costs_one_collective(tmp_path: Path) -> None:
    """The tracker's scalars are identical on every rank after its all-reduce; logging them adds no sync.

    The first epoch end of a fit adds one small all-reduce: the ranks agree on the accumulator's layout, so a
    rank that trained nothing still joins the reduction (see `test_dynamics_idle_rank_ddp.py`).
    """
    dynamics = TrainingDynamics()
    trainer = make_trainer(
        max_epochs=EPOCHS,
        callbacks=[EpochEndCollectives(str(tmp_path)), dynamics],
        strategy=CountingDDP(),
        devices=WORLD_SIZE,
        use_distributed_sampler=False,
    )
    trainer.fit(Classifier(lr=0.0), datamodule=ShardedData())
    ranks = [load(tmp_path, f"rank{rank}_collectives.pt") for rank in range(WORLD_SIZE)]
    for state in ranks:
        # The layout agreement, then the accumulator's all-reduce; after the first epoch that all-reduce alone.
        assert state["per_epoch"] == [{"reduce": 2}] + [{"reduce": 1}] * (EPOCHS - 1)
        # The metrics reach callback_metrics on every rank (so any rank may monitor them), without Lightning's
        # "It is recommended to use `self.log(..., sync_dist=True)`" warning.
        assert state["metrics"]["dynamics/seen_fraction"] == 1.0
        # Measured from the batches of both ranks: the padding repeat was trained too.
        assert state["metrics"]["dynamics/kept_fraction"] == pytest.approx((SIZE + 1) / SIZE)
        assert state["metrics"]["dynamics/weight_max"] == 1.0
        assert "dynamics/mean_loss" in state["metrics"]
        assert not [message for message in state["warnings"] if "sync_dist=True" in message]
    assert ranks[0]["metrics"] == ranks[1]["metrics"]


@pytest.mark.slow
def test_visuals_gather_the_predictions_of_the_shown_examples_in_one_small_collective(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    visuals = DynamicsVisuals(log_histograms=False, plot_every_n_epochs=2, num_hardest=SIZE)  # every example
    trainer = make_trainer(
        max_epochs=EPOCHS,
        callbacks=[EpochEndCollectives(str(tmp_path)), TrainingDynamics(), visuals],
        strategy=CountingDDP(),
        devices=WORLD_SIZE,
        use_distributed_sampler=False,
        logger=TensorBoardLogger(tmp_path / "logs"),
    )
    model = Classifier(lr=0.0)  # frozen: the prediction of each example is the arg-max of its fixed logits
    trainer.fit(model, datamodule=ShardedData())
    for rank in range(WORLD_SIZE):  # epoch 0 draws nothing (and agrees on the layout); epoch 1 gathers once
        assert load(tmp_path, f"rank{rank}_collectives.pt")["per_epoch"] == [
            {"reduce": 2},
            {"reduce": 1, "all_gather": 1},
        ]
    events = EventAccumulator(
        str(next((tmp_path / "logs").rglob("events.out.tfevents.*"))), size_guidance={"tensors": 0}
    )
    events.Reload()
    text = events.Tensors("dynamics/hardest_by_loss/text_summary")[-1].tensor_proto.string_val[0].decode()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()[2:]]
    dataset = ClassificationDataset(SIZE)
    # The arg-max at each visit of the plotted epoch, on the rows of the batch the rank trained on: a batch of
    # another shape may differ in the last bits and flip a nearly tied arg-max. The padding repeat has two visits.
    batches = ShardBatchSampler(WithIndex(dataset), world_size=WORLD_SIZE, batch_size=BATCH_SIZE)
    batches.sampler.set_epoch(EPOCHS - 1)
    expected: dict[int, set[int]] = {}
    with torch.no_grad():
        for ids in batches:
            for index, prediction in zip(ids, model(dataset.x[ids]).argmax(dim=1).tolist(), strict=True):
                expected.setdefault(index, set()).add(prediction)
    assert sorted(int(row[0]) for row in rows) == list(range(SIZE))  # both ranks' examples
    for row in rows:
        assert int(row[2]) == int(dataset.y[int(row[0])])
        assert int(row[3]) in expected[int(row[0])], row
