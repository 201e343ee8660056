"""Plans that visit an id more than once per epoch, loaded ahead of the step: Stale-SB under importance sampling.

- `DrawsWithReplacement`: importance sampling's kind of plan (after a first full epoch, ``N`` visits drawn
  with replacement, weights that vary by id), with no tracker to feed;
- `PrefetchedRepeats`: a `curriculum_dataloader` over it whose workers fetch batches ahead of the step.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from helpers import ClassificationDataset
from torch.utils.data import DataLoader

from lightning_curricula import EpochContext, Plan, Policy, curriculum_dataloader


class DrawsWithReplacement(Policy):
    """A full first epoch (every example scored once), then ``N`` visits drawn with replacement, weights by id."""

    varies_length = False

    def plan(self, context: EpochContext) -> Plan:
        n = context.num_examples
        if context.epoch == 0:
            return Plan(torch.randperm(n, generator=context.generator), torch.ones(n))
        ids = torch.randint(0, n, (n,), generator=context.generator)
        return Plan(ids, 1.0 + (ids % 3).float() / 2)

    def epoch_size(self, num_examples: int, epoch: int, num_epochs: int | None) -> int:
        return num_examples


class PrefetchedRepeats(pl.LightningDataModule):
    """``ClassificationDataset(size)`` planned by `DrawsWithReplacement`, ``workers`` loader workers fetching ahead."""

    def __init__(self, size: int, *, batch_size: int = 8, workers: int = 2) -> None:
        super().__init__()
        self.size = size
        self.batch_size = batch_size
        self.workers = workers

    def train_dataloader(self) -> DataLoader[Any]:
        loader = curriculum_dataloader(
            ClassificationDataset(self.size),
            self.trainer,
            DrawsWithReplacement(),
            batch_size=self.batch_size,
            num_workers=self.workers,
        )
        # Workers pull from the sampler as soon as Lightning makes the loader's iterator, before it calls
        # set_epoch; a resumed run makes no second iterator, so without a tracker (whose clock plans the
        # epoch) its first epoch would be planned as epoch 0.
        loader.sampler.set_epoch(self.trainer.current_epoch)  # type: ignore[attr-defined]
        return loader
