"""The one module that asks `torch.distributed` about the process group."""

from __future__ import annotations

import torch.distributed as dist

__all__ = ["world_and_rank"]


def world_and_rank(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """``(num_replicas, rank)``: the given values, else the process group's, else ``(1, 0)``.

    Unlike ``DistributedSampler``, a single process without a process group is not an error.
    """
    initialized = dist.is_available() and dist.is_initialized()
    world = num_replicas if num_replicas is not None else (dist.get_world_size() if initialized else 1)
    this = rank if rank is not None else (dist.get_rank() if initialized else 0)
    if world < 1 or not 0 <= this < world:
        raise ValueError(f"Invalid rank {this} for num_replicas {world}: need 0 <= rank < num_replicas.")
    return world, this
