"""`CurriculumSampler`: execute this rank's shard of the epoch's plan, identically planned on every rank."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sized
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor
from torch.utils.data import DistributedSampler

from lightning_curricula.distributed._collectives import world_and_rank
from lightning_curricula.distributed._sharding import TableShard
from lightning_curricula.policies._base import EpochContext, Plan, Policy, ShardedPlan, epoch_generator
from lightning_curricula.policies.baselines import FullData

if TYPE_CHECKING:
    from lightning_curricula.tracking._dynamics import TrainingDynamics

__all__ = ["CurriculumSampler", "Preselection", "shard_positions"]


class Preselection(Protocol):
    """Selection before loading: which visits of each batch of a rank's shard the loader loads at all.

    Selection inside the step makes one (`lightning_curricula.OnlineBatchSelection.batch_preselection`);
    the sampler only executes it, so the epoch stage does not depend on the step stage.
    """

    @property
    def batch_size(self) -> int:
        """The visits of each batch before selection."""

    @property
    def drop_last(self) -> bool:
        """Whether the shard's last, shorter batch is dropped."""

    @property
    def kept_per_batch(self) -> int:
        """The loader's batch size: what a full batch keeps."""

    def kept_length(self, shard_size: int) -> int:
        """The visits kept of a shard of ``shard_size``: the sampler's length."""

    def kept_visits(self, indices: Tensor, weights: Tensor) -> Iterator[tuple[int, float]]:
        """``(index, weight)`` of the kept visits of the shard ``indices`` (with its plan ``weights``)."""


class CurriculumSampler(DistributedSampler[tuple[int, float]]):
    """Yield ``(index, weight)`` pairs for this rank's shard of the epoch's `Plan`.

    The plan of epoch ``e`` is ``policy.plan(...)`` of ``(seed, e, the tracker's synced signals)``,
    with a private ``torch.Generator`` seeded from the pair ``(seed, e)``: every rank computes the same plan
    without communicating, and every rank yields the same number of items. Wrap the dataset in
    `WithIndex` so each item carries its ``index`` and ``weight``, and compute the loss as
    ``weighted_mean(losses, batch["weight"])``.

    The epoch being planned is the tracker's clock, ``dynamics.epochs_tracked`` (the epochs whose
    signals are synced), because Lightning asks for ``len(dataloader)`` before it calls
    ``set_epoch``; without a tracker it is the ``set_epoch`` value.

    Args:
        dataset: the training dataset (usually a `WithIndex`); only its length is used.
        policy: what to plan; `FullData` (shuffled full data) by default.
        dynamics: the `TrainingDynamics` whose signals the policy reads; required by policies that
            read signals or change the epoch length.
        num_epochs: the run's ``max_epochs``; required by policies with pacing, annealing or budgets.
        seed: seed of the plan's generator; the same on every rank.
        num_replicas: number of ranks; from the process group (or 1) by default.
        rank: this rank; from the process group (or 0) by default.
        drop_last: when the plan does not divide evenly, drop its last items (``True``) or pad with
            its first items (``False``, like ``DistributedSampler``), so all ranks get equal shares.
        batch_preselection: yield only the kept visits of each batch of the shard (Stale-SB selecting
            before loading; `curriculum_dataloader` passes it in the epochs where it applies).

    Raises:
        ValueError: at construction, for a policy that needs a tracker or ``num_epochs`` it was not
            given, a tracker of a different dataset size, a budget that cannot be met, or a checkpoint
            of another policy or (for policies that depend on it) another ``num_epochs``; when
            planning, for a policy that reads a signal the tracker did not produce after an epoch
            (a classification signal without ``logits`` and ``targets`` in the step outputs).
        RuntimeError: when iterated, if the ``DataLoader`` was not re-created after the epoch length
            changed (set ``Trainer(reload_dataloaders_every_n_epochs=1)``), or if ``set_epoch``
            disagrees with the tracker's clock (the tracker's state was not restored on resume).

    Examples:
        >>> sampler = CurriculumSampler(range(5), seed=0)
        >>> sorted(index for index, weight in sampler)
        [0, 1, 2, 3, 4]
        >>> shard = CurriculumSampler(range(5), num_replicas=2, rank=1)
        >>> len(shard)  # 5 visits padded to 6, 3 per rank
        3

    Note:
        **DDP**: a subclass of ``DistributedSampler``, so Lightning does not wrap it in its
        ``DistributedSamplerWrapper`` (which would pad a shrinking plan back to full size). Rank ``r``
        takes positions ``r, r + W, r + 2W, ...`` of the padded (or trimmed) plan. With a sharded tracker
        (``TrainingDynamics(sharded=True)``) no rank holds the signals or the plan: every rank plans
        with a few small collectives and fetches its positions (`ShardedPlan`), so every rank must
        call ``len`` and ``iter`` alike, as Lightning does; the visits are those of the unsharded run.
        **Resume**: the plan
        depends only on ``(seed, epoch, signals)``, and the tracker's signals are in the checkpoint,
        so a resumed run plans exactly what the uninterrupted run planned.
    """

    def __init__(
        self,
        dataset: Sized,
        policy: Policy | None = None,
        *,
        dynamics: TrainingDynamics | None = None,
        num_epochs: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
        batch_preselection: Preselection | None = None,
    ) -> None:
        world, this_rank = world_and_rank(num_replicas, rank)
        super().__init__(dataset, num_replicas=world, rank=this_rank, shuffle=False, seed=seed, drop_last=drop_last)  # type: ignore[arg-type]
        policy = FullData() if policy is None else policy
        if not isinstance(policy, Policy):
            raise TypeError(f"policy must be a lightning_curricula.policies.Policy, got {type(policy).__name__}.")
        size = len(dataset)
        if size == 0:
            raise ValueError("The dataset is empty: there is nothing to plan.")
        name = type(policy).__name__
        if dynamics is None and (policy.signals or policy.varies_length):
            needs = f"signals {list(policy.signals)}" if policy.signals else "an epoch clock (its epoch length changes)"
            raise ValueError(f"{name} needs {needs} from a TrainingDynamics tracker: pass dynamics=.")
        if dynamics is not None and dynamics.num_examples not in (None, size):
            raise ValueError(f"The tracker has {dynamics.num_examples} examples, the dataset has {size}.")
        if dynamics is not None and dynamics.sharded and not policy.plans_from_shards:
            raise ValueError(
                f"{name} does not plan from tables sharded over the ranks (TrainingDynamics(sharded=True)). Policies "
                "that do: FullData, RandomSubset, RandomTwin of one of these, Curriculum (not order='balanced'), "
                "StaticPruning (not class_balanced), InfoBatch (without budget) and Bandit (strategy='ucb'). "
                "Use one of them, or TrainingDynamics(sharded=False)."
            )
        if num_epochs is not None and num_epochs < 1:
            raise ValueError(f"num_epochs must be a positive integer, got {num_epochs!r}.")
        policy.validate(size, num_epochs)
        if dynamics is not None:  # the tracker checkpoints the policy's state, and restores it on resume
            dynamics.policy_binding.bind(policy, num_epochs=num_epochs)
        self.policy = policy
        for epoch in range(num_epochs or 0):  # sizes known in advance fail at setup, not in epoch 7
            planned = policy.epoch_size(size, epoch, num_epochs)
            if planned is not None:
                self._check_shards(planned, epoch)
        self.dynamics = dynamics
        self.num_epochs = num_epochs
        self.num_examples = size
        self.batch_preselection = batch_preselection
        self._cached: tuple[int, Plan | ShardedPlan] | None = None
        self._epoch_was_set = False
        self._length: int | None = None  # the first length reported: what the DataLoader's user caches
        self._iterations = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch; checked against the tracker's clock."""
        super().set_epoch(epoch)
        self._epoch_was_set = True

    @property
    def plan_epoch(self) -> int:
        """The epoch the sampler plans: the tracker's ``epochs_tracked``, else the ``set_epoch`` value."""
        return self.dynamics.epochs_tracked if self.dynamics is not None else self.epoch

    def plan(self, epoch: int | None = None) -> Plan | ShardedPlan:
        """The whole plan (all ranks) of ``epoch``, by default `plan_epoch`; cached per epoch.

        With a sharded tracker it is a `ShardedPlan`, made with collectives: every rank plans each epoch.
        """
        epoch = self.plan_epoch if epoch is None else epoch
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        signals = self.dynamics.signals() if self.dynamics is not None and self.dynamics.has_tables else {}
        self._check_signals(signals)
        context = EpochContext(
            epoch=epoch,
            num_examples=self.num_examples,
            generator=epoch_generator(self.seed, epoch),
            seed=self.seed,
            num_epochs=self.num_epochs,
            signals=signals,
            shard=self._table_shard(),
        )
        plan = self.policy.plan(context)
        if len(plan) == 0:
            raise ValueError(f"{type(self.policy).__name__} planned no examples for epoch {epoch}.")
        self._check_shards(len(plan), epoch)
        self._cached = (epoch, plan)
        return plan

    def _table_shard(self) -> TableShard | None:
        """The tracker's `TableShard` when its tables are sharded; one of the sampler's own before they exist."""
        if self.dynamics is None or not self.dynamics.sharded:
            return None
        if self.dynamics.table_shard is not None:
            return self.dynamics.table_shard
        shard = TableShard.of_process_group(self.num_examples)  # the first plan: no tables yet
        if shard.comm.world_size != self.num_replicas:
            raise ValueError(
                f"A sampler of {self.num_replicas} replicas plans from tables sharded over the process group's "
                f"{shard.comm.world_size} ranks; leave num_replicas and rank to the process group."
            )
        return shard

    def _check_shards(self, plan_size: int, epoch: int) -> None:
        """A trimmed plan smaller than the world size would give every rank an empty epoch."""
        if self.drop_last and plan_size < self.num_replicas:
            raise ValueError(
                f"{type(self.policy).__name__} plans {plan_size} visits for epoch {epoch}, fewer than the "
                f"{self.num_replicas} ranks: with drop_last_plan=True (drop_last) every rank would train nothing. "
                "Pad instead (drop_last_plan=False) or plan at least one visit per rank."
            )

    def _check_signals(self, signals: Mapping[str, Tensor]) -> None:
        """Fail at the first plan after an epoch was tracked if the policy reads a signal the tracker lacks.

        The tracker derives the classification signals only when ``training_step`` returns ``logits``
        and ``targets``; without them a policy would otherwise fall back or fail epochs later.
        """
        if self.dynamics is None or self.dynamics.epochs_tracked < 1 or not signals:
            return
        # Nothing trained yet: the tables cannot tell what the step returns. (A shard is not the whole table, and
        # ranks must not decide apart whether to raise: sharded tables skip this test.)
        if not self.dynamics.sharded and not bool(signals["visits"].any()):
            return
        missing = [name for name in self.policy.signals if name not in signals]
        if missing:
            raise ValueError(
                f"{type(self.policy).__name__} reads the signals {missing}, which TrainingDynamics"
                f"(name={self.dynamics.name!r}) did not produce after {self.dynamics.epochs_tracked} epochs (it "
                f"tracks {sorted(signals)}). The classification signals (margin, aum, el2n, confidence, variability, "
                "correctness, forgetting_events) need training_step to return 'logits' (B, C) and integer "
                "'targets' (B,) besides 'losses'."
            )

    def __len__(self) -> int:
        length = shard_size(len(self.plan()), self.num_replicas, self.drop_last)
        if self._length is None:
            self._length = length
        return length if self.batch_preselection is None else self.batch_preselection.kept_length(length)

    def __iter__(self) -> Iterator[tuple[int, float]]:
        epoch = self.plan_epoch
        if self.dynamics is not None and self._epoch_was_set and self.epoch != epoch:
            raise RuntimeError(
                f"set_epoch({self.epoch}) but the tracker has synced {epoch} epochs: was the TrainingDynamics "
                "state restored with the checkpoint, and is the same tracker on the Trainer?"
            )
        plan = self.plan(epoch)
        # Lightning reads len(dataloader) once per loader (num_training_batches) but asks len() again each
        # epoch, so only a length that differs from the loader's first one shows a loader that was not re-created.
        length = shard_size(len(plan), self.num_replicas, self.drop_last)
        if self._length is None:
            self._length = length
        elif self.policy.varies_length and length != self._length:
            raise RuntimeError(
                f"{type(self.policy).__name__} changes the epoch length ({self._length} to {length} items on this "
                "rank), but the DataLoader was not re-created for this epoch, so Lightning would cut or pad it: "
                "set Trainer(reload_dataloaders_every_n_epochs=1)."
            )
        self._iterations += 1
        total = length * self.num_replicas
        if isinstance(plan, ShardedPlan):  # no rank holds the plan: ask the ranks for this one's positions
            indices, weights = plan.take(shard_positions(len(plan), self.num_replicas, self.rank, self.drop_last))
        elif total <= len(plan):  # no padding: the shard is a strided slice of the plan, no gather needed
            shard = slice(self.rank, total, self.num_replicas)
            indices, weights = plan.indices[shard], plan.weights[shard]
        else:
            positions = shard_positions(len(plan), self.num_replicas, self.rank, self.drop_last)
            indices, weights = plan.indices[positions], plan.weights[positions]
        if self.batch_preselection is not None:
            return self.batch_preselection.kept_visits(indices, weights)
        unweighted = bool((weights == 1).all())  # then skip converting N ones to Python floats
        chunk = 1 << 16

        def pairs(start: int) -> Iterator[tuple[int, float]]:
            ids = indices[start : start + chunk].tolist()
            values = itertools.repeat(1.0, len(ids)) if unweighted else weights[start : start + chunk].tolist()
            return zip(ids, values, strict=True)

        # Lazily, chunk by chunk: the first batch must not wait for a Python object per visit of the shard.
        return itertools.chain.from_iterable(map(pairs, range(0, indices.numel(), chunk)))

    def planned_steps(self, batch_size: int, *, accumulate_grad_batches: int = 1, drop_last: bool = False) -> int:
        """Optimizer steps of the whole run on this rank, for an LR schedule that must end on time.

        Sums every epoch's planned size; raises ``ValueError`` when the policy's sizes depend on the
        scores (InfoBatch without ``budget``, self-paced learning): use a budget or a per-epoch schedule.

        Examples:
            >>> CurriculumSampler(range(100), num_epochs=3).planned_steps(batch_size=32)
            12
        """
        if self.num_epochs is None:
            raise ValueError("planned_steps needs num_epochs: pass num_epochs=max_epochs to CurriculumSampler.")
        steps = 0
        for epoch in range(self.num_epochs):
            size = self.policy.epoch_size(self.num_examples, epoch, self.num_epochs)
            if size is None:
                raise ValueError(
                    f"{type(self.policy).__name__} sizes epoch {epoch} from the scores, so the run's step count "
                    "is not known in advance; use its budget mode, or a schedule stepped per epoch."
                )
            per_rank = shard_size(size, self.num_replicas, self.drop_last)
            batches = per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)
            steps += math.ceil(batches / accumulate_grad_batches)
        return steps


def shard_size(plan_size: int, num_replicas: int, drop_last: bool) -> int:
    """Items per rank for a plan of ``plan_size`` visits."""
    return plan_size // num_replicas if drop_last else math.ceil(plan_size / num_replicas)


def shard_positions(plan_size: int, num_replicas: int, rank: int, drop_last: bool) -> Tensor:
    """Positions in the plan that ``rank`` visits: a stride over the plan trimmed or padded to ``W`` equal shares.

    Padding wraps around to the start of the plan, so the padded visits repeat its first items.

    Examples:
        >>> shard_positions(5, 2, 0, False), shard_positions(5, 2, 1, False), shard_positions(5, 2, 1, True)
        (tensor([0, 2, 4]), tensor([1, 3, 0]), tensor([1, 3]))
    """
    total = shard_size(plan_size, num_replicas, drop_last) * num_replicas
    return torch.arange(rank, max(total, rank), num_replicas) % plan_size  # empty when the rank gets nothing
