"""Stale-SB selecting before loading, a plan with repeats and loader workers fetching ahead: crash and resume.

From an epoch-end checkpoint the resumed run trains on the same examples with the same weights to the same
parameters, counters and remembered scores as the uninterrupted run: the batches the workers fetched ahead are
neither checkpointed nor counted. From a mid-epoch checkpoint (which Lightning resumes by loading the epoch
again) the resumed loader selects its batches afresh, and every step finds the batch it was given.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import CrashAt, SimulatedCrash, make_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from online_helpers import SelectiveClassifier
from repeats_helpers import PrefetchedRepeats

from lightning_curricula import OnlineBatchSelection

EPOCHS = 4
SIZE = 37
STEPS_PER_EPOCH = 5


def fit(
    root: Path,
    *,
    crash: CrashAt | None = None,
    ckpt_path: Path | None = None,
    every_n_train_steps: int | None = None,
) -> tuple[SelectiveClassifier, OnlineBatchSelection]:
    model = SelectiveClassifier(lr=0.2)
    selection = OnlineBatchSelection(keep=0.4, method="percentile", beta=2.0, unbiased=True, seed=11, rescore_every=2)
    if every_n_train_steps is None:
        checkpoints = ModelCheckpoint(
            dirpath=root / "checkpoints", filename="{epoch}", save_top_k=-1, save_on_train_epoch_end=True
        )
    else:
        checkpoints = ModelCheckpoint(
            dirpath=root / "checkpoints", filename="{step}", save_top_k=-1, every_n_train_steps=every_n_train_steps
        )
    callbacks: list[Callback] = [selection, checkpoints] + ([] if crash is None else [crash])
    trainer = make_trainer(
        root, max_epochs=EPOCHS, callbacks=callbacks, enable_checkpointing=True, reload_dataloaders_every_n_epochs=1
    )
    trainer.fit(model, datamodule=PrefetchedRepeats(SIZE), ckpt_path=ckpt_path)
    return model, selection


@pytest.mark.parametrize("crash_epoch", [1, 3])
def test_crash_and_resume_from_an_epoch_end_equals_the_uninterrupted_run(tmp_path: Path, crash_epoch: int) -> None:
    straight, straight_selection = fit(tmp_path / "straight")
    root = tmp_path / "crashed"
    with pytest.raises(SimulatedCrash):
        fit(root, crash=CrashAt(crash_epoch))
    resumed, resumed_selection = fit(root, ckpt_path=root / "checkpoints" / f"epoch={crash_epoch - 1}.ckpt")

    done = crash_epoch * STEPS_PER_EPOCH
    assert resumed.loaded_sizes[:STEPS_PER_EPOCH] == [3, 3, 3, 3, 2]  # the crash epochs load the kept examples only
    assert resumed.kept_ids == straight.kept_ids[done:]
    for got, want in zip(resumed.parameters(), straight.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert resumed_selection.calls == straight_selection.calls == EPOCHS * STEPS_PER_EPOCH
    assert resumed_selection.state_dict()["totals"] == straight_selection.state_dict()["totals"]
    assert torch.equal(
        resumed_selection.state_dict()["remembered_scores"], straight_selection.state_dict()["remembered_scores"]
    )


def test_resume_from_inside_an_epoch_selected_before_loading(tmp_path: Path) -> None:
    root = tmp_path / "crashed"
    with pytest.raises(SimulatedCrash):  # a checkpoint after step 7: two batches into epoch 1, more fetched ahead
        fit(root, crash=CrashAt(1, batch=3), every_n_train_steps=7)
    crashed = torch.load(root / "checkpoints" / "step=7.ckpt", weights_only=False)
    state = next(value for key, value in crashed["callbacks"].items() if key.startswith("OnlineBatchSelection"))
    assert state["calls"] == STEPS_PER_EPOCH + 2  # the batches the steps took, not those the workers fetched

    resumed, selection = fit(root, ckpt_path=root / "checkpoints" / "step=7.ckpt", every_n_train_steps=7)
    stale = resumed.loaded_sizes[: len(resumed.loaded_sizes) - 2 * STEPS_PER_EPOCH]  # epoch 1's rest, then 2 and 3
    assert stale
    assert all(size in (2, 3) for size in stale)  # the resumed loader selected before loading again
    assert selection.calls == state["calls"] + len(resumed.loaded_sizes)  # one selection per step, none ahead
