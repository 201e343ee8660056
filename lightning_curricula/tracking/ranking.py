"""Turn tracked signals into difficulty scores and select example ids by them."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["HARDER_WHEN_HIGHER", "difficulty_scores", "select_indices", "selection_size"]

#: For each signal `TrainingDynamics` exports, whether a higher value means a harder example.
HARDER_WHEN_HIGHER: dict[str, bool] = {
    "loss": True,
    "loss_mean": True,
    "loss_ema": True,
    "el2n": True,
    "margin": False,
    "aum": False,
    "confidence": False,
    "variability": True,
    "correctness": False,
    "forgetting_events": True,
}


def difficulty_scores(signals: Mapping[str, Tensor], name: str) -> Tensor:
    """Scores where higher means harder, from the signal ``name``.

    Signals where higher means easier (margin, AUM, confidence, correctness) are negated. For
    ``forgetting_events``, examples seen but never learned count as forgotten infinitely often, as in
    Toneva et al. (2019). Examples never seen stay NaN.

    Args:
        signals: the columns of `TrainingDynamics.signals`.
        name: a key of `HARDER_WHEN_HIGHER` present in ``signals``.

    Raises:
        ValueError: ``name`` is not a ranked signal or is missing from ``signals``.

    Examples:
        >>> difficulty_scores({"margin": torch.tensor([2.0, -1.0])}, "margin")
        tensor([-2.,  1.])
    """
    if name not in HARDER_WHEN_HIGHER:
        raise ValueError(f"Unknown signal {name!r}; ranked signals are {sorted(HARDER_WHEN_HIGHER)}.")
    if name not in signals:
        raise ValueError(
            f"Signal {name!r} is not tracked; tracked signals are {sorted(signals)}. "
            "Classification signals need `logits` and `targets` in the training_step outputs."
        )
    scores = signals[name].float()
    if not HARDER_WHEN_HIGHER[name]:
        return -scores
    if name == "forgetting_events" and "correctness" in signals:
        correctness = signals["correctness"]
        scores = torch.where(correctness == 0, math.inf, scores)
        return torch.where(correctness.isnan(), math.nan, scores)  # never seen: the count is 0, not a score
    return scores


def select_indices(
    scores: Tensor, *, k: int | None = None, fraction: float | None = None, largest: bool = True
) -> Tensor:
    """Ids of the ``k`` (or ``fraction`` of all) examples with the largest (or smallest) scores.

    NaN scores (examples never seen) are never selected. Ties are broken by the lower id, so the
    result is deterministic. Give exactly one of ``k`` and ``fraction``.

    Args:
        scores: ``(N,)`` one score per example id.
        k: how many ids to return (fewer when fewer than ``k`` scores are finite or infinite).
        fraction: share of all ``N`` ids to return, in ``[0, 1]``, rounded down.
        largest: take the largest scores (``True``) or the smallest.

    Returns:
        int64 ids, best first.

    Examples:
        >>> select_indices(torch.tensor([0.1, 0.9, float("nan"), 0.9]), k=2)
        tensor([1, 3])
        >>> select_indices(torch.tensor([0.1, 0.9, 0.5, 0.2]), fraction=0.5, largest=False)
        tensor([0, 3])
    """
    k = selection_size(scores.numel(), k=k, fraction=fraction)
    known = (~scores.isnan()).nonzero().squeeze(1)
    order = torch.sort(scores[known], descending=largest, stable=True).indices
    return known[order[:k]]


def selection_size(num_examples: int, *, k: int | None = None, fraction: float | None = None) -> int:
    """How many ids `select_indices` returns at most: ``k``, or ``fraction`` of ``num_examples`` rounded down.

    Examples:
        >>> selection_size(10, fraction=0.25), selection_size(10, k=3)
        (2, 3)
    """
    if (k is None) == (fraction is None):
        raise ValueError(f"Give exactly one of k and fraction, got k={k!r} and fraction={fraction!r}.")
    if fraction is not None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction!r}.")
        k = int(fraction * num_examples)
    assert k is not None
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k!r}.")
    return k
