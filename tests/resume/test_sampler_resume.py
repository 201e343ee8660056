"""Crash at the start of epoch k, resume from the epoch-end checkpoint: the curriculum continues exactly.

The plans, the trained ``(index, weight)`` pairs of every epoch after the resume, the final model
parameters and the tracker's signals equal those of an uninterrupted run, for score-dependent policies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import CrashAt, SimulatedCrash, assert_signals_equal, make_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from selection_helpers import CurriculumClassifier, assert_plans_equal, one_thread  # noqa: F401

from lightning_curricula import Curriculum, InfoBatch, Policy, StaticPruning, TrainingDynamics

EPOCHS = 5


def fit(
    policy: Policy,
    root: Path,
    *,
    crash_at: int | None = None,
    ckpt_path: Path | None = None,
    max_epochs: int = EPOCHS,
    **options: Any,
) -> tuple[CurriculumClassifier, TrainingDynamics]:
    torch.manual_seed(0)  # the test's RNG; the library never reads it
    model = CurriculumClassifier(policy, plan_seed=5)
    dynamics = TrainingDynamics()
    checkpoints = ModelCheckpoint(
        dirpath=root / "checkpoints",
        filename="{epoch}",
        every_n_epochs=1,
        save_top_k=-1,
        save_on_train_epoch_end=True,
    )
    callbacks: list[Callback] = [dynamics, checkpoints]
    if crash_at is not None:
        callbacks.append(CrashAt(crash_at))
    trainer = make_trainer(
        root,
        max_epochs=max_epochs,
        callbacks=callbacks,
        enable_checkpointing=True,
        reload_dataloaders_every_n_epochs=1,
        **options,
    )
    trainer.fit(model, ckpt_path=ckpt_path)
    return model, dynamics


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
@pytest.mark.parametrize(
    ("policy", "crash_epoch"),
    [
        (InfoBatch(0.8, budget=0.6, anneal=0.2), 2),  # crash between two pruning epochs
        (Curriculum(start=0.3, saturation=0.8), 3),
    ],
    ids=["infobatch_budget", "curriculum"],
)
def test_resumed_run_plans_and_trains_like_the_uninterrupted_one(
    policy: Policy, crash_epoch: int, tmp_path: Path
) -> None:
    straight, straight_dynamics = fit(policy, tmp_path / "straight")
    with pytest.raises(SimulatedCrash):
        fit(policy, tmp_path / "crashed", crash_at=crash_epoch)
    checkpoint = tmp_path / "crashed" / "checkpoints" / f"epoch={crash_epoch - 1}.ckpt"
    assert checkpoint.exists()
    resumed, resumed_dynamics = fit(policy, tmp_path / "crashed", ckpt_path=checkpoint)

    assert sorted(resumed.plans) == list(range(crash_epoch, EPOCHS))
    for epoch in range(crash_epoch, EPOCHS):
        assert_plans_equal(resumed.plans[epoch], straight.plans[epoch])
        assert resumed.trained[epoch] == straight.trained[epoch], f"epoch {epoch}"
        assert resumed.num_batches[epoch] == straight.num_batches[epoch]
    # The plans did depend on the scores: some epoch after the resume trains on a strict subset.
    assert any(len(straight.plans[epoch]) < 37 for epoch in range(crash_epoch - 1, EPOCHS))

    for (name, want), (_, got) in zip(straight.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.equal(want, got), name
    assert resumed_dynamics.epochs_tracked == straight_dynamics.epochs_tracked == EPOCHS
    assert_signals_equal(resumed_dynamics.signals(), straight_dynamics.signals())


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_static_pruning_resumes_its_recorded_subset(tmp_path: Path) -> None:
    # A regression test: the subset is the policy's state, saved with the tracker's; after a resume it is planned
    # again in full, although the selection epoch trained only part of it (limit_train_batches).
    crash_epoch, options = 3, {"limit_train_batches": 2}
    straight, _ = fit(StaticPruning("loss", keep=0.5, score_epochs=1), tmp_path / "straight", **options)
    with pytest.raises(SimulatedCrash):
        fit(StaticPruning("loss", keep=0.5, score_epochs=1), tmp_path / "crashed", crash_at=crash_epoch, **options)
    checkpoint = tmp_path / "crashed" / "checkpoints" / f"epoch={crash_epoch - 1}.ckpt"
    saved = torch.load(checkpoint, weights_only=True)["callbacks"]
    (tracker_state,) = [state for key, state in saved.items() if key.startswith("TrainingDynamics")]
    subset = sorted(straight.plans[1].indices.tolist())
    assert tracker_state["policy"]["policy"] == "StaticPruning"
    assert tracker_state["policy"]["state"]["subset"].tolist() == subset

    policy = StaticPruning("loss", keep=0.5, score_epochs=1)
    resumed, _ = fit(policy, tmp_path / "crashed", ckpt_path=checkpoint, **options)
    for epoch in range(crash_epoch, EPOCHS):
        assert_plans_equal(resumed.plans[epoch], straight.plans[epoch])
        assert len(resumed.plans[epoch]) == policy.epoch_size(37, epoch, EPOCHS) > len(resumed.trained[epoch])
        assert sorted(resumed.plans[epoch].indices.tolist()) == subset


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_resuming_a_paced_curriculum_with_another_max_epochs_is_refused(tmp_path: Path) -> None:
    # A regression test: the pacing depends on max_epochs; resuming with another silently changed every later epoch.
    with pytest.raises(SimulatedCrash):
        fit(Curriculum(start=0.3), tmp_path, crash_at=2)
    checkpoint = tmp_path / "checkpoints" / "epoch=1.ckpt"
    with pytest.raises(ValueError, match=r"max_epochs=8: the checkpoint's run has max_epochs=5"):
        fit(Curriculum(start=0.3), tmp_path, ckpt_path=checkpoint, max_epochs=8)
