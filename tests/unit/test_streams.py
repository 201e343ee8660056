"""Streams: rank and worker sharding covers every example exactly once per epoch with equal batch counts per
rank (torch and Hugging Face streams, real DataLoader workers), and the id-keyed tracker for streams."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

import datasets
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, IterableDataset

from lightning_curricula import ShardedStream, StreamDynamics, WithIndex, stable_id


class CountingStream(IterableDataset[dict[str, Any]]):
    """A torch stream of ``{"id", "x"}`` rows that does not shard itself."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(self.size):
            yield {"id": 1000 + i, "x": torch.full((2,), float(i))}


def hf_stream(size: int, shards: int = 3) -> datasets.IterableDataset:
    data = datasets.Dataset.from_dict({"id": list(range(1000, 1000 + size)), "text": [f"t{i}" for i in range(size)]})
    return data.to_iterable_dataset(num_shards=shards)


def read(stream: ShardedStream, num_workers: int = 0) -> list[list[int]]:
    loader = DataLoader(stream, batch_size=None, num_workers=num_workers)
    return [batch["id"].tolist() for batch in loader]


@settings(max_examples=80, deadline=None)
@given(size=st.integers(0, 60), world=st.integers(1, 4), batch=st.integers(1, 7))
def test_every_example_exactly_once_and_equal_batch_counts(size: int, world: int, batch: int) -> None:
    source = [{"id": i} for i in range(size)]
    per_rank = [
        [b["id"].tolist() for b in ShardedStream(source, batch_size=batch, num_replicas=world, rank=r)]
        for r in range(world)
    ]
    assert {len(batches) for batches in per_rank} == {math.ceil(size / (world * batch))}
    counts = Counter(i for batches in per_rank for b in batches for i in b)
    assert set(counts) == set(range(size))
    last_round = size % (world * batch)
    if last_round == 0 or last_round >= world:
        assert set(counts.values()) <= {1}
    else:  # fewer examples than ranks in the last round: the ranks without one get a repeat
        assert sum(counts.values()) == size + world - last_round
    for batches in per_rank:
        assert all(0 < len(b) <= batch for b in batches)


@pytest.mark.parametrize("kind", ["torch", "huggingface"])
def test_two_workers_on_two_ranks_cover_every_example_exactly_once_per_epoch(kind: str) -> None:
    size, batch = 45, 4  # 45 = 5 full rounds of 8, then 5 examples split 3 + 2
    per_rank = []
    for rank in range(2):
        source = CountingStream(size) if kind == "torch" else hf_stream(size)
        stream = ShardedStream(source, batch_size=batch, num_replicas=2, rank=rank)
        per_rank.append(read(stream, num_workers=2))
    assert [len(batches) for batches in per_rank] == [6, 6]
    seen = Counter(i for batches in per_rank for b in batches for i in b)
    assert seen == Counter(range(1000, 1000 + size))
    # The loader takes the workers' batches in turn, so a rank's batches come in stream order.
    assert per_rank[0][:2] == [[1000, 1001, 1002, 1003], [1008, 1009, 1010, 1011]]
    assert per_rank[1][-1] == [1043, 1044]
    assert per_rank == [
        read(ShardedStream(CountingStream(size), batch_size=batch, num_replicas=2, rank=r)) for r in (0, 1)
    ]


def test_length_epoch_and_columns() -> None:
    stream = ShardedStream(list(range(10)), batch_size=3, num_replicas=2, rank=0)
    assert len(stream) == 2
    assert ShardedStream(hf_stream(4), batch_size=2, num_replicas=1, rank=0).column_names == ["id", "text"]
    shuffled = hf_stream(20).shuffle(seed=3, buffer_size=8)
    stream = ShardedStream(shuffled, batch_size=5, num_replicas=1, rank=0)
    stream.set_epoch(0)
    first = [i for b in stream for i in b["id"].tolist()]
    stream.set_epoch(1)
    second = [i for b in stream for i in b["id"].tolist()]
    assert sorted(first) == sorted(second) == list(range(1000, 1020))
    assert first != second
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        ShardedStream([1], batch_size=0, num_replicas=1, rank=0)
    with pytest.raises(ValueError, match="Invalid rank 2 for num_replicas 2"):
        ShardedStream([1], batch_size=1, num_replicas=2, rank=2)


def test_epoch_policies_keep_refusing_streams() -> None:
    with pytest.raises(TypeError, match="Iterable-style datasets cannot be indexed by example id"):
        WithIndex(ShardedStream([1, 2], batch_size=1, num_replicas=1, rank=0))  # type: ignore[arg-type]


def test_stream_dynamics_merges_epochs_by_id() -> None:
    tracker = StreamDynamics(id_column="id", ema_decay=0.5)
    tracker.update(torch.tensor([7, 3, 7]), torch.tensor([1.0, 2.0, 3.0]))
    tracker.update(torch.tensor([5]), torch.tensor([math.nan]))
    tracker.merge_epoch(0)
    tracker.update(torch.tensor([3, 11]), torch.tensor([4.0, 5.0]))
    tracker.merge_epoch(1)
    signals = tracker.signals()
    assert signals["id"].tolist() == [3, 7, 11]
    assert signals["visits"].tolist() == [2, 2, 1]
    assert signals["epochs_seen"].tolist() == [2, 1, 1]
    assert signals["last_epoch"].tolist() == [1, 0, 1]
    assert signals["loss"].tolist() == [4.0, 2.0, 5.0]
    assert signals["loss_mean"].tolist() == [3.0, 2.0, 5.0]
    assert signals["loss_ema"].tolist() == [3.0, 2.0, 5.0]
    restored = StreamDynamics(id_column="id")
    restored.load_state_dict(tracker.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(restored.signals().values(), signals.values(), strict=True))
    assert tracker.to_dataset().column_names == list(signals)


def test_stream_dynamics_reads_the_ids_of_the_step_outputs_before_the_batch() -> None:
    # Selection inside the step: the losses are the kept examples', the batch holds every id.
    tracker = StreamDynamics(id_column="doc")
    batch = {"doc": torch.tensor([10, 11, 12, 13]), "x": torch.zeros(4, 2)}
    kept = {"losses": torch.tensor([0.5, 2.0]), "doc": torch.tensor([11, 13])}
    tracker.on_train_batch_end(None, None, kept, batch, 0)  # type: ignore[arg-type]
    tracker.on_train_batch_end(None, None, {"losses": torch.ones(4)}, batch, 1)  # type: ignore[arg-type]
    no_column = {"x": 0}  # the batch need not have the column when the outputs do
    tracker.on_train_batch_end(None, None, {"losses": torch.ones(1), "doc": torch.tensor([12])}, no_column, 2)  # type: ignore[arg-type]
    tracker.merge_epoch(0)
    signals = tracker.signals()
    assert signals["doc"].tolist() == [10, 11, 12, 13]
    assert signals["visits"].tolist() == [1, 2, 2, 2]
    assert signals["loss"].tolist() == [1.0, 0.75, 1.0, 1.5]
    with pytest.raises(ValueError, match=r"ids have shape \(4,\) but losses have shape \(2,\)"):
        tracker.on_train_batch_end(None, None, {"losses": torch.ones(2)}, batch, 3)  # type: ignore[arg-type]


def test_stream_dynamics_fails_clearly_on_ids() -> None:
    tracker = StreamDynamics(id_column="doc_id")
    with pytest.raises(ValueError, match=r"key by the column 'doc_id', but the batch has \['id', 'x'\]"):
        tracker.on_train_batch_end(None, None, {"losses": torch.ones(2)}, {"id": torch.ones(2), "x": 0}, 0)  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match="Column 'doc_id' must hold integer ids, got list; map string ids with stable_id"
    ):
        tracker.update(["a", "b"], torch.ones(2))
    with pytest.raises(ValueError, match=r"ids have shape \(3,\) but losses have shape \(2,\)"):
        tracker.update(torch.arange(3), torch.ones(2))
    with pytest.raises(ValueError, match="checkpoint keys by 'doc_id', this run by 'id'"):
        StreamDynamics(id_column="id").load_state_dict(tracker.state_dict())
    assert stable_id("doc-7") == stable_id("doc-7") < 2**63
