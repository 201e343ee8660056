"""`TrainingDynamics` on a real CPU `Trainer`: tables, logging, export, several trackers, contract errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import (
    CLASSIFICATION_COLUMNS,
    ClassificationDataset,
    Classifier,
    LossOnlyClassifier,
    assert_signals_equal,
    assert_signals_match,
    make_trainer,
    reference_signals,
    train_loader,
    visit_signals,
)
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lightning_curricula import TrainingDynamics, WithIndex

SIZE = 37


def test_tables_equal_a_manual_per_example_recomputation() -> None:
    model = Classifier(record=True)
    dynamics = TrainingDynamics(ema_decay=0.7)
    trainer = make_trainer(max_epochs=3, callbacks=[dynamics])
    trainer.fit(model, train_loader(ClassificationDataset(SIZE), batch_size=8))

    assert len(model.visits) == 3 * SIZE
    signals = dynamics.signals()
    assert_signals_match(signals, reference_signals(model.visits, SIZE, ema_decay=0.7))
    assert signals["visits"].tolist() == [3] * SIZE
    assert signals["last_epoch"].tolist() == [2] * SIZE
    # The model learns while it trains, so the per-epoch values really differ (the check is not vacuous).
    assert 0 < float(signals["correctness"].mean()) < 1
    assert int(signals["forgetting_events"].sum()) > 0
    assert float(signals["variability"].max()) > 0.01
    # The logged epoch metrics agree with the tables.
    last_epoch_losses = [visit.loss for visit in model.visits if visit.epoch == 2]
    logged = trainer.logged_metrics
    assert float(logged["dynamics/mean_loss"]) == pytest.approx(sum(last_epoch_losses) / SIZE, rel=1e-5)
    assert float(logged["dynamics/seen_fraction"]) == 1.0
    assert float(logged["dynamics/nonfinite_losses"]) == 0.0
    last_correct = [visit_signals(v.logits, v.target)["correct"] for v in model.visits if v.epoch == 2]
    assert float(logged["dynamics/learned_fraction"]) == pytest.approx(sum(last_correct) / SIZE, abs=1e-6)


def test_subset_sampler_leaves_unseen_rows_nan() -> None:
    model = Classifier(record=True)
    dynamics = TrainingDynamics()
    loader = DataLoader(WithIndex(ClassificationDataset(SIZE)), batch_size=8, sampler=list(range(0, SIZE, 2)))
    make_trainer(max_epochs=2, callbacks=[dynamics]).fit(model, loader)
    signals = dynamics.signals()
    assert_signals_match(signals, reference_signals(model.visits, SIZE))
    unseen = signals["visits"] == 0
    assert unseen.tolist() == [index % 2 == 1 for index in range(SIZE)]
    assert bool(signals["loss"][unseen].isnan().all())
    assert dynamics.select("loss", k=SIZE).numel() == (SIZE + 1) // 2


def test_loss_only_module_has_no_classification_columns() -> None:
    model = LossOnlyClassifier(record=True)
    dynamics = TrainingDynamics()
    make_trainer(max_epochs=2, callbacks=[dynamics]).fit(model, train_loader(ClassificationDataset(SIZE)))
    signals = dynamics.signals()
    assert sorted(signals) == sorted(
        ["index", "visits", "epochs_seen", "last_epoch", "loss", "loss_mean", "loss_ema", "nonfinite"]
    )
    assert not set(CLASSIFICATION_COLUMNS) & set(signals)
    assert_signals_match(signals, reference_signals(model.visits, SIZE, classification=False))
    with pytest.raises(ValueError, match=r"Signal 'margin' is not tracked"):
        dynamics.select("margin", k=3)
    assert dynamics.select("loss", k=3).tolist() == torch.argsort(-signals["loss"], stable=True)[:3].tolist()


class NaNLossFor(Classifier):
    """Reports a NaN per-example loss for one example id (the mean it trains on stays finite)."""

    def __init__(self, bad_index: int) -> None:
        super().__init__()
        self.bad_index = bad_index

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        out = super().training_step(batch, batch_idx)
        bad = batch["index"] == self.bad_index
        return {**out, "losses": torch.where(bad, math.nan, out["losses"])}


def test_nonfinite_losses_are_skipped_counted_and_warned() -> None:
    dynamics = TrainingDynamics()
    trainer = make_trainer(max_epochs=2, callbacks=[dynamics])
    with pytest.warns(UserWarning, match=r"1 visits in epoch \d had a non-finite loss or logits; they were skipped"):
        trainer.fit(NaNLossFor(bad_index=5), train_loader(ClassificationDataset(SIZE)))
    signals = dynamics.signals()
    assert signals["nonfinite"].tolist() == [2 if index == 5 else 0 for index in range(SIZE)]
    assert signals["visits"][5].item() == 0
    assert math.isnan(signals["loss"][5].item())
    assert float(trainer.logged_metrics["dynamics/nonfinite_losses"]) == 1.0


def test_nonfinite_raise_stops_training() -> None:
    dynamics = TrainingDynamics(on_nonfinite="raise")
    with pytest.raises(FloatingPointError, match=r"non-finite loss for example ids \[5\]"):
        make_trainer(max_epochs=1, callbacks=[dynamics]).fit(
            NaNLossFor(bad_index=5), train_loader(ClassificationDataset(SIZE))
        )


def _assert_column_equal(values: Any, expected: torch.Tensor, key: str) -> None:
    got = torch.as_tensor(list(values), dtype=torch.float64)
    torch.testing.assert_close(got, expected.double(), rtol=0, atol=1e-6, equal_nan=True, msg=key)


def test_export_round_trip_one_row_per_id(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    pandas = pytest.importorskip("pandas")
    import pyarrow.parquet as pq

    dynamics = TrainingDynamics()
    loader = DataLoader(WithIndex(ClassificationDataset(SIZE)), batch_size=8, sampler=list(range(SIZE - 5)))
    make_trainer(max_epochs=2, callbacks=[dynamics]).fit(Classifier(), loader)
    signals = dynamics.signals()
    assert bool(signals["loss"][-5:].isnan().all())  # the export must carry unseen rows too

    exported = dynamics.to_dataset()
    assert exported.num_rows == SIZE
    assert exported.column_names == list(signals)
    assert exported["index"] == list(range(SIZE))

    dynamics.to_parquet(tmp_path / "signals.parquet")
    parquet = pq.read_table(tmp_path / "signals.parquet").to_pydict()
    dynamics.to_csv(tmp_path / "signals.csv")
    csv = pandas.read_csv(tmp_path / "signals.csv")
    assert list(csv.columns) == list(signals)  # no pandas index column
    assert len(csv) == SIZE
    assert parquet["index"] == list(range(SIZE))
    for key, expected in signals.items():
        _assert_column_equal(exported[key], expected, key)
        _assert_column_equal(parquet[key], expected, key)
        _assert_column_equal(csv[key], expected, key)


def test_two_trackers_with_different_names_do_not_collide(tmp_path: Path) -> None:
    fast = TrainingDynamics(name="fast", ema_decay=0.1)
    slow = TrainingDynamics(name="slow", ema_decay=0.9)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = make_trainer(tmp_path, max_epochs=2, callbacks=[fast, slow, checkpoint], enable_checkpointing=True)
    trainer.fit(Classifier(), train_loader(ClassificationDataset(SIZE)))

    assert fast.state_key != slow.state_key
    assert "fast/mean_loss" in trainer.logged_metrics
    assert "slow/mean_loss" in trainer.logged_metrics
    # Same visits, different averaging: the tables are separate.
    assert torch.equal(fast.signals()["loss"], slow.signals()["loss"])
    assert not torch.allclose(fast.signals()["loss_ema"], slow.signals()["loss_ema"])

    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["callbacks"]
    assert fast.state_key in saved
    assert slow.state_key in saved
    for original in (fast, slow):
        restored = TrainingDynamics(name=original.name, ema_decay=original.ema_decay)
        restored.load_state_dict(saved[original.state_key])
        assert_signals_equal(restored.signals(), original.signals())


def test_two_trackers_with_the_same_name_are_refused() -> None:
    with pytest.raises(RuntimeError, match=r"state_key` must be unique"):
        make_trainer(callbacks=[TrainingDynamics(name="same"), TrainingDynamics(name="same", ema_decay=0.5)])


class ReturnsMeanLosses(Classifier):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        out = super().training_step(batch, batch_idx)
        return {**out, "losses": out["losses"].mean()}


class ReturnsTensor(Classifier):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        return super().training_step(batch, batch_idx)["loss"]


class ReturnsFloatTargets(Classifier):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        out = super().training_step(batch, batch_idx)
        return {**out, "targets": out["targets"].float()}


class ForgetsTargets(Classifier):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        out = super().training_step(batch, batch_idx)
        return {key: value for key, value in out.items() if key != "targets"}


class ShiftsIds(Classifier):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        return {**super().training_step(batch, batch_idx), "index": batch["index"] + 100}


@pytest.mark.parametrize(
    ("module", "error", "message"),
    [
        (ReturnsMeanLosses, ValueError, r"'losses' has shape \(\), expected \(8,\)"),
        # Lightning wraps a bare loss tensor as {"loss": loss}.
        (ReturnsTensor, ValueError, r"training_step outputs have no 'losses' \(keys: \['loss'\]\)"),
        (ReturnsFloatTargets, TypeError, r"'targets' must hold integer class ids"),
        (ForgetsTargets, ValueError, r"have 'logits' but no 'targets'"),
        (ShiftsIds, ValueError, r"Example ids must be in \[0, 37\), got ids from 1\d\d to 1\d\d"),
    ],
)
def test_wrong_training_step_return_raises_at_the_first_batch(
    module: type[Classifier], error: type[Exception], message: str
) -> None:
    model = module()
    with pytest.raises(error, match=message):
        make_trainer(max_epochs=2, callbacks=[TrainingDynamics()]).fit(model, train_loader(ClassificationDataset(SIZE)))
    assert model.steps == 1


def test_unwrapped_dataset_raises_at_the_first_batch() -> None:
    model = Classifier()
    loader = DataLoader(ClassificationDataset(SIZE), batch_size=8)
    with pytest.raises(ValueError, match=r"Cannot find the example ids.*Wrap the dataset in WithIndex"):
        make_trainer(max_epochs=1, callbacks=[TrainingDynamics()]).fit(model, loader)
    assert model.steps == 1


def test_num_examples_that_disagree_with_the_dataset_raise_at_start() -> None:
    model = Classifier()
    with pytest.raises(ValueError, match=r"tracks 40 examples but the training dataset has 37"):
        make_trainer(max_epochs=1, callbacks=[TrainingDynamics(num_examples=40)]).fit(
            model, train_loader(ClassificationDataset(SIZE))
        )
    assert model.steps == 0


def test_what_was_trained_is_measured_from_the_batches_not_read_from_a_sampler() -> None:
    # A plain sampler of (index, weight) pairs: a repeat, a weighted visit, most examples left out.
    pairs = [(0, 2.0), (3, 0.5), (3, 0.5), (5, 1.0)]
    loader = DataLoader(WithIndex(ClassificationDataset(SIZE)), batch_size=3, sampler=pairs)
    trainer = make_trainer(max_epochs=2, callbacks=[TrainingDynamics()])
    trainer.fit(Classifier(), loader)
    logged = {key: float(value) for key, value in trainer.callback_metrics.items()}
    assert logged["dynamics/kept_fraction"] == pytest.approx(4 / SIZE)
    assert logged["dynamics/unique_fraction"] == pytest.approx(3 / SIZE)
    assert logged["dynamics/weight_mean"] == pytest.approx(1.0)
    assert logged["dynamics/weight_max"] == 2.0
    assert logged["dynamics/sample_passes"] == 8.0
    assert logged["dynamics/passes_saved_fraction"] == pytest.approx(1 - 8 / (2 * SIZE))


def test_unweighted_batches_count_as_weight_one() -> None:
    trainer = make_trainer(max_epochs=1, callbacks=[TrainingDynamics()])
    trainer.fit(Classifier(), train_loader(ClassificationDataset(SIZE)))
    logged = trainer.callback_metrics
    assert float(logged["dynamics/kept_fraction"]) == 1.0
    assert float(logged["dynamics/weight_mean"]) == 1.0
    assert float(logged["dynamics/weight_max"]) == 1.0


def test_signals_is_one_snapshot_per_epoch() -> None:
    class Snapshots(pl.Callback):
        """Reads the signals twice after the tracker's epoch end: the same tensors, new ones next epoch."""

        def __init__(self) -> None:
            self.losses: list[torch.Tensor] = []

        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            first, second = dynamics.signals(), dynamics.signals()
            assert all(first[key] is second[key] for key in first)
            assert first is not second  # a fresh dict each call: adding keys does not touch the snapshot
            self.losses.append(first["loss"])

    dynamics = TrainingDynamics()
    snapshots = Snapshots()
    make_trainer(max_epochs=2, callbacks=[dynamics, snapshots]).fit(
        Classifier(), train_loader(ClassificationDataset(SIZE))
    )
    assert len(snapshots.losses) == 2
    assert snapshots.losses[0] is not snapshots.losses[1]
    assert not torch.equal(snapshots.losses[0], snapshots.losses[1])  # the first epoch's snapshot was kept as it was


def test_count_dtype_follows_max_epochs() -> None:
    short, long = TrainingDynamics(name="short"), TrainingDynamics(name="long")
    make_trainer(max_epochs=3, callbacks=[short]).fit(Classifier(), train_loader(ClassificationDataset(SIZE)))
    make_trainer(max_epochs=300, max_steps=2, callbacks=[long]).fit(
        Classifier(), train_loader(ClassificationDataset(SIZE))
    )
    assert {t.dtype for t in short._tables.values() if not t.is_floating_point()} == {torch.uint8, torch.int8}
    assert long._tables["epochs_seen"].dtype == torch.int16  # 300 epochs do not fit in a byte
    assert short.signals()["epochs_seen"].tolist() == [3] * SIZE


def test_sharded_tables_on_one_process_are_the_unsharded_tables(tmp_path: Path) -> None:
    tables = {}
    for sharded in (False, True):
        dynamics = TrainingDynamics(sharded=sharded, history_epochs=2)
        trainer = make_trainer(tmp_path, max_epochs=3, callbacks=[dynamics])
        trainer.fit(Classifier(), train_loader(ClassificationDataset(SIZE), batch_size=8))
        tables[sharded] = dynamics
    unsharded, sharded = tables[False], tables[True]
    assert sharded.table_shard is not None
    assert (sharded.table_shard.start, sharded.table_shard.stop) == (0, SIZE)
    assert_signals_equal(sharded.signals(), unsharded.signals())
    assert torch.equal(sharded.loss_history()[1], unsharded.loss_history()[1])
    assert torch.equal(sharded.select("el2n", k=5), torch.sort(unsharded.select("el2n", k=5)).values)  # id order
    with pytest.raises(ValueError, match="use to_parquet"):
        sharded.to_csv(tmp_path / "signals.csv")
