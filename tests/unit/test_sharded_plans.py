"""Policies planning from sharded tables (threads as ranks): each rank's visits equal its shard of the unsharded plan.

Every rank holds only its slice of the signals (`TableShard`), plans with collectives, and takes its positions
``r, r + W, ...`` of the plan (`ShardedPlan.take`); the unsharded plan is computed from the whole table.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from selection_helpers import epoch_context
from torch import Tensor

from lightning_curricula import CurriculumSampler, TrainingDynamics
from lightning_curricula.distributed import TableShard, ThreadCollectives
from lightning_curricula.policies import (
    Bandit,
    Curriculum,
    EpochContext,
    FullData,
    ImportanceSampling,
    InfoBatch,
    Plan,
    Policy,
    RandomSubset,
    RandomTwin,
    ShardedPlan,
    StaticPruning,
)
from lightning_curricula.policies._sampler import shard_positions

SIZE = 211  # prime: shards of unequal sizes for every W
EPOCHS = 4
SEED = 5

SHARDED_POLICIES = {
    "full": FullData(),
    "random": RandomSubset(0.4),
    "random_static": RandomSubset(0.4, static=True),
    "easy_to_hard": Curriculum(start=0.3, saturation=1.0),
    "hard_to_easy": Curriculum("el2n", order="hard_to_easy", start=0.3),
    "random_order": Curriculum(order="random", start=0.3),
    "static_hard": StaticPruning("el2n", keep=0.5),
    "static_band": StaticPruning("loss", keep=0.4, mode="band", band_offset=0.1),
    "infobatch": InfoBatch(0.6),
    "bandit": Bandit(0.3),
    "twin_of_infobatch": RandomTwin(InfoBatch(0.6)),
}


def signals() -> dict[str, Tensor]:
    """A table with ties (rounded scores), never-seen examples (NaN) and an infinite score."""
    g = torch.Generator().manual_seed(0)
    loss = torch.round(torch.rand(SIZE, generator=g) * 20) / 10
    unseen = torch.rand(SIZE, generator=g) < 0.05
    loss[unseen] = math.nan
    el2n = torch.round(torch.rand(SIZE, generator=g) * 10) / 10
    el2n[unseen] = math.nan
    el2n[7] = math.inf
    epochs_seen = torch.where(unseen, 0, torch.randint(1, 3, (SIZE,), generator=g))
    return {
        "index": torch.arange(SIZE),
        "visits": epochs_seen.clone(),
        "epochs_seen": epochs_seen,
        "loss": loss,
        "loss_ema": loss * 0.9,
        "el2n": el2n,
    }


def context(epoch: int, table: dict[str, Tensor], shard: TableShard | None = None) -> EpochContext:
    return epoch_context(epoch, SIZE, table, num_epochs=EPOCHS, seed=SEED, shard=shard)


def unsharded_visits(policy: Policy, world: int, drop_last: bool) -> list[list[tuple[Tensor, Tensor]]]:
    """``[epoch][rank] -> (ids, weights)``: the strided shards of the whole-table plans."""
    table, policy = signals(), copy.deepcopy(policy)
    visits = []
    for epoch in range(EPOCHS):
        plan = policy.plan(context(epoch, table))
        assert isinstance(plan, Plan)
        positions = [shard_positions(len(plan), world, rank, drop_last) for rank in range(world)]
        visits.append([(plan.indices[p], plan.weights[p]) for p in positions])
    return visits


def sharded_visits(policy: Policy, world: int, drop_last: bool) -> list[list[tuple[Tensor, Tensor]]]:
    """The same from shards: each thread-rank plans from its slice of the table and takes its positions."""

    def rank_main(comm: ThreadCollectives) -> list[tuple[Tensor, Tensor]]:
        shard = TableShard(comm, SIZE)
        table = {key: value[shard.start : shard.stop] for key, value in signals().items()}
        own_policy = copy.deepcopy(policy)
        taken = []
        for epoch in range(EPOCHS):
            plan = own_policy.plan(context(epoch, table, shard))
            assert isinstance(plan, ShardedPlan)
            taken.append(plan.take(shard_positions(len(plan), world, comm.rank, drop_last)))
        return taken

    per_rank = ThreadCollectives.run(world, rank_main)
    return [[per_rank[rank][epoch] for rank in range(world)] for epoch in range(EPOCHS)]


@pytest.mark.parametrize("name", sorted(SHARDED_POLICIES))
@pytest.mark.parametrize(("world", "drop_last"), [(1, False), (2, False), (3, True), (4, False)])
def test_sharded_plans_give_every_rank_the_visits_of_the_unsharded_plan(name: str, world: int, drop_last: bool) -> None:
    policy = SHARDED_POLICIES[name]
    expected = unsharded_visits(policy, world, drop_last)
    actual = sharded_visits(policy, world, drop_last)
    for epoch in range(EPOCHS):
        for rank in range(world):
            assert torch.equal(actual[epoch][rank][0], expected[epoch][rank][0]), (epoch, rank)
            assert torch.equal(actual[epoch][rank][1], expected[epoch][rank][1]), (epoch, rank)
    assert any(ids.numel() for ids, _ in expected[-1])


def test_the_policies_that_read_the_whole_table_are_refused_at_setup() -> None:
    dynamics = TrainingDynamics(sharded=True, num_examples=SIZE)
    for policy in (
        ImportanceSampling(0.5),
        InfoBatch(budget=0.8),
        Curriculum(order="balanced"),
        Bandit(0.5, strategy="epsilon_greedy"),
    ):
        with pytest.raises(ValueError, match="does not plan from tables sharded over the ranks"):
            CurriculumSampler(range(SIZE), policy, dynamics=dynamics, num_epochs=EPOCHS)
    CurriculumSampler(range(SIZE), InfoBatch(0.5), dynamics=dynamics, num_epochs=EPOCHS)  # supported: no error
