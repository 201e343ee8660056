"""Crash at epoch k, resume from the last epoch-end checkpoint: the same tables and weights as a straight run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
