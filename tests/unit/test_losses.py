"""Weighted losses: plain means at weight 1, hand-computed weighted cases, dtype casting, shape errors."""

from __future__ import annotations

import re

import pytest
import torch
from selection_helpers import epoch_context
from torch import Tensor

from lightning_curricula import InfoBatch, Plan, weighted_mean, weighted_token_mean


def test_weighted_mean_at_weight_one_is_the_mean() -> None:
    losses = torch.tensor([0.5, 1.5, 4.0, 2.0])
    assert torch.equal(weighted_mean(losses, torch.ones(4)), losses.mean())
    assert torch.equal(weighted_mean(losses), losses.mean())


def test_weighted_mean_divides_by_the_batch_size_not_the_weight_sum() -> None:
    losses = torch.tensor([1.0, 3.0, 2.0])
    weights = torch.tensor([2.0, 0.5, 0.0])
    # (2 * 1 + 0.5 * 3 + 0 * 2) / 3, not / (2 + 0.5 + 0)
    assert weighted_mean(losses, weights).item() == pytest.approx(3.5 / 3)


def test_weighted_mean_casts_float64_weights_and_keeps_the_loss_dtype_and_gradient() -> None:
    losses = torch.tensor([1.0, 3.0], requires_grad=True)
    weights = torch.tensor([2.0, 0.5], dtype=torch.float64)  # what the DataLoader collates from Python floats
    result = weighted_mean(losses, weights)
    assert result.dtype == torch.float32
    assert result.item() == pytest.approx((2.0 + 1.5) / 2)
    result.backward()
    assert losses.grad is not None
    assert losses.grad.tolist() == [1.0, 0.25]


def test_weighted_mean_half_precision_losses_stay_half() -> None:
    losses = torch.tensor([1.0, 3.0], dtype=torch.bfloat16)
    assert weighted_mean(losses, torch.tensor([1.0, 1.0], dtype=torch.float64)).dtype == torch.bfloat16


@pytest.mark.parametrize("shape", [(3,), (2, 1), (1,)])
def test_weighted_mean_shape_mismatch_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=re.escape(f"weights have shape {shape}, expected (2,)")):
        weighted_mean(torch.ones(2), torch.ones(shape))


def test_weighted_token_mean_at_weight_one_is_the_masked_token_mean() -> None:
    generator = torch.Generator().manual_seed(0)
    token_losses = torch.rand(3, 5, generator=generator)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]])
    expected = token_losses[mask.bool()].mean()
    torch.testing.assert_close(weighted_token_mean(token_losses, mask), expected)
    torch.testing.assert_close(weighted_token_mean(token_losses, mask, torch.ones(3)), expected)
    torch.testing.assert_close(weighted_token_mean(token_losses, mask.bool(), torch.ones(3)), expected)


def test_weighted_token_mean_hand_computed() -> None:
    token_losses = torch.tensor([[1.0, 2.0, 9.0], [3.0, 5.0, 7.0]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    weights = torch.tensor([0.5, 2.0], dtype=torch.float64)
    # (0.5 * (1 + 2) + 2 * (5 + 7)) / 4 tokens
    result = weighted_token_mean(token_losses, mask, weights)
    assert result.dtype == torch.float32
    assert result.item() == pytest.approx((1.5 + 24.0) / 4)


def test_weighted_token_mean_shape_errors() -> None:
    with pytest.raises(ValueError, match=r"mask has shape \(2, 2\), expected \(2, 3\)"):
        weighted_token_mean(torch.ones(2, 3), torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"weights have shape \(3,\), expected \(2,\)"):
        weighted_token_mean(torch.ones(2, 3), torch.ones(2, 3), torch.ones(3))


def test_weighted_token_mean_fixed_count_at_weight_one() -> None:
    token_losses = torch.tensor([[1.0, 2.0, 9.0], [3.0, 5.0, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # A fixed count equal to the batch's 5 loss tokens gives the usual token mean.
    torch.testing.assert_close(
        weighted_token_mean(token_losses, mask, torch.ones(2), token_count=5.0),
        weighted_token_mean(token_losses, mask),
    )
    with pytest.raises(ValueError, match=r"token_count must be > 0.*got 0\.0"):
        weighted_token_mean(token_losses, mask, token_count=0.0)


def length_correlated_sequences(n: int = 64) -> tuple[Tensor, Tensor]:
    """Well-learned sequences have 48 loss tokens, the others 17 or 18 (17.5 on average)."""
    generator = torch.Generator().manual_seed(0)
    easy = torch.arange(n) % 2 == 0
    lengths = torch.where(easy, 48, 17 + (torch.arange(n) // 2) % 2)
    per_token = torch.where(easy, 0.2, 1.0) + 0.05 * torch.rand(n, generator=generator)
    mask = torch.arange(48)[None, :] < lengths[:, None]
    return per_token[:, None] * mask, mask


def epoch_loss(token_losses: Tensor, mask: Tensor, plan: Plan, batch_size: int, tokens: float | None) -> float:
    total = 0.0
    for start in range(0, len(plan), batch_size):
        ids = plan.indices[start : start + batch_size]
        weights = plan.weights[start : start + batch_size]
        total += float(weighted_token_mean(token_losses[ids], mask[ids], weights, token_count=tokens))
    return total


def test_weighted_token_mean_with_a_fixed_token_count_is_unbiased_under_infobatch() -> None:
    token_losses, mask = length_correlated_sequences()
    n, batch_size = len(mask), 8
    signals = {"loss": token_losses.sum(1) / mask.sum(1)}
    token_count = batch_size * float(mask.sum()) / n  # the batch size times the mean loss tokens per sequence
    policy = InfoBatch(0.5, anneal=0.0)
    draws = range(400)
    plans = [policy.plan(epoch_context(1, n, signals, num_epochs=4, seed=seed)) for seed in draws]
    assert all(len(plan) < n for plan in plans)  # the epochs do prune
    # Full data with the fixed count: exactly the dataset's token mean per batch, n / batch_size batches.
    full = Plan(torch.arange(n), torch.ones(n))
    exact = n / batch_size * float(token_losses.sum() / mask.sum())
    assert epoch_loss(token_losses, mask, full, batch_size, token_count) == pytest.approx(exact)

    unbiased = [epoch_loss(token_losses, mask, plan, batch_size, token_count) for plan in plans]
    mean, standard_error = float(torch.tensor(unbiased).mean()), float(torch.tensor(unbiased).std()) / len(plans) ** 0.5
    assert abs(mean - exact) < 4 * standard_error, (mean, exact, standard_error)
    # The batch's own token count inflates the loss: pruned batches hold more of the short, hard sequences.
    shuffled = [Plan(torch.randperm(n, generator=torch.Generator().manual_seed(seed)), torch.ones(n)) for seed in draws]
    full_data = sum(epoch_loss(token_losses, mask, plan, batch_size, None) for plan in shuffled) / len(shuffled)
    biased = sum(epoch_loss(token_losses, mask, plan, batch_size, None) for plan in plans) / len(plans)
    assert biased / full_data > 1.1, (biased, full_data)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_weighted_token_mean_ignores_a_non_finite_loss_outside_the_mask(bad: float) -> None:
    # Rho-1 drops the token whose loss is not finite; the loss over the kept tokens must not bring it back.
    token_losses = torch.tensor([[2.0, 1.0, bad, 3.0]], requires_grad=True)
    kept = torch.tensor([[1, 0, 0, 1]])
    result = weighted_token_mean(token_losses, kept)
    torch.testing.assert_close(result, torch.tensor(2.5))
    result.backward()
    assert token_losses.grad is not None
    torch.testing.assert_close(token_losses.grad, torch.tensor([[0.5, 0.0, 0.0, 0.5]]))
    torch.testing.assert_close(weighted_token_mean(token_losses, kept.bool(), token_count=4.0), torch.tensor(1.25))


def test_weighted_token_mean_ignores_the_tokens_of_a_sequence_with_weight_zero() -> None:
    token_losses = torch.tensor([[2.0, 4.0], [NAN, INF]], requires_grad=True)
    result = weighted_token_mean(token_losses, torch.ones(2, 2), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(result, torch.tensor(6.0 / 4))  # the weight-0 sequence's tokens still count
    result.backward()
    assert token_losses.grad is not None
    torch.testing.assert_close(token_losses.grad, torch.tensor([[0.25, 0.25], [0.0, 0.0]]))


@pytest.mark.parametrize("bad", [NAN, INF])
def test_weighted_mean_ignores_the_loss_of_an_example_with_weight_zero(bad: float) -> None:
    losses = torch.tensor([1.0, bad, 3.0], requires_grad=True)
    result = weighted_mean(losses, torch.tensor([1.0, 0.0, 2.0]))
    torch.testing.assert_close(result, torch.tensor(7.0 / 3))
    result.backward()
    assert losses.grad is not None
    torch.testing.assert_close(losses.grad, torch.tensor([1 / 3, 0.0, 2 / 3]))
    # A non-finite loss with a weight is kept: it is the caller's to drop (selection never keeps one).
    assert weighted_mean(losses.detach(), torch.ones(3)).isfinite().item() is False
