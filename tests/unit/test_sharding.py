"""Sharded primitives on simulated ranks (threads of one process): identical to the unsharded computation.

The same scenario runs on 2 and 4 gloo processes in tests/distributed/test_sharded_primitives.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from sharding_scenario import scenario

from lightning_curricula.distributed import ThreadCollectives, kth_smallest, owners, shard_bounds


@pytest.mark.parametrize(("world", "n"), [(1, 50), (3, 101), (5, 64), (4, 3)])
def test_sharded_primitives_equal_the_unsharded_ones(world: int, n: int, tmp_path: Path) -> None:
    results = ThreadCollectives.run(world, lambda comm: scenario(comm, n, str(tmp_path)))
    failed = sorted({name for checks in results for name, passed in checks.items() if not passed})
    assert failed == []
    assert "parquet shards load in id order" in results[0]


@pytest.mark.parametrize(("n", "world"), [(10, 4), (3, 5), (1000, 7), (7, 7)])
def test_owners_match_the_shard_bounds(n: int, world: int) -> None:
    expected = torch.cat(
        [torch.full((b - a,), r) for r, (a, b) in enumerate(shard_bounds(n, world, r) for r in range(world))]
    )
    assert torch.equal(owners(torch.arange(n), n, world), expected)


def test_kth_smallest_handles_signed_zeros_infinities_and_subnormals() -> None:
    values = torch.tensor([0.0, -0.0, float("-inf"), float("inf"), 1e-45, -1e-45, 3.5, float("nan")])
    expected = torch.sort(values).values.tolist()  # NaN after +inf
    assert math.isnan(expected[-1])
    assert expected[-2] == float("inf")
    for k in range(1, values.numel() + 1):
        got = ThreadCollectives.run(2, lambda comm, k=k: kth_smallest(values[comm.rank :: 2], k, comm))
        if k == values.numel():
            assert math.isnan(got[0])
            assert math.isnan(got[1])
        else:
            assert got[0] == got[1] == expected[k - 1]


def test_kth_smallest_refuses_k_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"k must be in \[1, 4\] .* got 5"):
        ThreadCollectives.run(2, lambda comm: kth_smallest(torch.zeros(2), 5, comm))
