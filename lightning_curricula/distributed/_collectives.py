"""The one module that touches `torch.distributed`: the process group's size and rank, and the few collectives.

`Collectives` is what sharded tables and plans need from the ranks: a sum, an all-gather of one integer per
rank and an all-to-all of variable-sized tensors. `ProcessGroupCollectives` runs them on the default process
group (gloo on CPU, NCCL on GPU); `ThreadCollectives` runs ``W`` ranks as threads of one process, to simulate
a sharded run on one machine with the same code.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["Collectives", "ProcessGroupCollectives", "ThreadCollectives", "world_and_rank"]


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


class Collectives(ABC):
    """The collectives of one rank among ``world_size``; every rank calls each one, in the same order."""

    def __init__(self, world_size: int, rank: int) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"Invalid rank {rank} for world_size {world_size}: need 0 <= rank < world_size.")
        self.world_size = world_size
        self.rank = rank
        #: Bytes this rank sent through the collectives so far (payload only), for the scale benchmarks.
        self.bytes_sent = 0

    @abstractmethod
    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """The elementwise sum of ``tensor`` over the ranks (a new tensor)."""

    @abstractmethod
    def all_gather_int(self, value: int) -> list[int]:
        """Every rank's ``value``, in rank order."""

    @abstractmethod
    def all_to_all(self, chunks: list[Tensor]) -> list[Tensor]:
        """Send ``chunks[r]`` to rank ``r``; return what each rank sent here, in rank order.

        The chunks share a dtype and their trailing dimensions; their first dimension may differ.
        """


class ProcessGroupCollectives(Collectives):
    """`Collectives` on the default ``torch.distributed`` process group (or one process without it).

    Tensors travel on the device the backend needs (this rank's GPU under NCCL, the CPU otherwise) and
    come back on the device they came from.
    """

    def __init__(self) -> None:
        super().__init__(*world_and_rank(None, None))
        nccl = self.world_size > 1 and dist.get_backend() == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:  # noqa: D102
        total = tensor.to(self.device, copy=True)
        self.bytes_sent += total.numel() * total.element_size()
        if self.world_size > 1:
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.to(tensor.device)

    def all_gather_int(self, value: int) -> list[int]:  # noqa: D102
        if self.world_size == 1:
            return [value]
        gathered = [torch.zeros((), dtype=torch.int64, device=self.device) for _ in range(self.world_size)]
        dist.all_gather(gathered, torch.tensor(value, dtype=torch.int64, device=self.device))
        self.bytes_sent += 8
        return [int(item) for item in gathered]

    def all_to_all(self, chunks: list[Tensor]) -> list[Tensor]:  # noqa: D102
        if len(chunks) != self.world_size:
            raise ValueError(f"all_to_all needs one chunk per rank ({self.world_size}), got {len(chunks)}.")
        self.bytes_sent += sum(c.numel() * c.element_size() for i, c in enumerate(chunks) if i != self.rank)
        if self.world_size == 1:
            return [chunks[0].clone()]
        sizes = torch.tensor([c.shape[0] for c in chunks], dtype=torch.int64, device=self.device)
        received_sizes = torch.empty_like(sizes)
        dist.all_to_all_single(received_sizes, sizes)  # one integer per pair of ranks first
        send = torch.cat(chunks).to(self.device).contiguous()
        receive = send.new_empty((int(received_sizes.sum()), *send.shape[1:]))
        dist.all_to_all_single(
            receive, send, output_split_sizes=received_sizes.tolist(), input_split_sizes=sizes.tolist()
        )
        return list(receive.to(chunks[0].device).split_with_sizes(received_sizes.tolist()))


class ThreadCollectives(Collectives):
    """`Collectives` among ``W`` threads of one process (see `ThreadCollectives.run`), for simulations and tests.

    Examples:
        >>> ThreadCollectives.run(3, lambda comm: comm.all_gather_int(comm.rank * 10))
        [[0, 10, 20], [0, 10, 20], [0, 10, 20]]
    """

    def __init__(self, world_size: int, rank: int, board: list[Any], barrier: threading.Barrier) -> None:
        super().__init__(world_size, rank)
        self._board = board
        self._barrier = barrier

    @staticmethod
    def run(world_size: int, function: Any) -> list[Any]:
        """``[function(comm) for each rank]``, the ranks running at once as threads; re-raises a rank's error."""
        board: list[Any] = [None] * world_size
        barrier = threading.Barrier(world_size)
        results: list[Any] = [None] * world_size
        errors: list[BaseException] = []

        def main(rank: int) -> None:
            try:
                results[rank] = function(ThreadCollectives(world_size, rank, board, barrier))
            except BaseException as error:  # noqa: BLE001 - handed to the caller below
                errors.append(error)
                barrier.abort()

        threads = [threading.Thread(target=main, args=(rank,)) for rank in range(world_size)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return results

    def _exchange(self, item: Any) -> list[Any]:
        self._board[self.rank] = item
        self._barrier.wait()
        everything = list(self._board)
        self._barrier.wait()  # nobody overwrites the board before everyone has read it
        return everything

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:  # noqa: D102
        self.bytes_sent += tensor.numel() * tensor.element_size()
        return torch.stack(self._exchange(tensor)).sum(0)

    def all_gather_int(self, value: int) -> list[int]:  # noqa: D102
        self.bytes_sent += 8
        return [int(item) for item in self._exchange(value)]

    def all_to_all(self, chunks: list[Tensor]) -> list[Tensor]:  # noqa: D102
        if len(chunks) != self.world_size:
            raise ValueError(f"all_to_all needs one chunk per rank ({self.world_size}), got {len(chunks)}.")
        self.bytes_sent += sum(c.numel() * c.element_size() for i, c in enumerate(chunks) if i != self.rank)
        return [sent[self.rank].clone() for sent in self._exchange(chunks)]
