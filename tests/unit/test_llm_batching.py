"""Length-grouped batching of the LLM recipe: a permutation of each rank's planned visits, with less padding."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch
from lightning_curricula.recipes.llm.batching import (
    LengthGroupedSampler,
    length_grouped_order,
    padding_counts,
)
from selection_helpers import FixedPlan

from lightning_curricula import CurriculumSampler, FullData


def lengths_of(count: int, seed: int = 0) -> torch.Tensor:
    """Lengths spread like the testbed's families (about 20 to 150 tokens)."""
    return torch.randint(20, 150, (count,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("size", "batch_size", "mega_batches"), [(100, 8, 4), (37, 5, 3), (7, 8, 2), (64, 8, 1)])
def test_the_order_is_a_permutation_whose_batches_are_runs_of_sorted_windows(
    size: int, batch_size: int, mega_batches: int
) -> None:
    lengths = lengths_of(size)
    order = length_grouped_order(
        lengths, batch_size, mega_batches=mega_batches, generator=torch.Generator().manual_seed(1)
    )
    assert sorted(order.tolist()) == list(range(size))
    window = batch_size * mega_batches
    for start in range(0, size, window):  # each window keeps its own positions: the plan's order across windows
        assert set(order[start : start + window].tolist()) == set(range(start, min(start + window, size)))
    # Every run of batch_size a DataLoader cuts is sorted: the short batch ends the epoch, so none straddles two.
    for batch in order.split(batch_size):
        inside = lengths[batch]
        assert torch.equal(inside, inside.sort(descending=True).values)


def test_grouping_saves_padding_and_one_batch_windows_save_none() -> None:
    lengths = lengths_of(512)
    plain, real = padding_counts(lengths, 16)
    grouped, grouped_real = padding_counts(lengths[length_grouped_order(lengths, 16, generator=torch.Generator())], 16)
    assert grouped_real == real
    assert grouped < plain / 4  # 32 batches sorted together: near-equal lengths in each
    alone, _ = padding_counts(
        lengths[length_grouped_order(lengths, 16, mega_batches=1, generator=torch.Generator())], 16
    )
    assert alone == plain  # sorting inside each batch leaves its maximum where it was


def test_bad_arguments_are_refused_with_their_values() -> None:
    with pytest.raises(ValueError, match="one-dimensional"):
        length_grouped_order(torch.ones(2, 2), 2, generator=torch.Generator())
    with pytest.raises(ValueError, match="got 0 and 50"):
        length_grouped_order(torch.ones(4), 0, generator=torch.Generator())
    with pytest.raises(ValueError, match=r"one value per example \(5\), got shape \(4,\)"):
        LengthGroupedSampler(range(5), lengths=[1, 2, 3, 4], batch_size=2)


def visits(sampler: CurriculumSampler, epoch: int) -> list[tuple[int, float]]:
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("drop_last", [False, True])
def test_each_rank_yields_a_permutation_of_its_planned_visits_the_same_way_every_time(drop_last: bool) -> None:
    size, batch_size = 203, 8
    lengths = lengths_of(size)
    # A plan with repeats and weights other than 1, as a reweighting policy makes: each pair must survive intact.
    generator = torch.Generator().manual_seed(5)
    ids = torch.randint(0, size, (181,), generator=generator).tolist()
    weights = (torch.rand(181, generator=generator) + 0.5).tolist()
    policy = FixedPlan(ids, weights)
    options: dict[str, Any] = {"num_replicas": 2, "drop_last": drop_last, "seed": 3}
    for rank in (0, 1):
        plain = CurriculumSampler(range(size), policy, rank=rank, **options)
        grouped = LengthGroupedSampler(
            range(size), policy, lengths=lengths, batch_size=batch_size, mega_batches=4, rank=rank, **options
        )
        twin = LengthGroupedSampler(
            range(size), policy, lengths=lengths, batch_size=batch_size, mega_batches=4, rank=rank, **options
        )
        assert len(grouped) == len(plain)
        for epoch in (0, 1):
            planned, mine = visits(plain, epoch), visits(grouped, epoch)
            assert Counter(mine) == Counter(planned)  # the same (index, weight) visits, reordered
            assert mine != planned
            assert visits(twin, epoch) == mine  # another process's sampler for this rank: the same order
            assert visits(grouped, epoch) == mine  # iterating again: the same order
            before = padding_counts([lengths[i] for i, _ in planned], batch_size)[0]
            assert padding_counts([lengths[i] for i, _ in mine], batch_size)[0] < before
        assert visits(grouped, 0) != visits(grouped, 1)  # the batches are shuffled anew each epoch
    lengths_by_rank = {
        rank: len(LengthGroupedSampler(range(size), policy, lengths=lengths, batch_size=8, rank=rank, **options))
        for rank in (0, 1)
    }
    assert lengths_by_rank[0] == lengths_by_rank[1]  # equal batch counts on every rank: DDP cannot hang


def test_the_seed_changes_the_order_and_not_the_visits() -> None:
    lengths = lengths_of(96)
    orders = [
        visits(LengthGroupedSampler(range(96), FullData(), lengths=lengths, batch_size=4, seed=seed), 0)
        for seed in (0, 1)
    ]
    assert orders[0] != orders[1]
    plan = visits(CurriculumSampler(range(96), FullData(), seed=0), 0)
    assert Counter(orders[0]) == Counter(plan)


class RecordingPreselection:
    """Selection before loading that keeps the first half of each batch and records the shards it is given."""

    batch_size = 4
    drop_last = False
    kept_per_batch = 2

    def __init__(self) -> None:
        self.shards: list[list[int]] = []

    def kept_length(self, shard_size: int) -> int:
        full, rest = divmod(shard_size, self.batch_size)
        return full * self.kept_per_batch + min(rest, self.kept_per_batch)

    def kept_visits(self, indices: torch.Tensor, weights: torch.Tensor) -> Any:
        self.shards.append(indices.tolist())
        for start in range(0, indices.numel(), self.batch_size):
            yield from zip(indices[start : start + 2].tolist(), weights[start : start + 2].tolist(), strict=True)


def test_selection_before_loading_selects_inside_the_grouped_batches() -> None:
    lengths = lengths_of(40)
    preselection = RecordingPreselection()
    sampler = LengthGroupedSampler(
        range(40), FullData(), lengths=lengths, batch_size=4, mega_batches=10, batch_preselection=preselection
    )
    plain = visits(CurriculumSampler(range(40), FullData()), 0)
    kept = visits(sampler, 0)
    assert len(kept) == len(sampler) == 20
    (shard,) = preselection.shards
    assert sorted(shard) == sorted(index for index, _ in plain)  # it saw the whole shard, grouped
    assert padding_counts(lengths[shard], 4)[0] < padding_counts(lengths[[i for i, _ in plain]], 4)[0]
    assert [index for index, _ in kept] == [i for start in range(0, 40, 4) for i in shard[start : start + 2]]
