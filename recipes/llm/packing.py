"""Sequence packing that keeps every example's own loss and id.

A padded batch of ``B`` examples spends compute on its padding. Packing lays the examples end to end
in fewer rows of at most ``capacity`` tokens (first-fit decreasing, `pack_rows`, at the row width
that computes the fewest tokens, `narrowest_packing`) and restarts the
position ids at 0 for each example. Given ``position_ids`` and no ``attention_mask``, ``transformers``
(its ``masking_utils``, used by the Llama family, SmolLM2 included) reads each run of consecutive
positions as one sequence and builds a block-diagonal causal mask, so no example attends to another
(on a GPU with flash attention, the same position ids select its variable-length path).

Unlike TRL's packing, nothing is merged: `pack_batch` adds the packed tensors *beside* the padded
batch, with a gather index from every example's shifted token positions into the packed rows.
`unpack_token_losses` turns the packed rows' token losses back into the ``(B, T - 1)`` table the padded
batch would give, so the per-example losses, ids and plan weights, the tracker, the reweighting and
Rho-1's token selection see exactly what they see without packing (to float tolerance: other shapes,
other kernels). The padded tensors stay in the batch for what counts tokens or selects rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning_curricula.recipes.llm.data import IGNORE_INDEX
from torch import Tensor

__all__ = [
    "MAX_WIDTHS",
    "PACKED_KEYS",
    "PackingCollator",
    "candidate_widths",
    "is_packed",
    "narrowest_packing",
    "pack_batch",
    "pack_rows",
    "packed_inputs",
    "unpack_token_losses",
]

#: The keys `pack_batch` adds; ``pack_capacity`` (an ``int``) is the capacity they were packed to.
PACKED_KEYS = ("packed_input_ids", "packed_labels", "packed_position_ids", "pack_index", "pack_capacity")
#: The most row widths `narrowest_packing` tries for one batch (`candidate_widths`).
MAX_WIDTHS = 256


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """The examples (positions in ``lengths``) of each packed row: first-fit decreasing into ``capacity`` tokens.

    Longest first (ties by position); each example goes to the first row with room, else opens a new
    one; each row lists its examples in the order they were placed. Deterministic.

    Raises:
        ValueError: ``capacity`` is below 1, or an example is longer than it.

    Example:
        >>> pack_rows([5, 3, 4, 2, 6], capacity=8)
        [[4, 3], [0, 1], [2]]
    """
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity!r}.")
    if lengths and max(lengths) > capacity:
        raise ValueError(
            f"an example of {max(lengths)} tokens does not fit a packed row of {capacity}: raise the capacity "
            "(pack_length) to at least max_length."
        )
    rows: list[list[int]] = []
    room: list[int] = []
    for position in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        length = lengths[position]
        row = next((r for r, free in enumerate(room) if free >= length), None)
        if row is None:
            rows.append([])
            room.append(capacity)
            row = len(rows) - 1
        rows[row].append(position)
        room[row] -= length
    return rows


def candidate_widths(longest: int, capacity: int) -> list[int]:
    """The row widths `narrowest_packing` tries: every one from ``longest`` to ``capacity``, or `MAX_WIDTHS` of them.

    Past `MAX_WIDTHS` widths (a long ``capacity`` over short examples) they are spread evenly, both ends
    kept, so packing a batch costs at most `MAX_WIDTHS` first-fit passes whatever the context length.

    Example:
        >>> candidate_widths(3, 6), len(candidate_widths(10, 100_000)), candidate_widths(10, 100_000)[-1]
        ([3, 4, 5, 6], 256, 100000)
    """
    count = capacity - longest + 1
    if count <= MAX_WIDTHS:
        return list(range(longest, capacity + 1))
    step = (capacity - longest) / (MAX_WIDTHS - 1)
    return sorted({longest + round(step * k) for k in range(MAX_WIDTHS)})


def narrowest_packing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """`pack_rows` at the row width, from the longest example to ``capacity``, that computes the fewest tokens.

    A packed forward runs ``rows * width`` tokens (``width``: the fullest row). Rows of the full
    ``capacity`` are not always best: a few examples leave them part empty, and the fullest row then
    sets the width of all. The `candidate_widths` from the longest example up are tried (first-fit
    decreasing is cheap for a batch), and the least ``rows * width`` wins, the narrower on a tie (less
    attention). At the longest example's width the cost is at most the padded batch's, so packing
    never computes more than padding.

    Example:
        >>> narrowest_packing([5, 3, 4, 2, 6], capacity=12)
        [[4, 2], [0, 1, 3]]
    """
    if not lengths:
        return []
    best: tuple[int, list[list[int]]] | None = None
    for width in candidate_widths(max(max(lengths), 1), capacity):
        rows = pack_rows(lengths, width)
        cost = len(rows) * max(sum(lengths[i] for i in row) for row in rows)
        if best is None or cost < best[0]:
            best = (cost, rows)
    assert best is not None, "capacity is below the longest example (pack_rows raises)"
    return best[1]


def pack_batch(batch: Mapping[str, Any], capacity: int) -> dict[str, Any]:
    """The packed tensors of a right-padded `CausalLMCollator` batch, to add to it (`PACKED_KEYS`).

    - ``packed_input_ids`` ``(R, W)``: each row's examples end to end, then padding; the rows are
      `narrowest_packing`'s, so ``W`` (the fullest row) is at most ``capacity`` and ``R * W`` at most
      the padded batch's tokens.
    - ``packed_position_ids`` ``(R, W)``: ``0 .. n - 1`` for each example, and for the padding tail of
      a row its own run from 0 (so it is a sequence of its own, attending to none of the examples).
    - ``packed_labels`` ``(R, W)``: each example's labels, with ``IGNORE_INDEX`` on its first token, so
      no example is trained to predict the next one's start.
    - ``pack_index`` ``(B, T - 1)``: for example ``b``'s shifted position ``t`` (its token ``t + 1``
      predicted from token ``t``), the position in the flattened ``(R, W - 1)`` table of shifted token
      losses; 0 past the example's end, where the padded batch has no loss either.

    Example:
        >>> batch = {"input_ids": torch.tensor([[5, 6, 7], [8, 9, 0]]),
        ...          "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
        ...          "labels": torch.tensor([[-100, 6, 7], [-100, 9, -100]])}
        >>> packed = pack_batch(batch, capacity=5)
        >>> packed["packed_input_ids"].tolist(), packed["packed_position_ids"].tolist(), packed["pack_index"].tolist()
        ([[5, 6, 7, 8, 9]], [[0, 1, 2, 0, 1]], [[0, 1], [3, 0]])
    """
    input_ids, labels = batch["input_ids"], batch["labels"]
    lengths = batch["attention_mask"].sum(1).tolist()
    rows = narrowest_packing(lengths, capacity)
    width = max((sum(lengths[i] for i in row) for row in rows), default=0)
    packed_ids = torch.zeros((len(rows), width), dtype=input_ids.dtype)
    packed_labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=labels.dtype)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    index = torch.zeros((len(lengths), max(input_ids.shape[1] - 1, 0)), dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            n = lengths[i]
            packed_ids[r, start : start + n] = input_ids[i, :n]
            packed_labels[r, start + 1 : start + n] = labels[i, 1:n]
            positions[r, start : start + n] = torch.arange(n)
            index[i, : max(n - 1, 0)] = r * (width - 1) + start + torch.arange(max(n - 1, 0))
            start += n
        positions[r, start:] = torch.arange(width - start)
    return {
        "packed_input_ids": packed_ids,
        "packed_labels": packed_labels,
        "packed_position_ids": positions,
        "pack_index": index,
        "pack_capacity": capacity,
    }


def is_packed(batch: Mapping[str, Any]) -> bool:
    """Whether ``batch`` carries `pack_batch`'s tensors."""
    return "packed_input_ids" in batch


def packed_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The model's keyword arguments for the packed forward: ids and position ids, no attention mask, no cache.

    Without an attention mask and without a cache, ``transformers`` finds the packed sequences from the
    position ids (a cache would switch that detection off).
    """
    return {"input_ids": batch["packed_input_ids"], "position_ids": batch["packed_position_ids"], "use_cache": False}


def unpack_token_losses(packed_losses: Tensor, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
    """``(B, T - 1)`` token losses and loss mask, as the padded batch gives them, from the packed ``(R, W - 1)``.

    ``packed_losses`` are the shifted token losses of ``packed_labels``. Each example's are gathered by
    ``pack_index``; the mask is the padded batch's own (``labels[:, 1:]`` not ignored), and every loss
    outside it is exactly 0, as ``cross_entropy`` gives an ignored label.

    Example:
        >>> batch = {"labels": torch.tensor([[-100, 6, 7], [-100, 9, -100]]),
        ...          "pack_index": torch.tensor([[0, 1], [3, 0]])}
        >>> unpack_token_losses(torch.tensor([[0.5, 1.5, 9.0, 2.5]]), batch)
        (tensor([[0.5000, 1.5000],
                [2.5000, 0.0000]]), tensor([[ True,  True],
                [ True, False]]))
    """
    mask = batch["labels"][:, 1:] != IGNORE_INDEX
    gathered = packed_losses.flatten()[batch["pack_index"].to(packed_losses.device)]
    return torch.where(mask, gathered, torch.zeros((), dtype=gathered.dtype, device=gathered.device)), mask


class PackingCollator:
    """A collator's padded batch with `pack_batch`'s tensors added: the training collator when packing.

    Args:
        collate: the padded collator (`CausalLMCollator`).
        capacity: tokens per packed row (the data module's ``pack_length``, by default its ``max_length``).
    """

    def __init__(self, collate: Any, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity!r}.")
        self.collate = collate
        self.capacity = capacity

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The padded batch of ``rows`` and its packed tensors."""
        batch: dict[str, Any] = self.collate(rows)
        batch.update(pack_batch(batch, self.capacity))
        return batch
