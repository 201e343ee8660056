"""Stale-SB selecting before loading in a real CPU `Trainer`: the same training as selecting in the step.

With ``select_before_loading`` (the default) the `curriculum_dataloader` of an epoch between scoring epochs
loads only the kept examples; the module, written for selection in the step, runs unchanged. The run must
train on the same examples, with the same weights, to the same parameters and counters as the run that
loads whole batches and selects in the step, and plan the same number of optimizer steps; also when the plan
visits an id twice in an epoch and the loader's workers fetch batches ahead of the step.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import make_trainer
from lightning.pytorch.callbacks import Callback
from online_helpers import CurriculumData, SelectiveClassifier
from repeats_helpers import PrefetchedRepeats

from lightning_curricula import OnlineBatchSelection, planned_optimizer_steps

SIZE = 37
EPOCHS = 4


def fit(
    select_before_loading: bool, data: pl.LightningDataModule | None = None
) -> tuple[SelectiveClassifier, OnlineBatchSelection, pl.Trainer]:
    model = SelectiveClassifier(lr=0.2)
    selection = OnlineBatchSelection(
        keep=0.4,
        method="percentile",
        beta=2.0,
        unbiased=True,
        seed=11,
        rescore_every=2,
        select_before_loading=select_before_loading,
    )
    trainer = make_trainer(max_epochs=EPOCHS, callbacks=[selection], reload_dataloaders_every_n_epochs=1)
    trainer.fit(model, datamodule=CurriculumData(SIZE) if data is None else data)
    return model, selection, trainer


def test_selecting_before_loading_trains_exactly_as_selecting_in_the_step() -> None:
    in_step, in_step_selection, in_step_trainer = fit(select_before_loading=False)
    loaded, loaded_selection, loaded_trainer = fit(select_before_loading=True)

    whole, kept = [8, 8, 8, 8, 5], [3, 3, 3, 3, 2]  # round(0.4 * 8) and round(0.4 * 5)
    assert in_step.loaded_sizes == whole * EPOCHS
    assert loaded.loaded_sizes == whole + kept + whole + kept  # epochs 1 and 3 load the kept examples only
    assert loaded.kept_ids == in_step.kept_ids
    assert loaded.scored_ids == in_step.scored_ids  # epochs 0 and 2 score
    for got, want in zip(loaded.parameters(), in_step.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)  # the same unbiased weights, too
    assert loaded_selection.calls == in_step_selection.calls == EPOCHS * 5
    assert loaded_selection.epoch_metrics == in_step_selection.epoch_metrics
    assert loaded_selection.epoch_metrics["recalled_examples"] == 37
    # The loader of a preselected epoch still plans the run's steps from the whole batches.
    assert planned_optimizer_steps(loaded_trainer) == planned_optimizer_steps(in_step_trainer) == EPOCHS * 5


def test_selecting_before_loading_needs_the_loader_re_created_and_one_selection() -> None:
    def fit_with(callbacks: list[Callback], **options: Any) -> None:
        trainer = make_trainer(max_epochs=2, callbacks=callbacks, **options)
        trainer.fit(SelectiveClassifier(), datamodule=CurriculumData(SIZE))

    stale = OnlineBatchSelection(keep=0.5, rescore_every=2)
    with pytest.raises(ValueError, match=r"set Trainer\(reload_dataloaders_every_n_epochs=1\) \(it is 0\)"):
        fit_with([stale])
    two = [stale, OnlineBatchSelection(keep=0.5, rescore_every=3, name="other")]
    with pytest.raises(ValueError, match=r"2 OnlineBatchSelection callbacks \(\['selection', 'other'\]\)"):
        fit_with(two, reload_dataloaders_every_n_epochs=1)
    fit_with([OnlineBatchSelection(keep=0.5, rescore_every=2, select_before_loading=False)])  # in the step: any loader


def test_a_plan_with_repeats_loaded_ahead_by_workers_trains_exactly_as_selecting_in_the_step() -> None:
    in_step, in_step_selection, _ = fit(select_before_loading=False, data=PrefetchedRepeats(SIZE))
    loaded, loaded_selection, _ = fit(select_before_loading=True, data=PrefetchedRepeats(SIZE))

    kept = [3, 3, 3, 3, 2]
    assert loaded.loaded_sizes[5:10] == loaded.loaded_sizes[15:20] == kept  # epochs 1 and 3: the kept examples only
    stale_epoch = [i for ids in loaded.kept_ids[5:10] for i in ids]
    assert len(set(stale_epoch)) < len(stale_epoch)  # an id kept in two batches of one epoch: repeats matter
    assert loaded.kept_ids == in_step.kept_ids
    for got, want in zip(loaded.parameters(), in_step.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)  # each visit trained with its own unbiased weight
    # The workers' look-ahead (and Lightning's second iterator of a re-created loader) draws and counts nothing.
    assert loaded_selection.calls == in_step_selection.calls == EPOCHS * 5
    assert loaded_selection.epoch_metrics == in_step_selection.epoch_metrics
