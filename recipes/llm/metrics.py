"""`FamilyMeans`: the testbed's headline metrics, the mean over its families of each per-family metric.

The module logs one held-out split per testbed family (``val/<family>/accuracy``, ``val/<family>/loss``,
``val/<family>/score``, the same under ``test/``); this callback adds their unweighted mean over the
families, ``val/families/<metric>`` and ``test/families/<metric>``: every family counts the same,
whatever its number of held-out examples. Runs on the testbed are judged by
``val/families/accuracy`` (`InstructionDataModule.monitored_metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

__all__ = ["FAMILIES_SPLIT", "FamilyMeans", "family_means"]

#: The split name of the means: ``val/families/accuracy``.
FAMILIES_SPLIT = "families"
_METRICS = ("accuracy", "loss", "score")


def family_means(
    metrics: dict[str, float], stage: str, families: Sequence[str], names: Sequence[str] = _METRICS
) -> dict[str, float]:
    """``{stage}/families/{name}``: the mean of ``{stage}/{family}/{name}`` over ``families``, for each name all have.

    A metric that some family lacks (accuracy when nothing was generated) is left out.

    Example:
        >>> family_means({"val/a/loss": 1.0, "val/b/loss": 2.0, "val/a/accuracy": 0.5}, "val", ["a", "b"])
        {'val/families/loss': 1.5}
    """
    means: dict[str, float] = {}
    for name in names:
        values = [metrics.get(f"{stage}/{family}/{name}") for family in families]
        if families and all(value is not None for value in values):
            means[f"{stage}/{FAMILIES_SPLIT}/{name}"] = sum(float(v) for v in values if v is not None) / len(values)
    return means


class FamilyMeans(Callback):
    """Log ``val/families/<metric>`` and ``test/families/<metric>``: per-family metrics averaged over families.

    At the end of every validation and test epoch it reads the epoch's per-family values from
    ``trainer.callback_metrics`` and logs their mean through the module's ``log``. The families are the
    data module's ``families`` (the testbed's; data without them logs nothing here).

    Note:
        **DDP**: the per-family values are already reduced over the ranks (the module logs them with
        ``sync_dist=True``), so the means are the same on every rank and are logged without another
        collective. **Resume**: stateless.
    """

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_means(trainer, pl_module, "val")

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_means(trainer, pl_module, "test")

    def _log_means(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        families: Sequence[str] = getattr(getattr(trainer, "datamodule", None), "families", ()) or ()
        if not families:
            return
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1}
        for name, value in family_means(metrics, stage, families).items():
            # Identical on every rank already: no sync (one collective per call).
            pl_module.log(name, torch.tensor(value), add_dataloader_idx=False, sync_dist=False)
