"""The policy interface: a `Plan` of example ids and weights, the `EpochContext` a policy reads, and `Policy`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_curricula.distributed._keyed import derived_seed, keyed_permutation
from lightning_curricula.distributed._sharding import permuted_shard
from lightning_curricula.policies.pacing import training_progress
from lightning_curricula.tracking.ranking import HARDER_WHEN_HIGHER, difficulty_scores

if TYPE_CHECKING:
    from lightning_curricula.distributed._sharding import TableShard

__all__ = [
    "EpochContext",
    "Plan",
    "Policy",
    "PolicyWrapper",
    "ShardedPlan",
    "check_fraction",
    "check_signal",
    "check_warmup",
    "epoch_generator",
    "fraction_size",
]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The private generator of ``epoch``'s plan: seeded from the pair ``(seed, epoch)`` by `derived_seed`.

    Examples:
        >>> a, b = epoch_generator(1, 0), epoch_generator(0, 1)
        >>> torch.equal(torch.randperm(8, generator=a), torch.randperm(8, generator=b))
        False
    """
    return torch.Generator().manual_seed(derived_seed(seed, epoch))


@dataclass(frozen=True)
class Plan:
    """One epoch's visits: example ``indices`` in order (int64) and a ``weight`` per visit (float32)."""

    indices: Tensor
    weights: Tensor

    def __len__(self) -> int:
        return int(self.indices.numel())


@dataclass(frozen=True)
class ShardedPlan:
    """One epoch's plan made from tables sharded over the ranks: no rank holds it all.

    The plan is a set of ``size`` visits in a keyed random order, and `take` gives a rank the visits at
    its positions (the sampler's ``r, r + W, ...``), equal to the same positions of the `Plan` an unsharded
    run makes. The set is either ``selected``, each rank's part of it (global ids in id order, with
    ``weights``), the parts concatenated in rank order and shuffled by ``key`` (`of_selection`); or, without
    ``selected``, the first ``size`` ids of ``keyed_permutation(num_examples, base_key)``, shuffled again
    by ``key`` when it is given (`of_permutation`). See `TableShard`.

    Examples:
        >>> from lightning_curricula.distributed import TableShard, ThreadCollectives
        >>> def rank_visits(comm):  # two thread-ranks, each takes positions rank, rank + 2, ... of a full plan
        ...     plan = ShardedPlan.of_permutation(TableShard(comm, 6), 6, base_key=3)
        ...     return plan.take(torch.arange(comm.rank, 6, 2))[0].tolist()
        >>> first, second = ThreadCollectives.run(2, rank_visits)
        >>> sorted(first + second)
        [0, 1, 2, 3, 4, 5]
    """

    size: int
    shard: TableShard
    key: int | None
    selected: Tensor | None = None
    weights: Tensor | None = None
    base_key: int | None = None

    @classmethod
    def of_selection(cls, shard: TableShard, selected: Tensor, key: int, weights: Tensor | None = None) -> ShardedPlan:
        """The set made of every rank's ``selected`` ids (and ``weights``), in the order of ``key`` (a collective)."""
        size = sum(shard.comm.all_gather_int(selected.numel()))
        return cls(size, shard, key, selected=selected.long(), weights=weights)

    @classmethod
    def of_permutation(cls, shard: TableShard, size: int, base_key: int, key: int | None = None) -> ShardedPlan:
        """The first ``size`` ids of ``keyed_permutation(N, base_key)``, shuffled again by ``key`` if given."""
        return cls(size, shard, key, base_key=base_key)

    def __len__(self) -> int:
        return self.size

    def take(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """The ids and weights at ``positions``; a collective for a ``selected`` set (every rank calls it)."""
        if self.selected is not None:
            assert self.key is not None
            return permuted_shard(self.selected, self.key, positions, self.shard.comm, self.weights)
        assert self.base_key is not None
        order = positions.long() if self.key is None else keyed_permutation(self.size, self.key, positions)
        return keyed_permutation(self.shard.num_examples, self.base_key, order), torch.ones(positions.numel())


@dataclass(frozen=True)
class EpochContext:
    """Everything a policy may read to plan one epoch.

    With tables sharded over the ranks (`TrainingDynamics(sharded=True)`), ``shard`` is this rank's
    `TableShard`: ``signals`` then hold only the ids it owns (their ``index`` column says which), and a
    policy that supports it (``plans_from_shards``) passes ``shard`` to the selection kernels.
    """

    epoch: int
    num_examples: int
    generator: torch.Generator
    seed: int = 0
    num_epochs: int | None = None
    signals: Mapping[str, Tensor] = field(default_factory=dict)
    shard: TableShard | None = None

    @property
    def progress(self) -> float:
        """Progress of this epoch, 0 at the first and 1 at the last (see `training_progress`)."""
        if self.num_epochs is None:
            raise ValueError("This policy needs num_epochs: pass num_epochs to CurriculumSampler.")
        return training_progress(self.epoch, self.num_epochs)

    @property
    def tracked(self) -> bool:
        """Whether the signals hold scores: some example was trained in a tracked epoch (``visits > 0``)."""
        if not self.signals:
            return False
        return "visits" not in self.signals or bool(self.signals["visits"].any())

    def difficulty(self, signal: str) -> Tensor:
        """Scores where higher is harder (see `difficulty_scores`); NaN for unseen examples."""
        if not self.signals:
            raise ValueError(
                f"No tracked signals at epoch {self.epoch}: a policy that ranks by {signal!r} needs a "
                "TrainingDynamics tracker passed to CurriculumSampler and at least one warm-up epoch."
            )
        return difficulty_scores(self.signals, signal)


class Policy(ABC):
    """Base class: `plan` one epoch, and say in advance how large it will be when that is known.

    A policy's plan is a function of its `EpochContext`, plus, for the few policies that remember a
    choice (`StaticPruning`'s subset), their own state: `state_dict` and `load_state_dict`, which the
    tracker the sampler is bound to saves in Lightning checkpoints and hands back on resume.
    """

    #: Tracked signals the policy reads (it then needs a `TrainingDynamics`).
    signals: tuple[str, ...] = ()
    #: Whether it needs ``num_epochs`` (pacing, annealing, whole-run budgets).
    needs_num_epochs: bool = False
    #: Whether the plan size can change from one epoch to the next.
    varies_length: bool = True
    #: Whether it plans from tables sharded over the ranks (`TrainingDynamics(sharded=True)`).
    plans_from_shards: bool = False

    @abstractmethod
    def plan(self, context: EpochContext) -> Plan | ShardedPlan:
        """The plan for ``context.epoch``."""

    def epoch_size(self, num_examples: int, epoch: int, num_epochs: int | None) -> int | None:
        """Number of visits planned for ``epoch``, or ``None`` when it depends on the scores."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """The policy's own state for checkpoints: tensors, numbers and a ``version``; ``{}`` when stateless.

        Examples:
            >>> from lightning_curricula.policies import FullData
            >>> FullData().state_dict()
            {}
        """
        return {}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore `state_dict`'s output; a stateless policy accepts only ``{}``."""
        if state_dict:
            name = type(self).__name__
            raise ValueError(f"{name} keeps no state, but was given a state with keys {sorted(state_dict)}.")

    def validate(self, num_examples: int, num_epochs: int | None) -> None:
        """Raise ``ValueError`` at setup if the policy cannot run on this dataset and schedule."""
        if self.needs_num_epochs and num_epochs is None:
            raise ValueError(
                f"{type(self).__name__} needs num_epochs: pass num_epochs=max_epochs to CurriculumSampler."
            )


def fraction_size(fraction: float, num_examples: int) -> int:
    return max(1, round(fraction * num_examples))


def check_fraction(name: str, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}.")


def check_signal(signal: str) -> None:
    if signal not in HARDER_WHEN_HIGHER:
        raise ValueError(f"Unknown signal {signal!r}; policies rank by one of {sorted(HARDER_WHEN_HIGHER)}.")


def check_warmup(warmup_epochs: int, name: str = "warmup_epochs") -> None:
    if warmup_epochs < 1:
        raise ValueError(
            f"{name} must be >= 1 (the first epochs train on all data to score it), got {warmup_epochs!r}."
        )


class PolicyWrapper(Policy):
    """Base of the policies that wrap another (`RandomTwin`, `NoiseAware`): validation and state go to it.

    Examples:
        >>> from lightning_curricula.policies import RandomTwin, StaticPruning
        >>> RandomTwin(StaticPruning()).state_dict() == StaticPruning().state_dict()
        True
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.signals = policy.signals
        self.needs_num_epochs = policy.needs_num_epochs
        self.varies_length = policy.varies_length
        self.plans_from_shards = policy.plans_from_shards

    def validate(self, num_examples: int, num_epochs: int | None) -> None:  # noqa: D102
        self.policy.validate(num_examples, num_epochs)

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return self.policy.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:  # noqa: D102
        self.policy.load_state_dict(state_dict)
