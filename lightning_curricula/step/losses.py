"""Weighted losses that keep the sampler's reweighting unbiased.

An example (or token) with weight 0 (or outside the mask) contributes exactly nothing, not ``0 * loss``:
its loss is left out with ``torch.where`` before the weighting, so a NaN or infinite loss there (a token
Rho-1 dropped because its loss overflowed, say) neither turns the result into NaN nor sends a NaN
gradient to the other examples. A non-finite loss that is counted still makes the result non-finite.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["weighted_mean", "weighted_token_mean"]


def weighted_mean(losses: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean over the batch of ``losses * weights``; the plain mean when ``weights`` is ``None``.

    Dividing by the batch size, not by ``weights.sum()``, is what keeps importance and InfoBatch weights
    unbiased: the expected weighted mean over the plan equals the full-data mean loss. An example with
    weight 0 counts in the batch size but its loss is left out, even when it is NaN or infinite (its
    gradient is 0).

    Args:
        losses: ``(B,)`` per-example losses.
        weights: ``(B,)`` plan weights (``batch["weight"]``), cast to the losses' dtype and device.

    Examples:
        >>> import torch
        >>> weighted_mean(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 0.0], dtype=torch.float64))
        tensor(1.)
        >>> weighted_mean(torch.tensor([1.0, float("nan")]), torch.tensor([2.0, 0.0]))
        tensor(1.)
    """
    if weights is None:
        return losses.mean()
    if weights.shape != losses.shape:
        raise ValueError(f"weights have shape {tuple(weights.shape)}, expected {tuple(losses.shape)} like losses.")
    weights = weights.to(device=losses.device, dtype=losses.dtype)
    return (torch.where(weights != 0, losses, 0.0) * weights).mean()


def weighted_token_mean(
    token_losses: Tensor, mask: Tensor, weights: Tensor | None = None, *, token_count: float | None = None
) -> Tensor:
    """Token-level loss for language models, each sequence's tokens scaled by its plan weight.

    ``sum(token_losses * mask * weight[:, None])`` divided by a number of tokens, where a token outside
    ``mask`` (or of a sequence with weight 0) adds exactly 0, even when its loss is NaN or infinite:

    - by default, the batch's own count of loss tokens, ``mask.sum()``: with all weights 1 this is
      exactly the usual mean over the batch's loss tokens (what ``transformers`` computes), so turning
      the sampler on changes nothing until it reweights. It is **biased under reweighting** when a
      sequence's length and its difficulty are related: a pruned batch holds fewer (or more) tokens
      than a full one, and the weights do not undo that shift of the denominator.
    - with ``token_count``, that fixed number: the loader's batch size times the training set's mean
      count of loss tokens per sequence. The numerator is a weighted *sum* of per-sequence loss sums
      and the denominator no longer depends on which sequences were drawn, so expectations pass
      through it: under InfoBatch (whose epoch's weighted sum is unbiased) the epoch's summed loss
      equals the full-data one, under importance sampling (each step's weighted mean unbiased) each
      step's loss equals the dataset's token mean in expectation. Use it whenever the policy
      reweights. A short last batch counts for its share of a full one.

    Args:
        token_losses: ``(B, T)`` per-token losses.
        mask: ``(B, T)`` 1 where a token carries loss, 0 elsewhere.
        weights: ``(B,)`` plan weights, or ``None``.
        token_count: the fixed denominator (batch size times mean loss tokens per sequence), or ``None``
            for the batch's own count.

    Examples:
        >>> import torch
        >>> losses = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
        >>> mask = torch.tensor([[1, 1], [0, 1]])
        >>> weighted_token_mean(losses, mask), weighted_token_mean(losses, mask, torch.tensor([1.0, 2.0]))
        (tensor(2.6667), tensor(4.3333))
        >>> weighted_token_mean(losses, mask, torch.tensor([1.0, 2.0]), token_count=4.0)
        tensor(3.2500)
        >>> weighted_token_mean(torch.tensor([[2.0, 1.0, float("nan"), 3.0]]), torch.tensor([[1, 0, 0, 1]]))
        tensor(2.5000)
    """
    if token_losses.shape != mask.shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(token_losses.shape)}.")
    if token_count is not None and not token_count > 0:
        raise ValueError(
            f"token_count must be > 0 (batch size times mean loss tokens per sequence), got {token_count!r}."
        )
    factor = mask.to(device=token_losses.device, dtype=token_losses.dtype)
    if weights is not None:
        if weights.shape != token_losses.shape[:1]:
            raise ValueError(f"weights have shape {tuple(weights.shape)}, expected ({token_losses.shape[0]},).")
        factor = factor * weights.to(device=token_losses.device, dtype=token_losses.dtype).unsqueeze(1)
    # Left out, not multiplied by 0: 0 * NaN and 0 * inf are NaN.
    masked = torch.where(factor != 0, token_losses, 0.0) * factor
    denominator = token_count if token_count is not None else mask.sum().clamp_min(1).to(token_losses.dtype)
    return masked.sum() / denominator
