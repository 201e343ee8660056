"""Sharded primitives on 2 and 4 gloo processes (``mp.spawn``, ``file://`` rendezvous): identical to unsharded.

Each rank runs `sharding_scenario.scenario` (reduced tables from routed per-step records, the exact k-th
smallest value, easiest/hardest sets with ties, its shard of a keyed permutation of a distributed set,
parquet shards loading as one dataset, the resume guard) and saves ``{check: passed}``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from sharding_scenario import spawned_rank

SIZE = 203  # not divisible by 2 or 4: shards of different sizes


@pytest.mark.parametrize("world", [2, 4])
def test_sharded_primitives_equal_the_unsharded_ones_on_gloo(world: int, tmp_path: Path) -> None:
    mp.spawn(spawned_rank, args=(world, str(tmp_path / "rendezvous"), SIZE, str(tmp_path)), nprocs=world)
    results = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(world)]
    failed = sorted({name for checks in results for name, passed in checks.items() if not passed})
    assert failed == []
    assert len(results[0]) > len(results[1])  # rank 0 also loaded the parquet shards
    assert all("permuted_shard drop_last=False" in checks for checks in results)
