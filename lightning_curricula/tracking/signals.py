"""Per-example difficulty signals as pure functions: tensors in, tensors out.

Every function here works without a `Trainer`, on any device, and never touches a global RNG.
`TrainingDynamics` calls them once per batch (the per-visit signals) and once per epoch (the updates).

Per-visit signals take ``logits`` of shape ``(B, C)`` and integer ``targets`` of shape ``(B,)``:

- `true_class_probabilities`: the confidence of Dataset Cartography (Swayamdipta et al. 2020);
- `el2n_scores`: the error L2 norm of Data Diet (Paul et al. 2021);
- `margins`: the logit margin whose mean over training is the Area Under the Margin (Pleiss et al. 2020);
- `correct_predictions`: whether the arg-max is the target.

Epoch updates: `ema_update`, `forgetting_events` (Toneva et al. 2019), `variability`, and the
instruction-following difficulty `instruction_following_difficulty` (Li et al. 2024).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "correct_predictions",
    "ema_update",
    "el2n_scores",
    "forgetting_events",
    "instruction_following_difficulty",
    "margins",
    "true_class_probabilities",
    "variability",
]


def true_class_probabilities(logits: Tensor, targets: Tensor) -> Tensor:
    """Softmax probability of the target class, the *confidence* of Swayamdipta et al. (2020).

    Args:
        logits: ``(B, C)`` unnormalised scores.
        targets: ``(B,)`` class ids.

    Returns:
        ``(B,)`` float32 probabilities.

    Examples:
        >>> true_class_probabilities(torch.tensor([[0.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1]))
        tensor([0.5000, 0.1192])
    """
    probabilities = torch.softmax(logits.float(), dim=1)
    return probabilities.gather(1, targets.long().unsqueeze(1)).squeeze(1)


def el2n_scores(logits: Tensor, targets: Tensor) -> Tensor:
    """Error L2 norm ``||softmax(logits) - onehot(target)||_2`` (Paul et al. 2021, "Deep Learning on a Data Diet").

    Computed as ``sqrt(sum_{c != y} p_c^2 + (sum_{c != y} p_c)^2)``: ``1 - p_y`` summed from the other
    classes keeps its precision when ``p_y`` is near 1 (``||p||^2 - 2 p_y + 1`` cancels to 0 in float32
    there, so confident examples would all tie).

    Args:
        logits: ``(B, C)`` unnormalised scores.
        targets: ``(B,)`` class ids.

    Returns:
        ``(B,)`` float32 scores in ``[0, sqrt(2)]``; higher is harder.

    Examples:
        >>> el2n_scores(torch.tensor([[0.0, 0.0]]), torch.tensor([0]))
        tensor([0.7071])
    """
    probabilities = torch.softmax(logits.float(), dim=1)
    others = probabilities.scatter(1, targets.long().unsqueeze(1), 0.0)
    return (others.square().sum(dim=1) + others.sum(dim=1).square()).sqrt()


def margins(logits: Tensor, targets: Tensor) -> Tensor:
    """Logit of the target minus the largest other logit (Pleiss et al. 2020).

    Its mean over training is the Area Under the Margin (AUM); a negative AUM flags a likely
    mislabeled example.

    Args:
        logits: ``(B, C)`` unnormalised scores, ``C >= 2``.
        targets: ``(B,)`` class ids.

    Returns:
        ``(B,)`` float32 margins; higher is easier.

    Examples:
        >>> margins(torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]]), torch.tensor([0, 0]))
        tensor([ 1., -5.])
    """
    logits = logits.float()
    target_column = targets.long().unsqueeze(1)
    target_logit = logits.gather(1, target_column).squeeze(1)
    others = logits.scatter(1, target_column, float("-inf"))
    return target_logit - others.amax(dim=1)


def correct_predictions(logits: Tensor, targets: Tensor) -> Tensor:
    """Whether the arg-max of ``logits`` equals ``targets``, as float32 ``0.`` / ``1.``.

    Examples:
        >>> correct_predictions(torch.tensor([[3.0, 1.0], [0.0, 5.0]]), torch.tensor([0, 0]))
        tensor([1., 0.])
    """
    return (logits.argmax(dim=1) == targets.long()).float()


def ema_update(previous: Tensor, value: Tensor, *, decay: float, observed: Tensor) -> Tensor:
    """Exponential moving average over epochs: ``decay * previous + (1 - decay) * value``.

    Rows not ``observed`` keep ``previous``; a row whose ``previous`` is NaN (never observed) starts
    at ``value`` rather than being pulled toward an arbitrary initial value.

    Args:
        previous: ``(N,)`` current averages, NaN where never observed.
        value: ``(N,)`` new observations.
        decay: weight of the past, in ``[0, 1)``.
        observed: ``(N,)`` bool mask of rows that have a new observation.

    Examples:
        >>> ema_update(torch.tensor([float("nan"), 1.0, 1.0]), torch.tensor([4.0, 3.0, 9.0]),
        ...            decay=0.5, observed=torch.tensor([True, True, False]))
        tensor([4., 2., 1.])
    """
    averaged = torch.where(previous.isnan(), value, decay * previous + (1 - decay) * value)
    return torch.where(observed, averaged, previous)


def forgetting_events(previous_correct: Tensor, correct: Tensor, observed: Tensor) -> Tensor:
    """Which examples were forgotten: correct at their previous observation, wrong now (Toneva et al. 2019).

    Args:
        previous_correct: ``(N,)`` int8: ``1`` correct, ``0`` wrong, ``-1`` never observed.
        correct: ``(N,)`` bool, correctness at this observation.
        observed: ``(N,)`` bool mask of rows observed now.

    Returns:
        ``(N,)`` bool.

    Examples:
        >>> forgetting_events(torch.tensor([1, 1, 0, -1], dtype=torch.int8),
        ...                   torch.tensor([False, True, False, False]), torch.tensor([True, True, True, True]))
        tensor([ True, False, False, False])
    """
    return observed & (previous_correct == 1) & ~correct


def variability(total: Tensor, total_of_squares: Tensor, count: Tensor) -> Tensor:
    """Population standard deviation from running sums, the *variability* of Swayamdipta et al. (2020).

    Args:
        total: ``(N,)`` sum of the observations.
        total_of_squares: ``(N,)`` sum of their squares.
        count: ``(N,)`` number of observations; rows with none give NaN.

    Examples:
        >>> variability(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]), torch.tensor([2, 0]))
        tensor([0.5000,    nan])
    """
    count = count.to(total.dtype)
    mean_of_squares = total_of_squares / count
    variance = mean_of_squares - (total / count).square()
    # The running sums carry a rounding error of about count * eps * mean_of_squares; a variance that
    # small is that error, not spread (a constant series would give ~1e-4 in float32 instead of 0).
    noise = 4 * count * torch.finfo(variance.dtype).eps * mean_of_squares
    return variance.masked_fill(variance <= noise, 0.0).sqrt()


def instruction_following_difficulty(conditioned_loss: Tensor, unconditioned_loss: Tensor) -> Tensor:
    """Instruction-following difficulty (IFD, Li et al. 2024): ``loss(response | instruction) / loss(response)``.

    Both are mean token losses on the response. A ratio near or above 1 means the instruction barely
    helps the model predict the response: a hard (or misaligned) example.

    Examples:
        >>> instruction_following_difficulty(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 3.0]))
        tensor([0.5000, 1.0000])
    """
    return conditioned_loss / unconditioned_loss
