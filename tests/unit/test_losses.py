"""Weighted losses: plain means at weight 1, hand-computed weighted cases, dtype casting, shape errors."""

from __future__ import annotations

import re

import pytest
import torch

from lightning_curricula import weighted_mean, weighted_token_mean


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
