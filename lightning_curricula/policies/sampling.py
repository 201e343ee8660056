"""Importance sampling with unbiased weights."""

from __future__ import annotations

import torch

from lightning_curricula.policies._base import EpochContext, Plan, Policy, check_fraction, check_warmup, fraction_size
from lightning_curricula.policies.selection import full_plan, importance_draws, sampling_probabilities

__all__ = ["ImportanceSampling"]


class ImportanceSampling(Policy):
    """Importance sampling proportional to a smoothed score, with unbiased weights (Katharopoulos & Fleuret 2018).

    Each epoch draws ``round(fraction * N)`` visits with replacement, example ``i`` with probability
    ``p_i = (1 - smoothing) * s_i / sum(s) + smoothing / N`` where ``s`` is the ``signal`` (a loss;
    unseen examples get the mean). Visit weights ``1 / (N p_i)`` make the expected weighted mean
    loss equal the full-data mean loss.

    Examples:
        >>> ImportanceSampling(0.5).epoch_size(10, 1, None)
        5
    """

    def __init__(
        self, fraction: float, *, signal: str = "loss", smoothing: float = 0.1, warmup_epochs: int = 1
    ) -> None:
        check_fraction("fraction", fraction)
        check_warmup(warmup_epochs)
        if signal not in ("loss", "loss_mean", "loss_ema", "el2n"):
            raise ValueError(f"signal must be a non-negative score (loss, loss_mean, loss_ema, el2n), got {signal!r}.")
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1] so every example can be drawn, got {smoothing!r}.")
        self.fraction = fraction
        self.signal = signal
        self.smoothing = smoothing
        self.warmup_epochs = warmup_epochs
        self.signals = (signal,)

    def epoch_size(self, num_examples: int, epoch: int, num_epochs: int | None) -> int:  # noqa: D102
        return num_examples if epoch < self.warmup_epochs else fraction_size(self.fraction, num_examples)

    def plan(self, context: EpochContext) -> Plan:  # noqa: D102
        n = context.num_examples
        if context.epoch < self.warmup_epochs:
            return full_plan(n, context.generator)
        probabilities = sampling_probabilities(context.difficulty(self.signal), self.smoothing)
        size = fraction_size(self.fraction, n)
        ids = importance_draws(torch.cumsum(probabilities, 0, dtype=torch.float64), size, context.generator)
        return Plan(ids, torch.index_select(probabilities, 0, ids).mul_(n).reciprocal_())
