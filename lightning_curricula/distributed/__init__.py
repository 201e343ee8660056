"""Distributed: the ranks' collectives, tables sharded by example id, and keyed randomness every rank agrees on.

The lowest layer, used by tracking (the epoch-end reductions, sharded tables) and by the policies and
the sampler (plans made from shards, random orders evaluated at a rank's own positions). The one
place that touches ``torch.distributed`` is `lightning_curricula.distributed._collectives`.
"""

from lightning_curricula.distributed._collectives import (
    Collectives,
    ProcessGroupCollectives,
    ThreadCollectives,
    world_and_rank,
)
from lightning_curricula.distributed._keyed import derived_seed, generator_key, keyed_permutation, keyed_uniforms
from lightning_curricula.distributed._sharding import (
    TableShard,
    check_world_size,
    easiest_set_shard,
    kth_smallest,
    owners,
    permuted_shard,
    reduce_records,
    shard_bounds,
    shard_file_name,
    write_parquet_shard,
)

__all__ = [
    "Collectives",
    "ProcessGroupCollectives",
    "TableShard",
    "ThreadCollectives",
    "check_world_size",
    "derived_seed",
    "easiest_set_shard",
    "generator_key",
    "keyed_permutation",
    "keyed_uniforms",
    "kth_smallest",
    "owners",
    "permuted_shard",
    "reduce_records",
    "shard_bounds",
    "shard_file_name",
    "world_and_rank",
    "write_parquet_shard",
]
