"""`EpochHistory`: per-epoch validation metrics against cumulative sample passes, for comparing curricula."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

__all__ = ["EpochHistory"]

_STATE_VERSION = 2


class EpochHistory(Callback):
    """Record, each epoch, the cumulative sample passes, the validation metrics and the elapsed time.

    Curricula and pruning policies train on epochs of different lengths, so accuracy against the
    epoch number compares unequal amounts of work. This callback counts the training passes
    (examples in the training batches, summed over ranks) and logs ``monitor`` with
    ``step = cumulative sample passes`` under ``tag``: in TensorBoard's scalar view the runs then
    line up by compute. Every epoch also appends a record (a dict of numbers) to `records`: the
    epoch, the cumulative ``sample_passes``, the ``seconds`` since training started and the
    ``train_seconds`` among them (validation excluded: what a policy can save), and ``metrics``.
    When the data module flipped labels (its ``noisy_ids``), the record also has ``noisy_share``: the
    share of this epoch's trained examples whose label was flipped (logged as ``train/noisy_share``),
    which shows whether a policy chases or avoids the noise.

    `trained_digest` fingerprints what the run trained on: every step's example ids, weights and
    per-example losses, in order. Two runs with equal digests trained on exactly the same examples with
    the same weights and got the same losses at every step (``lightning-curricula compare`` flags a
    policy that is "same as full" by it).

    Args:
        monitor: the validation metric logged against sample passes.
        tag: the name it is logged under.
        metrics: the metrics copied from ``trainer.callback_metrics`` into each record.
        on_record: called with each new record (``lightning-curricula compare`` advances its
            progress bar with it).

    Example:
        >>> history = EpochHistory()
        >>> history.records
        []

    Note:
        Passes are counted from the length of ``outputs["losses"]`` of each ``training_step`` (and
        the flipped ones among them from ``outputs["index"]``, else ``batch["index"]``) and
        all-reduced (as integers, in one collective) once per epoch, so they include the padding repeats of a DDP
        sampler, exactly like ``TrainingDynamics``' ``sample_passes``. The records and the count are
        in the checkpoint, so a resumed run continues them.
    """

    def __init__(
        self,
        *,
        monitor: str = "val/acc",
        tag: str = "val/acc_by_sample_passes",
        metrics: tuple[str, ...] = ("val/acc", "val/loss", "train/loss"),
        on_record: Callable[[dict[str, float]], None] | None = None,
    ) -> None:
        self.monitor = monitor
        self.tag = tag
        self.metrics = metrics
        self.on_record = on_record
        self.records: list[dict[str, float]] = []
        self.sample_passes = 0
        self._epoch_passes = 0
        self._elapsed = 0.0
        self._started = 0.0
        self._validation_seconds = 0.0
        self._validation_started = 0.0
        self._validated_epoch = -1
        self._noisy: torch.Tensor | None = None  # bool mask by example id, when labels were flipped
        self._epoch_noisy: torch.Tensor | None = None
        #: A hex digest of what the epochs so far trained on (ids, weights, losses), chained epoch by epoch.
        self.trained_digest = ""
        self._epoch_trained: list[torch.Tensor] = []  # this epoch's steps, detached on their device (no sync)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter() - self._elapsed
        data = getattr(trainer, "datamodule", None)
        noisy_ids = getattr(data, "noisy_ids", None)
        train_set = getattr(data, "train_set", None)
        if isinstance(noisy_ids, torch.Tensor) and noisy_ids.numel() and train_set is not None:
            self._noisy = torch.zeros(len(train_set), dtype=torch.bool, device=pl_module.device)
            self._noisy[noisy_ids.to(pl_module.device)] = True

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_passes = 0
        self._epoch_noisy = None
        self._epoch_trained = []

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if isinstance(outputs, Mapping) and isinstance(outputs.get("losses"), torch.Tensor):
            losses = outputs["losses"].detach()
            self._epoch_passes += int(losses.shape[0])
            index = outputs.get("index", batch.get("index") if isinstance(batch, Mapping) else None)
            weight = outputs.get(
                "weight", batch.get("weight") if isinstance(batch, Mapping) and "index" not in outputs else None
            )
            step = [losses.double()]
            if isinstance(index, torch.Tensor):
                step.append(index.detach().double())
            if isinstance(weight, torch.Tensor):
                step.append(weight.detach().double())
            self._epoch_trained.append(torch.cat([part.reshape(-1).to(losses.device) for part in step]))
            if self._noisy is not None:
                noisy = self._noisy[index].sum()  # stays on the device: no sync per step
                self._epoch_noisy = noisy if self._epoch_noisy is None else self._epoch_noisy + noisy

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validation_started = time.perf_counter()

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated_epoch = trainer.current_epoch
            self._validation_seconds += time.perf_counter() - self._validation_started

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        noisy = self._epoch_noisy if self._epoch_noisy is not None else torch.tensor(0, device=pl_module.device)
        counts = torch.stack([torch.tensor(self._epoch_passes, device=pl_module.device), noisy]).long()
        passes, noisy_passes = trainer.strategy.reduce(counts, reduce_op="sum").tolist()
        self.sample_passes += int(passes)
        self._elapsed = time.perf_counter() - self._started
        self._digest_epoch()
        record: dict[str, float] = {
            "epoch": float(trainer.current_epoch),
            "sample_passes": float(self.sample_passes),
            "seconds": self._elapsed,
            "train_seconds": self._elapsed - self._validation_seconds,
        }
        if self._noisy is not None:
            record["noisy_share"] = noisy_passes / passes if passes else math.nan
            if trainer.is_global_zero:
                for logger in trainer.loggers:
                    logger.log_metrics({"train/noisy_share": record["noisy_share"]}, step=trainer.global_step)
        validated = self._validated_epoch == trainer.current_epoch
        for name in self.metrics:
            value = trainer.callback_metrics.get(name)
            if value is not None and (validated or not name.startswith("val/")):
                record[name] = float(value)
        self.records.append(record)
        monitored = record.get(self.monitor)
        if trainer.is_global_zero and monitored is not None and math.isfinite(monitored):
            for logger in trainer.loggers:
                logger.log_metrics({self.tag: monitored}, step=self.sample_passes)
        if self.on_record is not None:
            self.on_record(record)

    def _digest_epoch(self) -> None:
        """Chain this epoch's trained ids, weights and losses (this rank's) into `trained_digest`: one host copy."""
        trained = torch.cat(self._epoch_trained).cpu() if self._epoch_trained else torch.empty(0, dtype=torch.float64)
        self.trained_digest = hashlib.blake2b(
            self.trained_digest.encode() + trained.numpy().tobytes(), digest_size=16
        ).hexdigest()
        self._epoch_trained = []

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "trained_digest": self.trained_digest,
            "sample_passes": self.sample_passes,
            "elapsed": self._elapsed,
            "validation_seconds": self._validation_seconds,
            "records": [dict(record) for record in self.records],
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("version") != _STATE_VERSION:
            raise ValueError(
                f"EpochHistory state has version {state_dict.get('version')!r}, expected {_STATE_VERSION}."
            )
        self.sample_passes = int(state_dict["sample_passes"])
        self._elapsed = float(state_dict["elapsed"])
        self._validation_seconds = float(state_dict["validation_seconds"])
        self.records = [dict(record) for record in state_dict["records"]]
        self.trained_digest = str(state_dict.get("trained_digest", ""))
