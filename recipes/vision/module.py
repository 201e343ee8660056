"""`VisionClassifier`: the LightningModule of the vision recipe, following the `TrainingDynamics` contract."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from lightning_curricula.recipes.vision.models import SmallCNN, resnet18
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lightning_curricula import planned_optimizer_steps, weighted_mean

__all__ = ["VisionClassifier"]

ModelName = Literal["small_cnn", "resnet18"]
Schedule = Literal["onecycle", "cosine", "constant"]


class VisionClassifier(pl.LightningModule):
    """An image classifier whose ``training_step`` feeds `lightning_curricula.TrainingDynamics`.

    ``training_step`` returns ``{"loss": weighted_mean(losses, batch["weight"]), "losses", "logits",
    "targets"}``: the plan's weights keep the loss unbiased under InfoBatch and importance sampling,
    and the per-example ``losses``, ``logits`` and ``targets`` give the tracker every classification
    signal.

    The optimiser is SGD with Nesterov momentum; weight decay skips biases and normalisation
    weights. The learning-rate schedule must end when training ends, but a pruning policy trains
    fewer steps than Lightning's ``estimated_stepping_batches`` assumes (it sizes every epoch like
    the first). So the total comes from `planned_optimizer_steps` (the sum of the planned epoch
    sizes, from the train loader's `CurriculumSampler`) whenever the policy knows them in advance
    (full data, random subsets, curricula, static pruning, InfoBatch with ``budget``, bandits,
    importance sampling), and the schedule steps every optimiser step (``onecycle`` or ``cosine``).
    When epoch sizes depend on the scores (InfoBatch without ``budget``, self-paced learning) the
    step count is unknown, and the schedule falls back to a cosine stepped once per epoch over ``max_epochs``.

    Args:
        model: ``"small_cnn"`` (fast on a CPU, for 28 x 28 images) or ``"resnet18"`` (CIFAR-style).
        num_classes: number of classes; the CLI links it to the data module's.
        in_channels: image channels; the CLI links it to the data module's.
        lr: peak learning rate.
        momentum: SGD momentum (Nesterov).
        weight_decay: L2 penalty on weights (not on biases and normalisation layers).
        schedule: ``"onecycle"`` (warm-up then cosine annealing), ``"cosine"`` (per step, from ``lr``
            down to 0) or ``"constant"``.
        warmup_share: share of the steps spent warming up under ``"onecycle"``.

    Example:
        >>> module = VisionClassifier(num_classes=10, in_channels=1)
        >>> module(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])

    Note:
        On CUDA the model and its inputs use ``channels_last`` (faster convolutions with tensor cores);
        add ``--trainer.precision bf16-mixed`` for mixed precision. Under DDP each rank's
        `planned_optimizer_steps` counts its own shard, so the schedule ends on time on every rank.
    """

    def __init__(
        self,
        model: ModelName = "small_cnn",
        num_classes: int = 10,
        in_channels: int = 1,
        *,
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        schedule: Schedule = "onecycle",
        warmup_share: float = 0.2,
    ) -> None:
        super().__init__()
        if model not in ("small_cnn", "resnet18"):
            raise ValueError(f"model must be 'small_cnn' or 'resnet18', got {model!r}.")
        if schedule not in ("onecycle", "cosine", "constant"):
            raise ValueError(f"schedule must be 'onecycle', 'cosine' or 'constant', got {schedule!r}.")
        if lr <= 0 or not 0.0 <= momentum < 1.0 or weight_decay < 0:
            raise ValueError(
                f"Need lr > 0, momentum in [0, 1) and weight_decay >= 0; got {lr!r}, {momentum!r}, {weight_decay!r}."
            )
        if not 0.0 < warmup_share < 1.0:
            raise ValueError(f"warmup_share must be in (0, 1), got {warmup_share!r}.")
        self.save_hyperparameters()
        self.model: nn.Module = (
            SmallCNN(num_classes, in_channels) if model == "small_cnn" else resnet18(num_classes, in_channels)
        )
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.schedule = schedule
        self.warmup_share = warmup_share
        self.val_accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.channels_last = False

    @override
    def setup(self, stage: str) -> None:
        if isinstance(self.trainer.accelerator, CUDAAccelerator) and not self.channels_last:
            # Set on the CPU before the strategy moves the model; .to(device) keeps the memory format.
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            self.channels_last = True

    @override
    def forward(self, images: Tensor) -> Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits: Tensor = self.model(images)
        return logits

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        targets = batch["label"]
        logits = self(batch["image"])
        losses = F.cross_entropy(logits, targets, reduction="none")
        loss = weighted_mean(losses, batch.get("weight"))
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=targets.numel(), sync_dist=True)
        return {"loss": loss, "losses": losses, "logits": logits, "targets": targets}

    @override
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_accuracy)

    @override
    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_accuracy)

    def _evaluate(self, batch: dict[str, Tensor], prefix: str, accuracy: MulticlassAccuracy) -> None:
        targets = batch["label"]
        logits = self(batch["image"])
        accuracy.update(logits, targets)
        batch_size = targets.numel()
        self.log(f"{prefix}/loss", F.cross_entropy(logits, targets), batch_size=batch_size, sync_dist=True)
        self.log(f"{prefix}/acc", accuracy, batch_size=batch_size)

    # ------------------------------------------------------------------------------------------ optimisation

    @override
    def configure_optimizers(self) -> Any:
        decay = [p for p in self.parameters() if p.requires_grad and p.ndim > 1]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.ndim <= 1]
        optimizer = torch.optim.SGD(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
            momentum=self.momentum,
            nesterov=self.momentum > 0,
        )
        if self.schedule == "constant":
            return optimizer
        scheduler: torch.optim.lr_scheduler.LRScheduler
        try:
            total = planned_optimizer_steps(self.trainer)
        except ValueError as error:  # the policy sizes its epochs from the scores: the step count is unknown
            epochs = max(int(self.trainer.max_epochs or 1), 1)
            rank_zero_info(
                f"{error} The {self.schedule} schedule is replaced by a cosine stepped per epoch over {epochs} epochs."
            )
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
            return OptimizerLRSchedulerConfig(
                optimizer=optimizer, lr_scheduler={"scheduler": scheduler, "interval": "epoch"}
            )
        if self.schedule == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=self.lr, total_steps=max(total, 2), pct_start=self.warmup_share
            )
        else:
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total, 1))
        return OptimizerLRSchedulerConfig(
            optimizer=optimizer, lr_scheduler={"scheduler": scheduler, "interval": "step"}
        )
