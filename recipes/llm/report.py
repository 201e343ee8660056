"""How well learned difficulty agrees with the known one: Spearman rank correlations, logged at fit end.

`DifficultyReport` compares each learned per-example signal (the tracker's ``loss``, ``loss_mean``,
``loss_ema``; the module's ``initial_loss`` and ``ifd`` when it computed them) with a known
difficulty column of the training data (reasoning-gym's ``difficulty``), logs one scalar per pair
(``rank_correlation/<signal>``), and writes every score per example to ``example_scores.parquet`` (also
for data without a known difficulty, which has no correlations), with the group each example belongs to
(the testbed's ``family``) when the data has one, so the scores can be grouped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torchmetrics.functional import spearman_corrcoef
from typing_extensions import override

from lightning_curricula import WithIndex, find_dynamics

__all__ = ["DifficultyReport", "spearman"]

_TRACKED = ("loss", "loss_mean", "loss_ema")


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman's rank correlation of ``x`` and ``y`` over the pairs where both are finite (ties averaged).

    torchmetrics' ``spearman_corrcoef`` in float64, on the finite pairs (within about 1e-6 of the exact
    value: it adds a small epsilon to the denominator); NaN when fewer than two pairs remain or either
    side is constant (where torchmetrics would answer 0).

    Example:
        >>> round(spearman(torch.tensor([1.0, 2.0, 3.0, float("nan")]), torch.tensor([0.1, 0.5, 0.4, 0.0])), 4)
        0.5
    """
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}.")
    both = x.isfinite() & y.isfinite()
    x, y = x[both].double(), y[both].double()
    if x.numel() < 2 or bool((x == x[0]).all()) or bool((y == y[0]).all()):
        return math.nan
    return float(spearman_corrcoef(x, y))


class DifficultyReport(Callback):
    """At fit end, the rank correlation of each learned difficulty signal with a known difficulty.

    Reads the known difficulty from the column ``column`` of the training dataset (the dataset inside
    the train loader's `WithIndex`), the tracked signals from the Trainer's `TrainingDynamics`, and
    the scores the module computed itself from its ``example_scores`` attribute (a mapping of name to
    ``(N,)`` tensor, such as ``ifd``). Logs ``rank_correlation/<signal>`` to every logger, a
    text table to TensorBoard, and writes ``example_scores.parquet`` (ids, the known columns and the
    ``family`` column when the data has one, every signal) to the logger's folder (or ``export_dir``). The
    last correlations are kept in `correlations`. Training data without the ``column`` gets no correlations
    (said once at info level), and its per-example scores are written all the same.

    Args:
        column: the known difficulty column.
        export: write the parquet file.
        export_dir: where to write it; the first logger's ``log_dir`` by default.
        dynamics_name: which tracker, when the Trainer has several.

    Note:
        Under DDP the tables are identical on every rank; rank 0 logs and writes.
    """

    def __init__(
        self,
        column: str = "difficulty",
        *,
        export: bool = True,
        export_dir: str | None = None,
        dynamics_name: str | None = None,
    ) -> None:
        self.column = column
        self.export = export
        self.export_dir = export_dir
        self.dynamics_name = dynamics_name
        self.correlations: dict[str, float] = {}

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dataset = _source_dataset(trainer)
        if dataset is None:
            rank_zero_warn("DifficultyReport: no training dataset to report on.")
            return
        learned = self.learned_scores(trainer, pl_module)
        if self.column in getattr(dataset, "column_names", ()):
            known = torch.tensor(list(dataset[self.column]), dtype=torch.float64)
            self.correlations = {name: spearman(values, known) for name, values in learned.items()}
        else:
            self.correlations = {}
            rank_zero_info(
                f"DifficultyReport: the training data has no {self.column!r} column, so no correlations; the "
                "per-example scores are still written."
            )
        if not trainer.is_global_zero:
            return
        if self.correlations:
            metrics = {f"rank_correlation/{name}": value for name, value in self.correlations.items()}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_text("rank_correlation", self.table(), trainer.global_step)
            rank_zero_info(f"Rank correlation of the learned signals with {self.column!r}:\n{self.table()}")
        folder = self.export_dir or (trainer.loggers[0].log_dir if trainer.loggers else None)
        if self.export and folder is not None:
            self.write(Path(folder) / "example_scores.parquet", dataset, learned)

    def learned_scores(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Tensor]:
        """The learned per-example scores: the tracker's loss signals and the module's ``example_scores``."""
        scores: dict[str, Tensor] = {}
        dynamics = find_dynamics(trainer, self.dynamics_name)
        if dynamics is not None and dynamics.has_tables:
            signals = dynamics.signals()
            scores |= {name: signals[name].double() for name in _TRACKED if name in signals}
        extra: Mapping[str, Tensor] = getattr(pl_module, "example_scores", {}) or {}
        scores |= {name: values.double().cpu() for name, values in extra.items()}
        return scores

    def table(self) -> str:
        """The correlations as a Markdown table."""
        rows = [f"| {name} | {value:.3f} |" for name, value in self.correlations.items()]
        return "\n".join([f"| signal | Spearman vs {self.column} |", "|---|---|", *rows])

    def write(self, path: Path, dataset: Any, learned: Mapping[str, Tensor]) -> None:
        """Write ids, the known difficulty columns, the ``family`` (if any) and the learned scores as parquet."""
        import datasets

        known: Sequence[str] = [
            c for c in dataset.column_names if c.startswith("difficulty") or c in ("source_index", "family")
        ]
        columns: dict[str, Any] = {"index": list(range(len(dataset)))}
        columns |= {c: list(dataset[c]) for c in known}
        columns |= {name: values.tolist() for name, values in learned.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_dict(columns).to_parquet(str(path))
        rank_zero_info(f"Wrote the per-example scores to {path}.")


def _source_dataset(trainer: pl.Trainer) -> Any:
    rows = getattr(getattr(trainer, "datamodule", None), "train_dataset", None)  # also when read as a stream
    if rows is not None:
        return rows
    loader = trainer.train_dataloader
    dataset = getattr(loader, "dataset", None)
    return dataset.dataset if isinstance(dataset, WithIndex) else dataset
