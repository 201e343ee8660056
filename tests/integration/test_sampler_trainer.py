"""A real `Trainer` on CPU with `curriculum_dataloader`: each epoch trains exactly its plan, sized from the plan.

Per epoch the module records the plan (read from the sampler in ``on_train_epoch_start``), the same plan
recomputed from ``(seed, epoch, the tracker's signals)``, ``trainer.num_training_batches`` and the
``(index, weight)`` pairs of its batches; a callback after the tracker records the logged metrics.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import pytest
from helpers import make_trainer
from selection_helpers import (  # noqa: F401
    CurriculumClassifier,
    assert_plans_equal,
    one_thread,
    plan_pairs,
)

from lightning_curricula import Curriculum, InfoBatch, Policy, StaticPruning, TrainingDynamics

SIZE = 37
BATCH_SIZE = 8
EPOCHS = 5
PLAN_METRICS = ("kept_fraction", "sample_passes", "passes_saved_fraction", "weight_mean", "unique_fraction")


class EpochMetrics(pl.Callback):
    """The tracker's logged epoch metrics, read after its ``on_train_epoch_end`` (callbacks run in order)."""

    def __init__(self) -> None:
        self.epochs: dict[int, dict[str, float]] = {}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        self.epochs[trainer.current_epoch] = {
            key.split("/", 1)[1]: float(value) for key, value in metrics.items() if key.startswith("dynamics/")
        }


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(Curriculum(start=0.3, saturation=0.8), id="curriculum"),
        pytest.param(InfoBatch(0.8, budget=0.6, anneal=0.2), id="infobatch_budget"),
    ],
)
def run(request: pytest.FixtureRequest) -> dict[str, Any]:
    policy: Policy = request.param
    model = CurriculumClassifier(policy, size=SIZE, batch_size=BATCH_SIZE, plan_seed=7)
    metrics = EpochMetrics()
    trainer = make_trainer(
        max_epochs=EPOCHS,
        callbacks=[TrainingDynamics(), metrics],
        reload_dataloaders_every_n_epochs=1,
    )
    trainer.fit(model)
    return {"policy": policy, "model": model, "metrics": metrics.epochs, "trainer": trainer}


def test_every_epoch_trains_exactly_its_plan(run: dict[str, Any]) -> None:
    model: CurriculumClassifier = run["model"]
    assert sorted(model.plans) == list(range(EPOCHS))
    for epoch in range(EPOCHS):
        plan = model.plans[epoch]
        assert model.trained[epoch] == plan_pairs(plan), f"epoch {epoch}"
        assert_plans_equal(model.recomputed[epoch], plan)  # a pure function of (seed, epoch, synced signals)


def test_epochs_are_sized_from_their_plans(run: dict[str, Any]) -> None:
    model: CurriculumClassifier = run["model"]
    policy: Policy = run["policy"]
    for epoch in range(EPOCHS):
        size = len(model.plans[epoch])
        assert size == policy.epoch_size(SIZE, epoch, EPOCHS)
        assert model.num_batches[epoch] == math.ceil(size / BATCH_SIZE), f"epoch {epoch}"
    full_batches = math.ceil(SIZE / BATCH_SIZE)
    assert min(model.num_batches.values()) < full_batches  # pruned epochs are not padded back to full size
    assert model.num_batches[0] == full_batches
    assert run["trainer"].global_step == sum(model.num_batches.values())  # and no epoch was cut short
    if isinstance(policy, InfoBatch):  # the budget is spent exactly, with weights above 1 on pruned epochs
        assert policy.budget is not None
        assert sum(len(plan) for plan in model.plans.values()) == round(policy.budget * EPOCHS * SIZE)
        assert any(weight > 1.0 for pairs in model.trained.values() for _, weight in pairs)


def test_logged_plan_metrics(run: dict[str, Any]) -> None:
    model: CurriculumClassifier = run["model"]
    metrics: dict[int, dict[str, float]] = run["metrics"]
    passes = 0
    for epoch in range(EPOCHS):
        plan = model.plans[epoch]
        passes += len(plan)
        logged = metrics[epoch]
        assert set(PLAN_METRICS) <= set(logged), sorted(logged)
        assert logged["kept_fraction"] == pytest.approx(len(plan) / SIZE)
        assert logged["unique_fraction"] == pytest.approx(len(set(plan.indices.tolist())) / SIZE)
        assert logged["sample_passes"] == passes
        assert logged["passes_saved_fraction"] == pytest.approx(1.0 - passes / ((epoch + 1) * SIZE))
        assert logged["weight_mean"] == pytest.approx(float(plan.weights.double().mean()), rel=1e-6)
    assert metrics[EPOCHS - 1]["passes_saved_fraction"] > 0.0


def test_static_pruning_keeps_its_size_when_the_selection_epoch_is_cut_short() -> None:
    # A regression test: the subset was read back from the tables, so the examples that a cut-short selection epoch
    # did not reach left it for good and later epochs were smaller than epoch_size() (and the LR schedule).
    policy = StaticPruning("loss", keep=0.5, score_epochs=1)
    model = CurriculumClassifier(policy, size=SIZE, batch_size=BATCH_SIZE, plan_seed=7)
    trainer = make_trainer(
        max_epochs=4,
        callbacks=[TrainingDynamics()],
        reload_dataloaders_every_n_epochs=1,
        limit_train_batches=2,  # 16 of the 18 chosen examples train in each pruned epoch
    )
    trainer.fit(model)
    assert len(model.plans) == 4
    for epoch, plan in model.plans.items():
        assert len(plan) == policy.epoch_size(SIZE, epoch, 4), epoch
    assert len(model.trained[1]) < len(model.plans[1])  # the selection epoch was cut short
    assert sorted(model.plans[2].indices.tolist()) == sorted(model.plans[1].indices.tolist())
