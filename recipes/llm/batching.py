"""Length-grouped batching: each batch holds examples of similar lengths, so it pads little.

Like Hugging Face Trainer's ``group_by_length``, but inside a curriculum's plan: the sampler still
yields exactly this rank's shard of the epoch's plan (the same ids, the same number of times, the same
weights), reordered. The shard is cut into consecutive windows ("mega-batches") of ``mega_batches``
batches, each window is sorted by length and cut into batches, and the window's batches are shuffled
by a private generator seeded from ``(seed, epoch)``. The plan's order is kept at the scale of a window
(a plan that runs from easy to hard inside an epoch still does, window by window), and every rank
groups its own shard, so ranks keep equal lengths and never communicate.

`length_grouped_order` is the pure function; `LengthGroupedSampler` the `CurriculumSampler` that
applies it; `length_grouped_loader` rebuilds a `curriculum_dataloader` loader around it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_curricula import CurriculumSampler, Policy
from lightning_curricula.policies import epoch_generator

__all__ = ["LengthGroupedSampler", "length_grouped_loader", "length_grouped_order", "padding_counts"]

#: Batches per mega-batch by default, as in Hugging Face's ``get_length_grouped_indices``.
MEGA_BATCHES = 50


def length_grouped_order(
    lengths: Tensor, batch_size: int, *, mega_batches: int = MEGA_BATCHES, generator: torch.Generator
) -> Tensor:
    """A permutation of ``range(len(lengths))`` whose runs of ``batch_size`` hold similar lengths.

    Consecutive windows of ``mega_batches * batch_size`` positions are each sorted by length, longest
    first (ties keep their order), and cut into batches of ``batch_size``; each window's full batches
    are shuffled with ``generator``. The last, shorter batch (when ``batch_size`` does not divide the
    length) stays last, so every run of ``batch_size`` that a ``DataLoader`` cuts is one of these batches.

    Args:
        lengths: ``(n,)`` lengths in the order they would be visited.
        batch_size: the examples of each batch.
        mega_batches: batches per window; ``1`` sorts inside each batch only (no padding saved).
        generator: shuffles the batches of each window.

    Raises:
        ValueError: ``lengths`` is not one-dimensional, or ``batch_size`` or ``mega_batches`` is below 1.

    Example:
        >>> order = length_grouped_order(torch.tensor([1, 9, 2, 8]), 2, generator=torch.Generator().manual_seed(0))
        >>> sorted(torch.tensor([1, 9, 2, 8])[order].view(2, 2).tolist())
        [[2, 1], [9, 8]]
    """
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be one-dimensional, got shape {tuple(lengths.shape)}.")
    if batch_size < 1 or mega_batches < 1:
        raise ValueError(f"batch_size and mega_batches must be >= 1, got {batch_size!r} and {mega_batches!r}.")
    size = int(lengths.numel())
    window = batch_size * mega_batches
    full_batches = size // batch_size
    parts: list[Tensor] = []
    for start in range(0, size, window):
        end = min(start + window, size)
        # Sorted descending, ties in visiting order: stable sort of the negated lengths.
        inside = torch.sort(-lengths[start:end].long(), stable=True).indices + start
        batches = list(inside.split(batch_size))
        last_full = min(len(batches), full_batches - start // batch_size)  # a short batch only ends the shard
        shuffled = torch.randperm(last_full, generator=generator).tolist()
        parts += [batches[i] for i in shuffled] + batches[last_full:]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)


def padding_counts(lengths: Sequence[int] | Tensor, batch_size: int) -> tuple[int, int]:
    """``(padded, real)`` tokens when ``lengths`` are batched in order by ``batch_size`` and right-padded.

    Example:
        >>> padding_counts([3, 1, 2, 2], 2)
        (2, 8)
    """
    values = torch.as_tensor(lengths, dtype=torch.long)
    padded = sum(int(batch.max()) * batch.numel() - int(batch.sum()) for batch in values.split(batch_size))
    return padded, int(values.sum())


class LengthGroupedSampler(CurriculumSampler):
    """A `CurriculumSampler` whose shard is reordered by `length_grouped_order` each epoch.

    It plans, shards and weights exactly as `CurriculumSampler` (every argument but ``lengths``,
    ``batch_size`` and ``mega_batches`` is its), then yields this rank's visits in length-grouped order:
    the same ``(index, weight)`` pairs, a permutation of them. The order depends only on the shard, the
    lengths, ``seed`` and the epoch (a private generator from the pair ``(seed, -1 - epoch)``, never a
    plan's pair), so it is the same on every call and after a resume. With selection before loading
    (``batch_preselection``), the shard is grouped first and each grouped batch is then selected, so
    the loaded batches are the kept parts of the grouped batches.

    Args:
        dataset: the training dataset; only its length is used.
        policy: what to plan (see `CurriculumSampler`).
        lengths: ``(N,)`` the length of every example (``prepare_dataset``'s ``length`` column).
        batch_size: the loader's batch size before any selection.
        mega_batches: batches per window (`length_grouped_order`).
        **kwargs: `CurriculumSampler`'s keyword arguments.

    Raises:
        ValueError: ``lengths`` does not have one value per example.

    Example:
        >>> sampler = LengthGroupedSampler(range(8), lengths=[1, 5, 2, 6, 3, 7, 4, 8], batch_size=2, mega_batches=4)
        >>> sorted(index for index, _ in sampler) == list(range(8))
        True

    Note:
        **DDP**: each rank groups its own shard, so every rank still yields the same number of visits
        and ranks never communicate (batches on different ranks at the same step differ in length).
        **Resume**: stateless; the order is recomputed from ``(seed, epoch)`` and the plan.
    """

    def __init__(
        self,
        dataset: Any,
        policy: Policy | None = None,
        *,
        lengths: Sequence[int] | Tensor,
        batch_size: int,
        mega_batches: int = MEGA_BATCHES,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, policy, **kwargs)
        values = torch.as_tensor(lengths, dtype=torch.long)
        if values.shape != (self.num_examples,):
            raise ValueError(
                f"lengths must have one value per example ({self.num_examples}), got shape {tuple(values.shape)}."
            )
        if batch_size < 1 or mega_batches < 1:
            raise ValueError(f"batch_size and mega_batches must be >= 1, got {batch_size!r} and {mega_batches!r}.")
        self.lengths = values
        self.batch_size = batch_size
        self.mega_batches = mega_batches
        self._grouping_epoch = 0
        if self.batch_preselection is not None:  # group before the selection picks each batch's kept visits
            self.batch_preselection = _GroupedPreselection(self.batch_preselection, self)

    def grouped(self, indices: Tensor, weights: Tensor, epoch: int) -> tuple[Tensor, Tensor]:
        """This shard's ``indices`` and ``weights`` in the length-grouped order of ``epoch``."""
        order = length_grouped_order(
            self.lengths[indices],
            self.batch_size,
            mega_batches=self.mega_batches,
            generator=epoch_generator(self.seed, -1 - epoch),
        )
        return indices[order], weights[order]

    @override
    def __iter__(self) -> Iterator[tuple[int, float]]:
        self._grouping_epoch = self.plan_epoch
        visits = super().__iter__()
        if self.batch_preselection is not None:  # grouped inside, before selection
            return visits
        pairs = list(visits)
        indices = torch.tensor([index for index, _ in pairs], dtype=torch.long)
        weights = torch.tensor([weight for _, weight in pairs], dtype=torch.float32)
        indices, weights = self.grouped(indices, weights, self._grouping_epoch)
        return zip(indices.tolist(), weights.tolist(), strict=True)


class _GroupedPreselection:
    """A selection before loading that sees the shard in its sampler's length-grouped order."""

    def __init__(self, inner: Any, sampler: LengthGroupedSampler) -> None:
        self.inner = inner
        self.sampler = sampler

    @property
    def batch_size(self) -> int:
        return int(self.inner.batch_size)

    @property
    def drop_last(self) -> bool:
        return bool(self.inner.drop_last)

    @property
    def kept_per_batch(self) -> int:
        return int(self.inner.kept_per_batch)

    def kept_length(self, shard_size: int) -> int:
        return int(self.inner.kept_length(shard_size))

    def kept_visits(self, indices: Tensor, weights: Tensor) -> Iterator[tuple[int, float]]:
        grouped = self.sampler.grouped(indices, weights, self.sampler._grouping_epoch)
        return iter(self.inner.kept_visits(*grouped))


def length_grouped_loader(
    loader: DataLoader[Any], *, lengths: Sequence[int] | Tensor, batch_size: int, mega_batches: int = MEGA_BATCHES
) -> DataLoader[Any]:
    """``loader`` (from `curriculum_dataloader`) with its `CurriculumSampler` replaced by a `LengthGroupedSampler`.

    `curriculum_dataloader` makes the checks and finds the selection before loading; the sampler is
    rebuilt from the built one's settings (its policy, tracker, epochs, seed, ranks and selection), and
    the loader from the built one's batch size, collate function and workers.

    Raises:
        TypeError: ``loader`` has no `CurriculumSampler`.
    """
    sampler = loader.sampler
    if not isinstance(sampler, CurriculumSampler):
        raise TypeError(
            f"length_grouped_loader needs a loader from curriculum_dataloader (a CurriculumSampler), got a "
            f"{type(sampler).__name__}."
        )
    grouped = LengthGroupedSampler(
        loader.dataset,  # type: ignore[arg-type]
        sampler.policy,
        lengths=lengths,
        batch_size=batch_size,
        mega_batches=mega_batches,
        dynamics=sampler.dynamics,
        num_epochs=sampler.num_epochs,
        seed=sampler.seed,
        num_replicas=sampler.num_replicas,
        rank=sampler.rank,
        drop_last=sampler.drop_last,
        batch_preselection=sampler.batch_preselection,
    )
    return DataLoader(
        loader.dataset,
        sampler=grouped,
        batch_size=loader.batch_size,
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        drop_last=loader.drop_last,
        pin_memory=loader.pin_memory,
    )
