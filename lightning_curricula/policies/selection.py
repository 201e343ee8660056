"""Selection kernels shared by the policies: shuffles, easiest-first sets and stratified drops.

Pure functions of tensors and an explicit ``torch.Generator``; linear-time selections (``kthvalue``)
wherever the result is shuffled anyway, since sorting 10M scores costs more than a whole plan.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_curricula.policies._base import Plan

__all__ = [
    "easiest_first",
    "easiest_prefix",
    "easiest_set",
    "full_plan",
    "random_plan",
    "sampling_probabilities",
    "shuffled_plan",
    "stratified_keep",
]


def shuffled_plan(indices: Tensor, generator: torch.Generator, weights: Tensor | None = None) -> Plan:
    """A plan visiting ``indices`` in a random order drawn from ``generator``.

    Examples:
        >>> plan = shuffled_plan(torch.arange(5), torch.Generator().manual_seed(0))
        >>> sorted(plan.indices.tolist()), plan.weights.tolist()
        ([0, 1, 2, 3, 4], [1.0, 1.0, 1.0, 1.0, 1.0])
    """
    order = torch.randperm(indices.numel(), generator=generator)
    if weights is None:  # all ones: nothing to permute
        return Plan(indices[order].long(), torch.ones(indices.numel()))
    return Plan(indices[order].long(), weights.float()[order])


def full_plan(num_examples: int, generator: torch.Generator) -> Plan:
    """Every example once, shuffled: ``shuffled_plan(torch.arange(n), generator)`` without the gather."""
    return Plan(torch.randperm(num_examples, generator=generator), torch.ones(num_examples))


def random_plan(num_examples: int, size: int, generator: torch.Generator) -> Plan:
    """A uniformly random subset of ``size`` ids in a random order: the head of one permutation."""
    return Plan(torch.randperm(num_examples, generator=generator)[:size], torch.ones(size))


def easiest_set(difficulty: Tensor, count: int, *, hardest: bool = False) -> Tensor:
    """The ids of ``easiest_first(difficulty, hardest=hardest)[:count]``, in id order.

    A selection (``kthvalue``) and no sort, for callers that shuffle the set anyway. Ties go to the
    lower id; NaN (unseen) comes last in both directions.

    Examples:
        >>> easiest_set(torch.tensor([0.5, float("nan"), 0.1, 0.5]), 2)
        tensor([0, 2])
    """
    key = -difficulty if hardest else difficulty
    key = torch.nan_to_num(key.float(), nan=math.inf, posinf=math.inf)
    count = min(max(count, 0), key.numel())
    if count == 0:
        return torch.empty(0, dtype=torch.int64)
    kth = torch.kthvalue(key, count).values  # the count-th smallest key: the set ends among its ties
    chosen = key < kth
    chosen[(key == kth).nonzero().squeeze(1)[: count - int(chosen.sum())]] = True  # ties: lowest ids first
    return chosen.nonzero().squeeze(1)


def easiest_prefix(difficulty: Tensor, count: int, *, hardest: bool = False) -> Tensor:
    """``easiest_first(difficulty, hardest=hardest)[:count]``, sorting only the first ``count`` ids, not all N."""
    ids = easiest_set(difficulty, count, hardest=hardest)
    key = -difficulty[ids] if hardest else difficulty[ids]
    return ids[torch.sort(torch.nan_to_num(key.float(), nan=math.inf, posinf=math.inf), stable=True).indices]


def easiest_first(difficulty: Tensor, *, hardest: bool = False) -> Tensor:
    """Example ids sorted easiest first (or hardest first); ties by lower id; unseen (NaN) last.

    Examples:
        >>> easiest_first(torch.tensor([0.5, float("nan"), 0.1, 0.5]))
        tensor([2, 0, 3, 1])
        >>> easiest_first(torch.tensor([0.5, float("nan"), 0.1, 0.5]), hardest=True)
        tensor([0, 3, 2, 1])
    """
    key = -difficulty if hardest else difficulty
    key = torch.nan_to_num(key.float(), nan=math.inf, posinf=math.inf)
    return torch.sort(key, stable=True).indices


def stratified_keep(strata: Tensor, drops: list[int], generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Drop ``drops[s]`` ids uniformly at random from each stratum ``s``; weight the kept ones unbiasedly.

    A kept id of a stratum of size ``n`` from which ``d`` were dropped gets weight ``n / (n - d)``, its
    inverse inclusion probability, so the weighted sum over the kept ids equals the full sum in
    expectation.

    Args:
        strata: ``(N,)`` int stratum id per example (``-1`` for examples never planned).
        drops: how many to drop from stratum ``0, 1, ...``.
        generator: the epoch's generator.

    Returns:
        ``(ids, weights)`` of the kept examples, in id order.

    Examples:
        >>> ids, weights = stratified_keep(torch.tensor([0, 0, 0, 0, 1]), [2, 0], torch.Generator().manual_seed(0))
        >>> len(ids), weights.tolist()
        (3, [2.0, 2.0, 1.0])
    """
    keep = strata >= 0
    weights = torch.ones(strata.numel())
    for stratum, drop in enumerate(drops):
        members = (strata == stratum).nonzero().squeeze(1)
        if drop <= 0 or members.numel() == 0:
            continue
        if drop >= members.numel():
            raise ValueError(f"Cannot drop {drop} of the {members.numel()} examples of stratum {stratum}.")
        keep[members[torch.randperm(members.numel(), generator=generator)[:drop]]] = False
        weights[members] = members.numel() / (members.numel() - drop)
    ids = keep.nonzero().squeeze(1)
    return ids, weights[ids]


def sampling_probabilities(scores: Tensor, smoothing: float) -> Tensor:
    """``(1 - smoothing) * s / sum(s) + smoothing / N`` in float64, NaN scores replaced by the mean.

    Examples:
        >>> sampling_probabilities(torch.tensor([1.0, 3.0, float("nan")]), 0.0).tolist()
        [0.16666666666666666, 0.5, 0.3333333333333333]
    """
    scores = scores.double()
    seen = ~scores.isnan()
    fill = scores[seen].mean() if bool(seen.any()) else torch.tensor(1.0, dtype=torch.float64)
    scores = torch.where(seen, scores, fill).clamp_min(0)
    total = scores.sum()
    uniform = torch.full_like(scores, 1.0 / scores.numel())
    if total <= 0:
        return uniform
    return (1 - smoothing) * scores / total + smoothing * uniform
