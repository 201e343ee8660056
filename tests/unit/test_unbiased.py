"""Statistical checks that reweighted plans are unbiased estimates of the full-data loss.

Each test draws many plans for fixed per-example losses (fixed seeds, so the tests are deterministic),
and compares the average weighted loss with the full-data value within 4 standard errors of the mean.
Each also checks that the test has power: ignoring the weights is off by many standard errors.
"""

from __future__ import annotations

import math

import pytest
import torch
from selection_helpers import epoch_context, one_thread  # noqa: F401
from torch import Tensor

from lightning_curricula import ImportanceSampling, InfoBatch, Plan, Policy

N = 24
DRAWS = 1500


def losses() -> Tensor:
    """Skewed positive losses with ties: a few hard examples carry most of the loss."""
    generator = torch.Generator().manual_seed(7)
    values = torch.rand(N, generator=generator, dtype=torch.float64).square() * 3
    values[:4] = torch.tensor([5.0, 8.0, 0.5, 0.5], dtype=torch.float64)
    return values


def plans(policy: Policy, epoch: int, num_epochs: int | None, scores: Tensor) -> list[Plan]:
    """``DRAWS`` plans of ``epoch``, one per plan seed, from the same scores."""
    signals = {"loss": scores.float()}
    return [policy.plan(epoch_context(epoch, N, signals, num_epochs=num_epochs, seed=seed)) for seed in range(DRAWS)]


def mean_and_standard_error(values: list[float]) -> tuple[float, float]:
    data = torch.tensor(values, dtype=torch.float64)
    return float(data.mean()), float(data.std()) / math.sqrt(len(values))


@pytest.mark.parametrize("smoothing", [0.1, 0.5])
def test_importance_sampling_weighted_mean_is_unbiased(smoothing: float) -> None:
    loss = losses()
    policy = ImportanceSampling(0.5, smoothing=smoothing)
    drawn = plans(policy, 1, None, loss)
    # Per plan: the mean over its visits of weight * loss, which weighted_mean computes per batch.
    weighted = [float((plan.weights.double() * loss[plan.indices]).mean()) for plan in drawn]
    plain = [float(loss[plan.indices].mean()) for plan in drawn]
    full = float(loss.mean())
    estimate, standard_error = mean_and_standard_error(weighted)
    assert abs(estimate - full) < 4 * standard_error, (estimate, full, standard_error)
    biased, _ = mean_and_standard_error(plain)
    assert abs(biased - full) > 10 * standard_error  # sampling favours high losses: the weights matter


def test_infobatch_ratio_weighted_sum_is_unbiased() -> None:
    loss = losses()
    policy = InfoBatch(prune=0.7, anneal=0.0)
    drawn = plans(policy, 2, 10, loss)
    weighted = [float((plan.weights.double() * loss[plan.indices]).sum()) for plan in drawn]
    plain = [float(loss[plan.indices].sum()) for plan in drawn]
    full = float(loss.sum())
    estimate, standard_error = mean_and_standard_error(weighted)
    assert standard_error > 0  # plans do vary
    assert abs(estimate - full) < 4 * standard_error, (estimate, full, standard_error)
    biased, _ = mean_and_standard_error(plain)
    assert abs(biased - full) > 10 * standard_error


@pytest.mark.parametrize(
    ("budget", "prune", "spills"),
    [
        (0.8, 0.5, False),  # 6 drops from the 13 well-learned examples alone
        (0.6, 0.5, True),  # 12 drops, the most under weight 2: from all 24
        (0.4, 0.8, True),  # 18 drops from the 23 easiest, weights 23 / 5
    ],
)
def test_infobatch_budget_weighted_sum_is_unbiased(budget: float, prune: float, spills: bool) -> None:
    loss = losses()
    num_epochs = 10
    policy = InfoBatch(prune, budget=budget, anneal=0.1)
    policy.validate(N, num_epochs)
    epoch = 4
    size = policy.epoch_size(N, epoch, num_epochs)
    assert size is not None
    assert size < N
    learned = int((loss < loss.mean()).sum())
    assert (N - size > prune * learned) == spills  # beyond the well-learned, the drops come from the easiest next
    drawn = plans(policy, epoch, num_epochs, loss)
    assert all(len(plan) == size for plan in drawn)
    assert all(float(plan.weights.max()) <= 1 / (1 - prune) + 1e-6 for plan in drawn)
    weighted = [float((plan.weights.double() * loss[plan.indices]).sum()) for plan in drawn]
    plain = [float(loss[plan.indices].sum()) for plan in drawn]
    full = float(loss.sum())
    estimate, standard_error = mean_and_standard_error(weighted)
    assert standard_error > 0
    assert abs(estimate - full) < 4 * standard_error, (estimate, full, standard_error)
    biased, _ = mean_and_standard_error(plain)
    assert abs(biased - full) > 10 * standard_error
