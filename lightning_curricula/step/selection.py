"""Selection inside the step: which examples (or tokens) of a scored batch to backpropagate.

Pure functions: detached scores, a keep share and, for the random selections, an explicit CPU
``torch.Generator`` in; kept positions (and weights) out. They follow Selective Backprop (Jiang et al.
2019), RHO-LOSS (Mindermann et al. 2022) and Rho-1 (Lin et al. 2024); `OnlineBatchSelection` calls them
from a ``training_step``.

Conventions shared by every selection:

- ``k = round(keep * n)`` of the ``n`` scores (of the ``n`` loss tokens for token selection), at least 1,
  in ``(0, 1]`` only: a step always trains on something.
- Non-finite scores (NaN, +inf, -inf) are never kept, not even to fill ``k``: a NaN or infinite loss
  would poison the gradient (+inf is an overflowed loss, not the hardest example), and -inf (an infinite
  reference loss) says nothing about the example either. A batch with fewer than ``k`` finite scores
  keeps all of them; one with none keeps nothing. "The batch" below means its finite scores.
- Kept positions come back in batch order (ascending), on the scores' device; selection runs on a CPU
  copy of the scores (one small device-to-host copy per step), so the generator is a CPU generator.
- Weights are 1 except where a selection asks to stay unbiased (`percentile_selection` with
  ``unbiased=True``): then ``weighted_mean(kept_losses, weights)`` is an unbiased estimate of the mean
  loss over the batch's examples with a finite score, as the epoch policies' weights are for the epoch.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "EXAMPLE_METHODS",
    "TOKEN_METHODS",
    "Selection",
    "check_keep",
    "excess_loss",
    "inclusion_probabilities",
    "kept_count",
    "percentile_selection",
    "random_selection",
    "random_token_mask",
    "reducible_loss",
    "select_examples",
    "select_tokens",
    "top_k_selection",
    "top_k_token_mask",
]

ExampleMethod = Literal["top_k", "percentile", "random"]
TokenMethod = Literal["top_k", "random"]
#: Example-level selections: deterministic top-k, Selective Backprop's percentile sampling, the random twin.
EXAMPLE_METHODS: tuple[str, ...] = ("top_k", "percentile", "random")
#: Token-level selections: Rho-1's top-k tokens and the random twin.
TOKEN_METHODS: tuple[str, ...] = ("top_k", "random")


class Selection(NamedTuple):
    """The kept examples of one batch: ``positions`` (int64, ascending) and a float32 weight for each."""

    positions: Tensor
    weights: Tensor


# ------------------------------------------------------------------------------------------------ checks


def check_keep(keep: float) -> float:
    """Return ``keep`` if it is a number in ``(0, 1]``; raise a ``ValueError`` naming it otherwise.

    Examples:
        >>> check_keep(0.5)
        0.5
        >>> check_keep(0.0)
        Traceback (most recent call last):
        ...
        ValueError: keep must be a share in (0, 1], got 0.0.
    """
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be a share in (0, 1], got {keep!r}.")
    return float(keep)


def kept_count(size: int, keep: float) -> int:
    """How many of ``size`` scores a selection keeps: ``round(keep * size)``, at least 1 (0 when empty).

    Examples:
        >>> kept_count(10, 0.25), kept_count(3, 0.1), kept_count(0, 0.5), kept_count(7, 1.0)
        (3, 1, 0, 7)
    """
    check_keep(keep)
    if size <= 0:
        return 0
    return min(size, max(1, math.floor(keep * size + 0.5)))


def _check_scores(scores: Tensor) -> Tensor:
    if not isinstance(scores, Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}.")
    if scores.ndim != 1:
        raise ValueError(f"scores have shape {tuple(scores.shape)}, expected (batch_size,): one score per example.")
    if not scores.is_floating_point():
        raise TypeError(f"scores must be floating point, got dtype {scores.dtype}.")
    return scores.detach().double().cpu()


def _check_same_shape(name: str, value: Tensor, other_name: str, other: Tensor) -> None:
    if tuple(value.shape) != tuple(other.shape):
        raise ValueError(
            f"{name} has shape {tuple(value.shape)} but {other_name} has shape {tuple(other.shape)}; they must match."
        )


def _check_generator(generator: torch.Generator | None, method: str) -> torch.Generator:
    if generator is None:
        raise ValueError(f"method {method!r} draws random numbers: pass generator=torch.Generator().manual_seed(...).")
    if generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator, got one on {generator.device}.")
    return generator


# ------------------------------------------------------------------------------------------------ scorers


def reducible_loss(losses: Tensor, irreducible: Tensor) -> Tensor:
    """RHO-LOSS's score: the training loss minus the irreducible (holdout model's) loss, detached.

    High for examples that are learnable (low irreducible loss) and not yet learned (high training
    loss); noisy labels have a high irreducible loss too, so they score low. An example whose
    irreducible loss is unknown (NaN) scores NaN and is never kept. Mindermann et al., "Prioritized
    Training on Points that are Learnable, Worth Learning, and Not Yet Learnt", ICML 2022.

    Examples:
        >>> reducible_loss(torch.tensor([2.0, 2.0, 0.5]), torch.tensor([0.1, 1.9, 0.1]))
        tensor([1.9000, 0.1000, 0.4000])
    """
    _check_same_shape("losses", losses, "irreducible", irreducible)
    return losses.detach().float() - irreducible.detach().to(device=losses.device, dtype=torch.float32)


def excess_loss(token_losses: Tensor, reference_token_losses: Tensor) -> Tensor:
    """Rho-1's per-token score: the training model's token loss minus the reference model's, detached.

    Lin et al., "Not All Tokens Are What You Need for Pretraining" (Rho-1), NeurIPS 2024.

    Examples:
        >>> excess_loss(torch.tensor([[3.0, 1.0]]), torch.tensor([[1.0, 1.5]]))
        tensor([[ 2.0000, -0.5000]])
    """
    _check_same_shape("token_losses", token_losses, "reference_token_losses", reference_token_losses)
    reference = reference_token_losses.detach().to(device=token_losses.device, dtype=torch.float32)
    return token_losses.detach().float() - reference


# ------------------------------------------------------------------------------------------------ examples


def top_k_selection(scores: Tensor, keep: float) -> Selection:
    """The ``k`` highest scores (Selective Backprop's deterministic variant; RHO-LOSS's top share).

    Ties go to the lower position; NaN and infinite scores are never kept. Weights are 1: a top-k
    selection is biased on purpose, there is no inclusion probability to correct by.

    Examples:
        >>> top_k_selection(torch.tensor([0.5, float("nan"), 0.9, 0.5, 0.1]), 0.6).positions
        tensor([0, 2, 3])
        >>> top_k_selection(torch.tensor([0.5, float("inf"), 0.9]), 0.6).positions
        tensor([0, 2])
        >>> top_k_selection(torch.tensor([1.0, 1.0, 1.0]), 0.5).positions
        tensor([0, 1])
    """
    values = _check_scores(scores)
    known = values.isfinite().nonzero().squeeze(1)
    count = min(kept_count(values.numel(), keep), known.numel())
    order = torch.sort(values[known], descending=True, stable=True).indices[:count]
    positions = torch.sort(known[order]).values
    return Selection(positions.to(scores.device), torch.ones(count, device=scores.device))


def random_selection(scores: Tensor, keep: float, generator: torch.Generator | None) -> Selection:
    """The random twin: ``k`` positions uniformly at random among the finite scores, weights 1.

    A uniform fixed-size subset's plain mean is already an unbiased estimate of the batch mean, so the
    weights stay 1. Only whether a score is finite is looked at: the scores' values do not matter.

    Examples:
        >>> random_selection(torch.zeros(6), 0.5, torch.Generator().manual_seed(0)).positions.numel()
        3
    """
    values = _check_scores(scores)
    generator = _check_generator(generator, "random")
    known = values.isfinite().nonzero().squeeze(1)
    count = min(kept_count(values.numel(), keep), known.numel())
    positions = torch.sort(known[torch.randperm(known.numel(), generator=generator)[:count]]).values
    return Selection(positions.to(scores.device), torch.ones(count, device=scores.device))


def inclusion_probabilities(sizes: Tensor, count: int) -> Tensor:
    """Probabilities proportional to ``sizes`` that sum to ``count``, the largest capped at 1.

    Solves ``pi_i = min(1, c * sizes_i)`` with ``sum(pi) == count`` exactly (in float64), without a loop:
    with the sizes sorted descending, the first ``m`` are capped for the smallest ``m`` at which the
    rest fit under 1.

    Args:
        sizes: ``(m,)`` positive numbers.
        count: the expected (and, with systematic sampling, exact) number kept, ``0 <= count <= m``.

    Examples:
        >>> inclusion_probabilities(torch.tensor([8.0, 1.0, 1.0]), 2).tolist()
        [1.0, 0.5, 0.5]
    """
    sizes = sizes.double()
    if count <= 0 or sizes.numel() == 0:
        return torch.zeros_like(sizes)
    descending, order = torch.sort(sizes, descending=True, stable=True)
    capped = torch.arange(descending.numel(), dtype=torch.float64)  # m capped ones before position m
    rest = descending.flip(0).cumsum(0).flip(0)  # sum of sizes from position m on
    scale = (count - capped) / rest
    fits = (descending * scale <= 1 + 1e-12) & (capped < count)
    first = int(fits.nonzero()[0]) if bool(fits.any()) else count
    probabilities = torch.ones_like(descending)
    probabilities[first:] = (descending[first:] * scale[first]).clamp(max=1.0) if first < count else 0.0
    result = torch.empty_like(probabilities)
    result[order] = probabilities
    return result


def percentile_selection(
    scores: Tensor,
    keep: float,
    generator: torch.Generator | None,
    *,
    beta: float = 1.0,
    unbiased: bool = False,
) -> Selection:
    """Selective Backprop's probabilistic selection: kept with probability rising with the loss percentile.

    Each finite score's percentile in the batch (of finite scores) is its empirical CDF value ``F`` (the share of the
    batch's scores at or below it; ties share it). Example ``i`` is kept with probability
    ``pi_i = min(1, c * F_i ** beta)``, with ``c`` such that exactly ``k`` are kept: systematic sampling
    over a random order draws a fixed-size sample with exactly these inclusion probabilities. ``beta = 0``
    is the random twin; a large ``beta`` approaches top-k. Jiang et al., "Accelerating Deep Learning by
    Focusing on the Biggest Losers", 2019 (they use ``F ** beta`` over a history of recent losses; this
    uses the batch, so it needs no state).

    Args:
        scores: ``(n,)`` detached scores (higher: more likely kept).
        keep: the kept share, in ``(0, 1]``.
        generator: a CPU ``torch.Generator`` (one order and one uniform per call).
        beta: the sharpness, ``>= 0`` (the paper uses 1 to 3; with ``unbiased=True`` a large ``beta``
            gives rarely kept examples huge weights, as any inverse-probability weighting does).
        unbiased: weight each kept example by ``k / (m * pi_i)`` (``m`` finite scores), so that
            ``weighted_mean(kept_losses, weights)`` is an unbiased (Horvitz-Thompson) estimate of the
            batch's mean loss; otherwise weights are 1, as in the paper.

    Examples:
        >>> selection = percentile_selection(torch.arange(8.0), 0.5, torch.Generator().manual_seed(0), unbiased=True)
        >>> selection.positions.numel(), bool((selection.weights > 0).all())
        (4, True)
    """
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < math.inf:
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}.")
    values = _check_scores(scores)
    generator = _check_generator(generator, "percentile")
    known = values.isfinite().nonzero().squeeze(1)
    count = min(kept_count(values.numel(), keep), known.numel())
    if count == 0:
        return Selection(torch.empty(0, dtype=torch.int64, device=scores.device), torch.empty(0, device=scores.device))
    known_values = values[known]
    cdf = torch.searchsorted(torch.sort(known_values).values, known_values, right=True).double() / known.numel()
    # A large beta underflows the lowest percentiles to 0; the smallest positive double keeps them drawable.
    probabilities = inclusion_probabilities(cdf.pow(beta).clamp_min(torch.finfo(torch.float64).tiny), count)
    # Systematic sampling in a random order: k points u, u + 1, ..., u + k - 1 on the cumulative probabilities.
    order = torch.randperm(known.numel(), generator=generator)
    cumulative = probabilities[order].cumsum(0)
    cumulative = cumulative * (count / cumulative[-1])
    points = torch.rand(1, generator=generator, dtype=torch.float64) + torch.arange(count, dtype=torch.float64)
    hits = torch.searchsorted(cumulative, points, right=True).clamp(max=known.numel() - 1)
    chosen = order[hits]
    if unbiased:
        weights = count / (known.numel() * probabilities[chosen])
    else:
        weights = torch.ones(count, dtype=torch.float64)
    positions, sort = torch.sort(known[chosen])
    return Selection(positions.to(scores.device), weights[sort].float().to(scores.device))


def select_examples(
    scores: Tensor,
    keep: float,
    *,
    method: ExampleMethod = "top_k",
    generator: torch.Generator | None = None,
    beta: float = 1.0,
    unbiased: bool = False,
) -> Selection:
    """Dispatch to `top_k_selection`, `percentile_selection` or `random_selection` by ``method``.

    Examples:
        >>> select_examples(torch.tensor([0.2, 0.9, 0.4, 0.1]), 0.5).positions
        tensor([1, 2])
    """
    if method == "top_k":
        return top_k_selection(scores, keep)
    if method == "percentile":
        return percentile_selection(scores, keep, generator, beta=beta, unbiased=unbiased)
    if method == "random":
        return random_selection(scores, keep, generator)
    raise ValueError(f"method must be one of {EXAMPLE_METHODS}, got {method!r}.")


# ------------------------------------------------------------------------------------------------ tokens


def _check_tokens(scores: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    if scores.ndim != 2:
        raise ValueError(f"token scores have shape {tuple(scores.shape)}, expected (batch_size, tokens).")
    _check_same_shape("token scores", scores, "mask", mask)
    if not scores.is_floating_point():
        raise TypeError(f"token scores must be floating point, got dtype {scores.dtype}.")
    values = scores.detach().double().cpu().flatten()
    loss_tokens = mask.detach().cpu().flatten().bool()
    return values, loss_tokens


def top_k_token_mask(scores: Tensor, mask: Tensor, keep: float) -> Tensor:
    """Rho-1's token selection: the ``k`` highest-scoring loss tokens of the whole batch, as a mask.

    ``k = round(keep * mask.sum())``; ties go to the lower flat position (row-major), non-finite scores
    and tokens outside ``mask`` are never kept. Train with ``weighted_token_mean(token_losses, kept_mask)``.

    Args:
        scores: ``(B, T)`` per-token scores, e.g. `excess_loss`.
        mask: ``(B, T)`` 1 (or True) where a token carries loss.
        keep: the kept share of the loss tokens, in ``(0, 1]``.

    Returns:
        ``(B, T)`` bool mask of kept tokens, on the scores' device.

    Examples:
        >>> top_k_token_mask(torch.tensor([[3.0, 1.0], [2.0, 9.0]]), torch.tensor([[1, 1], [1, 0]]), 0.67)
        tensor([[ True, False],
                [ True, False]])
    """
    values, loss_tokens = _check_tokens(scores, mask)
    candidates = (loss_tokens & values.isfinite()).nonzero().squeeze(1)
    count = min(kept_count(int(loss_tokens.sum()), keep), candidates.numel())
    order = torch.sort(values[candidates], descending=True, stable=True).indices[:count]
    kept = torch.zeros(values.numel(), dtype=torch.bool)
    kept[candidates[order]] = True
    return kept.view(scores.shape).to(scores.device)


def random_token_mask(scores: Tensor, mask: Tensor, keep: float, generator: torch.Generator | None) -> Tensor:
    """The random twin of `top_k_token_mask`: as many loss tokens, uniformly at random (non-finite never kept).

    Examples:
        >>> kept = random_token_mask(torch.zeros(2, 4), torch.ones(2, 4), 0.5, torch.Generator().manual_seed(0))
        >>> int(kept.sum())
        4
    """
    values, loss_tokens = _check_tokens(scores, mask)
    generator = _check_generator(generator, "random")
    candidates = (loss_tokens & values.isfinite()).nonzero().squeeze(1)
    count = min(kept_count(int(loss_tokens.sum()), keep), candidates.numel())
    kept = torch.zeros(values.numel(), dtype=torch.bool)
    kept[candidates[torch.randperm(candidates.numel(), generator=generator)[:count]]] = True
    return kept.view(scores.shape).to(scores.device)


def select_tokens(
    scores: Tensor,
    mask: Tensor,
    keep: float,
    *,
    method: TokenMethod = "top_k",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Dispatch to `top_k_token_mask` or `random_token_mask` by ``method``.

    Examples:
        >>> select_tokens(torch.tensor([[1.0, 5.0, 2.0]]), torch.ones(1, 3), 0.34)
        tensor([[False,  True, False]])
    """
    if method == "top_k":
        return top_k_token_mask(scores, mask, keep)
    if method == "random":
        return random_token_mask(scores, mask, keep, generator)
    raise ValueError(f"method must be one of {TOKEN_METHODS}, got {method!r}.")
