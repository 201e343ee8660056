"""`StreamDynamics`: per-example loss statistics for streams, keyed by a stable id column."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from typing_extensions import override

if TYPE_CHECKING:
    import datasets

__all__ = ["StreamDynamics"]

STATE_VERSION = 1


class StreamDynamics(Callback):
    """Per-example loss statistics for streams, keyed by a stable id column instead of a dense index.

    Reads ``losses`` (one unreduced loss per example) from what ``training_step`` returns, and the ids
    from ``outputs[id_column]`` when the step returns them, else from ``batch[id_column]`` (integers; map
    string ids with `stable_id`), as `TrainingDynamics` reads ``index``: a step that trains on part of
    its batch (selection inside the step) returns the kept examples' ids beside their losses. Per step
    it only appends the detached ids and losses to this epoch's buffer; at the epoch end the ranks'
    buffers are gathered (one max-reduce of the buffer length, one all-gather) and merged into tables keyed by id:
    ``visits``, ``epochs_seen``, ``last_epoch``, ``loss`` (its last epoch's mean), ``loss_mean`` (mean of
    its per-epoch losses) and ``loss_ema``. A visit with a non-finite loss is skipped. Memory grows with
    the number of distinct ids seen. Follows the loss signals of `TrainingDynamics` (see its docs).

    Args:
        id_column: the batch key holding the example ids.
        ema_decay: weight of the past in ``loss_ema``, in ``[0, 1)``.
        name: prefix of the logged metrics and part of ``state_key``.

    Raises:
        ValueError: at ``fit`` start, when the stream declares its columns and ``id_column`` is not one
            of them; at the first batch, when neither the step's outputs nor the batch have ``id_column``.
            Both name the column.

    Examples:
        >>> tracker = StreamDynamics(id_column="id")
        >>> tracker.update(torch.tensor([10, 99]), torch.tensor([0.5, 2.0]))
        >>> tracker.merge_epoch(0)
        >>> tracker.signals()["loss"]
        tensor([0.5000, 2.0000])

    Note:
        **DDP**: each rank buffers its own batches; the epoch-end gather makes the tables identical on
        every rank. **Resume**: ``state_dict`` holds the tables as of the last finished epoch (tensors and
        numbers); checkpoint at epoch ends for an exact resume.
    """

    def __init__(self, *, id_column: str, ema_decay: float = 0.8, name: str = "stream_dynamics") -> None:
        if not isinstance(id_column, str) or not id_column:
            raise ValueError(f"id_column must be a non-empty string, got {id_column!r}.")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay!r}.")
        if not name:
            raise ValueError("name must be a non-empty string.")
        self.id_column = id_column
        self.ema_decay = ema_decay
        self.name = name
        self.tables: dict[str, Tensor] = _empty_tables()
        self._ids: list[Tensor] = []
        self._losses: list[Tensor] = []

    # ----------------------------------------------------------------------------------- hooks

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dataset = getattr(trainer.train_dataloader, "dataset", None)
        columns = getattr(dataset, "column_names", None)
        if isinstance(columns, list) and self.id_column not in columns:
            raise ValueError(
                f"StreamDynamics was told to key by the column {self.id_column!r}, but the stream has the columns "
                f"{columns}. Pass id_column= one of them, or add an id column (see stable_id)."
            )
        self._ids, self._losses = [], []

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not outputs:
            return
        if not isinstance(outputs, Mapping) or "losses" not in outputs:
            raise ValueError("StreamDynamics needs training_step to return a dict with per-example 'losses'.")
        if self.id_column in outputs:  # the step trained on part of the batch: these are its examples' ids
            self.update(outputs[self.id_column], outputs["losses"])
            return
        if not isinstance(batch, Mapping) or self.id_column not in batch:
            keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise ValueError(
                f"StreamDynamics was told to key by the column {self.id_column!r}, but the batch has {keys} "
                "(and the step's outputs have no such key)."
            )
        self.update(batch[self.id_column], outputs["losses"])

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ids, losses = self._epoch_buffer(pl_module.device)
        if trainer.world_size > 1:
            ids, losses = _gather(trainer, ids, losses)
        self._ids, self._losses = [ids.cpu()], [losses.cpu()]
        self.merge_epoch(trainer.current_epoch)
        seen = self.tables["last_epoch"] == trainer.current_epoch
        metrics = {
            "ids_seen": float(self.tables["ids"].numel()),
            "epoch_ids": float(seen.sum()),
            "mean_loss": float(self.tables["loss"][seen].mean()) if bool(seen.any()) else math.nan,
        }
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({f"{self.name}/{key}": value for key, value in metrics.items()}, trainer.global_step)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "id_column": self.id_column,
            "tables": {k: v.clone() for k, v in self.tables.items()},
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("version") != STATE_VERSION:
            raise ValueError(
                f"StreamDynamics state has version {state_dict.get('version')!r}; this release reads {STATE_VERSION}."
            )
        if state_dict["id_column"] != self.id_column:
            raise ValueError(
                f"Cannot resume StreamDynamics: the checkpoint keys by {state_dict['id_column']!r}, this run by "
                f"{self.id_column!r}."
            )
        self.tables = {k: v.clone() for k, v in state_dict["tables"].items()}

    # ----------------------------------------------------------------------------------- updates

    def update(self, ids: Any, losses: Tensor) -> None:
        """Buffer one batch's ids and losses (detached, on their device; no host sync)."""
        if not isinstance(ids, Tensor) or ids.is_floating_point() or ids.dtype == torch.bool:
            kind = type(ids).__name__ if not isinstance(ids, Tensor) else f"a tensor of dtype {ids.dtype}"
            raise TypeError(
                f"Column {self.id_column!r} must hold integer ids, got {kind}; map string ids with stable_id."
            )
        if ids.shape != losses.shape or ids.ndim != 1:
            raise ValueError(
                f"ids have shape {tuple(ids.shape)} but losses have shape {tuple(losses.shape)}; "
                "expected one loss per example, (batch_size,) both."
            )
        self._ids.append(ids.detach().long())
        self._losses.append(losses.detach().float())

    def merge_epoch(self, epoch: int) -> None:
        """Fold the buffered visits into the tables as epoch ``epoch`` (called at each epoch end)."""
        ids, losses = self._epoch_buffer(torch.device("cpu"))
        self._ids, self._losses = [], []
        finite = losses.isfinite()
        ids, losses = ids[finite], losses[finite]
        if ids.numel() == 0:
            return
        epoch_ids, inverse = torch.unique(ids, return_inverse=True)
        visits = torch.bincount(inverse, minlength=epoch_ids.numel())
        mean = torch.zeros(epoch_ids.numel()).index_add_(0, inverse, losses) / visits
        tables = _grow(self.tables, epoch_ids)
        rows = torch.searchsorted(tables["ids"], epoch_ids)
        tables["visits"][rows] += visits
        tables["epochs_seen"][rows] += 1
        tables["last_epoch"][rows] = epoch
        tables["loss"][rows] = mean
        tables["loss_sum"][rows] += mean
        past = tables["loss_ema"][rows]
        tables["loss_ema"][rows] = torch.where(past.isnan(), mean, self.ema_decay * past + (1 - self.ema_decay) * mean)
        self.tables = tables

    def _epoch_buffer(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if not self._ids:
            return torch.empty(0, dtype=torch.int64, device=device), torch.empty(0, device=device)
        return torch.cat(self._ids).to(device), torch.cat(self._losses).to(device)

    # ----------------------------------------------------------------------------------- reading

    def signals(self) -> dict[str, Tensor]:
        """The tables as columns, one row per id seen, ids ascending (``id_column`` holds the ids)."""
        t = self.tables
        return {
            self.id_column: t["ids"],
            "visits": t["visits"],
            "epochs_seen": t["epochs_seen"],
            "last_epoch": t["last_epoch"],
            "loss": t["loss"],
            "loss_mean": t["loss_sum"] / t["epochs_seen"].clamp_min(1),
            "loss_ema": t["loss_ema"],
        }

    def to_dataset(self) -> datasets.Dataset:
        """The signals as a ``datasets.Dataset``, keyed by ``id_column``."""
        import datasets

        return datasets.Dataset.from_dict({key: value.numpy() for key, value in self.signals().items()})

    def to_parquet(self, path: str | Path) -> None:
        """Write `to_dataset` as a parquet file."""
        self.to_dataset().to_parquet(str(path))


def _empty_tables() -> dict[str, Tensor]:
    long = {key: torch.empty(0, dtype=torch.int64) for key in ("ids", "visits", "epochs_seen", "last_epoch")}
    return long | {key: torch.empty(0) for key in ("loss", "loss_sum", "loss_ema")}


_FILL = {
    "ids": 0,
    "visits": 0,
    "epochs_seen": 0,
    "last_epoch": -1,
    "loss": math.nan,
    "loss_sum": 0.0,
    "loss_ema": math.nan,
}


def _grow(tables: dict[str, Tensor], new_ids: Tensor) -> dict[str, Tensor]:
    """The tables with rows for ``new_ids`` added (sorted by id), the old rows moved to their new places."""
    ids = torch.unique(torch.cat([tables["ids"], new_ids]))
    if ids.numel() == tables["ids"].numel():
        return {key: value.clone() for key, value in tables.items()}
    old_rows = torch.searchsorted(ids, tables["ids"])
    grown = {key: torch.full((ids.numel(),), _FILL[key], dtype=value.dtype) for key, value in tables.items()}
    for key, value in tables.items():
        grown[key][old_rows] = value
    grown["ids"] = ids
    return grown


def _gather(trainer: pl.Trainer, ids: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
    """Every rank's buffer, on every rank: one max-reduce of the lengths, one all-gather of padded rows."""
    count = torch.tensor([ids.numel()], device=ids.device)
    longest = int(trainer.strategy.reduce(count, reduce_op="max"))
    rows = torch.zeros(3, longest, dtype=torch.int64, device=ids.device)  # id, loss bits (float64), valid
    rows[0, : ids.numel()] = ids
    rows[1, : ids.numel()] = losses.double().view(torch.int64)
    rows[2, : ids.numel()] = 1
    gathered = trainer.strategy.all_gather(rows).reshape(-1, 3, longest).transpose(0, 1).reshape(3, -1)
    valid = gathered[2] == 1
    return gathered[0][valid], gathered[1][valid].view(torch.float64).float()
