"""Test modules for selection inside the step: a classifier that scores, selects and trains on the kept part.

`SelectiveClassifier` follows the pattern of the method cards: a no-grad scoring forward (the loss, or the
reducible loss against `ReferenceLosses`), `OnlineBatchSelection.select`, and a forward + backward of
the kept examples only, with automatic or manual optimisation; with ``rescore_every > 1`` it selects by
remembered scores where it can and remembers the kept examples' training scores. It records the ids it
scored with a forward, those it trained on, and the size of each batch it was given.
`CurriculumData` loads through `curriculum_dataloader`, which selects Stale-SB's epochs before loading.
`RecordingLogger` keeps what the callback writes to the Trainer's loggers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from helpers import ClassificationDataset, Classifier
from lightning.pytorch.loggers import Logger
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader

from lightning_curricula import (
    OnlineBatchSelection,
    ReferenceLosses,
    curriculum_dataloader,
    find_online_selection,
    weighted_mean,
)
from lightning_curricula.step.selection import reducible_loss


def per_example_loss(model: torch.nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    """The unreduced cross-entropy of a dict batch ``{"x", "y"}``: what `irreducible_losses` calls."""
    return F.cross_entropy(model(batch["x"]), batch["y"], reduction="none")


class SelectiveClassifier(Classifier):
    """`Classifier` that trains, each step, only on the examples `OnlineBatchSelection` keeps.

    Args:
        reference: score by the reducible loss against these irreducible losses (RHO-LOSS); by the loss
            (Selective Backprop) when ``None``.
        manual: manual optimisation (one optimizer step per batch) instead of automatic.
        kwargs: passed to `Classifier`.
    """

    def __init__(self, *, reference: ReferenceLosses | None = None, manual: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reference = reference
        self.automatic_optimization = not manual
        self.kept_ids: list[list[int]] = []  # per step, the ids trained on
        self.scored_ids: list[list[int]] = []
        self.loaded_sizes: list[int] = []

    def scores(self, batch: Mapping[str, Tensor]) -> Tensor:
        with torch.no_grad():
            losses = per_example_loss(self, batch)
        return self.score_of(losses, batch["index"])

    def score_of(self, losses: Tensor, index: Tensor) -> Tensor:
        return losses if self.reference is None else reducible_loss(losses, self.reference.lookup(index))

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor | None:  # type: ignore[override]
        selection: OnlineBatchSelection = find_online_selection(self.trainer)
        self.loaded_sizes.append(int(batch["index"].numel()))
        kept = selection.select_remembered(batch["index"])
        if kept is None:
            self.scored_ids.append(batch["index"].tolist())
            kept = selection.select(self.scores(batch), index=batch["index"])
        ids = batch["index"][kept.positions]
        self.kept_ids.append(ids.tolist())
        losses = F.cross_entropy(self(batch["x"][kept.positions]), batch["y"][kept.positions], reduction="none")
        selection.remember(ids, self.score_of(losses.detach(), ids))
        loss = weighted_mean(losses, kept.weights)
        if self.automatic_optimization:
            return loss
        optimizer = self.optimizers()
        optimizer.zero_grad()  # type: ignore[union-attr]
        self.manual_backward(loss)
        optimizer.step()  # type: ignore[union-attr]
        return None


class CurriculumData(pl.LightningDataModule):
    """``ClassificationDataset(size)`` through `curriculum_dataloader` (full data, shuffled per epoch)."""

    def __init__(self, size: int, batch_size: int = 8) -> None:
        super().__init__()
        self.size = size
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader[Any]:
        return curriculum_dataloader(ClassificationDataset(self.size), self.trainer, batch_size=self.batch_size)


class RecordingLogger(Logger):
    """A logger that keeps every ``(step, metrics)`` it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.records.append((step, dict(metrics)))
