"""Crash at epoch k, resume from the last epoch-end checkpoint: the same tables and weights as a straight run."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import (
    ClassificationDataset,
    Classifier,
    CrashAt,
    SimulatedCrash,
    assert_signals_equal,
    make_trainer,
    train_loader,
)
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_curricula import TrainingDynamics

SIZE = 37
EPOCHS = 3


def tracker() -> TrainingDynamics:
    return TrainingDynamics(history_epochs=2)


def every_epoch(directory: Path) -> ModelCheckpoint:
    return ModelCheckpoint(dirpath=directory, filename="{epoch}", every_n_epochs=1, save_top_k=-1)


def fit(model: Classifier, callbacks: list[Callback], root: Path, *, ckpt_path: Path | None = None) -> pl.Trainer:
    trainer = make_trainer(root, max_epochs=EPOCHS, callbacks=callbacks, enable_checkpointing=True)
    trainer.fit(model, train_loader(ClassificationDataset(SIZE), batch_size=8), ckpt_path=ckpt_path)
    return trainer


@dataclass
class StraightRun:
    model: Classifier
    dynamics: TrainingDynamics
    checkpoints: Path


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory: pytest.TempPathFactory) -> StraightRun:
    root = tmp_path_factory.mktemp("straight")
    model = Classifier()
    dynamics = tracker()
    fit(model, [dynamics, every_epoch(root / "checkpoints")], root)
    return StraightRun(model, dynamics, root / "checkpoints")


@pytest.mark.parametrize(
    ("crash_epoch", "crash_batch", "same_callback"),
    [
        (1, None, False),  # at the start of epoch 1, resumed by a fresh process (new callback objects)
        (2, 3, True),  # in the middle of epoch 2, resumed with the very callback that saw half an epoch
    ],
)
def test_resume_gives_the_uninterrupted_tables_and_weights(
    straight_run: StraightRun,
    tmp_path: Path,
    crash_epoch: int,
    crash_batch: int | None,
    same_callback: bool,
) -> None:
    straight_model, straight_dynamics = straight_run.model, straight_run.dynamics
    checkpoints = tmp_path / "checkpoints"
    dynamics = tracker()
    with pytest.raises(SimulatedCrash):
        fit(Classifier(), [dynamics, every_epoch(checkpoints), CrashAt(crash_epoch, crash_batch)], tmp_path)
    assert sorted(path.name for path in checkpoints.iterdir()) == [f"epoch={e}.ckpt" for e in range(crash_epoch)]
    if crash_batch is not None:  # the crashed epoch's first batches were accumulated, not finished
        assert dynamics._accumulator is not None
        assert dynamics._layout is not None
        assert float(dynamics._layout.per_example(dynamics._accumulator)[0].sum()) == 8 * crash_batch

    resumed_dynamics = dynamics if same_callback else tracker()
    resumed_model = Classifier(seed=123)  # different initial weights: the checkpoint must restore them
    fit(
        resumed_model,
        [resumed_dynamics, every_epoch(checkpoints)],
        tmp_path,
        ckpt_path=checkpoints / f"epoch={crash_epoch - 1}.ckpt",
    )

    assert_signals_equal(resumed_dynamics.signals(), straight_dynamics.signals())
    assert resumed_dynamics.signals()["visits"].tolist() == [EPOCHS] * SIZE  # the partial epoch counted once
    assert resumed_dynamics.epochs_tracked == EPOCHS
    straight_epochs, straight_history = straight_dynamics.loss_history()
    resumed_epochs, resumed_history = resumed_dynamics.loss_history()
    assert resumed_epochs == straight_epochs == [1, 2]
    torch.testing.assert_close(resumed_history, straight_history, rtol=0, atol=0)
    for (name, resumed), (_, straight) in zip(
        resumed_model.state_dict().items(), straight_model.state_dict().items(), strict=True
    ):
        assert torch.equal(resumed, straight), name


def test_each_epoch_checkpoint_holds_the_tables_of_the_finished_epochs(straight_run: StraightRun) -> None:
    key = straight_run.dynamics.state_key
    for epoch in range(EPOCHS):
        checkpoint = torch.load(straight_run.checkpoints / f"epoch={epoch}.ckpt", weights_only=True)
        state = checkpoint["callbacks"][key]
        assert state["epochs_tracked"] == epoch + 1
        assert state["tables"]["visits"].tolist() == [epoch + 1] * SIZE
        assert state["tables"]["last_seen"].tolist() == [epoch + 1] * SIZE  # the last epoch seen, plus one


def test_checkpoint_state_loads_with_weights_only(straight_run: StraightRun, tmp_path: Path) -> None:
    dynamics = straight_run.dynamics
    checkpoint = torch.load(straight_run.checkpoints / f"epoch={EPOCHS - 1}.ckpt", weights_only=True)
    state = checkpoint["callbacks"][dynamics.state_key]
    assert state["version"] == 2
    assert state["num_examples"] == SIZE
    assert state["epochs_tracked"] == EPOCHS
    assert isinstance(state["history"], torch.Tensor)
    assert state["history"].shape == (2, SIZE)
    assert {"visits", "epochs_seen", "loss", "loss_ema", "margin_sum", "last_correct"} <= set(state["tables"])
    assert all(isinstance(value, torch.Tensor) and value.device.type == "cpu" for value in state["tables"].values())
    restored = tracker()
    restored.load_state_dict(state)
    assert_signals_equal(restored.signals(), dynamics.signals())
    # The state on its own, as a user might save it, is also plain tensors and primitives.
    torch.save(dynamics.state_dict(), tmp_path / "state.pt")
    alone = tracker()
    alone.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert_signals_equal(alone.signals(), dynamics.signals())


@pytest.fixture(scope="module")
def one_epoch_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("one_epoch")
    trainer = make_trainer(root, max_epochs=1, callbacks=[tracker(), every_epoch(root)], enable_checkpointing=True)
    trainer.fit(Classifier(), train_loader(ClassificationDataset(SIZE)))
    return root / "epoch=0.ckpt"


def _resume_with(size: int, dynamics: TrainingDynamics, checkpoint: Path, root: Path) -> Classifier:
    model = Classifier()
    trainer = make_trainer(root, max_epochs=2, callbacks=[dynamics], enable_checkpointing=False)
    trainer.fit(model, train_loader(ClassificationDataset(size)), ckpt_path=checkpoint)
    return model


def test_resume_with_a_dataset_of_another_size_raises(one_epoch_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"tracks 37 examples but the training dataset has 41"):
        _resume_with(41, tracker(), one_epoch_checkpoint, tmp_path)


def test_resume_with_another_num_examples_raises_when_loading(one_epoch_checkpoint: Path, tmp_path: Path) -> None:
    dynamics = TrainingDynamics(num_examples=41, history_epochs=2)
    with pytest.raises(ValueError, match=r"the checkpoint tracks 37 examples, this run has 41"):
        _resume_with(41, dynamics, one_epoch_checkpoint, tmp_path)


# ------------------------------------------------------------------------------ sharded tables, one process


def sharded_fit(
    root: Path, checkpoints: Path, *, seed: int, ckpt_path: Path | None = None, **options: Any
) -> TrainingDynamics:
    """A sharded tracker's fit (one rank: one shard of every id) whose shards go to ``root``'s shard directory."""
    dynamics = TrainingDynamics(sharded=True, history_epochs=2, **options)
    trainer = make_trainer(
        root, max_epochs=EPOCHS, callbacks=[dynamics, every_epoch(checkpoints)], enable_checkpointing=True
    )
    model = Classifier(seed=seed)
    trainer.fit(model, train_loader(ClassificationDataset(SIZE), batch_size=8, seed=seed), ckpt_path=ckpt_path)
    return dynamics


def restored(checkpoint: Path, key: str) -> TrainingDynamics:
    dynamics = TrainingDynamics(sharded=True, history_epochs=2)
    dynamics.load_state_dict(torch.load(checkpoint, weights_only=True)["callbacks"][key])
    return dynamics


def test_runs_sharing_a_root_directory_keep_their_own_shards_through_a_resume(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = sharded_fit(root, tmp_path / "first", seed=0)
    second = sharded_fit(root, tmp_path / "second", seed=1)  # a later run, same default_root_dir
    key = first.state_key
    assert first.run_id is not None
    assert second.run_id is not None
    assert first.run_id != second.run_id
    assert not torch.equal(first.signals()["loss"], second.signals()["loss"])
    last = f"epoch={EPOCHS - 1}.ckpt"
    assert_signals_equal(restored(tmp_path / "first" / last, key).signals(), first.signals())
    assert_signals_equal(restored(tmp_path / "second" / last, key).signals(), second.signals())

    # The first run resumed after its first epoch writes on under its own id: it rewrites the epochs it trains
    # again (with the same tables), and touches neither the second run's files nor the shards it resumed from.
    shards = root / "dynamics_shards" / "dynamics"
    untouched = [
        *sorted((shards / second.run_id).rglob("*.pt")),
        *sorted((shards / first.run_id / "epoch=1").iterdir()),
    ]
    before = {path: path.read_bytes() for path in untouched}
    resumed = sharded_fit(root, tmp_path / "resumed", seed=0, ckpt_path=tmp_path / "first" / "epoch=0.ckpt")
    assert resumed.run_id == first.run_id
    assert_signals_equal(resumed.signals(), first.signals())
    assert {path: path.read_bytes() for path in untouched} == before
    assert sorted(path.name for path in shards.iterdir()) == sorted([first.run_id, second.run_id])
    state = torch.load(tmp_path / "resumed" / last, weights_only=True)["callbacks"][key]
    assert state["shard"]["run_id"] == first.run_id
    assert state["shard"]["directory"] == str(shards / first.run_id / f"epoch={EPOCHS}")
    assert_signals_equal(restored(tmp_path / "resumed" / last, key).signals(), first.signals())
    assert_signals_equal(restored(tmp_path / "first" / last, key).signals(), first.signals())


def test_a_shard_file_of_another_run_is_refused_naming_both_ids(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = sharded_fit(root, tmp_path / "first", seed=0)
    second = sharded_fit(root, tmp_path / "second", seed=1)
    name = "shard-00000-of-00001.pt"
    shards = root / "dynamics_shards" / "dynamics"
    shutil.copy(shards / str(second.run_id) / f"epoch={EPOCHS}" / name, shards / str(first.run_id) / f"epoch={EPOCHS}")
    with pytest.raises(ValueError, match=rf"run id '{first.run_id}'.*holds the shard of run id '{second.run_id}'"):
        restored(tmp_path / "first" / f"epoch={EPOCHS - 1}.ckpt", first.state_key)


def test_a_sharded_checkpoint_without_a_run_id_still_loads_with_a_warning(tmp_path: Path) -> None:
    first = sharded_fit(tmp_path / "root", tmp_path / "first", seed=0)
    checkpoint = torch.load(tmp_path / "first" / f"epoch={EPOCHS - 1}.ckpt", weights_only=True)
    state = checkpoint["callbacks"][first.state_key]
    directory = Path(state["shard"]["directory"])
    shard = torch.load(directory / "shard-00000-of-00001.pt", weights_only=True)
    old = tmp_path / "old" / f"epoch={EPOCHS}"  # the layout before run ids: shard_dir/epoch=<e>/
    old.mkdir(parents=True)
    torch.save({key: value for key, value in shard.items() if key != "run_id"}, old / "shard-00000-of-00001.pt")
    info = {key: value for key, value in state["shard"].items() if key != "run_id"}
    state["shard"] = info | {"version": 1, "directory": str(old)}
    dynamics = TrainingDynamics(sharded=True, history_epochs=2)
    with pytest.warns(UserWarning, match="written without a run id"):
        dynamics.load_state_dict(state)
    assert_signals_equal(dynamics.signals(), first.signals())


def test_sharded_checkpoints_one_after_another_keep_only_the_shards_of_the_checkpoints_left(tmp_path: Path) -> None:
    root = tmp_path / "root"
    dynamics = TrainingDynamics(sharded=True, history_epochs=2)
    latest = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="{epoch}", save_top_k=1)
    trainer = make_trainer(root, max_epochs=EPOCHS, callbacks=[dynamics, latest], enable_checkpointing=True)
    trainer.fit(Classifier(), train_loader(ClassificationDataset(SIZE), batch_size=8))
    assert [path.name for path in (tmp_path / "checkpoints").iterdir()] == [f"epoch={EPOCHS - 1}.ckpt"]
    run = root / "dynamics_shards" / "dynamics" / str(dynamics.run_id)
    # Each save deleted the shards of the checkpoints gone by then; the end of the fit, those of the checkpoint
    # the last save replaced.
    assert [path.name for path in run.iterdir()] == [f"epoch={EPOCHS}"]
    assert_signals_equal(restored(Path(latest.best_model_path), dynamics.state_key).signals(), dynamics.signals())


def test_an_unreadable_checkpoint_file_keeps_every_shard_with_a_warning(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "foreign.ckpt").write_bytes(b"not a checkpoint")  # it might hold any shard
    dynamics = TrainingDynamics(sharded=True, history_epochs=2)
    latest = ModelCheckpoint(dirpath=checkpoints, filename="{epoch}", save_top_k=1)
    trainer = make_trainer(
        tmp_path / "root", max_epochs=EPOCHS, callbacks=[dynamics, latest], enable_checkpointing=True
    )
    with pytest.warns(UserWarning, match=r"keeps every shard of this run: it cannot read the checkpoint"):
        trainer.fit(Classifier(), train_loader(ClassificationDataset(SIZE), batch_size=8))
    run = tmp_path / "root" / "dynamics_shards" / "dynamics" / str(dynamics.run_id)
    assert sorted(path.name for path in run.iterdir()) == [f"epoch={e}" for e in range(1, EPOCHS + 1)]


def test_shards_stay_while_a_checkpoint_that_was_seen_to_hold_them_exists(tmp_path: Path) -> None:
    """A file ``best_model_path`` stops naming (a better model elsewhere, or the run resumed from) still counts."""
    dynamics = TrainingDynamics(sharded=True)
    dynamics.run_id = "a"

    def checkpoint(path: Path, run_id: str, epochs: int) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        shard = {"run_id": run_id, "epochs_tracked": epochs}
        torch.save({"callbacks": {dynamics.state_key: {"version": 2, "shard": shard}}}, path)
        return path

    best = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="{epoch}")
    trainer = type("TrainerStub", (), {"checkpoint_callbacks": [best]})()
    best.best_model_path = str(checkpoint(tmp_path / "resumed_from" / "epoch=0.ckpt", "a", 1))
    checkpoint(tmp_path / "checkpoints" / "other_run.ckpt", "b", 2)
    assert dynamics._stale_shards(trainer, newest=2) == []
    best.best_model_path = str(checkpoint(tmp_path / "checkpoints" / "epoch=1.ckpt", "a", 2))
    assert dynamics._stale_shards(trainer, newest=3) == []  # resumed_from/epoch=0.ckpt still holds epoch=1
    (tmp_path / "resumed_from" / "epoch=0.ckpt").unlink()
    (tmp_path / "checkpoints" / "other_run.ckpt").unlink()
    assert dynamics._stale_shards(trainer, newest=3) == [1]  # its file is gone; another run's never counted
