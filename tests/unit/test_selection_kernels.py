"""Linear-time selection kernels against their sorting definitions: bands, per-group bands, importance draws."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_curricula.distributed import derived_seed, generator_key, keyed_permutation, keyed_uniforms
from lightning_curricula.policies.curricula import ordered_subset
from lightning_curricula.policies.selection import (
    _bracket,
    easiest_band,
    easiest_first,
    easiest_mask,
    easiest_set,
    grouped_easiest_band,
    importance_draws,
    stratified_keep,
)

SCORES = st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0, float("nan")]), min_size=1, max_size=40)


@given(scores=SCORES, data=st.data(), hardest=st.booleans())
@settings(max_examples=200, deadline=None)
def test_easiest_band_is_a_slice_of_the_ranking(scores: list[float], data: st.DataObject, hardest: bool) -> None:
    difficulty = torch.tensor(scores)
    skip = data.draw(st.integers(0, len(scores)))
    count = data.draw(st.integers(0, len(scores) - skip))
    expected = easiest_first(difficulty, hardest=hardest)[skip : skip + count].sort().values
    assert torch.equal(easiest_band(difficulty, skip, count, hardest=hardest), expected)


@given(scores=SCORES, data=st.data(), hardest=st.booleans())
@settings(max_examples=200, deadline=None)
def test_grouped_easiest_band_is_each_groups_slice(scores: list[float], data: st.DataObject, hardest: bool) -> None:
    n = len(scores)
    difficulty = torch.tensor(scores)
    groups = torch.tensor(data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    sizes = torch.bincount(groups, minlength=3).tolist()
    skips = [data.draw(st.integers(0, size)) for size in sizes]
    counts = [data.draw(st.integers(0, size - skip)) for size, skip in zip(sizes, skips, strict=True)]
    ranked = easiest_first(difficulty, hardest=hardest)
    expected = []
    for group in range(3):
        members = ranked[groups[ranked] == group]
        expected.append(members[skips[group] : skips[group] + counts[group]].sort().values)
    got = grouped_easiest_band(difficulty, groups, skips, counts, hardest=hardest)
    assert torch.equal(got, torch.cat(expected).sort().values)  # all groups' bands, in id order


def test_importance_draws_follow_the_probabilities_in_a_random_order() -> None:
    probabilities = torch.tensor([0.5, 0.0, 0.2, 0.3], dtype=torch.float64)
    ids = importance_draws(probabilities.cumsum(0), 40_000, torch.Generator().manual_seed(0))
    assert ids.dtype == torch.int64
    frequencies = torch.bincount(ids, minlength=4).double() / ids.numel()
    assert torch.allclose(frequencies, probabilities, atol=0.01)  # binomial sd <= 0.0025
    assert int((ids == 1).sum()) == 0  # probability zero: never drawn
    assert not bool((ids[1:] >= ids[:-1]).all())  # not left in sorted order
    # A draw's position says nothing about its id: both halves have the same mix.
    first, second = torch.bincount(ids[:20_000], minlength=4), torch.bincount(ids[20_000:], minlength=4)
    assert torch.allclose(first.double() / 20_000, second.double() / 20_000, atol=0.02)


def test_importance_draws_are_a_function_of_the_generator() -> None:
    cumulative = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    a = importance_draws(cumulative, 50, torch.Generator().manual_seed(4))
    assert torch.equal(a, importance_draws(cumulative, 50, torch.Generator().manual_seed(4)))
    assert not torch.equal(a, importance_draws(cumulative, 50, torch.Generator().manual_seed(5)))


def large_keys(kind: str, n: int = 80_021) -> torch.Tensor:
    """Keys at a size where `_bracket` brackets the k-th value with a sample (not ``kthvalue`` on all)."""
    g = torch.Generator().manual_seed(0)
    if kind == "uniform":
        return torch.rand(n, generator=g)
    if kind == "ties":  # a few distinct values: the bracket holds whole runs of ties
        return torch.randint(5, (n,), generator=g).float()
    if kind == "ascending":  # ordered along the sample's stride
        return torch.arange(n, dtype=torch.float32)
    if kind == "periodic":  # every 64th key, the sample, is the smallest: the bracket misses, the fallback answers
        return torch.where(torch.arange(n) % 64 == 0, -1.0, torch.rand(n, generator=g))
    if kind == "signed_zeros_and_inf":
        return torch.tensor([-0.0, 0.0, math.inf, -math.inf, 1.0])[torch.randint(5, (n,), generator=g)]
    raise AssertionError(kind)


KINDS = ["uniform", "ties", "ascending", "periodic", "signed_zeros_and_inf"]


@pytest.mark.parametrize("kind", KINDS)
def test_bracket_holds_the_kth_key_and_its_ties(kind: str) -> None:
    key = large_keys(kind)
    n = key.numel()
    bracketed = 0
    for k in (1, 2, 100, n // 64, n // 3, n // 2, n - 5000, n - 1, n):
        bracket = _bracket(key, k)
        if bracket is None:  # the caller selects over all keys
            continue
        bracketed += 1
        below, ids = bracket
        kth = torch.kthvalue(key, k).values
        inside = key[ids]
        assert below == int((key < inside.min()).sum())  # below counts exactly the keys under the bracket
        assert torch.equal(ids, ((key >= inside.min()) & (key <= inside.max())).nonzero().squeeze(1))
        assert torch.kthvalue(inside, k - below).values.item() == kth.item()
        assert int((inside == kth).sum()) == int((key == kth).sum())  # every tie of the k-th key is inside
    assert bracketed >= (3 if kind == "periodic" else 8)  # the bracket, not only the fallback, is tested


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hardest", [False, True])
def test_easiest_mask_and_band_at_scale_equal_the_ranking(kind: str, hardest: bool) -> None:
    difficulty = large_keys(kind)
    difficulty[::997] = math.nan  # unseen: last in both orders
    ranked = easiest_first(difficulty, hardest=hardest)
    n = difficulty.numel()
    for count in (1, n // 2, n - 10):
        mask = easiest_mask(difficulty, count, hardest=hardest)
        assert torch.equal(mask.nonzero().squeeze(1), ranked[:count].sort().values)
        assert torch.equal(mask.nonzero().squeeze(1), easiest_set(difficulty, count, hardest=hardest))
    skip, count = n // 10, n // 2
    expected = ranked[skip : skip + count].sort().values
    assert torch.equal(easiest_band(difficulty, skip, count, hardest=hardest), expected)
    groups = torch.arange(n) % 3
    sizes = torch.bincount(groups).tolist()
    skips, counts = [size // 10 for size in sizes], [size // 2 for size in sizes]
    expected = torch.cat([ranked[groups[ranked] == g][skips[g] : skips[g] + counts[g]] for g in range(3)]).sort().values
    assert torch.equal(grouped_easiest_band(difficulty, groups, skips, counts, hardest=hardest), expected)


def balanced_by_definition(difficulty: torch.Tensor, size: int) -> torch.Tensor:
    """The easiest ``size // 2``, then the hardest of the rest, from full sorts."""
    easy = easiest_first(difficulty)[: size // 2]
    rest = torch.ones(difficulty.numel(), dtype=torch.bool)
    rest[easy] = False
    rest_ids = rest.nonzero().squeeze(1)
    hard = rest_ids[easiest_first(difficulty[rest_ids], hardest=True)[: size - size // 2]]
    return torch.cat([easy.sort().values, hard.sort().values])


@given(scores=SCORES, data=st.data())
@settings(max_examples=300, deadline=None)
def test_balanced_subset_is_the_easiest_half_then_the_hardest_of_the_rest(
    scores: list[float], data: st.DataObject
) -> None:
    difficulty = torch.tensor(scores)
    size = data.draw(st.integers(0, len(scores)))
    assert torch.equal(ordered_subset(difficulty, size, "balanced"), balanced_by_definition(difficulty, size))


@pytest.mark.parametrize("kind", ["uniform", "ties"])
def test_balanced_subset_at_scale(kind: str) -> None:
    difficulty = large_keys(kind)
    difficulty[::997] = math.nan
    for size in (difficulty.numel() // 2, difficulty.numel() - 7):
        assert torch.equal(ordered_subset(difficulty, size, "balanced"), balanced_by_definition(difficulty, size))


def stratified_keep_by_definition(
    strata: torch.Tensor, drops: list[int], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each stratum's members in id order; the members at the first ``drop`` positions of a keyed shuffle dropped."""
    keep, weights = strata >= 0, torch.ones(strata.numel())
    for stratum, drop in enumerate(drops):
        members = (strata == stratum).nonzero().squeeze(1)
        if drop <= 0 or members.numel() == 0:
            continue
        keep[members[keyed_permutation(members.numel(), generator_key(generator), torch.arange(drop))]] = False
        weights[members] = members.numel() / (members.numel() - drop)
    ids = keep.nonzero().squeeze(1)
    return ids, weights[ids]


@given(strata=st.lists(st.integers(-1, 2), min_size=1, max_size=60), data=st.data(), seed=st.integers(0, 2**32))
@settings(max_examples=200, deadline=None)
def test_stratified_keep_drops_the_keyed_ranks_of_each_stratum(
    strata: list[int], data: st.DataObject, seed: int
) -> None:
    groups = torch.tensor(strata)
    sizes = [int((groups == stratum).sum()) for stratum in range(3)]
    drops = [data.draw(st.integers(0, max(size - 1, 0))) for size in sizes]
    got = stratified_keep(groups, drops, torch.Generator().manual_seed(seed))
    expected = stratified_keep_by_definition(groups, drops, torch.Generator().manual_seed(seed))
    assert torch.equal(got[0], expected[0])
    assert torch.equal(got[1], expected[1])


def test_keyed_uniforms_are_splitmix64_of_the_key_and_the_id() -> None:
    mask = (1 << 64) - 1

    def reference(key: int, i: int) -> float:  # SplitMix64's finaliser in Python's unbounded integers
        x = (i * 0x9E3779B97F4A7C15 + derived_seed(key) - (1 << 63)) & mask
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        return ((x ^ (x >> 31)) >> 11) / 2**53  # the top 53 bits, exact in a float64

    ids = torch.tensor([0, 1, 2, 3, 12_345_678_901, 2**40 + 7])
    assert keyed_uniforms(3, ids).tolist() == [reference(3, int(i)) for i in ids]
    draws = keyed_uniforms(11, torch.arange(200_000))
    assert abs(float(draws.mean()) - 0.5) < 0.005
    assert abs(float((draws < 0.3).double().mean()) - 0.3) < 0.005
    assert not torch.equal(keyed_uniforms(12, torch.arange(5)), draws[:5])
