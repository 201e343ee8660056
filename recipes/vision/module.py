"""`VisionClassifier`: the LightningModule of the vision recipe, following the `TrainingDynamics` contract."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from lightning_curricula.recipes.vision.holdout import holdout_losses
from lightning_curricula.recipes.vision.models import SmallCNN, resnet18
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lightning_curricula import OnlineBatchSelection, planned_optimizer_steps, weighted_mean
from lightning_curricula.step.reference import ReferenceLosses
from lightning_curricula.step.selection import reducible_loss

__all__ = ["VisionClassifier"]

ModelName = Literal["small_cnn", "resnet18"]
Schedule = Literal["onecycle", "cosine", "constant"]
SelectionScore = Literal["loss", "reducible_loss"]


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
        selection_score: what an `lightning_curricula.OnlineBatchSelection` on the Trainer ranks by:
            ``"loss"`` (Selective Backprop) or ``"reducible_loss"`` (RHO-LOSS: the loss minus the
            irreducible loss). Without such a callback every example of the batch is trained on.
        irreducible_losses: a file saved by `lightning_curricula.ReferenceLosses.save` with one
            irreducible loss per training id; with ``selection_score="reducible_loss"`` and no file,
            `holdout_losses` trains two small models on the halves of the training set when training
            starts (timed as training time, logged as ``selection/holdout_seconds`` and saved in the
            log folder).
        holdout_epochs: epochs of each of those holdout models.
        scoring_scale: size of the images in the scoring forward relative to training, in ``(0, 1]``.
            Below 1 the batch is downsampled (bilinear) before it is scored, so the scoring forward costs
            about ``scoring_scale ** 2`` of a full-size one (Composer's ``SelectiveBackprop``
            ``scale_factor``); the training forward and backward use full-size images. The model must
            accept the smaller size (``small_cnn`` pools adaptively).

    Example:
        >>> module = VisionClassifier(num_classes=10, in_channels=1)
        >>> module(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])

    Note:
        **Selection inside the step**: with an `OnlineBatchSelection` on the Trainer, each step
        scores the batch with a forward in eval mode and without gradients (no batch-norm statistics
        are updated by it), keeps the callback's share, and trains on the kept examples only; the
        ``losses``, ``logits``, ``targets`` and ``index`` returned (and tracked) are those of the kept
        examples. The random twin (``method: random``) pays the same scoring forward, so that it differs
        from Selective Backprop and RHO-LOSS only by its rule. With the callback's ``rescore_every != 1``
        (Stale-SB) only every ``rescore_every``-th epoch scores; the others select by the remembered
        scores, which the kept examples' training losses refresh, and their train loader selects before
        loading, so only the kept examples are fetched and augmented. The inputs are ``channels_last`` on every
        device (faster convolutions on a CPU as well), and on CUDA the model's weights too (tensor cores);
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
        selection_score: SelectionScore = "loss",
        irreducible_losses: str | None = None,
        holdout_epochs: int = 2,
        scoring_scale: float = 1.0,
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
        if selection_score not in ("loss", "reducible_loss"):
            raise ValueError(f"selection_score must be 'loss' or 'reducible_loss', got {selection_score!r}.")
        if holdout_epochs < 1:
            raise ValueError(f"holdout_epochs must be >= 1, got {holdout_epochs!r}.")
        if not 0.0 < scoring_scale <= 1.0:
            raise ValueError(f"scoring_scale must be in (0, 1], got {scoring_scale!r}.")
        if irreducible_losses is not None and not Path(irreducible_losses).is_file():
            raise ValueError(
                f"irreducible_losses={irreducible_losses!r} is not a file (save one with ReferenceLosses.save)."
            )
        self.save_hyperparameters()
        self.model = self._make_model(model, num_classes, in_channels)
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.schedule = schedule
        self.warmup_share = warmup_share
        self.val_accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.channels_last = False
        self.selection_score = selection_score
        self.irreducible_path = irreducible_losses
        self.holdout_epochs = holdout_epochs
        self.scoring_scale = scoring_scale
        self.selection: OnlineBatchSelection | None = None
        self.irreducible: ReferenceLosses | None = None
        self.holdout_seconds = 0.0

    @override
    def setup(self, stage: str) -> None:
        if isinstance(self.trainer.accelerator, CUDAAccelerator) and not self.channels_last:
            # Set on the CPU before the strategy moves the model; .to(device) keeps the memory format.
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            self.channels_last = True
        found = [c for c in self.trainer.callbacks if isinstance(c, OnlineBatchSelection)]  # type: ignore[attr-defined]
        if len(found) > 1:
            raise ValueError(f"The vision recipe takes one OnlineBatchSelection, the Trainer has {len(found)}.")
        self.selection = found[0] if found else None
        if self.selection is not None and self.selection.remembers_scores and self.scoring_scale < 1.0:
            raise ValueError(
                f"scoring_scale={self.scoring_scale} scores downsampled images, but rescore_every="
                f"{self.selection.rescore_every} remembers the full-size training losses between scoring epochs: "
                "the two would be ranked together. Use one or the other."
            )
        if self.selection is None and self.selection_score == "reducible_loss":
            raise ValueError(
                "selection_score='reducible_loss' ranks examples for an OnlineBatchSelection, but the Trainer has "
                "none: add one to trainer.callbacks (see recipes/vision/configs/rho_loss.yaml)."
            )

    @override
    def on_train_start(self) -> None:
        # In on_train_start, after the callbacks' (Lightning calls them first): EpochHistory's clock is
        # running, so the holdout models' time is charged to the run's training time.
        if self.selection_score != "reducible_loss":
            return
        if self.irreducible is None:  # not restored from the checkpoint
            if self.irreducible_path is not None:
                self.irreducible = ReferenceLosses.load(self.irreducible_path)
            else:
                self.irreducible = self._train_holdout_models()
        # Restored ones too: a run resumed on another training set must not score by this one's losses.
        self.irreducible.check_size(len(self.trainer.datamodule.train_set))  # type: ignore[attr-defined]

    def _train_holdout_models(self) -> ReferenceLosses:
        data = self.trainer.datamodule  # type: ignore[attr-defined]
        hparams = self.hparams
        start = time.perf_counter()
        reference = holdout_losses(
            data.train_set,
            lambda: self._make_model(hparams["model"], hparams["num_classes"], hparams["in_channels"]),
            mean=data.mean,
            std=data.std,
            epochs=self.holdout_epochs,
            batch_size=data.batch_size,
            lr=self.lr,
            seed=data.run_seed,
            device=self.device,
        )
        self.holdout_seconds = time.perf_counter() - start
        rank_zero_info(f"Trained the RHO-LOSS holdout models in {self.holdout_seconds:.1f} s.")
        for logger in self.trainer.loggers:
            logger.log_metrics({"selection/holdout_seconds": self.holdout_seconds}, step=0)
        if self.trainer.is_global_zero and self.trainer.log_dir is not None:
            reference.save(Path(self.trainer.log_dir) / "irreducible_losses.pt")
        return reference

    @staticmethod
    def _make_model(model: str, num_classes: int, in_channels: int) -> nn.Module:
        return SmallCNN(num_classes, in_channels) if model == "small_cnn" else resnet18(num_classes, in_channels)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.irreducible is not None:  # a resumed RHO-LOSS run scores with the same losses, not retrained ones
            checkpoint["irreducible_losses"] = self.irreducible.losses.clone()
            checkpoint["holdout_seconds"] = self.holdout_seconds

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "irreducible_losses" in checkpoint:
            self.irreducible = ReferenceLosses(checkpoint["irreducible_losses"])
            self.holdout_seconds = float(checkpoint["holdout_seconds"])

    @override
    def forward(self, images: Tensor) -> Tensor:
        # channels_last inputs on every device: on a CPU they alone make SmallCNN's training step 1.7x and its
        # forward 3x faster than NCHW (benchmarks/scoring_overhead.py); a no-op on already-cropped batches.
        images = images.to(memory_format=torch.channels_last)
        logits: Tensor = self.model(images)
        return logits

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        if self.selection is not None:
            batch = self._selected(batch, self.selection)
        targets = batch["label"]
        logits = self(batch["image"])
        losses = F.cross_entropy(logits, targets, reduction="none")
        if self.selection is not None and self.selection.remembers_scores:  # fresh scores for epochs that do not score
            self.selection.remember(batch["index"], self._score(losses.detach(), batch["index"]))
        loss = weighted_mean(losses, batch.get("weight"))
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=targets.numel(), sync_dist=True)
        outputs = {"loss": loss, "losses": losses, "logits": logits, "targets": targets, "index": batch["index"]}
        return outputs | ({"weight": batch["weight"]} if "weight" in batch else {})

    def _selected(self, batch: dict[str, Tensor], selection: OnlineBatchSelection) -> dict[str, Tensor]:
        """The kept part of ``batch``: selected by remembered scores, or scored by a forward first."""
        kept = selection.select_remembered(batch["index"])
        if kept is None:
            kept = selection.select(self._scoring_forward(batch), index=batch["index"])
        if selection.preselected:  # the loader loaded the kept examples only
            part = dict(batch)
        else:
            part = {key: value[kept.positions] for key, value in batch.items()}
        weights = kept.weights.to(part["label"].device)
        part["weight"] = weights * part["weight"] if "weight" in part else weights
        return part

    def _scoring_forward(self, batch: dict[str, Tensor]) -> Tensor:
        """The batch's scores from a forward in eval mode without gradients (downsampled by ``scoring_scale``)."""
        images = batch["image"]
        if self.scoring_scale < 1.0:
            images = F.interpolate(images, scale_factor=self.scoring_scale, mode="bilinear", antialias=True)
        self.model.eval()
        with torch.no_grad():
            losses = F.cross_entropy(self(images), batch["label"], reduction="none")
        self.model.train()
        return self._score(losses, batch["index"])

    def _score(self, losses: Tensor, index: Tensor) -> Tensor:
        """What the selection ranks by: the loss, or the reducible loss under RHO-LOSS."""
        return losses if self.irreducible is None else reducible_loss(losses, self.irreducible.lookup(index))

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
