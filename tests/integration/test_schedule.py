"""`planned_optimizer_steps`: the run's exact optimizer steps from the Trainer's loader, and clear refusals."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from helpers import make_trainer
from selection_helpers import CurriculumClassifier, one_thread  # noqa: F401
from torch.utils.data import DataLoader

from lightning_curricula import (
    Curriculum,
    InfoBatch,
    Policy,
    RandomSubset,
    TrainingDynamics,
    curriculum_dataloader,
    planned_optimizer_steps,
)

SIZE, BATCH = 37, 8


class Scheduled(CurriculumClassifier):
    """Sizes a step-based schedule in ``configure_optimizers`` by `planned_optimizer_steps`."""

    def __init__(self, policy: Policy, *, drop_last: bool = False, plain_loader: bool = False) -> None:
        super().__init__(policy, size=SIZE, batch_size=BATCH)
        self.drop_last = drop_last
        self.plain_loader = plain_loader
        self.total = 0

    def train_dataloader(self) -> DataLoader[Any]:
        if self.plain_loader:
            return DataLoader(self.data, batch_size=BATCH)  # type: ignore[arg-type]
        return curriculum_dataloader(
            self.data, self.trainer, self.policy, batch_size=self.batch_size, drop_last=self.drop_last
        )

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        self.total = planned_optimizer_steps(self.trainer)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=self.total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def fit(module: Scheduled, *, max_epochs: int = 4, **kwargs: Any) -> Any:
    trainer = make_trainer(
        max_epochs=max_epochs,
        callbacks=[TrainingDynamics()],
        reload_dataloaders_every_n_epochs=1,
        **kwargs,
    )
    trainer.fit(module)
    return trainer


@pytest.mark.parametrize(
    ("policy", "accumulate", "drop_last"),
    [
        (Curriculum("loss", start=0.3, saturation=1.0), 1, False),  # growing epochs
        (InfoBatch(0.5, budget=0.8, anneal=0.25), 3, True),  # pruned epochs, a short accumulation, full batches
        (RandomSubset(0.5), 2, False),
    ],
    ids=["curriculum", "infobatch_budget", "random_subset"],
)
def test_planned_steps_equal_the_steps_taken(policy: Policy, accumulate: int, drop_last: bool) -> None:
    module = Scheduled(policy, drop_last=drop_last)
    trainer = fit(module, accumulate_grad_batches=accumulate)
    assert module.total == trainer.global_step
    batches = SIZE // BATCH if drop_last else math.ceil(SIZE / BATCH)
    estimate = math.ceil(batches / accumulate) * 4  # Lightning's: every epoch like the first
    assert module.total != estimate


def test_max_steps_caps_the_count() -> None:
    module = Scheduled(Curriculum("loss", start=0.3, saturation=1.0))
    trainer = fit(module, max_steps=5)
    assert module.total == trainer.global_step == 5


@pytest.mark.parametrize(
    ("module", "options", "message"),
    [
        (Scheduled(InfoBatch(0.5)), {}, "InfoBatch sizes epoch 1 from the scores"),
        (Scheduled(Curriculum("loss"), plain_loader=True), {}, "needs a train DataLoader with a CurriculumSampler"),
        (Scheduled(RandomSubset(0.5)), {"limit_train_batches": 0.5}, "limit_train_batches=0.5 cuts every epoch"),
    ],
    ids=["sizes_from_scores", "plain_loader", "limit_train_batches"],
)
def test_refuses_what_it_cannot_count(module: Scheduled, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit(module, **options)
