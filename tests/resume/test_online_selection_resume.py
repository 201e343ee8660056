"""Crash at the start of epoch k, resume from the epoch-end checkpoint: selection inside the step continues exactly.

RHO-LOSS with Selective Backprop's probabilistic selection: the reference losses come from a file written
once, the random stream from the callback's checkpointed state. The resumed run trains on the same examples
after the crash and ends with the same parameters and counters as the uninterrupted run. With remembered
scores (Stale-SB, ``rescore_every=2``) the crash epochs select by the scores in the checkpoint, in the step or,
through `curriculum_dataloader`, before loading.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import ClassificationDataset, Classifier, CrashAt, SimulatedCrash, make_trainer, train_loader
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from online_helpers import CurriculumData, SelectiveClassifier, per_example_loss

from lightning_curricula import OnlineBatchSelection, ReferenceLosses, irreducible_losses

EPOCHS = 4
SIZE = 37
STEPS_PER_EPOCH = 5


def fit(
    root: Path,
    reference_file: Path,
    *,
    rescore_every: int,
    before_loading: bool = False,
    crash_at: int | None = None,
    ckpt_path: Path | None = None,
) -> tuple[SelectiveClassifier, OnlineBatchSelection]:
    model = SelectiveClassifier(reference=ReferenceLosses.load(reference_file), lr=0.2)
    selection = OnlineBatchSelection(
        keep=0.4, method="percentile", beta=2.0, unbiased=True, seed=11, rescore_every=rescore_every
    )
    checkpoints = ModelCheckpoint(
        dirpath=root / "checkpoints", filename="{epoch}", every_n_epochs=1, save_top_k=-1, save_on_train_epoch_end=True
    )
    callbacks: list[Callback] = [selection, checkpoints]
    if crash_at is not None:
        callbacks.append(CrashAt(crash_at))
    if before_loading:  # curriculum_dataloader loads only the kept examples of the epochs between scoring epochs
        trainer = make_trainer(
            root, max_epochs=EPOCHS, callbacks=callbacks, enable_checkpointing=True, reload_dataloaders_every_n_epochs=1
        )
        trainer.fit(model, datamodule=CurriculumData(SIZE), ckpt_path=ckpt_path)
    else:
        trainer = make_trainer(root, max_epochs=EPOCHS, callbacks=callbacks, enable_checkpointing=True)
        trainer.fit(model, train_loader(ClassificationDataset(SIZE), batch_size=8), ckpt_path=ckpt_path)
    return model, selection


@pytest.mark.parametrize(
    ("rescore_every", "before_loading"), [(1, False), (2, False), (2, True)], ids=["scored", "stale", "preselected"]
)
@pytest.mark.parametrize("crash_epoch", [1, 3])
def test_crash_and_resume_equals_the_uninterrupted_run(
    tmp_path: Path, crash_epoch: int, rescore_every: int, before_loading: bool
) -> None:
    holdout = Classifier(seed=5)
    irreducible_losses(holdout, ClassificationDataset(SIZE), per_example_loss).save(tmp_path / "reference.pt")
    options = {"rescore_every": rescore_every, "before_loading": before_loading}

    straight, straight_selection = fit(tmp_path / "straight", tmp_path / "reference.pt", **options)

    root = tmp_path / "crashed"
    with pytest.raises(SimulatedCrash):
        fit(root, tmp_path / "reference.pt", crash_at=crash_epoch, **options)
    resumed, resumed_selection = fit(
        root, tmp_path / "reference.pt", ckpt_path=root / "checkpoints" / f"epoch={crash_epoch - 1}.ckpt", **options
    )

    assert resumed.kept_ids == straight.kept_ids[crash_epoch * STEPS_PER_EPOCH :]
    assert resumed.loaded_sizes == straight.loaded_sizes[crash_epoch * STEPS_PER_EPOCH :]
    if before_loading:  # the stale epochs (1 and 3) loaded only round(0.4 * 8) and round(0.4 * 5) examples per batch
        assert straight.loaded_sizes[STEPS_PER_EPOCH : 2 * STEPS_PER_EPOCH] == [3, 3, 3, 3, 2]
    scored_before_crash = len(straight.scored_ids) - len(resumed.scored_ids)
    assert resumed.scored_ids == straight.scored_ids[scored_before_crash:]
    # Stale-SB scores only in epochs 0 and 2: the crash epochs (1 and 3) select by the checkpoint's scores.
    assert len(straight.scored_ids) == EPOCHS * STEPS_PER_EPOCH // rescore_every
    for got, want in zip(resumed.parameters(), straight.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert resumed_selection.calls == straight_selection.calls == EPOCHS * STEPS_PER_EPOCH
    assert resumed_selection.state_dict()["totals"] == straight_selection.state_dict()["totals"]
    assert resumed_selection.epoch_metrics == straight_selection.epoch_metrics
    assert torch.equal(
        resumed_selection.state_dict()["remembered_scores"], straight_selection.state_dict()["remembered_scores"]
    )
    # The probabilistic selection really is random: the epochs do not replay the first one's picks.
    assert (
        straight.kept_ids[crash_epoch * STEPS_PER_EPOCH :]
        != straight.kept_ids[: (EPOCHS - crash_epoch) * STEPS_PER_EPOCH]
    )
