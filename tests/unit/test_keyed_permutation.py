"""`keyed_permutation`: a bijection of [0, n) for every n, evaluated anywhere, and uniform enough to shuffle with."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_curricula.distributed import generator_key, keyed_permutation
from lightning_curricula.policies.selection import (
    full_plan,
    random_plan,
    shuffled_plan,
    stratified_keep,
)

SIZES = [0, 1, 2, 3, 4, 5, 7, 8, 13, 16, 17, 31, 32, 97, 255, 256, 257, 1000, 1023, 1024, 1025, 65521, 65536, 65537]


@pytest.mark.parametrize("n", SIZES + [2**20 - 1, 2**20 + 7])
@pytest.mark.parametrize("key", [0, 1, -5, 2**63 - 1])
def test_is_a_permutation_of_the_range(n: int, key: int) -> None:
    values = keyed_permutation(n, key)
    assert values.dtype == torch.int64
    assert torch.equal(values.sort().values, torch.arange(n))


@given(n=st.integers(1, 5000), key=st.integers(-(2**63), 2**64), data=st.data())
@settings(max_examples=60, deadline=None)
def test_positions_evaluate_the_same_permutation(n: int, key: int, data: st.DataObject) -> None:
    positions = torch.tensor(data.draw(st.lists(st.integers(0, n - 1), max_size=50)), dtype=torch.int64)
    whole = keyed_permutation(n, key)
    assert torch.equal(keyed_permutation(n, key, positions), whole[positions])
    assert torch.equal(keyed_permutation(n, key, positions.int()), whole[positions])  # any int dtype


def test_the_key_chooses_the_permutation() -> None:
    assert torch.equal(keyed_permutation(1000, 3), keyed_permutation(1000, 3))
    assert not torch.equal(keyed_permutation(1000, 3), keyed_permutation(1000, 4))
    assert torch.equal(keyed_permutation(1000, 3), keyed_permutation(1000, 3 + 2**64))  # the low 64 bits


def test_ranges_beyond_int32_use_int64() -> None:
    n = 2**33 + 3
    positions = torch.cat([torch.arange(2000), torch.arange(n - 2000, n)])
    values = keyed_permutation(n, 11, positions)
    assert values.dtype == torch.int64
    assert int(values.min()) >= 0
    assert int(values.max()) < n
    assert values.unique().numel() == positions.numel()
    assert torch.equal(keyed_permutation(n, 11, positions[::7]), values[::7])
    assert float(values.double().mean()) == pytest.approx(n / 2, rel=0.05)  # spread over the whole range


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match=r"n must be in \[0, 2\*\*40\], got -1"):
        keyed_permutation(-1, 0)
    with pytest.raises(ValueError, match=r"got 1099511627777"):
        keyed_permutation(2**40 + 1, 0)
    with pytest.raises(ValueError, match=r"positions must be in \[0, 5\), got values in \[0, 5\]"):
        keyed_permutation(5, 0, torch.tensor([0, 5]))


@pytest.mark.parametrize("n", [2, 3, 5, 8, 13])
def test_each_id_lands_anywhere_with_equal_frequency(n: int) -> None:
    """Over 3000 keys, the count of (id, position) is binomial(3000, 1/n): chi-square within df + 5 sd."""
    keys = 3000
    counts = torch.zeros(n, n)
    for key in range(keys):
        counts[torch.arange(n), keyed_permutation(n, key)] += 1
    expected = keys / n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    df = (n - 1) ** 2
    assert chi2 < df + 5 * math.sqrt(2 * df), counts


def test_large_permutation_has_no_trace_of_the_id_order() -> None:
    """At n = 1,000,003: position uncorrelated with id, neighbours' positions independent, blocks spread evenly."""
    n = 1_000_003
    values = keyed_permutation(n, 2024).double()
    ids = torch.arange(n, dtype=torch.float64)
    assert abs(float(torch.corrcoef(torch.stack([ids, values]))[0, 1])) < 5 / math.sqrt(n)
    assert abs(float(torch.corrcoef(torch.stack([values[:-1], values[1:]]))[0, 1])) < 5 / math.sqrt(n)
    # The first 1,000 ids fall in each tenth of the range about 100 times (binomial sd 9.5).
    deciles = torch.bincount((values[:1000] * 10 / n).long(), minlength=10)
    assert int(deciles.min()) > 60
    assert int(deciles.max()) < 140
    # Which ids come first: the head of the order is an unbiased sample of the ids.
    head = torch.argsort(values)[:10_000].double()
    assert float(head.mean()) == pytest.approx(n / 2, rel=0.02)


def test_generator_key_is_one_deterministic_draw() -> None:
    a, b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert generator_key(a) == generator_key(b) != generator_key(torch.Generator().manual_seed(6))
    assert torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))  # advanced alike


def test_kernels_draw_their_orders_from_the_generator() -> None:
    def generator() -> torch.Generator:
        return torch.Generator().manual_seed(9)

    order = keyed_permutation(50, generator_key(generator()))
    assert torch.equal(full_plan(50, generator()).indices, order)
    assert torch.equal(random_plan(50, 7, generator()).indices, order[:7])
    ids = torch.arange(100, 150)
    assert torch.equal(shuffled_plan(ids, generator()).indices, ids[order])
    assert random_plan(50, 0, generator()).indices.numel() == 0


def test_random_plan_heads_are_uniform_subsets() -> None:
    """Each id is in a random 3-of-10 subset with probability 0.3."""
    counts = torch.zeros(10)
    for seed in range(2000):
        counts[random_plan(10, 3, torch.Generator().manual_seed(seed)).indices] += 1
    assert torch.allclose(counts / 2000, torch.full((10,), 0.3), atol=0.05)


def test_stratified_keep_drops_uniformly_within_each_stratum() -> None:
    strata = torch.tensor([0] * 6 + [1] * 4 + [-1])
    kept = torch.zeros(11)
    for seed in range(2000):
        ids, weights = stratified_keep(strata, [3, 1], torch.Generator().manual_seed(seed))
        assert ids.numel() == 3 + 3
        assert 10 not in ids.tolist()
        assert torch.equal(weights, torch.tensor([2.0] * 3 + [4 / 3] * 3))
        kept[ids] += 1
    assert torch.allclose(kept[:6] / 2000, torch.full((6,), 0.5), atol=0.05)
    assert torch.allclose(kept[6:10] / 2000, torch.full((4,), 0.75), atol=0.05)
