"""Streams: shard an iterable dataset by rank and by worker, and give string ids a stable integer.

`ShardedStream` turns any re-iterable stream (a ``torch.utils.data.IterableDataset``, a Hugging Face
``datasets.IterableDataset`` from ``streaming=True``, a list) into this rank's batches, each example
exactly once per epoch across all ranks and workers, with the same number of batches on every rank.
`lightning_curricula.StreamDynamics` tracks such a stream by a stable id column (`stable_id`). The
epoch policies (`CurriculumSampler`) need a dense ``0 .. N-1`` index and keep refusing streams;
selection inside the step (`OnlineBatchSelection`) works on any batch.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from torch.utils.data import IterableDataset, default_collate, get_worker_info
from typing_extensions import override

from lightning_curricula.distributed._collectives import world_and_rank

__all__ = ["ShardedStream", "stable_id"]


class ShardedStream(IterableDataset[Any]):
    """This rank's and this worker's batches of a stream: every example once per epoch, equal batch counts.

    The stream is cut into rounds of ``num_replicas * batch_size`` consecutive examples; in round ``t``,
    rank ``r`` takes the ``r``-th block of ``batch_size`` examples, and the rank's DataLoader worker
    ``t % num_workers`` collates it into one batch. The stream yields *batches*: build the loader with
    ``DataLoader(stream, batch_size=None, num_workers=...)``, so a worker's batches are exactly these
    blocks. The last round, of ``R < num_replicas * batch_size`` examples, is split into ``num_replicas``
    contiguous parts as equal as possible (sizes differ by at most one).

    How equal batch counts are guaranteed (ranks that yield different numbers of batches hang DDP):
    every rank gets exactly one batch per round, the last round included, so each rank yields
    ``ceil(N / (num_replicas * batch_size))`` batches for a stream of ``N`` examples, whatever the number
    of workers. Each worker reads the whole stream and keeps its own rounds; the reading (not the
    collating or the training) is repeated ``num_replicas * num_workers`` times, which suits streams whose
    cost is in tokenising and training, not reading. Only when the last round has fewer examples than
    ranks (``R < num_replicas``) does a rank without one get a repeat of one of the round's examples,
    as ``DistributedSampler`` pads.

    Args:
        source: the stream, re-iterable, in an order that is the same in every process for a given
            epoch (a seeded ``shuffle`` is; the global RNG is not). A Hugging Face ``IterableDataset`` is
            read with ``.iter(batch_size=...)``, which does not split it by worker itself; any other source
            must not split itself by ``get_worker_info()`` either.
        batch_size: examples per batch; give the ``DataLoader`` ``batch_size=None``.
        collate_fn: turns a list of examples into a batch (``default_collate``).
        num_replicas: the number of ranks; the process group's when ``None``.
        rank: this rank; the process group's when ``None``.

    Examples:
        >>> stream = ShardedStream([{"id": i} for i in range(7)], batch_size=2, num_replicas=2, rank=1)
        >>> [batch["id"].tolist() for batch in stream]
        [[2, 3], [6]]

    Note:
        **DDP**: build it inside ``train_dataloader()`` (after the process group exists) or pass
        ``num_replicas`` and ``rank``. **Epochs and resume**: the order is the source's; `set_epoch`
        passes the epoch on to a source that has one (a shuffled Hugging Face stream). Lightning calls
        ``set_epoch`` on samplers only, so call ``stream.set_epoch(self.trainer.current_epoch)`` in
        ``train_dataloader()`` with ``reload_dataloaders_every_n_epochs=1`` (and no persistent workers);
        a run resumed at an epoch boundary then reads exactly the epochs an uninterrupted run reads.
    """

    def __init__(
        self,
        source: Iterable[Any],
        *,
        batch_size: int,
        collate_fn: Callable[[list[Any]], Any] = default_collate,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if not isinstance(source, Iterable):
            raise TypeError(f"source must be an iterable stream, got {type(source).__name__}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        self.source = source
        self.batch_size = batch_size
        self.collate_fn = collate_fn
        self.num_replicas, self.rank = world_and_rank(num_replicas, rank)
        self.epoch = 0

    @property
    def round_size(self) -> int:
        """Examples per round: one batch for every rank."""
        return self.num_replicas * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        """Record the epoch and pass it on to the source when it has ``set_epoch`` (a shuffled HF stream)."""
        self.epoch = epoch
        set_epoch = getattr(self.source, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)

    @property
    def column_names(self) -> list[str] | None:
        """The source's column names when it declares them (a Hugging Face stream), else ``None``."""
        names = getattr(self.source, "column_names", None)
        return list(names) if isinstance(names, Sequence) and not isinstance(names, str) else None

    @property
    def num_examples(self) -> int | None:
        """The examples of an epoch over all ranks: the source's length ``N``, or ``None`` when it has none."""
        try:
            return len(self.source)  # type: ignore[arg-type]
        except TypeError:
            return None

    def __len__(self) -> int:
        """Batches per rank, ``ceil(N / round_size)``, when the source has a length ``N``."""
        return math.ceil(len(self.source) / self.round_size)  # type: ignore[arg-type]

    @override
    def __iter__(self) -> Iterator[Any]:
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        for number, examples in enumerate(self._rounds()):
            if number % num_workers == worker_id:
                yield self.collate_fn(self._block(examples))

    def _rounds(self) -> Iterator[list[Any]]:
        iter_batches = getattr(self.source, "iter", None)
        if _is_hf_iterable(self.source) and callable(iter_batches):
            for columns in iter_batches(batch_size=self.round_size):
                size = len(next(iter(columns.values()))) if columns else 0
                yield [{key: values[i] for key, values in columns.items()} for i in range(size)]
            return
        examples = iter(self.source)
        while chunk := list(itertools.islice(examples, self.round_size)):
            yield chunk

    def _block(self, examples: list[Any]) -> list[Any]:
        if len(examples) == self.round_size:
            return examples[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        base, extra = divmod(len(examples), self.num_replicas)
        start = self.rank * base + min(self.rank, extra)
        block = examples[start : start + base + (self.rank < extra)]
        return block or [examples[self.rank % len(examples)]]  # fewer examples than ranks: pad with a repeat


def _is_hf_iterable(source: object) -> bool:
    return any(
        cls.__module__.startswith("datasets.") and cls.__name__ == "IterableDataset" for cls in type(source).__mro__
    )


def stable_id(text: str) -> int:
    """A 63-bit integer id for a string id (BLAKE2b), the same in every process and every run.

    Python's ``hash`` of a string changes between processes; map string ids with this before batching,
    e.g. ``stream.map(lambda row: {"id": stable_id(row["doc_id"])})``.

    Examples:
        >>> stable_id("doc-1") == stable_id("doc-1"), stable_id("doc-1") == stable_id("doc-2")
        (True, False)
    """
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1
