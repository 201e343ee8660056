"""Selection kernels shared by the policies: shuffles, easiest-first sets and stratified drops.

Pure functions of tensors and an explicit ``torch.Generator``; linear-time selections (``kthvalue``)
wherever the result is shuffled anyway, since sorting 10M scores costs more than a whole plan. The
shuffles are a `keyed_permutation` whose key is one draw from the generator: a random order that is
evaluated where needed (a plan's head, a rank's shard) rather than materialised with ``torch.randperm``.

With ``shard=`` (a `TableShard`, from `EpochContext.shard` when the tracker's tables are sharded over the
ranks) the selections take this rank's shard of the scores and return its part of the set, and the plans
are sharded plans (`ShardedPlan`): the same ids at the same positions as without, found with a few small collectives.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, overload

import torch
from torch import Tensor

from lightning_curricula.distributed._keyed import generator_key, keyed_permutation
from lightning_curricula.policies._base import Plan, ShardedPlan

if TYPE_CHECKING:
    from lightning_curricula.distributed._sharding import TableShard

__all__ = [
    "easiest_band",
    "easiest_first",
    "easiest_mask",
    "easiest_prefix",
    "easiest_set",
    "full_plan",
    "grouped_easiest_band",
    "importance_draws",
    "random_plan",
    "sampling_probabilities",
    "shuffled_plan",
    "stratified_keep",
]


@overload
def shuffled_plan(
    indices: Tensor, generator: torch.Generator, weights: Tensor | None = None, *, shard: None = None
) -> Plan: ...
@overload
def shuffled_plan(
    indices: Tensor, generator: torch.Generator, weights: Tensor | None = None, *, shard: TableShard
) -> ShardedPlan: ...
def shuffled_plan(
    indices: Tensor, generator: torch.Generator, weights: Tensor | None = None, *, shard: TableShard | None = None
) -> Plan | ShardedPlan:
    """A plan visiting ``indices`` in a random order drawn from ``generator`` (a `keyed_permutation`).

    With ``shard``, ``indices`` is this rank's part of the set (global ids in id order, as the sharded
    selections return them), and the plan shuffles the whole set.

    Examples:
        >>> plan = shuffled_plan(torch.arange(5), torch.Generator().manual_seed(0))
        >>> sorted(plan.indices.tolist()), plan.weights.tolist()
        ([0, 1, 2, 3, 4], [1.0, 1.0, 1.0, 1.0, 1.0])
    """
    if shard is not None:
        return ShardedPlan.of_selection(shard, indices, generator_key(generator), weights)
    order = keyed_permutation(indices.numel(), generator_key(generator))
    shuffled = torch.index_select(indices.long(), 0, order)  # index_select: advanced indexing syncs threads often
    if weights is None:  # all ones: nothing to permute
        return Plan(shuffled, torch.ones(indices.numel()))
    return Plan(shuffled, torch.index_select(weights.float(), 0, order))


@overload
def full_plan(num_examples: int, generator: torch.Generator, *, shard: None = None) -> Plan: ...
@overload
def full_plan(num_examples: int, generator: torch.Generator, *, shard: TableShard) -> ShardedPlan: ...
def full_plan(num_examples: int, generator: torch.Generator, *, shard: TableShard | None = None) -> Plan | ShardedPlan:
    """Every example once, shuffled: ``shuffled_plan(torch.arange(n), generator)`` without the gather.

    With ``shard``, nothing is computed until a rank asks for its positions (no collective).

    Examples:
        >>> sorted(full_plan(4, torch.Generator().manual_seed(0)).indices.tolist())
        [0, 1, 2, 3]
    """
    return random_plan(num_examples, num_examples, generator, shard=shard)


@overload
def random_plan(num_examples: int, size: int, generator: torch.Generator, *, shard: None = None) -> Plan: ...
@overload
def random_plan(num_examples: int, size: int, generator: torch.Generator, *, shard: TableShard) -> ShardedPlan: ...
def random_plan(
    num_examples: int, size: int, generator: torch.Generator, *, shard: TableShard | None = None
) -> Plan | ShardedPlan:
    """A uniformly random subset of ``size`` ids in a random order: the head of one permutation, costing ``size``.

    With ``shard``, nothing is computed until a rank asks for its positions (no collective).

    Examples:
        >>> plan = random_plan(10, 3, torch.Generator().manual_seed(0))
        >>> len(plan), len(set(plan.indices.tolist()))
        (3, 3)
    """
    size = min(max(size, 0), num_examples)
    key = generator_key(generator)
    if shard is not None:
        return ShardedPlan.of_permutation(shard, size, key)
    if size == num_examples:
        return Plan(keyed_permutation(num_examples, key), torch.ones(num_examples))
    return Plan(keyed_permutation(num_examples, key, torch.arange(size)), torch.ones(size))


def easiest_set(difficulty: Tensor, count: int, *, hardest: bool = False, shard: TableShard | None = None) -> Tensor:
    """The ids of ``easiest_first(difficulty, hardest=hardest)[:count]``, in id order.

    A selection (`easiest_mask`) and no sort, for callers that shuffle the set anyway. Ties go to the
    lower id; NaN (unseen) comes last in both directions. With ``shard``, ``difficulty`` is this rank's
    shard and the result its part of the set over all ranks (the exact boundary from two histograms).

    Examples:
        >>> easiest_set(torch.tensor([0.5, float("nan"), 0.1, 0.5]), 2)
        tensor([0, 2])
    """
    if shard is not None:
        return shard.easiest_set(difficulty, count, hardest=hardest)
    return easiest_mask(difficulty, count, hardest=hardest).nonzero().squeeze(1)


def easiest_prefix(difficulty: Tensor, count: int, *, hardest: bool = False) -> Tensor:
    """``easiest_first(difficulty, hardest=hardest)[:count]``, sorting only the first ``count`` ids, not all N."""
    ids = easiest_set(difficulty, count, hardest=hardest)
    key = -difficulty[ids] if hardest else difficulty[ids]
    return ids[torch.sort(key.float(), stable=True).indices]  # torch.sort puts NaN after +inf


_SAMPLE_STRIDE = 64  # the selections' sample: every 64th key
_MARGIN = 2.5  # a bracket spans the expected sample rank +- 2.5 sqrt(m): five standard deviations (<= sqrt(m) / 2)


def _ranking_key(difficulty: Tensor, hardest: bool) -> Tensor:
    """A fresh float32 key whose ascending order is `easiest_first`'s but for NaN: negated for ``hardest``, NaN +inf.

    NaN (unseen) shares the key +inf with scores of +inf (a never-learned example's forgetting count,
    or -inf ranked hardest first); `_unseen_last` puts it after them among the ties of a selection's last key.
    """
    key = difficulty.float().neg() if hardest else difficulty.float().clone()
    return torch.nan_to_num_(key, nan=math.inf, posinf=math.inf)


def _unseen_last(ties: Tensor, kth: float, difficulty: Tensor) -> Tensor:
    """The ids ``ties`` of the key ``kth`` in ranking order: by id, but at +inf the unseen (NaN) ones after the rest."""
    if kth != math.inf:
        return ties
    unseen = torch.isnan(torch.index_select(difficulty, 0, ties))
    return torch.cat([ties[~unseen], ties[unseen]])


def _bracket(key: Tensor, k: int) -> tuple[int, Tensor] | None:
    """Keys around the ``k``-th smallest (``1 <= k <= key.numel()``, no NaN): ``(below, ids)`` or ``None``.

    Floyd and Rivest's selection (1975): order statistics of a strided sample bracket the ``k``-th key;
    one pass counts the ``below`` keys under the bracket and one gathers the ``ids`` of the keys inside it
    (about 1% of them at N = 10M), so that the ``k``-th key is the ``(k - below)``-th of those and its ties
    are among them. ``torch.kthvalue`` on all keys copies them with their int64 positions and runs on one
    thread: about five times slower at N = 10M. ``None`` when the key is small or the sample misleads (keys
    ordered along the stride): the caller then selects over all keys.
    """
    n = key.numel()
    sample = key[::_SAMPLE_STRIDE]
    m = sample.numel()
    if m < 1024:  # small: the bracket would not save a pass
        return None
    rank, margin = k * m / n, _MARGIN * math.sqrt(m)
    low, high = math.floor(rank - margin), math.ceil(rank + margin)
    inside: Tensor | None = None
    below = 0
    if low >= 1:
        inside = torch.lt(key, torch.kthvalue(sample, low).values)
        below = int(torch.count_nonzero(inside))
        inside.logical_not_()
    if high <= m:
        under = torch.le(key, torch.kthvalue(sample, high).values)
        inside = under if inside is None else inside.logical_and_(under)
    if inside is None or below >= k:
        return None
    ids = inside.nonzero().squeeze(1)
    return (below, ids) if below + ids.numel() >= k else None


def easiest_mask(difficulty: Tensor, count: int, *, hardest: bool = False) -> Tensor:
    """The ``(N,)`` bool mask of `easiest_set`'s ids: a selection (``kthvalue`` on a bracket), no sort and no id list.

    Examples:
        >>> easiest_mask(torch.tensor([0.5, float("nan"), 0.1, 0.5]), 2)
        tensor([ True, False,  True, False])
    """
    return _first_mask(_ranking_key(difficulty, hardest), count, difficulty)


def _first_mask(key: Tensor, count: int, difficulty: Tensor) -> Tensor:
    """The mask of the ``count`` smallest of ``difficulty``'s `_ranking_key` ``key``, ties to the lower id, NaN last."""
    count = min(max(count, 0), key.numel())
    if count == 0:
        return torch.zeros(key.numel(), dtype=torch.bool)
    bracket = _bracket(key, count)
    if bracket is None:
        kth = torch.kthvalue(key, count).values
        chosen = torch.lt(key, kth)
        ties = torch.eq(key, kth).nonzero().squeeze(1)
        need = count - int(torch.count_nonzero(chosen))
    else:  # the k-th key, its ties and the count of keys under it, all from the few keys inside the bracket
        below, ids = bracket
        inside = torch.index_select(key, 0, ids)
        kth = torch.kthvalue(inside, count - below).values
        chosen = torch.lt(key, kth)
        ties = torch.index_select(ids, 0, torch.eq(inside, kth).nonzero().squeeze(1))
        need = count - below - int(torch.count_nonzero(torch.lt(inside, kth)))
    # The set ends among the ties of its last key: lowest ids first (at +inf, the unseen after the others).
    return chosen.index_fill_(0, _unseen_last(ties, float(kth), difficulty)[:need], True)


def _band_mask(key: Tensor, skip: int, count: int, difficulty: Tensor) -> Tensor:
    """The mask of ranks ``[skip, skip + count)`` of a `_ranking_key`: nested `_first_mask` sets, the inner removed."""
    band = _first_mask(key, skip + count, difficulty)
    return band.logical_and_(_first_mask(key, skip, difficulty).logical_not_()) if skip > 0 else band


def easiest_band(
    difficulty: Tensor, skip: int, count: int, *, hardest: bool = False, shard: TableShard | None = None
) -> Tensor:
    """The ids of ``easiest_first(difficulty, hardest=hardest)[skip : skip + count]``, in id order, in linear time.

    The easiest ``skip + count`` less the easiest ``skip`` (nested sets of one total order: key, then
    id), each a selection (``kthvalue`` on a bracket) and no sort: for callers that shuffle the band
    anyway (static pruning's ``band`` mode).

    Examples:
        >>> easiest_band(torch.tensor([0.5, 0.9, 0.1, 0.7]), 1, 2)
        tensor([0, 3])
    """
    if shard is not None:  # this rank's part of each nested set, the inner removed
        outer = easiest_set(difficulty, skip + count, hardest=hardest, shard=shard)
        if skip <= 0:
            return outer
        inner = torch.zeros(difficulty.numel(), dtype=torch.bool)
        inner[easiest_set(difficulty, skip, hardest=hardest, shard=shard) - shard.start] = True
        return torch.index_select(outer, 0, (~torch.index_select(inner, 0, outer - shard.start)).nonzero().squeeze(1))
    return _band_mask(_ranking_key(difficulty, hardest), skip, count, difficulty).nonzero().squeeze(1)


def grouped_easiest_band(
    difficulty: Tensor, groups: Tensor, skips: list[int], counts: list[int], *, hardest: bool = False
) -> Tensor:
    """`easiest_band` within each group: ids of group ``g``'s ranks ``[skips[g], skips[g] + counts[g])``.

    All groups at once, in a fixed number of passes over the N examples whatever the number of groups
    (no sort, no loop over groups at size N): each group's thresholds come from a bracket on one strided
    sample, and every key is compared with its group's threshold (`_grouped_first_mask`). Same ids as
    ranking all examples with `easiest_first` and cutting each group's slice (the class-balanced
    selection).

    Args:
        difficulty: ``(N,)`` scores.
        groups: ``(N,)`` int group (class) id per example, in ``[0, len(counts))``.
        skips: ranks skipped at the easy (or, with ``hardest``, hard) end of each group.
        counts: ids kept per group after the skipped ones.
        hardest: rank hardest first.

    Returns:
        The chosen ids of all groups, in id order.

    Examples:
        >>> grouped_easiest_band(torch.tensor([0.5, 0.9, 0.1, 0.7]), torch.tensor([0, 1, 0, 1]), [0, 0], [1, 1])
        tensor([2, 3])
    """
    key = _ranking_key(difficulty, hardest)
    groups = groups.long()
    band = _grouped_first_mask(
        key, groups, [skip + count for skip, count in zip(skips, counts, strict=True)], difficulty
    )
    if any(skip > 0 for skip in skips):
        band.logical_and_(_grouped_first_mask(key, groups, skips, difficulty).logical_not_())
    return band.nonzero().squeeze(1)


def _grouped_first_mask(key: Tensor, groups: Tensor, counts: list[int], difficulty: Tensor) -> Tensor:
    """The mask of the ``counts[g]`` smallest keys of each group ``g`` (ties to the lower id), all groups at once.

    `_bracket` per group, from one strided sample: per-group bounds are gathered to every
    key, one pass counts each group's keys below its bound and one gathers the keys inside; a small sort
    of those gives each group's threshold, its keys below it are chosen and its ties (all inside the
    bracket) go to the lowest ids. A group whose bracket misses is selected on its own, exactly.
    """
    num_groups = len(counts)
    sizes = torch.bincount(groups, minlength=num_groups).tolist()
    counts = [min(max(count, 0), size) for count, size in zip(counts, sizes, strict=True)]
    sample, sample_groups = key[::_SAMPLE_STRIDE], groups[::_SAMPLE_STRIDE]
    sample_sizes = torch.bincount(sample_groups, minlength=num_groups).tolist()
    sample = _sorted_by_group(sample, sample_groups)
    low, high = torch.full((num_groups,), -math.inf), torch.full((num_groups,), math.inf)
    start = 0
    for group, (m, size, count) in enumerate(zip(sample_sizes, sizes, counts, strict=True)):
        if count > 0 and m >= 64:  # a small group is all inside its bracket
            rank, margin = count * m / size, _MARGIN * math.sqrt(m)
            if (lower := math.floor(rank - margin)) >= 1:
                low[group] = sample[start + lower - 1]
            if (upper := math.ceil(rank + margin)) <= m:
                high[group] = sample[start + upper - 1]
        start += m
    inside = torch.lt(key, torch.index_select(low, 0, groups))
    below = torch.bincount(groups, weights=inside, minlength=num_groups).long().tolist()
    inside.logical_not_().logical_and_(torch.le(key, torch.index_select(high, 0, groups)))
    ids = inside.nonzero().squeeze(1)  # the brackets' keys, in id order
    inside_keys, inside_groups = torch.index_select(key, 0, ids), torch.index_select(groups, 0, ids)
    ranked = _sorted_by_group(inside_keys, inside_groups)
    inside_sizes = torch.bincount(inside_groups, minlength=num_groups).tolist()
    threshold = torch.full((num_groups,), -math.inf)  # -inf: the group is chosen elsewhere (or not at all)
    need = [0] * num_groups  # ties of the threshold to choose, lowest ids first
    missed = []
    start = 0
    for group, (count, size) in enumerate(zip(counts, inside_sizes, strict=True)):
        if count > 0 and below[group] < count <= below[group] + size:
            part = ranked[start : start + size]
            threshold[group] = part[count - below[group] - 1]
            need[group] = count - below[group] - int(torch.searchsorted(part, threshold[group : group + 1]))
        elif count > 0:
            missed.append(group)
        start += size
    chosen = torch.lt(key, torch.index_select(threshold, 0, groups))
    tied = torch.eq(inside_keys, torch.index_select(threshold, 0, inside_groups))
    ties = torch.index_select(ids, 0, tied.nonzero().squeeze(1))
    tie_groups = torch.index_select(groups, 0, ties)
    # Each group's ties in id order, except that at a threshold of +inf the unseen (NaN) come after the rest.
    unseen = torch.isnan(torch.index_select(difficulty, 0, ties)).long()
    by_group = torch.sort(tie_groups.long() * 2 + unseen, stable=True).indices
    tie_sizes = torch.bincount(tie_groups, minlength=num_groups)
    position = torch.arange(ties.numel()) - torch.repeat_interleave(tie_sizes.cumsum(0) - tie_sizes, tie_sizes)
    first = position < torch.tensor(need, dtype=torch.int64)[tie_groups[by_group]]
    chosen.index_fill_(0, ties[by_group][first], True)
    for group in missed:  # the sample misled: this group's selection over its members (exact, slower)
        members = torch.eq(groups, group).nonzero().squeeze(1)
        member_key, member_difficulty = torch.index_select(key, 0, members), torch.index_select(difficulty, 0, members)
        part = _first_mask(member_key, counts[group], member_difficulty).nonzero().squeeze(1)
        chosen.index_fill_(0, torch.index_select(members, 0, part), True)
    return chosen


def _sorted_by_group(key: Tensor, groups: Tensor) -> Tensor:
    """A float32 ``key`` sorted by group, then by key: one sort of ``(group, key)`` packed in a float64.

    The key's bits, as an int32 in the order of the floats, and the group fit exactly in a float64's 53
    bits below 2**21 groups (an int64 beyond). Not an int64 below that: torch sorts int64 with a parallel
    radix sort whose passes each synchronise the threads, 20 times slower on two busy cores.
    """
    bits = key.view(torch.int32)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # an int32 in the order of the floats (-0.0 just below 0.0)
    if groups.numel() and int(groups.max()) < 1 << 21:
        packed = torch.add(ordered.double(), groups.double(), alpha=float(1 << 32))
    else:
        packed = torch.add(ordered.long(), groups.long(), alpha=1 << 32)
    return torch.index_select(key, 0, torch.sort(packed).indices)


def importance_draws(cumulative: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """``size`` ids drawn independently with probabilities ``diff(cumulative)``, in a random order, in linear time.

    Sorted uniforms come without a sort, as normalised partial sums of exponentials, so one
    cache-friendly ``searchsorted`` finds the ids; a `keyed_permutation` then puts the draws in a random
    order (independent draws in a random order are independent draws).

    Args:
        cumulative: ``(N,)`` float64 cumulative sums of the (unnormalised) probabilities.
        size: the number of draws.
        generator: the epoch's generator.

    Examples:
        >>> ids = importance_draws(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), 4, torch.Generator())
        >>> ids.tolist()
        [2, 2, 2, 2]
    """
    spacings = torch.empty(size + 1, dtype=torch.float64).exponential_(generator=generator)
    sums = spacings.cumsum(0)
    draws = sums[:size] * (cumulative[-1] / sums[-1])  # sorted, uniform in [0, total)
    ids = torch.searchsorted(cumulative, draws, right=True).clamp_max(cumulative.numel() - 1)
    return torch.index_select(ids, 0, keyed_permutation(size, generator_key(generator)))


def easiest_first(difficulty: Tensor, *, hardest: bool = False) -> Tensor:
    """Example ids sorted easiest first (or hardest first); ties by lower id; unseen (NaN) last.

    Examples:
        >>> easiest_first(torch.tensor([0.5, float("nan"), 0.1, 0.5]))
        tensor([2, 0, 3, 1])
        >>> easiest_first(torch.tensor([0.5, float("nan"), 0.1, 0.5]), hardest=True)
        tensor([0, 3, 2, 1])
    """
    key = -difficulty if hardest else difficulty
    return torch.sort(key.float(), stable=True).indices  # torch.sort puts NaN after +inf, as numpy does


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
        if drop <= 0:
            continue
        in_stratum = strata == stratum
        size = int(torch.count_nonzero(in_stratum))
        if size == 0:
            continue
        if drop >= size:
            raise ValueError(f"Cannot drop {drop} of the {size} examples of stratum {stratum}.")
        # The dropped ranks within the stratum (its members in id order), written back through the mask:
        # no list of the members' ids, no gather from it.
        dropped = keyed_permutation(size, generator_key(generator), torch.arange(drop))
        keep.masked_scatter_(in_stratum, torch.ones(size, dtype=torch.bool).index_fill_(0, dropped, False))
        weights.masked_fill_(in_stratum, size / (size - drop))
    ids = keep.nonzero().squeeze(1)
    return ids, torch.index_select(weights, 0, ids)


def sampling_probabilities(scores: Tensor, smoothing: float) -> Tensor:
    """``(1 - smoothing) * s / sum(s) + smoothing / N`` in float32, NaN scores replaced by the mean, clamped at 0.

    The mean and the sum accumulate in float64; a caller that draws from the probabilities takes their
    cumulative sum in float64 too (``torch.cumsum(p, 0, dtype=torch.float64)``), where float32 could not
    resolve one example's share of ten million.

    Examples:
        >>> sampling_probabilities(torch.tensor([1.0, 3.0, float("nan")]), 0.0).tolist()
        [0.1666666716337204, 0.5, 0.3333333432674408]
    """
    scores = scores.float()
    seen = scores.numel() - int(torch.count_nonzero(torch.isnan(scores)))
    fill = float(torch.nansum(scores, dtype=torch.float64)) / seen if seen else 1.0
    filled = torch.nan_to_num(scores, nan=fill, posinf=math.inf, neginf=-math.inf).clamp_min_(0)
    total = float(filled.sum(dtype=torch.float64))
    if total <= 0:  # every score 0: uniform
        return torch.full_like(filled, 1.0 / scores.numel())
    return filled.mul_((1 - smoothing) / total).add_(smoothing / scores.numel())
