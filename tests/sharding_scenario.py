"""One rank's run of every sharded primitive against the unsharded computation, for any `Collectives`.

Every rank builds the same full data from a seed (difficulties with ties and NaN, each rank's per-step
records), computes the sharded result with the collectives, computes the unsharded result locally, and
returns ``{check: passed}``. `tests/unit/test_sharding.py` runs it on threads, `tests/distributed/
test_sharded_primitives.py` on 2 and 4 gloo processes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from lightning_curricula.distributed import (
    Collectives,
    ProcessGroupCollectives,
    check_world_size,
    easiest_set_shard,
    generator_key,
    kth_smallest,
    permuted_shard,
    reduce_records,
    shard_bounds,
    write_parquet_shard,
)
from lightning_curricula.policies._sampler import shard_positions
from lightning_curricula.policies.selection import easiest_set, shuffled_plan

COLUMNS = 3


def full_difficulty(n: int) -> Tensor:
    """Values with many ties (rounded to tenths), some NaN (unseen), negative and positive."""
    g = torch.Generator().manual_seed(n)
    values = torch.round(torch.randn(n, generator=g) * 10) / 10
    values[torch.rand(n, generator=g) < 0.05] = float("nan")
    return values


def records_of(rank: int, n: int) -> tuple[Tensor, Tensor]:
    """Rank ``rank``'s per-step records: ids visited (repeats allowed) and float values to add."""
    g = torch.Generator().manual_seed(1000 + rank)
    visits = 3 * n // 2 + rank
    return torch.randint(n, (visits,), generator=g), torch.randn(visits, COLUMNS, generator=g)


def scenario(comm: Collectives, n: int, directory: str) -> dict[str, bool]:
    """Run every primitive on this rank; ``{check name: sharded == unsharded}``."""
    world, rank = comm.world_size, comm.rank
    start, stop = shard_bounds(n, world, rank)
    checks: dict[str, bool] = {}

    # Reduced tables: routed records summed by their owners = the dense table, rank order then step order.
    all_records = [records_of(r, n) for r in range(world)]
    reference = torch.zeros(n, COLUMNS).index_add_(
        0, torch.cat([ids for ids, _ in all_records]), torch.cat([values for _, values in all_records])
    )
    shard = reduce_records(*all_records[rank], n, comm)
    checks["reduce_records"] = torch.equal(shard, reference[start:stop])

    # Exact k-th smallest value (NaN after +inf, as torch.sort orders), for k at the ends, among ties and in between.
    difficulty = full_difficulty(n)
    ordered = torch.sort(difficulty).values
    for k in sorted({1, 2, n // 3, n // 2, n - 1, n} - {0}):
        got, expected = kth_smallest(difficulty[start:stop], k, comm), float(ordered[k - 1])
        checks[f"kth_smallest k={k}"] = got == expected or (math.isnan(got) and math.isnan(expected))

    # Easiest / hardest sets with ties to the lower id.
    for count in (0, 1, n // 4, n // 2, n):
        for hardest in (False, True):
            got = easiest_set_shard(difficulty[start:stop], count, start, comm, hardest=hardest)
            expected = easiest_set(difficulty, count, hardest=hardest)
            mine = expected[(expected >= start) & (expected < stop)]
            checks[f"easiest_set count={count} hardest={hardest}"] = torch.equal(got, mine)

    # A rank's shard of a keyed permutation of a distributed selected set, with weights.
    selected_full = easiest_set(difficulty, n // 2, hardest=True)
    weights_full = 1.0 + torch.arange(n, dtype=torch.float32) / n
    mine = selected_full[(selected_full >= start) & (selected_full < stop)]
    generator_seed = 77
    plan = shuffled_plan(selected_full, torch.Generator().manual_seed(generator_seed), weights_full[selected_full])
    for drop_last in (False, True):
        positions = shard_positions(len(plan), world, rank, drop_last)
        ids, weights = permuted_shard(
            mine, generator_key(torch.Generator().manual_seed(generator_seed)), positions, comm, weights_full[mine]
        )
        checks[f"permuted_shard drop_last={drop_last}"] = torch.equal(ids, plan.indices[positions]) and torch.equal(
            weights, plan.weights[positions]
        )

    # One parquet file per shard, loading as one dataset in id order.
    columns = {"loss": difficulty[start:stop], "visits": shard[:, 0]}
    write_parquet_shard(columns, directory, comm)
    comm.all_gather_int(0)  # a barrier: every shard is written
    if rank == 0:
        import datasets

        files = sorted(str(path) for path in Path(directory).glob("shard-*.parquet"))
        loaded = datasets.load_dataset(
            "parquet", data_files=files, split="train", cache_dir=str(Path(directory) / "cache")
        )
        checks["parquet shards load in id order"] = (
            len(files) == sum(1 for r in range(world) if shard_bounds(n, world, r)[1] > shard_bounds(n, world, r)[0])
            and torch.equal(torch.tensor(loaded["loss"]).nan_to_num(nan=-7.0), difficulty.nan_to_num(nan=-7.0))
            and torch.equal(torch.tensor(loaded["visits"]), reference[:, 0])
        )
    comm.all_gather_int(0)  # nobody removes the directory before rank 0 has read it

    # The resume guard.
    try:
        check_world_size(world + 1, world)
        checks["check_world_size refuses"] = False
    except ValueError as error:
        checks["check_world_size refuses"] = f"sharded over {world + 1} ranks, but this run has {world}" in str(error)
    check_world_size(world, world)
    return checks


def spawned_rank(rank: int, world: int, rendezvous: str, n: int, out: str) -> None:
    """``mp.spawn`` target: join the gloo group through a ``file://`` rendezvous and save this rank's checks."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        checks = scenario(ProcessGroupCollectives(), n, os.path.join(out, "parquet"))
        torch.save(checks, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
