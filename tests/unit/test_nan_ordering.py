"""Unseen examples (NaN) rank after every score, +inf included, in both directions, sharded or not.

`forgetting_events` gives seen-but-never-learned examples a difficulty of +inf; examples never seen
are NaN. Ranking easiest first (or hardest first), the order is: the scores by key, then NaN, ties
by the lower id. The reference below sorts with Python on ``(is NaN, key, id)``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_curricula.distributed import TableShard, ThreadCollectives, easiest_set_shard
from lightning_curricula.policies.selection import (
    easiest_band,
    easiest_first,
    easiest_mask,
    easiest_prefix,
    easiest_set,
    grouped_easiest_band,
)

NAN, INF = math.nan, math.inf
VALUES = st.sampled_from([NAN, INF, -INF, 0.0, 1.0, -1.0, 2.5])


def reference_order(values: list[float], *, hardest: bool) -> list[int]:
    def key(i: int) -> tuple[bool, float, int]:
        value = values[i]
        if math.isnan(value):
            return (True, 0.0, i)
        return (False, -value if hardest else value, i)

    return sorted(range(len(values)), key=key)


def test_the_reported_case():
    difficulty = torch.tensor([NAN, INF, 1.0, NAN, INF])
    assert easiest_first(difficulty).tolist() == [2, 1, 4, 0, 3]
    assert easiest_first(difficulty, hardest=True).tolist() == [1, 4, 2, 0, 3]
    assert easiest_set(difficulty, 3).tolist() == [1, 2, 4]


@pytest.mark.parametrize("hardest", [False, True])
def test_minus_inf_difficulty_ranks_before_unseen_hardest_first(hardest):
    difficulty = torch.tensor([NAN, -INF, 0.0, NAN, -INF])
    assert easiest_first(difficulty, hardest=hardest).tolist() == reference_order(difficulty.tolist(), hardest=hardest)
    assert easiest_set(difficulty, 3, hardest=hardest).tolist() == sorted(
        reference_order(difficulty.tolist(), hardest=hardest)[:3]
    )


@settings(max_examples=200, deadline=None)
@given(values=st.lists(VALUES, min_size=1, max_size=40), hardest=st.booleans(), data=st.data())
def test_every_kernel_ranks_nan_last(values, hardest, data):
    difficulty = torch.tensor(values)
    order = reference_order(values, hardest=hardest)
    count = data.draw(st.integers(0, len(values)))
    skip = data.draw(st.integers(0, len(values) - count))
    assert easiest_first(difficulty, hardest=hardest).tolist() == order
    assert easiest_prefix(difficulty, count, hardest=hardest).tolist() == order[:count]
    assert easiest_set(difficulty, count, hardest=hardest).tolist() == sorted(order[:count])
    assert easiest_mask(difficulty, count, hardest=hardest).nonzero().squeeze(1).tolist() == sorted(order[:count])
    assert easiest_band(difficulty, skip, count, hardest=hardest).tolist() == sorted(order[skip : skip + count])


@pytest.mark.parametrize("hardest", [False, True])
def test_a_group_keeps_its_infinite_score_before_its_unseen_example(hardest):
    infinite = -INF if hardest else INF
    chosen = grouped_easiest_band(
        torch.tensor([NAN, infinite, 0.0]), torch.tensor([0, 0, 1]), [0, 0], [1, 1], hardest=hardest
    )
    assert chosen.tolist() == [1, 2]


@settings(max_examples=100, deadline=None)
@given(values=st.lists(VALUES, min_size=1, max_size=40), hardest=st.booleans(), data=st.data())
def test_groups_rank_nan_last_within_each_group(values, hardest, data):
    groups = data.draw(st.lists(st.integers(0, 2), min_size=len(values), max_size=len(values)))
    counts = [data.draw(st.integers(0, groups.count(g))) for g in range(3)]
    expected = []
    for group in range(3):
        members = [i for i, g in enumerate(groups) if g == group]
        ranked = reference_order([values[i] for i in members], hardest=hardest)
        expected += [members[i] for i in ranked[: counts[group]]]
    chosen = grouped_easiest_band(torch.tensor(values), torch.tensor(groups), [0, 0, 0], counts, hardest=hardest)
    assert chosen.tolist() == sorted(expected)


@pytest.mark.parametrize("hardest", [False, True])
def test_large_tables_with_many_infinite_and_unseen_scores(hardest):
    # 200k scores: the kernels take their bracketed path (a strided sample), where ties at +inf hid.
    generator = torch.Generator().manual_seed(0)
    difficulty = torch.randint(0, 5, (200_000,), generator=generator).float()
    difficulty[torch.rand(200_000, generator=generator) < 0.2] = INF
    difficulty[torch.rand(200_000, generator=generator) < 0.2] = -INF
    difficulty[torch.rand(200_000, generator=generator) < 0.3] = NAN
    seen = int((~difficulty.isnan()).sum())
    expected = easiest_first(difficulty, hardest=hardest)
    assert not bool(difficulty[expected[:seen]].isnan().any())
    for count in (1, seen // 2, seen - 1, seen, seen + 1000):
        assert torch.equal(easiest_set(difficulty, count, hardest=hardest), torch.sort(expected[:count]).values)
    groups = torch.randint(0, 3, (200_000,), generator=generator)
    counts = [int((groups == g).sum()) * 3 // 4 for g in range(3)]
    chosen = grouped_easiest_band(difficulty, groups, [0, 0, 0], counts, hardest=hardest)
    assert not bool(difficulty[chosen].isnan().any()) or int(chosen.numel()) > seen


@settings(max_examples=60, deadline=None)
@given(values=st.lists(VALUES, min_size=1, max_size=30), hardest=st.booleans(), world=st.integers(1, 4), data=st.data())
def test_sharded_selection_equals_the_unsharded_one(values, hardest, world, data):
    difficulty = torch.tensor(values)
    count = data.draw(st.integers(0, len(values)))
    expected = easiest_set(difficulty, count, hardest=hardest).tolist()

    def rank_part(comm):
        shard = TableShard(comm, len(values))
        return easiest_set_shard(difficulty[shard.start : shard.stop], count, shard.start, comm, hardest=hardest)

    parts = ThreadCollectives.run(world, rank_part)
    assert torch.cat(parts).tolist() == expected
