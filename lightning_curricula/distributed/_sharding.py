"""Tables sharded by example id, and the plans made from them, with a few small collectives.

Rank ``r`` of ``W`` owns the contiguous ids ``[r * N // W, (r + 1) * N // W)`` (`shard_bounds`), so its memory
is ``N x bytes / W`` and concatenating the shards in rank order gives the tables in id order. Each primitive is
identical to its unsharded counterpart, not an approximation:

- `reduce_records`: each rank's per-step records (ids and values, as many as its visits) go to the owners of
  the ids (one all-to-all) and are summed there in rank order, then step order;
- `kth_smallest`: the exact ``k``-th smallest value of a sharded column by radix refinement of the
  float's bits, two all-reduces of a 65,536-bin histogram, never a gather of the N values;
- `easiest_set_shard`: this rank's part of `easiest_set` (ties to the lower id) from that value and one
  all-gather of the tie counts;
- `permuted_shard`: this rank's positions of a `keyed_permutation` of a selected set that is itself
  spread over the ranks (two all-to-alls: the requests and the answers);
- `write_parquet_shard`: one parquet file per shard that ``datasets.load_dataset("parquet", ...)`` loads
  as one dataset in id order; `check_world_size`: refuses a checkpoint written by another number of ranks.

`TableShard` bundles a rank's slice and its collectives; the selection kernels take it as ``shard=`` and
call its methods, so a policy that plans from shards has one code path for both kinds of tables
(`lightning_curricula.policies.ShardedPlan` is the plan they make).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lightning_curricula.distributed._collectives import Collectives, ProcessGroupCollectives
from lightning_curricula.distributed._keyed import keyed_permutation

__all__ = [
    "TableShard",
    "check_world_size",
    "easiest_set_shard",
    "kth_smallest",
    "owners",
    "permuted_shard",
    "reduce_records",
    "shard_bounds",
    "shard_file_name",
    "write_parquet_shard",
]

_DIGIT_BITS = 16  # two rounds of 2**16-bin histograms pin down a float32's 32 bits


def shard_bounds(num_examples: int, world_size: int, rank: int) -> tuple[int, int]:
    """``(start, stop)``: the ids rank ``rank`` owns, ``[rank * N // W, (rank + 1) * N // W)``.

    Examples:
        >>> [shard_bounds(10, 4, rank) for rank in range(4)]
        [(0, 2), (2, 5), (5, 7), (7, 10)]
    """
    return rank * num_examples // world_size, (rank + 1) * num_examples // world_size


def owners(ids: Tensor, num_examples: int, world_size: int) -> Tensor:
    """The rank owning each id: the largest ``r`` with ``r * N // W <= id``, that is ``((id + 1) * W - 1) // N``.

    Examples:
        >>> owners(torch.arange(10), 10, 4).tolist()
        [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    """
    return torch.div((ids.long() + 1) * world_size - 1, num_examples, rounding_mode="floor")


@dataclass(frozen=True)
class TableShard:
    """This rank's slice of the example ids, ``[start, stop)`` of `shard_bounds`, and the collectives of the ranks.

    Every method that takes collectives must be called by every rank, in the same order.

    Examples:
        >>> from lightning_curricula.distributed._collectives import ThreadCollectives
        >>> ThreadCollectives.run(2, lambda comm: TableShard(comm, 5).total(torch.tensor([1.0, 2.0])).tolist())
        [[2.0, 4.0], [2.0, 4.0]]
    """

    comm: Collectives
    num_examples: int

    @classmethod
    def of_process_group(cls, num_examples: int) -> TableShard:
        """This rank's shard of ``num_examples`` ids among the ranks of the default process group (or one process)."""
        return cls(ProcessGroupCollectives(), num_examples)

    @property
    def start(self) -> int:
        """The first id this rank owns."""
        return shard_bounds(self.num_examples, self.comm.world_size, self.comm.rank)[0]

    @property
    def stop(self) -> int:
        """One past the last id this rank owns."""
        return shard_bounds(self.num_examples, self.comm.world_size, self.comm.rank)[1]

    def total(self, values: Tensor) -> Tensor:
        """The elementwise sum of ``values`` over the ranks, in float64 (a collective)."""
        return self.comm.all_reduce_sum(values.double())

    def owners(self, ids: Tensor) -> Tensor:
        """The rank that owns each id."""
        return owners(ids, self.num_examples, self.comm.world_size)

    def reduce_records(self, ids: Tensor, values: Tensor) -> Tensor:
        """This rank's rows of the sum of every rank's per-visit ``values`` by ``ids`` (see `reduce_records`)."""
        return reduce_records(ids, values, self.num_examples, self.comm)

    def easiest_set(self, difficulty: Tensor, count: int, *, hardest: bool = False) -> Tensor:
        """This rank's ids (global, in id order) of `easiest_set` over all ranks' ``difficulty`` shards."""
        return easiest_set_shard(difficulty, count, self.start, self.comm, hardest=hardest)


def _route(tensors: list[Tensor], destinations: Tensor, comm: Collectives) -> tuple[list[Tensor], Tensor]:
    """Send row ``i`` of each tensor to rank ``destinations[i]`` (one all-to-all per tensor).

    Returns the rows received, grouped by source rank in rank order, each source's rows in their order,
    and the source rank of each row.
    """
    order = torch.sort(destinations, stable=True).indices
    counts = torch.bincount(destinations, minlength=comm.world_size).tolist()
    received, sources = [], torch.empty(0, dtype=torch.int64)
    for tensor in tensors:
        parts = comm.all_to_all(list(torch.index_select(tensor, 0, order).split_with_sizes(counts)))
        sources = torch.repeat_interleave(torch.arange(comm.world_size), torch.tensor([len(p) for p in parts]))
        received.append(torch.cat(parts))
    return received, sources


def reduce_records(ids: Tensor, values: Tensor, num_examples: int, comm: Collectives) -> Tensor:
    """Sum per-visit records into this rank's shard of a table: ``(stop - start, columns)``.

    The unsharded table is ``table.index_add_(0, ids, values)`` over every rank's records in rank order;
    here each rank holds only its own records (``O(its visits)``, not a dense ``(N, columns)``
    accumulator), routes them to the owners, and each owner adds what it receives in that same order, so
    the shard equals that table's rows ``start:stop`` bit for bit.

    Args:
        ids: ``(m,)`` example ids visited on this rank, in step order.
        values: ``(m, columns)`` what each visit adds.
        num_examples: N.
        comm: this rank's collectives.
    """
    start, stop = shard_bounds(num_examples, comm.world_size, comm.rank)
    (ids_in, values_in), _ = _route([ids.long(), values], owners(ids, num_examples, comm.world_size), comm)
    table = values.new_zeros((stop - start, *values.shape[1:]))
    return table.index_add_(0, ids_in - start, values_in)


_NAN_KEY = 1 << 32  # above every float32's key: NaN (unseen) ranks after +inf


def _sortable(values: Tensor) -> Tensor:
    """Float32 values as int64 keys in ``[0, 2**32]`` with the same order, equal exactly where the floats are equal.

    ``-0.0`` becomes ``0.0`` (adding ``+0.0`` does that), as float comparisons make them equal; NaN gets the
    key ``2**32``, above ``+inf``'s.
    """
    values = values.float() + 0.0
    bits = values.view(torch.int32).long()
    keys = torch.where(bits >= 0, bits + (1 << 31), -1 - bits)
    return keys.masked_fill_(torch.isnan(values), _NAN_KEY)


def _unsortable(key: int) -> float:
    if key == _NAN_KEY:
        return math.nan
    bits = key - (1 << 31) if key >= 1 << 31 else -1 - key
    return float(torch.tensor(bits, dtype=torch.int32).view(torch.float32))


def kth_smallest(values: Tensor, k: int, comm: Collectives) -> float:
    """The exact ``k``-th smallest (1-based) of the values of all the ranks, as ``torch.sort`` would order them.

    Radix selection on the 32 bits of each float32 (mapped to order-preserving integers): one
    all-reduce of a histogram of the high 16 bits finds the bin holding the ``k``-th value, a second of
    the low 16 bits within that bin finds the value. Two collectives of 512 KiB, whatever N and W.
    NaN ranks after ``+inf`` (the result is NaN when the ``k``-th value is).

    Raises:
        ValueError: unless ``1 <= k <=`` the number of values over all ranks.
    """
    return _unsortable(_kth_smallest_key(_sortable(values.reshape(-1)), k, comm))


def _kth_smallest_key(keys: Tensor, k: int, comm: Collectives) -> int:
    """The ``k``-th smallest of the ranks' `_sortable` keys (see `kth_smallest`)."""
    total = comm.all_gather_int(keys.numel())
    if not 1 <= k <= sum(total):
        raise ValueError(f"k must be in [1, {sum(total)}] (the number of values over all ranks), got {k!r}.")
    low_mask = (1 << _DIGIT_BITS) - 1
    # The high digit first, over all keys (2**16 + 1 bins: the NaN key's high digit is 2**16), then the low
    # digit within the high digit's bin. Every rank's histograms have these sizes.
    high = _kth_digit(keys >> _DIGIT_BITS, (1 << _DIGIT_BITS) + 1, k, comm)
    in_bin = torch.masked_select(keys, (keys >> _DIGIT_BITS) == high.digit)
    low = _kth_digit(in_bin & low_mask, 1 << _DIGIT_BITS, high.rank, comm)
    return (high.digit << _DIGIT_BITS) | low.digit


@dataclass(frozen=True)
class _Digit:
    digit: int  # the bin holding the k-th key
    rank: int  # the k-th key's rank within that bin (1-based)


def _kth_digit(digits: Tensor, bins: int, k: int, comm: Collectives) -> _Digit:
    """The bin of the ``k``-th smallest of the ranks' ``digits``, from one all-reduce of their histogram."""
    cumulative = comm.all_reduce_sum(torch.bincount(digits, minlength=bins)).cumsum(0)
    digit = int(torch.searchsorted(cumulative, torch.tensor(k)))  # first bin whose cumulative count >= k
    return _Digit(digit, k - (int(cumulative[digit - 1]) if digit else 0))


def easiest_set_shard(
    difficulty: Tensor, count: int, start: int, comm: Collectives, *, hardest: bool = False
) -> Tensor:
    """This rank's ids of ``easiest_set(all difficulties, count, hardest=hardest)``: global ids, in id order.

    ``difficulty`` is this rank's shard (ids ``start, start + 1, ...``). The boundary value is
    `kth_smallest`; its ties go to the lower ids, that is to the lower ranks first (one all-gather of
    each rank's tie count). NaN (unseen) comes last in both directions.
    """
    key = _sortable(-difficulty.float() if hardest else difficulty.float())  # integers: NaN after +inf, exactly
    total = sum(comm.all_gather_int(key.numel()))
    count = min(max(count, 0), total)
    if count == 0:
        return torch.empty(0, dtype=torch.int64)
    kth = _kth_smallest_key(key, count, comm)
    chosen = key < kth
    below = sum(comm.all_gather_int(int(chosen.sum())))
    ties = (key == kth).nonzero().squeeze(1)
    before = comm.all_gather_int(ties.numel())[: comm.rank]
    take = min(ties.numel(), max(0, count - below - sum(before)))
    chosen[ties[:take]] = True
    return chosen.nonzero().squeeze(1) + start


def permuted_shard(
    selected: Tensor, key: int, positions: Tensor, comm: Collectives, weights: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Ids (and weights) at ``positions`` of ``shuffled_plan`` of a selected set spread over the ranks.

    The whole set is the ranks' ``selected`` ids concatenated in rank order (``M`` ids); the plan is that set
    in the order of ``keyed_permutation(M, key)``. Each rank evaluates the permutation at its own
    ``positions`` (for the sampler's rank ``r``: ``r, r + W, ...``), asks the ranks holding those entries
    for them, and gets them back: two all-to-alls of ``O(len(positions))``, nothing of size ``M``.

    Returns:
        ``(ids, weights)`` in the order of ``positions``; weights are ones without ``weights``.
    """
    sizes = comm.all_gather_int(selected.numel())
    offsets = torch.tensor([0, *sizes]).cumsum(0)
    wanted = keyed_permutation(int(offsets[-1]), key, positions)
    holders = torch.searchsorted(offsets[1:], wanted, right=True)  # the rank holding each wanted entry
    (origin, asked), askers = _route([torch.arange(wanted.numel()), wanted], holders, comm)
    local = asked - int(offsets[comm.rank])
    values = torch.ones(selected.numel()) if weights is None else weights.float()
    answers = [origin, torch.index_select(selected.long(), 0, local), torch.index_select(values, 0, local)]
    (origin, ids_back, weights_back), _ = _route(answers, askers, comm)  # back to the askers
    ids = torch.empty(wanted.numel(), dtype=torch.int64).index_copy_(0, origin, ids_back)
    return ids, torch.empty(wanted.numel()).index_copy_(0, origin, weights_back)


def check_world_size(saved: int, current: int) -> None:
    """Refuse to load sharded state written by ``saved`` ranks into a run of ``current`` ranks."""
    if saved != current:
        raise ValueError(
            f"This checkpoint's tables are sharded over {saved} ranks, but this run has {current}: each rank holds "
            f"the ids it owns, so resume on {saved} ranks (or export the tables and start a new tracker)."
        )


def shard_file_name(rank: int, world_size: int, *, suffix: str = "parquet") -> str:
    """``shard-00003-of-00008.parquet``: names that sort in rank order, hence in id order."""
    return f"shard-{rank:05d}-of-{world_size:05d}.{suffix}"


def write_parquet_shard(columns: dict[str, Tensor], directory: str | Path, comm: Collectives) -> Path | None:
    """Write this rank's shard of a table as ``directory / shard_file_name(rank, W)``; returns the path.

    Loading ``sorted(directory.glob("shard-*.parquet"))`` with ``datasets.load_dataset("parquet",
    data_files=..., split="train")`` gives one dataset, a row per id in id order. A rank that owns no
    ids (``N < W``) writes no file (``datasets`` cannot read an empty parquet file) and returns ``None``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if all(column.numel() == 0 for column in columns.values()):
        return None
    path = Path(directory) / shard_file_name(comm.rank, comm.world_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({name: column.numpy() for name, column in columns.items()}), path)
    return path
