"""`WithIndex`: make every item carry its example id (and its plan weight)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch.utils.data import Dataset, IterableDataset

__all__ = ["WithIndex"]

Key = int | tuple[int, float]


class WithIndex(Dataset[Any]):
    """Wrap a map-style dataset so that each item carries its integer id, and its weight when given one.

    The id is the position in the wrapped dataset, the same id that `TrainingDynamics` tables and
    exports use. A sampler may yield plain ids or ``(id, weight)`` pairs (as `CurriculumSampler` does);
    with a pair, the item also carries the weight its loss should get.

    - mapping items (a ``dict``, a Hugging Face ``datasets.Dataset`` row) gain the keys ``index_key``
      and ``weight_key``;
    - tuple and list items gain trailing fields: ``(x, y)`` becomes ``(x, y, index)`` or
      ``(x, y, index, weight)``;
    - any other item ``x`` becomes ``(x, index)`` or ``(x, index, weight)``.

    Batched fetching is kept: when the wrapped dataset has ``__getitems__`` (Hugging Face datasets do),
    the ``DataLoader``'s batched path goes through it with plain ids, and ids and weights are attached
    afterwards.

    Args:
        dataset: a map-style dataset: it has ``__len__`` and ``__getitem__`` by integer position.
        index_key: the key that holds the id in mapping items.
        weight_key: the key that holds the weight in mapping items.

    Raises:
        TypeError: ``dataset`` is iterable-style or has no length.

    Examples:
        >>> ds = WithIndex([{"x": 1.0}, {"x": 2.0}])
        >>> ds[1]
        {'x': 2.0, 'index': 1}
        >>> ds[(0, 2.5)]
        {'x': 1.0, 'index': 0, 'weight': 2.5}
        >>> WithIndex([("a", 0), ("b", 1)]).__getitems__([1, 0])
        [('b', 1, 1), ('a', 0, 0)]

    Note:
        Stateless and picklable: it works unchanged with ``num_workers > 0`` and under DDP, where each
        rank fetches only the ids its sampler yields.
    """

    def __init__(self, dataset: Any, *, index_key: str = "index", weight_key: str = "weight") -> None:
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__"):
            raise TypeError(
                f"WithIndex needs a map-style dataset (with __len__ and __getitem__ by position), got "
                f"{type(dataset).__name__}. Iterable-style datasets cannot be indexed by example id; "
                "materialise them first (for example `datasets.Dataset.from_generator`, or a list)."
            )
        try:
            len(dataset)
        except TypeError:
            raise TypeError(
                f"WithIndex needs a dataset with a length, got {type(dataset).__name__} without __len__."
            ) from None
        if index_key == weight_key:
            raise ValueError(f"index_key and weight_key must differ, both are {index_key!r}.")
        self.dataset = dataset
        self.index_key = index_key
        self.weight_key = weight_key

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Key) -> Any:
        index, weight = _split_key(key)
        return self._attach(self.dataset[index], index, weight)

    def __getitems__(self, keys: Sequence[Key]) -> list[Any]:
        """Fetch a batch of items, through the wrapped dataset's own batched path when it has one."""
        split = [_split_key(key) for key in keys]
        indices = [index for index, _ in split]
        getitems = getattr(self.dataset, "__getitems__", None)
        items = getitems(indices) if getitems is not None else [self.dataset[i] for i in indices]
        return [self._attach(item, index, weight) for item, (index, weight) in zip(items, split, strict=True)]

    def _attach(self, item: Any, index: int, weight: float | None) -> Any:
        if isinstance(item, Mapping):
            extra: dict[str, Any] = {self.index_key: index}
            if weight is not None:
                extra[self.weight_key] = weight
            return {**item, **extra}
        fields = (index,) if weight is None else (index, weight)
        if isinstance(item, list):
            return [*item, *fields]
        if isinstance(item, tuple):
            return (*item, *fields)
        return (item, *fields)


def _split_key(key: Key) -> tuple[int, float | None]:
    if isinstance(key, tuple):
        index, weight = key
        return int(index), float(weight)
    return int(key), None
