"""Linear-time selection kernels against their sorting definitions: bands, per-group bands, importance draws."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_curricula.policies.selection import (
    easiest_band,
    easiest_first,
    grouped_easiest_band,
    importance_draws,
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
    assert torch.equal(got, torch.cat(expected))


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
