"""The tracker's tables as functions of tensors: the per-epoch accumulator, the epoch-end update, the signal columns.

`TrainingDynamics` calls them in this order, and a sharded variant can call them on its slice of ids:

1. `new_accumulator` once, then `accumulate` per batch (a few vectorised ops and one ``index_add_``);
2. at the epoch end, one sum all-reduce of the whole buffer, then `epoch_totals` to decode it;
3. `update_tables` with those totals, and `signal_columns` for the snapshot that `signals()` returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_curricula import signals as S
from lightning_curricula._step_outputs import StepOutputs

__all__ = [
    "EpochTotals",
    "Layout",
    "accumulate",
    "epoch_totals",
    "finite_visits",
    "new_accumulator",
    "new_tables",
    "signal_columns",
    "update_tables",
]

# Rows of the per-example part of the accumulator: sums over this epoch's visits.
_VISITS, _NONFINITE, _LOSS, _CONFIDENCE, _CORRECT, _MARGIN, _EL2N = range(7)
_LOSS_ROWS, _CLASSIFICATION_ROWS = 3, 7
# Scalars after the rows: the sum of the batch weights, then one slot per rank for its largest weight
# (a sum all-reduce of one-hot slots gathers every rank's maximum).
_WEIGHT_SUM, _WEIGHT_MAX = 0, 1

_COUNT_TABLES = ("visits", "epochs_seen", "nonfinite")
_LATEST_LOSS_TABLES = ("loss", "loss_ema")
_CLASSIFICATION_LATEST = ("margin", "el2n")
_CLASSIFICATION_SUMS = ("margin_sum", "confidence_sum", "confidence_sq_sum")
_CLASSIFICATION_COUNTS = ("correct_epochs", "forgetting_events")


@dataclass(frozen=True)
class Layout:
    """Where everything lives in the flat accumulator: ``rows`` per-example rows of ``num_examples``, then scalars."""

    num_examples: int
    classification: bool
    world_size: int = 1

    @property
    def rows(self) -> int:
        """Per-example rows."""
        return _CLASSIFICATION_ROWS if self.classification else _LOSS_ROWS

    @property
    def size(self) -> int:
        """Elements of the flat buffer."""
        return self.rows * self.num_examples + _WEIGHT_MAX + self.world_size

    def per_example(self, buffer: Tensor) -> Tensor:
        """The ``(rows, num_examples)`` view of ``buffer``."""
        return buffer[: self.rows * self.num_examples].view(self.rows, self.num_examples)

    def scalars(self, buffer: Tensor) -> Tensor:
        """The scalar slots of ``buffer``."""
        return buffer[self.rows * self.num_examples :]


def new_accumulator(layout: Layout, device: torch.device) -> Tensor:
    """A zeroed flat float32 buffer of ``layout.size`` elements."""
    return torch.zeros(layout.size, device=device)


def finite_visits(step: StepOutputs) -> Tensor:
    """``(B,)`` bool: the visits whose loss (and logits) are finite."""
    finite = step.losses.isfinite()
    if step.logits is not None:
        finite &= step.logits.isfinite().all(dim=1)
    return finite


def accumulate(buffer: Tensor, layout: Layout, step: StepOutputs, finite: Tensor, *, rank: int = 0) -> None:
    """Add one batch to ``buffer``: per-example sums with one ``index_add_``, and the weight scalars."""
    device = buffer.device
    valid = finite.float()
    losses = step.losses.float()
    rows = [valid, 1.0 - valid, torch.where(finite, losses, 0.0)]
    if layout.classification:
        assert step.logits is not None
        assert step.targets is not None
        logits = torch.where(finite.unsqueeze(1), step.logits.float(), 0.0)
        targets = step.targets
        rows += [
            S.true_class_probabilities(logits, targets) * valid,
            S.correct_predictions(logits, targets) * valid,
            S.margins(logits, targets) * valid,
            S.el2n_scores(logits, targets) * valid,
        ]
    layout.per_example(buffer).index_add_(1, step.index.to(device), torch.stack(rows).to(device))
    scalars = layout.scalars(buffer)
    if step.weights is None:
        scalars[_WEIGHT_SUM] += step.index.numel()
        largest = torch.ones((), device=device) if step.index.numel() else torch.zeros((), device=device)
    else:
        weights = step.weights.to(device=device, dtype=torch.float64)
        scalars[_WEIGHT_SUM] += weights.sum().float()
        largest = weights.max().float() if weights.numel() else torch.zeros((), device=device)
    slot = scalars.narrow(0, _WEIGHT_MAX + rank, 1)
    slot.copy_(torch.maximum(slot, largest))


@dataclass(frozen=True)
class EpochTotals:
    """One epoch's visits, summed over all ranks: per-example counts and means, and what was trained.

    ``visits`` counts the finite visits of each example, ``nonfinite`` the others; the float fields are
    means over the finite visits (0 where there were none); ``correct`` is a strict majority of them.
    """

    visits: Tensor
    nonfinite: Tensor
    loss: Tensor
    confidence: Tensor | None
    correct: Tensor | None
    margin: Tensor | None
    el2n: Tensor | None
    weight_sum: float
    weight_max: float

    @property
    def seen(self) -> Tensor:
        """Examples with at least one finite visit."""
        return self.visits > 0


def epoch_totals(sums: Tensor, layout: Layout) -> EpochTotals:
    """Decode an all-reduced accumulator."""
    rows = layout.per_example(sums)
    visits = rows[_VISITS].round().int()
    per_visit = rows / visits.clamp_min(1)
    scalars = layout.scalars(sums)
    classification = layout.classification
    return EpochTotals(
        visits=visits,
        nonfinite=rows[_NONFINITE].round().int(),
        loss=per_visit[_LOSS],
        confidence=per_visit[_CONFIDENCE] if classification else None,
        correct=per_visit[_CORRECT] > 0.5 if classification else None,
        margin=per_visit[_MARGIN] if classification else None,
        el2n=per_visit[_EL2N] if classification else None,
        weight_sum=float(scalars[_WEIGHT_SUM]),
        weight_max=float(scalars[_WEIGHT_MAX:].max()),
    )


def new_tables(num_examples: int, *, classification: bool, device: torch.device | None = None) -> dict[str, Tensor]:
    """Fresh tables: zero counts, ``-1`` last epochs, NaN latest values."""
    size = num_examples
    tables = {key: torch.zeros(size, dtype=torch.int32, device=device) for key in _COUNT_TABLES}
    tables["last_epoch"] = torch.full((size,), -1, dtype=torch.int32, device=device)
    tables |= {key: torch.full((size,), math.nan, device=device) for key in _LATEST_LOSS_TABLES}
    tables["loss_sum"] = torch.zeros(size, device=device)
    if classification:
        tables |= new_classification_tables(size, device=device)
    return tables


def new_classification_tables(size: int, *, device: torch.device | None = None) -> dict[str, Tensor]:
    """The tables only classification signals need."""
    tables = {key: torch.full((size,), math.nan, device=device) for key in _CLASSIFICATION_LATEST}
    tables |= {key: torch.zeros(size, device=device) for key in _CLASSIFICATION_SUMS}
    tables |= {key: torch.zeros(size, dtype=torch.int32, device=device) for key in _CLASSIFICATION_COUNTS}
    tables["last_correct"] = torch.full((size,), -1, dtype=torch.int8, device=device)
    return tables


def update_tables(tables: dict[str, Tensor], totals: EpochTotals, epoch: int, *, ema_decay: float) -> Tensor | None:
    """Fold one epoch into ``tables`` in place; returns the examples forgotten this epoch (classification)."""
    seen = totals.seen
    loss = totals.loss
    tables["visits"] += totals.visits
    tables["nonfinite"] += totals.nonfinite
    tables["epochs_seen"] += seen.int()
    tables["last_epoch"] = torch.where(seen, epoch, tables["last_epoch"])
    tables["loss"] = torch.where(seen, loss, tables["loss"])
    tables["loss_sum"] += torch.where(seen, loss, 0.0)
    tables["loss_ema"] = S.ema_update(tables["loss_ema"], loss, decay=ema_decay, observed=seen)
    if totals.correct is None:
        return None
    assert totals.confidence is not None
    assert totals.margin is not None
    assert totals.el2n is not None
    correct = totals.correct
    forgotten = S.forgetting_events(tables["last_correct"], correct, seen)
    tables["forgetting_events"] += forgotten.int()
    tables["last_correct"] = torch.where(seen, correct.to(torch.int8), tables["last_correct"])
    tables["correct_epochs"] += (seen & correct).int()
    tables["confidence_sum"] += torch.where(seen, totals.confidence, 0.0)
    tables["confidence_sq_sum"] += torch.where(seen, totals.confidence.square(), 0.0)
    tables["margin"] = torch.where(seen, totals.margin, tables["margin"])
    tables["margin_sum"] += torch.where(seen, totals.margin, 0.0)
    tables["el2n"] = torch.where(seen, totals.el2n, tables["el2n"])
    return forgotten


def signal_columns(tables: dict[str, Tensor]) -> dict[str, Tensor]:
    """The signal columns of `TrainingDynamics.signals`, derived from the tables and copied to the CPU once."""
    t = {key: value.to("cpu", copy=True) for key, value in tables.items()}  # never aliases the live tables
    epochs = t["epochs_seen"].float()
    columns = {
        "index": torch.arange(t["visits"].numel()),
        "visits": t["visits"],
        "epochs_seen": t["epochs_seen"],
        "last_epoch": t["last_epoch"],
        "loss": t["loss"],
        "loss_mean": t["loss_sum"] / epochs,
        "loss_ema": t["loss_ema"],
        "nonfinite": t["nonfinite"],
    }
    if "margin" in t:
        columns |= {
            "el2n": t["el2n"],
            "margin": t["margin"],
            "aum": t["margin_sum"] / epochs,
            "confidence": t["confidence_sum"] / epochs,
            "variability": S.variability(t["confidence_sum"], t["confidence_sq_sum"], t["epochs_seen"]),
            "correctness": t["correct_epochs"].float() / epochs,
            "forgetting_events": t["forgetting_events"],
        }
    return columns
