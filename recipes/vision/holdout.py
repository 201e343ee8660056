"""Irreducible losses for RHO-LOSS in the vision recipe: small models trained on held-out halves.

RHO-LOSS (Mindermann et al., ICML 2022) ranks examples by their training loss minus an *irreducible*
loss, the loss of a model trained on held-out data. The recipe needs no extra data for it: the
training set is split in two seeded halves, a small model is trained on each, and every example gets
the loss of the model that did *not* train on it. All of the training set stays available to the main
run, and no example's irreducible loss comes from a model that saw it.

The cost (two small trainings of ``epochs`` epochs on half the data each, so ``epochs`` full-data
epochs of the small model) is timed and charged to the run by the recipe.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Subset

from lightning_curricula.distributed import derived_seed
from lightning_curricula.step.reference import ReferenceLosses, irreducible_losses

__all__ = ["holdout_losses"]


def holdout_losses(
    train_set: Any,
    make_model: Any,
    *,
    mean: Tensor,
    std: Tensor,
    epochs: int = 2,
    batch_size: int = 256,
    lr: float = 0.05,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> ReferenceLosses:
    """Per-example irreducible losses of ``train_set``, each from a model trained on the other half.

    Args:
        train_set: the recipe's training split (items with a uint8 ``image`` and a ``label``).
        make_model: a callable returning a fresh classifier (the recipe's model class).
        mean: per-channel mean of the training images (the recipe's normalisation).
        std: per-channel standard deviation.
        epochs: epochs of each holdout model on its half.
        batch_size: examples per step.
        lr: peak learning rate of SGD with Nesterov momentum and a OneCycle schedule.
        seed: seeds the halves, the models' initialisation and the shuffles (private generators).
        device: where to train.

    Returns:
        `ReferenceLosses` with one loss per training id.

    Example:
        >>> from lightning_curricula.recipes.vision.datamodule import VisionDataModule
        >>> from lightning_curricula.recipes.vision.models import SmallCNN
        >>> data = VisionDataModule(train_subset=64, test_subset=16)
        >>> data.setup("fit")
        >>> reference = holdout_losses(data.train_set, SmallCNN, mean=data.mean, std=data.std, epochs=1)
        >>> len(reference), bool(reference.losses.isfinite().all())
        (64, True)
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs!r}.")
    size = len(train_set)
    if size < 2:
        raise ValueError(f"The training set has {size} example(s); holdout losses need at least 2 (two halves).")
    order = torch.randperm(size, generator=torch.Generator().manual_seed(derived_seed(seed, 1)))
    halves = (order[: size // 2].sort().values, order[size // 2 :].sort().values)
    losses = torch.full((size,), math.nan)
    normalise = _Normalise(mean, std)
    for part, (trained, scored) in enumerate((halves, halves[::-1])):
        model = _seeded_model(make_model, derived_seed(seed, 2, part)).to(device)
        shuffle_seed = derived_seed(seed, 3, part)
        _train(model, Subset(train_set, trained.tolist()), normalise, epochs, batch_size, lr, shuffle_seed)
        scores = irreducible_losses(model, Subset(train_set, scored.tolist()), normalise.loss, batch_size=1024)
        losses[scored] = scores.losses
    return ReferenceLosses(losses)


class _Normalise:
    """uint8 images to the recipe's normalised floats, and the per-example loss `irreducible_losses` needs."""

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        self.mean, self.std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)

    def __call__(self, images: Tensor) -> Tensor:
        images = images.float().div(255.0)
        normalised = (images - self.mean.to(images.device)) / self.std.to(images.device)
        return normalised.to(memory_format=torch.channels_last)  # as the recipe's module: faster convolutions

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(model(self(batch["image"])), batch["label"], reduction="none")


def _seeded_model(make_model: Any, seed: int) -> nn.Module:
    # Modules initialise from the global generator: fork it so the caller's stream is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: nn.Module = make_model()
    return model


def _train(
    model: nn.Module, data: Subset[Any], normalise: _Normalise, epochs: int, batch_size: int, lr: float, seed: int
) -> None:
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(2, epochs * len(loader)))
    model.train()
    for _ in range(epochs):
        for batch in loader:
            images, labels = normalise(batch["image"].to(device)), batch["label"].to(device)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
