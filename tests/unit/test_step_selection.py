"""The pure in-step selections: exact top-k with ties and NaN, fixed-size probabilistic sampling with
exact inclusion probabilities, the random twins, token masks, scorers, and errors that name the value."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from lightning_curricula import weighted_mean, weighted_token_mean
from lightning_curricula.step.selection import (
    excess_loss,
    inclusion_probabilities,
    kept_count,
    percentile_selection,
    random_selection,
    random_token_mask,
    reducible_loss,
    select_examples,
    select_tokens,
    top_k_selection,
    top_k_token_mask,
)

NAN = math.nan


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ top-k


def test_top_k_breaks_ties_by_lower_position_and_never_keeps_nan() -> None:
    scores = torch.tensor([2.0, NAN, 5.0, 2.0, 2.0, NAN, 1.0])
    # k = round(0.43 * 7) = 3: the 5.0, then the two lowest positions among the three 2.0s.
    selection = top_k_selection(scores, 0.43)
    assert selection.positions.tolist() == [0, 2, 3]
    assert selection.weights.tolist() == [1.0, 1.0, 1.0]


def test_top_k_keeps_fewer_than_k_rather_than_a_nan() -> None:
    scores = torch.tensor([NAN, 1.0, NAN, NAN])
    assert top_k_selection(scores, 1.0).positions.tolist() == [1]
    assert top_k_selection(torch.full((3,), NAN), 1.0).positions.numel() == 0


INF = math.inf
# A +inf score is an infinite loss (a gradient as poisoned as NaN's); -inf, an infinite reference loss.
NON_FINITE = [[INF, 0.5, -INF, 0.25, NAN, 0.75], [INF, INF, 1.0, NAN], [-INF, 2.0, 3.0]]


@pytest.mark.parametrize("values", NON_FINITE)
@pytest.mark.parametrize("method", ["top_k", "percentile", "random"])
def test_no_selection_keeps_a_non_finite_score_not_even_to_fill_k(values: list[float], method: str) -> None:
    scores = torch.tensor(values)
    finite = scores.isfinite()
    for keep in (0.3, 0.5, 1.0):
        for seed in range(10):
            selection = select_examples(scores, keep, method=method, generator=gen(seed), unbiased=True)  # type: ignore[arg-type]
            assert bool(finite[selection.positions].all()), (keep, selection.positions)
            assert selection.positions.numel() == min(kept_count(len(values), keep), int(finite.sum()))
            assert bool(selection.weights.isfinite().all())


@pytest.mark.parametrize("method", ["top_k", "percentile", "random"])
def test_a_batch_of_only_non_finite_scores_keeps_nothing(method: str) -> None:
    selection = select_examples(torch.tensor([INF, -INF, NAN]), 1.0, method=method, generator=gen(), unbiased=True)  # type: ignore[arg-type]
    assert selection.positions.numel() == selection.weights.numel() == 0


def test_top_k_ranks_the_finite_scores_only() -> None:
    scores = torch.tensor([-INF, 0.0, INF, NAN, 2.0])
    assert top_k_selection(scores, 0.4).positions.tolist() == [1, 4]
    assert top_k_selection(scores, 1.0).positions.tolist() == [1, 4]


def test_percentile_weights_are_unbiased_over_the_finite_scores() -> None:
    # The Horvitz-Thompson weights estimate the mean over the m finite scores, as over the non-NaN ones before.
    scores = torch.tensor([0.1, INF, 0.7, 0.3, -INF, 0.9, 0.5, 0.2])
    finite = scores[scores.isfinite()]
    estimates = []
    for seed in range(4000):
        selection = percentile_selection(scores, 0.5, gen(seed), beta=1.0, unbiased=True)
        estimates.append(float((scores[selection.positions] * selection.weights).sum() / selection.positions.numel()))
    torch.testing.assert_close(torch.tensor(estimates).mean(), finite.mean(), atol=0.01, rtol=0)


@pytest.mark.parametrize("method", ["top_k", "random"])
def test_token_masks_never_keep_a_non_finite_score(method: str) -> None:
    scores = torch.tensor([[INF, 1.0, -INF, 2.0], [NAN, 3.0, INF, 0.5]])
    kept = select_tokens(scores, torch.ones(2, 4), 1.0, method=method, generator=gen())  # type: ignore[arg-type]
    assert kept.tolist() == [[False, True, False, True], [False, True, False, True]]
    assert not bool(select_tokens(torch.full((1, 3), INF), torch.ones(1, 3), 1.0, method=method, generator=gen()).any())  # type: ignore[arg-type]


@pytest.mark.parametrize(("size", "keep", "expected"), [(10, 1.0, 10), (10, 1e-9, 1), (1, 0.01, 1), (9, 0.5, 5)])
def test_keep_share_at_the_bounds(size: int, keep: float, expected: int) -> None:
    assert kept_count(size, keep) == expected
    scores = torch.arange(size, dtype=torch.float32)
    assert top_k_selection(scores, keep).positions.numel() == expected
    assert random_selection(scores, keep, gen()).positions.numel() == expected
    assert percentile_selection(scores, keep, gen()).positions.numel() == expected
    if keep == 1.0:
        assert top_k_selection(scores, keep).positions.tolist() == list(range(size))
        assert percentile_selection(scores, keep, gen()).positions.tolist() == list(range(size))


def test_empty_batch_keeps_nothing() -> None:
    empty = torch.empty(0)
    assert top_k_selection(empty, 0.5).positions.numel() == 0
    assert random_selection(empty, 0.5, gen()).positions.numel() == 0
    assert percentile_selection(empty, 0.5, gen()).positions.numel() == 0


@pytest.mark.parametrize("keep", [0, 0.0, -0.1, 1.5, NAN, True, "0.5"])
def test_keep_outside_the_unit_interval_fails_naming_the_value(keep: object) -> None:
    with pytest.raises(ValueError, match=r"keep must be a share in \(0, 1\], got " + repr(keep).replace(".", r"\.")):
        top_k_selection(torch.ones(4), keep)  # type: ignore[arg-type]


def test_shapes_that_do_not_match_fail_naming_both() -> None:
    with pytest.raises(ValueError, match=r"losses has shape \(3,\) but irreducible has shape \(4,\)"):
        reducible_loss(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match=r"token_losses has shape \(2, 5\) but reference_token_losses has shape"):
        excess_loss(torch.ones(2, 5), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"token scores has shape \(2, 3\) but mask has shape \(3, 2\)"):
        top_k_token_mask(torch.ones(2, 3), torch.ones(3, 2), 0.5)
    with pytest.raises(ValueError, match=r"scores have shape \(2, 3\), expected \(batch_size,\)"):
        top_k_selection(torch.ones(2, 3), 0.5)


def test_random_methods_need_a_cpu_generator_and_methods_are_checked() -> None:
    with pytest.raises(ValueError, match="pass generator="):
        random_selection(torch.ones(3), 0.5, None)
    with pytest.raises(ValueError, match="'percentile'"):
        select_examples(torch.ones(3), 0.5, method="percentile")
    with pytest.raises(ValueError, match="method must be one of .* got 'biggest'"):
        select_examples(torch.ones(3), 0.5, method="biggest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="got 'percentile'"):
        select_tokens(torch.ones(1, 3), torch.ones(1, 3), 0.5, method="percentile")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beta must be a finite number >= 0, got -1"):
        percentile_selection(torch.ones(3), 0.5, gen(), beta=-1)


# ------------------------------------------------------------------------------------------------ random


def test_random_twin_is_uniform_over_non_nan_and_reproducible() -> None:
    scores = torch.tensor([1.0, NAN, 3.0, 4.0, 5.0, 6.0])
    counts = torch.zeros(6)
    for seed in range(2000):
        counts[random_selection(scores, 0.5, gen(seed)).positions] += 1
    assert counts[1] == 0
    # Each non-NaN position is kept with probability 3/5.
    torch.testing.assert_close(counts[[0, 2, 3, 4, 5]] / 2000, torch.full((5,), 0.6), atol=0.04, rtol=0)
    first = random_selection(scores, 0.5, gen(7)).positions
    assert torch.equal(first, random_selection(scores, 0.5, gen(7)).positions)


# ------------------------------------------------------------------------------------------------ percentile


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.floats(min_value=1e-3, max_value=1e3), min_size=1, max_size=30),
    share=st.floats(min_value=0.01, max_value=1.0),
)
def test_inclusion_probabilities_sum_to_k_and_stay_in_the_unit_interval(sizes: list[float], share: float) -> None:
    count = kept_count(len(sizes), share)
    probabilities = inclusion_probabilities(torch.tensor(sizes, dtype=torch.float64), count)
    assert math.isclose(float(probabilities.sum()), count, rel_tol=1e-9)
    assert bool(((probabilities > 0) & (probabilities <= 1 + 1e-12)).all())
    order = torch.argsort(torch.tensor(sizes), stable=True)
    assert bool((probabilities[order].diff() >= -1e-12).all())  # rising with the size


@settings(max_examples=80, deadline=None)
@given(
    scores=st.lists(st.one_of(st.floats(-1e6, 1e6), st.just(NAN)), min_size=0, max_size=40),
    share=st.floats(min_value=0.01, max_value=1.0),
    beta=st.sampled_from([0.0, 0.5, 1.0, 3.0, 300.0]),
    seed=st.integers(0, 2**31),
)
def test_percentile_selection_always_keeps_k_distinct_non_nan_positions(
    scores: list[float], share: float, beta: float, seed: int
) -> None:
    values = torch.tensor(scores, dtype=torch.float64)
    selection = percentile_selection(values, share, gen(seed), beta=beta, unbiased=True)
    known = int((~values.isnan()).sum())
    assert selection.positions.numel() == min(kept_count(len(scores), share), known)
    assert selection.positions.unique().numel() == selection.positions.numel()
    assert not bool(values[selection.positions].isnan().any())
    assert bool((selection.weights > 0).all())
    assert bool(selection.weights.isfinite().all())


def test_percentile_selection_keeps_exactly_k_with_its_inclusion_probabilities() -> None:
    scores = torch.tensor([0.3, 2.0, NAN, 0.1, 5.0, 0.7, 1.1, 0.2])
    draws = 4000
    counts = torch.zeros(8)
    for seed in range(draws):
        selection = percentile_selection(scores, 0.5, gen(seed), beta=2.0)
        assert selection.positions.numel() == 4
        assert selection.positions.unique().numel() == 4
        counts[selection.positions] += 1
    known = ~scores.isnan()
    cdf = torch.tensor([3, 6, 0, 1, 7, 4, 5, 2], dtype=torch.float64) / 7
    expected = torch.zeros(8, dtype=torch.float64)
    expected[known] = inclusion_probabilities(cdf[known].pow(2.0), 4)
    assert counts[2] == 0
    torch.testing.assert_close(counts.double() / draws, expected, atol=0.03, rtol=0)


def test_percentile_selection_with_unbiased_weights_estimates_the_batch_mean() -> None:
    losses = torch.tensor([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 0.05])
    estimates = []
    for seed in range(4000):
        selection = percentile_selection(losses, 0.25, gen(seed), beta=1.0, unbiased=True)
        estimates.append(float(weighted_mean(losses[selection.positions], selection.weights)))
    assert math.isclose(sum(estimates) / len(estimates), float(losses.mean()), rel_tol=0.03)
    biased = percentile_selection(losses, 0.25, gen(0))
    assert biased.weights.tolist() == [1.0, 1.0]


def test_percentile_selection_with_beta_zero_is_uniform() -> None:
    scores = torch.arange(5, dtype=torch.float32)
    counts = torch.zeros(5)
    for seed in range(3000):
        counts[percentile_selection(scores, 0.4, gen(seed), beta=0.0).positions] += 1
    torch.testing.assert_close(counts / 3000, torch.full((5,), 0.4), atol=0.04, rtol=0)


# ------------------------------------------------------------------------------------------------ tokens


def test_top_k_tokens_over_the_batch_with_mask_ties_and_nan() -> None:
    scores = torch.tensor([[1.0, 4.0, NAN, 2.0], [4.0, 9.0, 3.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1]])
    # 7 loss tokens, k = round(0.5 * 7) = 4: the two 4.0s (tie: row 0 first), 3.0, 2.0; 9.0 is masked out.
    kept = top_k_token_mask(scores, mask, 0.5)
    assert kept.tolist() == [[False, True, False, True], [True, False, True, False]]
    assert weighted_token_mean(torch.ones(2, 4), kept) == 1.0


def test_random_tokens_keep_as_many_tokens_within_the_mask() -> None:
    scores = torch.tensor([[1.0, NAN, 2.0], [3.0, 4.0, 5.0]])
    mask = torch.tensor([[True, True, True], [True, False, True]])
    for seed in range(50):
        kept = random_token_mask(scores, mask, 0.6, gen(seed))
        assert int(kept.sum()) == 3
        assert not bool(kept[0, 1])
        assert not bool(kept[1, 1])


def test_scorers() -> None:
    assert reducible_loss(torch.tensor([1.0, 2.0]), torch.tensor([NAN, 0.5])).isnan().tolist() == [True, False]
    losses = torch.tensor([2.0, 3.0], requires_grad=True)
    assert not reducible_loss(losses, torch.zeros(2)).requires_grad
    assert excess_loss(torch.ones(1, 2), torch.zeros(1, 2)).tolist() == [[1.0, 1.0]]


# ------------------------------------------------------------------------------------------------ autograd


@pytest.mark.parametrize("method", ["top_k", "percentile", "random"])
def test_gradient_equals_the_gradient_of_the_selected_subset_loss(method: str) -> None:
    generator = gen(1)
    model = nn.Linear(5, 3)
    x = torch.randn(12, 5, generator=generator)
    y = torch.randint(0, 3, (12,), generator=generator)
    with torch.no_grad():
        scores = F.cross_entropy(model(x), y, reduction="none")
    selection = select_examples(scores, 0.25, method=method, generator=gen(2), unbiased=method == "percentile")
    # In-step: forward and backward only the kept examples.
    model.zero_grad()
    kept = selection.positions
    weighted_mean(F.cross_entropy(model(x[kept]), y[kept], reduction="none"), selection.weights).backward()
    in_step = [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]
    # Reference: a fresh full forward, with the loss written out over the chosen subset only.
    model.zero_grad()
    full = F.cross_entropy(model(x), y, reduction="none")
    weight = torch.zeros(12)
    weight[kept] = selection.weights
    (full * weight).sum().div(kept.numel()).backward()
    for got, want in zip(in_step, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(got, want)
    assert kept.numel() == 3
