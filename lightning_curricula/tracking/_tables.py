"""The tracker's tables as functions of tensors: the per-epoch accumulator, the epoch-end update, the signal columns.

`TrainingDynamics` calls them in this order:

1. `new_accumulator` once, then `accumulate` per batch (a few vectorised ops and one ``index_add_``);
2. at the epoch end, one sum all-reduce of the whole buffer, then `epoch_totals` to decode it;
3. `update_tables` with those totals, and `signal_columns` for the snapshot that `signals()` returns.

Sharded tables (``TrainingDynamics(sharded=True)``) keep only the scalar slots in the accumulator: each
batch's `visit_rows` are recorded and `accumulate_scalars` adds the rest; at the epoch end `shard_sums`
builds this rank's part of the summed buffer, and steps 2 and 3 run on the rank's slice of the ids.

Memory per example (the budget is 64 bytes with every classification signal, 24 loss-only):

- float32 tables, 4 bytes each: ``loss``, ``loss_ema``, ``loss_sum``, and for classification ``margin``,
  ``margin_sum``, ``el2n``, ``confidence_sum``, ``confidence_sq_sum``;
- count tables in the narrowest integer dtype that holds them, chosen from the run's ``max_epochs``
  (one byte up to 255 epochs) and widened at an epoch end if a count outgrows it: ``visits``,
  ``nonfinite``, ``epochs_seen``, ``last_seen`` (the last epoch seen plus one, 0 if never), and for
  classification ``correct_epochs``, ``forgetting_events``; ``last_correct`` is an int8;
- the accumulator, float32 rows: the packed visit counts ``finite + 4096 * nonfinite``, the loss
  sum, and for classification the count of correct visits and the sums of confidence, margin, EL2N.

Derived at export: ``last_epoch``, ``loss_mean``, ``aum``, ``confidence``, ``variability``,
``correctness``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lightning_curricula.tracking import signals as S
from lightning_curricula.tracking._step_outputs import StepOutputs

if TYPE_CHECKING:
    from lightning_curricula.distributed._sharding import TableShard

__all__ = [
    "EpochTotals",
    "Layout",
    "accumulate",
    "accumulate_scalars",
    "count_dtype",
    "epoch_totals",
    "finite_visits",
    "new_accumulator",
    "new_tables",
    "shard_sums",
    "signal_columns",
    "update_tables",
    "visit_rows",
    "widen_counts",
]

# Rows of the per-example part of the accumulator: sums over this epoch's visits. _PASSES packs two counts
# into one float32, exact below 2**24: finite visits in the low 12 bits, non-finite ones above.
_PASSES, _LOSS, _CORRECT, _CONFIDENCE, _MARGIN, _EL2N = range(6)
_LOSS_ROWS, _CLASSIFICATION_ROWS = 2, 6
_FINITE_BITS = 12
_MAX_EXACT = 2**24
# Scalars after the rows: the sum of the batch weights, the count of non-finite visits (a checksum of the
# packed counts), then one slot per rank for its largest weight (a sum all-reduce of one-hot slots).
_WEIGHT_SUM, _NONFINITE_TOTAL, _WEIGHT_MAX = 0, 1, 2

_COUNT_TABLES = ("visits", "nonfinite", "epochs_seen", "last_seen")
_CLASSIFICATION_COUNTS = ("correct_epochs", "forgetting_events")
_COUNT_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)


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
    rows = visit_rows(step, finite, classification=layout.classification)
    layout.per_example(buffer).index_add_(1, step.index.to(buffer.device), rows.to(buffer.device))
    accumulate_scalars(layout.scalars(buffer), step, finite, rank=rank)


def visit_rows(step: StepOutputs, finite: Tensor, *, classification: bool) -> Tensor:
    """``(rows, B)`` float32: what each visit adds to the per-example rows of the accumulator."""
    valid = finite.float()
    rows = [valid + (1.0 - valid) * 2**_FINITE_BITS, torch.where(finite, step.losses.float(), 0.0)]
    if classification:
        assert step.logits is not None
        assert step.targets is not None
        logits = torch.where(finite.unsqueeze(1), step.logits.float(), 0.0)
        targets = step.targets
        rows += [
            S.correct_predictions(logits, targets) * valid,
            S.true_class_probabilities(logits, targets) * valid,
            S.margins(logits, targets) * valid,
            S.el2n_scores(logits, targets) * valid,
        ]
    return torch.stack(rows)


def accumulate_scalars(scalars: Tensor, step: StepOutputs, finite: Tensor, *, rank: int = 0) -> None:
    """Add one batch to the scalar slots (`Layout.scalars`): the non-finite visits and the weights."""
    device = scalars.device
    scalars[_NONFINITE_TOTAL] += (~finite).sum().to(device)
    if step.weights is None:
        scalars[_WEIGHT_SUM] += step.index.numel()
        largest = torch.ones((), device=device) if step.index.numel() else torch.zeros((), device=device)
    else:
        weights = step.weights.to(device=device, dtype=torch.float32)
        scalars[_WEIGHT_SUM] += weights.sum()
        largest = weights.max() if weights.numel() else torch.zeros((), device=device)
    slot = scalars.narrow(0, _WEIGHT_MAX + rank, 1)
    slot.copy_(torch.maximum(slot, largest))


def shard_sums(ids: Tensor, rows: Tensor, scalars: Tensor, layout: Layout, shard: TableShard) -> tuple[Tensor, Layout]:
    """The epoch's summed accumulator for this rank's shard of the ids, and its layout, for `epoch_totals`.

    Sharded tables keep no dense accumulator: each rank records its visits, ``ids`` and their
    `visit_rows` ``(rows, m)``, and its ``scalars`` (a buffer of ``layout``, which has no per-example
    rows). The result equals rows ``start:stop`` of the all-reduced dense accumulator, with the summed
    scalars, except that the non-finite total, the checksum of the packed counts, counts the shard's
    visits. One all-to-all of the records and one all-reduce of ``2 + 2W`` numbers.
    """
    world, rank = shard.comm.world_size, shard.comm.rank
    nonfinite = (rows[_PASSES] >= 2**_FINITE_BITS).double()  # one visit's packed count is 1 or 2**12
    per_owner = torch.bincount(shard.owners(ids), weights=nonfinite, minlength=world).to(scalars.device)
    totals = shard.total(torch.cat([scalars.double(), per_owner])).to(torch.float32)
    summed = totals[: scalars.numel()].clone()
    summed[_NONFINITE_TOTAL] = totals[scalars.numel() + rank]
    table = shard.reduce_records(ids, rows.T)  # (shard size, rows)
    return torch.cat([table.T.reshape(-1), summed]), Layout(table.shape[0], layout.classification, world)


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
    """Decode an all-reduced accumulator.

    Raises:
        RuntimeError: an example had 4,096 or more visits in the epoch, more than the packed counts hold.
    """
    rows = layout.per_example(sums)
    scalars = layout.scalars(sums)
    packed = rows[_PASSES].to(torch.int32)
    visits = packed & (2**_FINITE_BITS - 1)
    nonfinite = packed >> _FINITE_BITS
    # One host sync for the checks and the scalars. Too many finite visits carry into the non-finite field,
    # which the exact total of non-finite visits exposes; too many of either exceed float32's exact range.
    largest, decoded, total, weight_sum, weight_max = torch.stack(
        [
            rows[_PASSES].max(),
            nonfinite.sum().float(),
            scalars[_NONFINITE_TOTAL],
            scalars[_WEIGHT_SUM],
            scalars[_WEIGHT_MAX:].max(),
        ]
    ).tolist()
    if largest >= _MAX_EXACT or decoded != total:
        raise RuntimeError(
            f"An example was visited {2**_FINITE_BITS} or more times in one epoch (all ranks together); "
            f"TrainingDynamics counts at most {2**_FINITE_BITS - 1} visits per example per epoch."
        )
    finite = visits.clamp_min(1)
    classification = layout.classification
    return EpochTotals(
        visits=visits,
        nonfinite=nonfinite,
        loss=rows[_LOSS] / finite,
        confidence=rows[_CONFIDENCE] / finite if classification else None,
        correct=2 * rows[_CORRECT] > visits if classification else None,  # a strict majority of the visits
        margin=rows[_MARGIN] / finite if classification else None,
        el2n=rows[_EL2N] / finite if classification else None,
        weight_sum=weight_sum,
        weight_max=weight_max,
    )


def count_dtype(limit: int) -> torch.dtype:
    """The narrowest integer dtype of the count tables that holds ``limit``.

    Examples:
        >>> count_dtype(200), count_dtype(1000)
        (torch.uint8, torch.int16)
    """
    return next(dtype for dtype in _COUNT_DTYPES if limit <= torch.iinfo(dtype).max)


def new_tables(
    num_examples: int,
    *,
    classification: bool,
    counts: torch.dtype = torch.uint8,
    device: torch.device | None = None,
) -> dict[str, Tensor]:
    """Fresh tables: zero counts, NaN latest values, zero sums; counts in the dtype ``counts``."""
    tables = {key: torch.zeros(num_examples, dtype=counts, device=device) for key in _COUNT_TABLES}
    tables |= {key: torch.full((num_examples,), math.nan, device=device) for key in ("loss", "loss_ema")}
    tables["loss_sum"] = torch.zeros(num_examples, device=device)
    if classification:
        tables |= new_classification_tables(num_examples, counts=counts, device=device)
    return tables


def new_classification_tables(
    size: int, *, counts: torch.dtype = torch.uint8, device: torch.device | None = None
) -> dict[str, Tensor]:
    """The tables only classification signals need."""
    tables = {key: torch.full((size,), math.nan, device=device) for key in ("margin", "el2n")}
    tables |= {key: torch.zeros(size, device=device) for key in ("margin_sum", "confidence_sum", "confidence_sq_sum")}
    tables |= {key: torch.zeros(size, dtype=counts, device=device) for key in _CLASSIFICATION_COUNTS}
    tables["last_correct"] = torch.full((size,), -1, dtype=torch.int8, device=device)
    return tables


def widen_counts(tables: dict[str, Tensor], dtype: torch.dtype) -> None:
    """Cast the count tables narrower than ``dtype`` to it, in place of the dict (values unchanged)."""
    for key in (*_COUNT_TABLES, *_CLASSIFICATION_COUNTS):
        if key in tables and _rank(tables[key].dtype) < _rank(dtype):
            tables[key] = tables[key].to(dtype)


def update_tables(tables: dict[str, Tensor], totals: EpochTotals, epoch: int, *, ema_decay: float) -> Tensor | None:
    """Fold one epoch into ``tables`` in place; returns the examples forgotten this epoch (classification)."""
    seen = totals.seen
    loss = totals.loss
    counts = {
        "visits": tables["visits"].int() + totals.visits,
        "nonfinite": tables["nonfinite"].int() + totals.nonfinite,
        "epochs_seen": tables["epochs_seen"].int() + seen.int(),
        "last_seen": torch.where(seen, epoch + 1, tables["last_seen"].int()),
    }
    tables["loss"] = torch.where(seen, loss, tables["loss"])
    tables["loss_sum"] += torch.where(seen, loss, 0.0)
    tables["loss_ema"] = S.ema_update(tables["loss_ema"], loss, decay=ema_decay, observed=seen)
    forgotten = None
    if totals.correct is not None:
        assert totals.confidence is not None
        assert totals.margin is not None
        assert totals.el2n is not None
        correct = totals.correct
        forgotten = S.forgetting_events(tables["last_correct"], correct, seen)
        counts["forgetting_events"] = tables["forgetting_events"].int() + forgotten.int()
        counts["correct_epochs"] = tables["correct_epochs"].int() + (seen & correct).int()
        tables["last_correct"] = torch.where(seen, correct.to(torch.int8), tables["last_correct"])
        tables["confidence_sum"] += torch.where(seen, totals.confidence, 0.0)
        tables["confidence_sq_sum"] += torch.where(seen, totals.confidence.square(), 0.0)
        tables["margin"] = torch.where(seen, totals.margin, tables["margin"])
        tables["margin_sum"] += torch.where(seen, totals.margin, 0.0)
        tables["el2n"] = torch.where(seen, totals.el2n, tables["el2n"])
    _store_counts(tables, counts)
    return forgotten


def _store_counts(tables: dict[str, Tensor], counts: dict[str, Tensor]) -> None:
    """Store the new counts in their table's dtype, widened (for all counts alike) when one outgrows it."""
    largest = int(torch.stack([values.max() for values in counts.values()]).max())  # one host sync
    dtype = max((tables[key].dtype for key in counts), key=_rank)
    if largest > torch.iinfo(dtype).max:
        dtype = count_dtype(largest)
        widen_counts(tables, dtype)
    for key, values in counts.items():
        tables[key] = values.to(tables[key].dtype)


def _rank(dtype: torch.dtype) -> int:
    return _COUNT_DTYPES.index(dtype)


def signal_columns(tables: dict[str, Tensor], *, start: int = 0) -> dict[str, Tensor]:
    """The signal columns of `TrainingDynamics.signals`, derived from the tables and copied to the CPU once.

    ``start`` is the id of the tables' first row (a shard's first id).
    """
    # Counts leave as int32 whatever their stored dtype; the rest is copied so it never aliases the tables.
    t = {key: value.to("cpu", copy=True) for key, value in tables.items()}
    t |= {key: t[key].int() for key in (*_COUNT_TABLES, *_CLASSIFICATION_COUNTS) if key in t}
    epochs = t["epochs_seen"].float()
    columns = {
        "index": torch.arange(start, start + t["visits"].numel()),
        "visits": t["visits"],
        "epochs_seen": t["epochs_seen"],
        "last_epoch": t["last_seen"] - 1,
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
