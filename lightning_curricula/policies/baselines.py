"""Baselines: full data, random subsets and the random twin of any policy."""

from __future__ import annotations

import torch

from lightning_curricula.distributed._keyed import generator_key
from lightning_curricula.policies._base import (
    EpochContext,
    Plan,
    Policy,
    PolicyWrapper,
    ShardedPlan,
    check_fraction,
    fraction_size,
)
from lightning_curricula.policies.selection import full_plan, random_plan, shuffled_plan

__all__ = ["FullData", "RandomSubset", "RandomTwin"]


class FullData(Policy):
    """Every example once per epoch, shuffled: the baseline every policy is compared with.

    Examples:
        >>> plan = FullData().plan(EpochContext(epoch=0, num_examples=4, generator=torch.Generator().manual_seed(0)))
        >>> sorted(plan.indices.tolist())
        [0, 1, 2, 3]
    """

    varies_length = False
    plans_from_shards = True

    def plan(self, context: EpochContext) -> Plan | ShardedPlan:  # noqa: D102
        return full_plan(context.num_examples, context.generator, shard=context.shard)

    def epoch_size(self, num_examples: int, epoch: int, num_epochs: int | None) -> int:  # noqa: D102
        return num_examples


class RandomSubset(Policy):
    """A random ``fraction`` of the data: fixed for the whole run (``static``) or redrawn every epoch.

    The static subset is drawn from ``seed`` alone, so it is the same every epoch and on every rank.

    Args:
        fraction: share of examples per epoch, in ``(0, 1]``.
        static: keep one subset for the whole run instead of redrawing it each epoch.

    Examples:
        >>> policy = RandomSubset(0.5, static=True)
        >>> context = EpochContext(epoch=3, num_examples=10, generator=torch.Generator().manual_seed(3))
        >>> len(policy.plan(context))
        5
    """

    varies_length = False
    plans_from_shards = True

    def __init__(self, fraction: float, *, static: bool = False) -> None:
        check_fraction("fraction", fraction)
        self.fraction = fraction
        self.static = static

    def plan(self, context: EpochContext) -> Plan | ShardedPlan:  # noqa: D102
        size = fraction_size(self.fraction, context.num_examples)
        if not self.static:
            return random_plan(context.num_examples, size, context.generator, shard=context.shard)
        # The run's subset: the head of a permutation keyed by the seed alone (the same every epoch and rank).
        run_generator = torch.Generator().manual_seed(context.seed)
        if context.shard is not None:
            return ShardedPlan.of_permutation(
                context.shard, size, generator_key(run_generator), generator_key(context.generator)
            )
        subset = random_plan(context.num_examples, size, run_generator).indices
        return shuffled_plan(subset, context.generator)

    def epoch_size(self, num_examples: int, epoch: int, num_epochs: int | None) -> int:  # noqa: D102
        return fraction_size(self.fraction, num_examples)


class RandomTwin(PolicyWrapper):
    """The random twin of ``policy``: each epoch, a uniformly random subset of the same size, weights 1.

    Compares a policy with chance at exactly its sample budget.

    Examples:
        >>> from lightning_curricula.policies import Curriculum
        >>> twin = RandomTwin(Curriculum(start=0.5, saturation=1.0, warmup_epochs=1))
        >>> twin.epoch_size(100, 1, 4)
        67
    """

    def plan(self, context: EpochContext) -> Plan | ShardedPlan:  # noqa: D102
        size = self.policy.epoch_size(context.num_examples, context.epoch, context.num_epochs)
        if size is None:  # sized by the scores: plan the policy to learn its size
            size = len(self.policy.plan(context))
        if size <= context.num_examples:
            return random_plan(context.num_examples, size, context.generator, shard=context.shard)
        return Plan(torch.randint(context.num_examples, (size,), generator=context.generator), torch.ones(size))

    def epoch_size(self, num_examples: int, epoch: int, num_epochs: int | None) -> int | None:  # noqa: D102
        return self.policy.epoch_size(num_examples, epoch, num_epochs)
