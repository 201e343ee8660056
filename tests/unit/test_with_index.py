"""`WithIndex`: every item carries its id (and weight); batched fetching goes through the wrapped dataset."""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import torch
from helpers import ClassificationDataset
from torch.utils.data import DataLoader, IterableDataset, Sampler

from lightning_curricula import WithIndex


class RecordingDataset:
    """A map-style dataset with its own batched path; records how it was called."""

    def __init__(self, size: int = 10) -> None:
        self.size = size
        self.single_calls: list[int] = []
        self.batch_calls: list[list[int]] = []

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        self.single_calls.append(index)
        return {"value": index * 10}

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        self.batch_calls.append(list(indices))
        return [{"value": index * 10, "batched": True} for index in indices]


class PairSampler(Sampler[tuple[int, float]]):
    """Yields ``(id, weight)`` pairs, as `CurriculumSampler` does."""

    def __init__(self, pairs: Sequence[tuple[int, float]]) -> None:
        self.pairs = list(pairs)

    def __iter__(self) -> Iterator[tuple[int, float]]:
        return iter(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)


def test_dict_items_gain_index_and_weight() -> None:
    ds = WithIndex([{"x": 1.0}, {"x": 2.0}, {"x": 3.0}])
    assert len(ds) == 3
    assert ds[2] == {"x": 3.0, "index": 2}
    assert ds[(1, 0.25)] == {"x": 2.0, "index": 1, "weight": 0.25}


def test_mapping_item_is_not_mutated() -> None:
    items = [{"x": 1.0}]
    ds = WithIndex(items)
    assert ds[0] == {"x": 1.0, "index": 0}
    assert items == [{"x": 1.0}]


def test_custom_keys() -> None:
    ds = WithIndex([{"x": 1.0}], index_key="id", weight_key="w")
    assert ds[(0, 2.0)] == {"x": 1.0, "id": 0, "w": 2.0}


def test_same_index_and_weight_key_raises() -> None:
    with pytest.raises(ValueError, match=r"index_key and weight_key must differ, both are 'id'"):
        WithIndex([{"x": 1.0}], index_key="id", weight_key="id")


def test_tuple_items_gain_trailing_fields() -> None:
    ds = WithIndex([("a", 0), ("b", 1)])
    assert ds[1] == ("b", 1, 1)
    assert ds[(0, 3.5)] == ("a", 0, 0, 3.5)
    assert isinstance(ds[0], tuple)


def test_list_items_stay_lists() -> None:
    ds = WithIndex([[1, 2], [3, 4]])
    assert ds[1] == [3, 4, 1]
    assert ds[(0, 0.5)] == [1, 2, 0, 0.5]
    assert isinstance(ds[0], list)


def test_bare_tensor_items_become_tuples() -> None:
    data = torch.arange(6.0).reshape(3, 2)
    ds = WithIndex(data)
    item = ds[2]
    assert isinstance(item, tuple)
    assert len(item) == 2
    assert torch.equal(item[0], torch.tensor([4.0, 5.0]))
    assert item[1] == 2
    value, index, weight = ds[(1, 2.0)]
    assert torch.equal(value, torch.tensor([2.0, 3.0]))
    assert (index, weight) == (1, 2.0)


def test_pair_keys_are_converted_to_int_and_float() -> None:
    ds = WithIndex([{"x": 0}, {"x": 1}])
    item = ds[(torch.tensor(1), torch.tensor(0.5, dtype=torch.float64))]
    assert item == {"x": 1, "index": 1, "weight": 0.5}
    assert type(item["index"]) is int
    assert type(item["weight"]) is float


def test_getitems_goes_through_the_wrapped_batched_path() -> None:
    inner = RecordingDataset()
    ds = WithIndex(inner)
    items = ds.__getitems__([(4, 0.5), 2, (7, 2.0)])
    assert inner.batch_calls == [[4, 2, 7]]  # plain ids, one call
    assert inner.single_calls == []
    assert items == [
        {"value": 40, "batched": True, "index": 4, "weight": 0.5},
        {"value": 20, "batched": True, "index": 2},
        {"value": 70, "batched": True, "index": 7, "weight": 2.0},
    ]


def test_getitems_without_a_batched_path_fetches_one_by_one() -> None:
    ds = WithIndex([("a",), ("b",), ("c",)])
    assert ds.__getitems__([2, (0, 1.5)]) == [("c", 2), ("a", 0, 1.5)]


def test_dataloader_uses_the_batched_path_of_the_wrapped_dataset() -> None:
    inner = RecordingDataset(size=7)
    loader = DataLoader(WithIndex(inner), batch_size=3)
    batches = list(loader)
    assert inner.batch_calls == [[0, 1, 2], [3, 4, 5], [6]]
    assert inner.single_calls == []
    assert [batch["index"].tolist() for batch in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    assert batches[0]["value"].tolist() == [0, 10, 20]


def test_dataloader_with_pair_sampler_carries_weights() -> None:
    pairs = [(3, 0.5), (0, 2.0), (3, 1.0), (1, 4.0)]
    loader = DataLoader(WithIndex(RecordingDataset(size=4)), batch_size=2, sampler=PairSampler(pairs))
    batches = list(loader)
    assert [batch["index"].tolist() for batch in batches] == [[3, 0], [3, 1]]
    assert [batch["weight"].tolist() for batch in batches] == [[0.5, 2.0], [1.0, 4.0]]
    assert batches[0]["value"].tolist() == [30, 0]


def test_hugging_face_dataset() -> None:
    datasets = pytest.importorskip("datasets")
    hf = datasets.Dataset.from_dict({"text": ["a", "b", "c", "d", "e"], "label": [0, 1, 0, 1, 1]})
    ds = WithIndex(hf)
    assert len(ds) == 5
    assert ds[3] == {"text": "d", "label": 1, "index": 3}
    assert ds[(4, 0.5)] == {"text": "e", "label": 1, "index": 4, "weight": 0.5}
    assert ds.__getitems__([2, (0, 3.0)]) == [
        {"text": "c", "label": 0, "index": 2},
        {"text": "a", "label": 0, "index": 0, "weight": 3.0},
    ]


def test_hugging_face_dataset_in_a_dataloader() -> None:
    datasets = pytest.importorskip("datasets")
    hf = datasets.Dataset.from_dict({"x": [[float(i), float(-i)] for i in range(9)], "y": list(range(9))})
    loader = DataLoader(WithIndex(hf.with_format("torch")), batch_size=4, sampler=[8, 1, 5, 0, 2])
    batches = list(loader)
    assert [batch["index"].tolist() for batch in batches] == [[8, 1, 5, 0], [2]]
    assert torch.equal(batches[0]["y"], batches[0]["index"])
    assert batches[0]["x"][:, 0].tolist() == [8.0, 1.0, 5.0, 0.0]


def test_dataloader_with_two_workers_yields_correct_ids() -> None:
    data = ClassificationDataset(size=23)
    loader = DataLoader(WithIndex(data), batch_size=4, shuffle=True, num_workers=2)
    seen = []
    for batch in loader:
        for index, x, y in zip(batch["index"].tolist(), batch["x"], batch["y"].tolist(), strict=True):
            assert torch.equal(x, data.x[index])
            assert y == int(data.y[index])
            seen.append(index)
    assert sorted(seen) == list(range(23))


def test_is_picklable() -> None:
    ds = pickle.loads(pickle.dumps(WithIndex([{"x": 1}, {"x": 2}], index_key="id")))
    assert ds[1] == {"x": 2, "id": 1}


class Stream(IterableDataset[int]):
    def __iter__(self) -> Iterator[int]:
        return iter(range(3))


class NoLength:
    def __getitem__(self, index: int) -> int:
        return index


def test_iterable_dataset_raises_type_error() -> None:
    with pytest.raises(TypeError, match=r"WithIndex needs a map-style dataset .* got Stream\. Iterable-style"):
        WithIndex(Stream())


def test_object_without_getitem_raises_type_error() -> None:
    with pytest.raises(TypeError, match=r"WithIndex needs a map-style dataset .* got int\."):
        WithIndex(5)


def test_dataset_without_length_raises_type_error() -> None:
    with pytest.raises(TypeError, match=r"WithIndex needs a dataset with a length, got NoLength without __len__"):
        WithIndex(NoLength())
