"""Test utilities for the selection layer: fixed plans, a Trainer-free tracked run, a curriculum module.

- `FixedPlan`: a `Policy` that returns a given plan, to test `CurriculumSampler` sharding on any plan;
- `tracked_run`: what a ``Trainer`` with ``reload_dataloaders_every_n_epochs=1`` does each epoch (a new
  `CurriculumSampler`, ``len``, ``set_epoch``, iterate, then the `TrainingDynamics` hooks), without a
  ``Trainer``: fast enough for property tests, and the tracker's tables come from its real hooks;
- `CurriculumClassifier`: `helpers.Classifier` whose train loader is `curriculum_dataloader`, recording
  each epoch's plan, batch count and the ``(index, weight)`` pairs it trained on.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from helpers import ClassificationDataset, Classifier
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader

from lightning_curricula import (
    CurriculumSampler,
    EpochContext,
    Plan,
    Policy,
    TrainingDynamics,
    curriculum_dataloader,
    weighted_mean,
)
from lightning_curricula.distributed import TableShard
from lightning_curricula.policies import epoch_generator


class FixedPlan(Policy):
    """Plans the same given visits every epoch (any ids, repeats allowed); needs no tracker."""

    varies_length = False

    def __init__(self, indices: Sequence[int], weights: Sequence[float] | None = None) -> None:
        self.indices = torch.tensor(list(indices), dtype=torch.long)
        self.weights = (
            torch.ones(self.indices.numel()) if weights is None else torch.tensor(list(weights), dtype=torch.float32)
        )

    def plan(self, context: EpochContext) -> Plan:
        return Plan(self.indices.clone(), self.weights.clone())

    def epoch_size(self, num_examples: int, epoch: int, num_epochs: int | None) -> int:
        return int(self.indices.numel())


def epoch_context(
    epoch: int,
    num_examples: int,
    signals: Mapping[str, Tensor] | None = None,
    *,
    num_epochs: int | None = None,
    seed: int = 0,
    shard: TableShard | None = None,
) -> EpochContext:
    """The context `CurriculumSampler` builds: a private generator seeded from the pair ``(seed, epoch)``."""
    return EpochContext(
        epoch=epoch,
        num_examples=num_examples,
        generator=epoch_generator(seed, epoch),
        seed=seed,
        num_epochs=num_epochs,
        signals=dict(signals or {}),
        shard=shard,
    )


class _Module:
    """Stands in for the LightningModule in the tracker's hooks: a device and ``log_dict``."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.logged: list[dict[str, float]] = []

    def log_dict(self, metrics: Mapping[str, Any], **kwargs: Any) -> None:
        self.logged.append({key: float(value) for key, value in metrics.items()})


class HookLoop:
    """Drives a `TrainingDynamics` through its hooks in the order a one-process ``Trainer`` calls them.

    Per-example losses are the cross-entropy of fixed ``logits`` against ``targets``; the whole epoch
    is one batch (the tables do not depend on how an epoch is split into batches).
    """

    def __init__(self, dynamics: TrainingDynamics, logits: Tensor, targets: Tensor, *, num_epochs: int) -> None:
        self.dynamics = dynamics
        self.logits = logits
        self.targets = targets
        dataset = range(logits.shape[0])
        self.trainer = SimpleNamespace(
            train_dataloader=SimpleNamespace(dataset=dataset, sampler=None),
            current_epoch=0,
            max_epochs=num_epochs,
            is_global_zero=False,
            world_size=1,
            global_rank=0,
            strategy=SimpleNamespace(reduce=lambda tensor, reduce_op: tensor),
        )
        self.module = _Module()
        dynamics.on_train_start(self.trainer, self.module)  # type: ignore[arg-type]

    def train_epoch(self, sampler: CurriculumSampler, epoch: int) -> list[tuple[int, float]]:
        """``len``, ``set_epoch``, the epoch-start hook, iterate, the batch and epoch-end hooks."""
        trainer, module = self.trainer, self.module
        trainer.train_dataloader.sampler = sampler
        trainer.current_epoch = epoch
        len(sampler)
        sampler.set_epoch(epoch)
        self.dynamics.on_train_epoch_start(trainer, module)  # type: ignore[arg-type]
        pairs = list(sampler)
        ids = torch.tensor([index for index, _ in pairs], dtype=torch.long)
        if ids.numel():
            logits, targets = self.logits[ids], self.targets[ids]
            losses = F.cross_entropy(logits, targets, reduction="none")
            outputs = {"losses": losses, "logits": logits, "targets": targets}
            self.dynamics.on_train_batch_end(trainer, module, outputs, {"index": ids}, 0)  # type: ignore[arg-type]
        self.dynamics.on_train_epoch_end(trainer, module)  # type: ignore[arg-type]
        return pairs


@dataclass
class TrackedRun:
    """Per epoch: the plan, what the sampler yielded, the tracker's signals before planning, logged metrics."""

    dynamics: TrainingDynamics
    plans: list[Plan] = field(default_factory=list)
    yielded: list[list[tuple[int, float]]] = field(default_factory=list)
    signals_before: list[dict[str, Tensor]] = field(default_factory=list)
    metrics: list[dict[str, float]] = field(default_factory=list)


def tracked_run(
    policy: Policy,
    logits: Tensor,
    targets: Tensor,
    *,
    num_epochs: int,
    seed: int = 0,
) -> TrackedRun:
    """Run ``num_epochs`` epochs of ``policy`` with fixed per-example ``logits``, through the tracker's hooks.

    Each epoch gets a fresh `CurriculumSampler`, as with ``reload_dataloaders_every_n_epochs=1``.
    """
    num_examples = logits.shape[0]
    dynamics = TrainingDynamics()
    loop = HookLoop(dynamics, logits, targets, num_epochs=num_epochs)
    run = TrackedRun(dynamics=dynamics)
    for epoch in range(num_epochs):
        sampler = CurriculumSampler(range(num_examples), policy, dynamics=dynamics, num_epochs=num_epochs, seed=seed)
        run.signals_before.append({key: value.clone() for key, value in dynamics.signals().items()})
        run.yielded.append(loop.train_epoch(sampler, epoch))
        run.plans.append(sampler.plan(epoch))
        run.metrics.append(loop.module.logged[-1])
    return run


class CurriculumClassifier(Classifier):
    """`Classifier` trained through `curriculum_dataloader`, recording what each epoch planned and trained.

    Records, per epoch: ``plans[e]`` (the sampler's plan, read in ``on_train_epoch_start``),
    ``recomputed[e]`` (``policy.plan`` of ``(seed, e, the tracker's signals)`` recomputed independently),
    ``num_batches[e]`` (``trainer.num_training_batches``) and ``trained[e]`` (the ``(index, weight)``
    pairs of the batches, in order).
    """

    def __init__(
        self,
        policy: Policy,
        *,
        size: int = 37,
        batch_size: int = 8,
        plan_seed: int = 0,
        lr: float = 0.5,
        momentum: float = 0.9,
    ) -> None:
        super().__init__(lr=lr, momentum=momentum)
        self.policy = policy
        self.data = ClassificationDataset(size)
        self.batch_size = batch_size
        self.plan_seed = plan_seed
        self.plans: dict[int, Plan] = {}
        self.recomputed: dict[int, Plan] = {}
        self.num_batches: dict[int, int] = {}
        self.trained: dict[int, list[tuple[int, float]]] = {}

    def train_dataloader(self) -> DataLoader[Any]:
        return curriculum_dataloader(
            self.data, self.trainer, self.policy, seed=self.plan_seed, batch_size=self.batch_size
        )

    def on_train_epoch_start(self) -> None:
        epoch = self.current_epoch
        sampler = self.trainer.train_dataloader.sampler  # type: ignore[union-attr]
        assert isinstance(sampler, CurriculumSampler)
        self.num_batches[epoch] = int(self.trainer.num_training_batches)
        self.plans[epoch] = sampler.plan(epoch)
        signals = sampler.dynamics.signals() if sampler.dynamics is not None and sampler.dynamics.has_tables else {}
        context = epoch_context(epoch, len(self.data), signals, num_epochs=self.trainer.max_epochs, seed=self.plan_seed)
        self.recomputed[epoch] = self.policy.plan(context)

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        self.steps += 1
        losses, logits, targets = self.per_example(batch)
        pairs = zip(batch["index"].tolist(), batch["weight"].tolist(), strict=True)
        self.trained.setdefault(self.current_epoch, []).extend(pairs)
        loss = weighted_mean(losses, batch["weight"])
        return {"loss": loss, "losses": losses, "logits": logits, "targets": targets}


def plan_pairs(plan: Plan) -> list[tuple[int, float]]:
    """The plan's visits as ``(index, weight)`` pairs, in plan order."""
    return list(zip(plan.indices.tolist(), plan.weights.tolist(), strict=True))


def assert_plans_equal(first: Plan, second: Plan) -> None:
    """Same visits in the same order with the same weights."""
    assert first.indices.tolist() == second.indices.tolist()
    assert torch.equal(first.weights, second.weights)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for the module: the tensors are tiny, and threads only contend on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
