"""Shared test utilities: tiny deterministic data, tiny modules, a CPU Trainer and a reference implementation.

Everything here is small and deterministic so that tests can compare runs exactly:

- `ClassificationDataset`: dict items ``{"x": tensor, "y": int}``, odd default size (37) so that
  ``DistributedSampler`` pads under DDP with two ranks;
- `Classifier` / `LossOnlyClassifier`: a linear model whose ``training_step`` follows the
  `TrainingDynamics` contract (per-example ``losses``, optionally ``logits`` and ``targets``), and can
  record every visit (`Classifier.visits`) for a manual recomputation of the tables;
- `train_loader`: a ``DataLoader`` over ``WithIndex(dataset)`` with a ``DistributedSampler`` for one
  replica, so that the data order depends only on ``(seed, epoch)`` and survives a resume (Lightning calls
  ``set_epoch`` on it every epoch);
- `make_trainer`: a quiet CPU ``Trainer`` (no progress bar, no model summary, no sanity check);
- `Visit`, `reference_signals`, `assert_signals_match`: a straightforward per-example Python
  implementation of the `TrainingDynamics` columns, to compare the vectorised tables against;
- `ShardUnionSampler`, `ShardBatchSampler`: what the ranks of a DDP run visit, and the batches they train on,
  replayed in one process.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_curricula import WithIndex

NUM_FEATURES = 8
NUM_CLASSES = 3

# Columns that count things (compared exactly) and columns with float values (compared with a tolerance).
COUNT_COLUMNS = ("index", "visits", "epochs_seen", "last_epoch", "nonfinite", "forgetting_events")
CLASSIFICATION_COLUMNS = (
    "el2n",
    "margin",
    "aum",
    "confidence",
    "variability",
    "correctness",
    "forgetting_events",
)


# ------------------------------------------------------------------------------------------------ data


class ClassificationDataset(Dataset[dict[str, Any]]):
    """A tiny deterministic classification set: ``{"x": float32 tensor of `shape`, "y": int}``.

    Labels follow a fixed random linear rule with a few flipped, so a model learns most examples in a
    couple of epochs and some stay hard (their correctness changes across epochs).

    Args:
        size: number of examples; odd by default so DDP with two ranks pads with a repeat.
        shape: shape of each ``x``; the models flatten it, so ``(1, 4, 4)`` gives image-like items of
            ``NUM_FEATURES * 2`` features (use ``num_features=16`` for the model then).
        num_classes: number of classes.
        seed: seed of a private ``torch.Generator``.
    """

    def __init__(
        self,
        size: int = 37,
        *,
        shape: tuple[int, ...] = (NUM_FEATURES,),
        num_classes: int = NUM_CLASSES,
        seed: int = 0,
    ) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(size, *shape, generator=generator)
        rule = torch.randn(math.prod(shape), num_classes, generator=generator)
        y = (self.x.flatten(1) @ rule).argmax(dim=1)
        flip = torch.rand(size, generator=generator) < 0.15
        self.y = torch.where(flip, (y + 1) % num_classes, y)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"x": self.x[index], "y": int(self.y[index])}


def train_loader(dataset: Dataset[Any], *, batch_size: int = 8, seed: int = 0, num_workers: int = 0) -> DataLoader[Any]:
    """A loader over ``WithIndex(dataset)`` whose order depends only on ``(seed, epoch)``.

    A one-replica ``DistributedSampler`` shuffles with ``seed + epoch`` and Lightning calls its
    ``set_epoch``, so an interrupted and resumed run sees the same batches as an uninterrupted one.
    """
    indexed = WithIndex(dataset)
    sampler = DistributedSampler(indexed, num_replicas=1, rank=0, shuffle=True, seed=seed)
    return DataLoader(indexed, batch_size=batch_size, sampler=sampler, num_workers=num_workers)


# ------------------------------------------------------------------------------------------------ models


@dataclass(frozen=True)
class Visit:
    """One training pass over one example: what the reference implementation needs."""

    epoch: int
    index: int
    loss: float
    logits: tuple[float, ...] | None = None
    target: int | None = None


class Classifier(pl.LightningModule):
    """A linear classifier that returns the `TrainingDynamics` contract from ``training_step``.

    Args:
        num_features: input features (``x`` is flattened).
        num_classes: output classes.
        lr: SGD learning rate; ``0`` freezes the model, so per-example values do not depend on training.
        momentum: SGD momentum (gives the optimizer a state to restore on resume).
        record: keep every visit in `visits` (per-example loss, logits and target as computed in the step).
        seed: seed of the initial weights (a private generator; the global RNG is not touched).
    """

    def __init__(
        self,
        num_features: int = NUM_FEATURES,
        num_classes: int = NUM_CLASSES,
        *,
        lr: float = 0.5,
        momentum: float = 0.9,
        record: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.layer = nn.Linear(num_features, num_classes)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.layer.weight.copy_(torch.randn(self.layer.weight.shape, generator=generator) * 0.5)
            self.layer.bias.zero_()
        self.lr = lr
        self.momentum = momentum
        self.record = record
        self.visits: list[Visit] = []
        self.steps = 0

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x.flatten(1))

    def per_example(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Per-example ``(losses, logits, targets)`` of a batch."""
        logits = self(batch["x"])
        targets = batch["y"]
        return F.cross_entropy(logits, targets, reduction="none"), logits, targets

    def remember(
        self,
        batch: Mapping[str, Tensor],
        losses: Tensor,
        logits: Tensor | None = None,
        targets: Tensor | None = None,
    ) -> None:
        """Append this batch's visits to `visits` when ``record`` is on."""
        if not self.record:
            return
        for position, (index, loss) in enumerate(zip(batch["index"].tolist(), losses.tolist(), strict=True)):
            row = None if logits is None else tuple(logits[position].tolist())
            target = None if targets is None else int(targets[position])
            self.visits.append(Visit(self.current_epoch, index, loss, row, target))

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        self.steps += 1
        losses, logits, targets = self.per_example(batch)
        self.remember(batch, losses, logits, targets)
        return {"loss": losses.mean(), "losses": losses, "logits": logits, "targets": targets}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)


class LossOnlyClassifier(Classifier):
    """`Classifier` that returns only ``loss`` and ``losses``: no classification signals."""

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        self.steps += 1
        losses, _, _ = self.per_example(batch)
        self.remember(batch, losses)
        return {"loss": losses.mean(), "losses": losses}


class RankStateDump(pl.Callback):
    """Counts each epoch's training batches; subclasses write a rank's final state to ``directory``.

    Under ``ddp_spawn`` the parent's objects are not updated after ``fit``, so each rank saves what
    it ended with to ``rank<N>.pt`` and the test compares the ranks.
    """

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.batches: list[int] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.batches.append(0)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.batches[-1] += 1

    def save(self, trainer: pl.Trainer, state: dict[str, Any]) -> None:
        torch.save(state, self.directory / f"rank{trainer.global_rank}.pt")


def make_trainer(
    tmp_path: Path | str | None = None,
    *,
    max_epochs: int = 3,
    callbacks: Sequence[pl.Callback] = (),
    logger: Any = False,
    enable_checkpointing: bool = False,
    **kwargs: Any,
) -> pl.Trainer:
    """A quiet CPU ``Trainer`` for tests: no progress bar, no model summary, no sanity check.

    ``logger`` defaults to off; pass a logger (for example ``TensorBoardLogger(tmp_path)``) to test logging.
    ``tmp_path`` is the ``default_root_dir`` (checkpoints land there when checkpointing is on).
    """
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": max_epochs,
        "callbacks": list(callbacks),
        "logger": logger,
        "enable_checkpointing": enable_checkpointing,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    if tmp_path is not None:
        options["default_root_dir"] = str(tmp_path)
    options.update(kwargs)
    return pl.Trainer(**options)


# ------------------------------------------------------------------------------------------------ reference


def _softmax(logits: Sequence[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(value - top) for value in logits]
    total = sum(exps)
    return [value / total for value in exps]


def visit_signals(logits: Sequence[float], target: int) -> dict[str, float]:
    """Confidence, EL2N, margin and correctness of one visit, written out per class in plain Python."""
    probabilities = _softmax(logits)
    first_argmax = max(range(len(logits)), key=lambda c: (logits[c], -c))
    return {
        "confidence": probabilities[target],
        "el2n": math.sqrt(sum((p - (c == target)) ** 2 for c, p in enumerate(probabilities))),
        "margin": logits[target] - max(value for c, value in enumerate(logits) if c != target),
        "correct": float(first_argmax == target),
    }


def _is_finite(visit: Visit) -> bool:
    return math.isfinite(visit.loss) and (visit.logits is None or all(math.isfinite(v) for v in visit.logits))


def reference_signals(
    visits: Iterable[Visit], num_examples: int, *, ema_decay: float = 0.8, classification: bool = True
) -> dict[str, Tensor]:
    """The `TrainingDynamics.signals` columns, recomputed example by example in float64 Python.

    Per epoch an example's value is the mean over its finite visits that epoch; it is correct that epoch
    when a strict majority of those visits were; a forgetting event is correct at its previous seen epoch
    and wrong now. Visits with a non-finite loss or logits only count in ``nonfinite``.
    """
    by_example: dict[int, dict[int, list[Visit]]] = defaultdict(lambda: defaultdict(list))
    nonfinite = [0] * num_examples
    for visit in visits:
        if _is_finite(visit):
            by_example[visit.index][visit.epoch].append(visit)
        else:
            nonfinite[visit.index] += 1
    nan = math.nan
    columns: dict[str, list[float]] = defaultdict(list)
    for index in range(num_examples):
        epochs = sorted(by_example[index]) if index in by_example else []
        losses, confidences, margins, corrects = [], [], [], []
        el2n = nan
        for epoch in epochs:
            group = by_example[index][epoch]
            losses.append(sum(v.loss for v in group) / len(group))
            if classification:
                per_visit = [visit_signals(v.logits, v.target) for v in group]  # type: ignore[arg-type]
                mean = {key: sum(s[key] for s in per_visit) / len(group) for key in per_visit[0]}
                confidences.append(mean["confidence"])
                margins.append(mean["margin"])
                corrects.append(mean["correct"] > 0.5)
                el2n = mean["el2n"]
        ema = nan
        for value in losses:
            ema = value if math.isnan(ema) else ema_decay * ema + (1 - ema_decay) * value
        seen = len(epochs)
        columns["index"].append(index)
        columns["visits"].append(sum(len(by_example[index][e]) for e in epochs))
        columns["epochs_seen"].append(seen)
        columns["last_epoch"].append(epochs[-1] if epochs else -1)
        columns["loss"].append(losses[-1] if seen else nan)
        columns["loss_mean"].append(sum(losses) / seen if seen else nan)
        columns["loss_ema"].append(ema)
        columns["nonfinite"].append(nonfinite[index])
        if classification:
            mean_confidence = sum(confidences) / seen if seen else nan
            columns["el2n"].append(el2n)
            columns["margin"].append(margins[-1] if seen else nan)
            columns["aum"].append(sum(margins) / seen if seen else nan)
            columns["confidence"].append(mean_confidence)
            columns["variability"].append(
                math.sqrt(sum((c - mean_confidence) ** 2 for c in confidences) / seen) if seen else nan
            )
            columns["correctness"].append(sum(corrects) / seen if seen else nan)
            columns["forgetting_events"].append(
                sum(before and not after for before, after in zip(corrects, corrects[1:], strict=False))
            )
    return {
        key: torch.tensor(values, dtype=torch.int64 if key in COUNT_COLUMNS else torch.float64)
        for key, values in columns.items()
    }


def assert_signals_match(
    actual: Mapping[str, Tensor], expected: Mapping[str, Tensor], *, rtol: float = 1e-5, atol: float = 1e-5
) -> None:
    """Same columns; counts exactly equal; float columns close, NaN in the same rows.

    ``variability`` comes from running sums in float32 (a difference of two nearly equal numbers under a
    square root), so it gets an absolute tolerance of ``3e-3``.
    """
    assert sorted(actual) == sorted(expected)
    for key, want in expected.items():
        got = actual[key]
        assert got.shape == want.shape, key
        if key in COUNT_COLUMNS:
            assert torch.equal(got.long(), want), f"{key}: {got.tolist()} != {want.tolist()}"
        else:
            tolerance = max(atol, 3e-3) if key == "variability" else atol
            torch.testing.assert_close(got.double(), want, rtol=rtol, atol=tolerance, equal_nan=True, msg=key)


def assert_signals_equal(first: Mapping[str, Tensor], second: Mapping[str, Tensor]) -> None:
    """Bit-for-bit equal columns (NaN equal to NaN)."""
    assert sorted(first) == sorted(second)
    for key in first:
        assert first[key].dtype == second[key].dtype, key
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0, equal_nan=True, msg=key)


class ShardUnionSampler(torch.utils.data.Sampler[int]):
    """One-process stand-in for ``world_size`` DDP ranks: all ranks' ``DistributedSampler`` shards in a row.

    A one-process run with this sampler visits exactly the examples (padding repeats included) that a
    DDP run with ``DistributedSampler(shuffle=True, seed=seed)`` visits across all ranks in each epoch.
    """

    def __init__(self, dataset: Dataset[Any], *, world_size: int, seed: int = 0) -> None:
        self.shards = [
            DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
            for rank in range(world_size)
        ]

    def set_epoch(self, epoch: int) -> None:
        for shard in self.shards:
            shard.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        return iter([index for shard in self.shards for index in shard])

    def __len__(self) -> int:
        return sum(len(shard) for shard in self.shards)


class ShardBatchSampler(torch.utils.data.Sampler[list[int]]):
    """One-process stand-in for the batches of ``world_size`` DDP ranks: each rank's batches, rank after rank.

    Every batch holds the ids, in order, of one batch that a DDP rank with ``DistributedSampler(shuffle=True,
    seed=seed)`` and ``batch_size`` trains on, so a model computes every per-example value on the same rows in a
    batch of the same shape as on that rank (a batch of another shape may run another matrix-multiply kernel and
    differ in the last bits).
    """

    def __init__(self, dataset: Dataset[Any], *, world_size: int, batch_size: int, seed: int = 0) -> None:
        # Lightning calls ``set_epoch`` on ``loader.batch_sampler.sampler``, not on the batch sampler itself.
        self.sampler = ShardUnionSampler(dataset, world_size=world_size, seed=seed)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for shard in self.sampler.shards:
            ids = list(shard)
            for start in range(0, len(ids), self.batch_size):
                yield ids[start : start + self.batch_size]

    def __len__(self) -> int:
        return sum(math.ceil(len(shard) / self.batch_size) for shard in self.sampler.shards)


class SimulatedCrash(RuntimeError):
    pass


class CrashAt(pl.Callback):
    """Raise at the start of ``epoch``, or before its batch ``batch`` when given (a partly trained epoch)."""

    def __init__(self, epoch: int, batch: int | None = None) -> None:
        self.epoch = epoch
        self.batch = batch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.batch is None and trainer.current_epoch == self.epoch:
            raise SimulatedCrash(f"crash at the start of epoch {self.epoch}")

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.batch is not None and trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise SimulatedCrash(f"crash in epoch {self.epoch} before batch {self.batch}")
