"""Curricula: paced easy-to-hard (and other orders) selection, and self-paced learning."""

from __future__ import annotations

import math
from typing import Literal

import torch

from lightning_curricula.pacing import Pacing, pacing_function
from lightning_curricula.policies._base import (
    EpochContext,
    Plan,
    Policy,
    check_fraction,
    check_signal,
    check_warmup,
    fraction_size,
)
from lightning_curricula.policies.selection import easiest_set, full_plan, random_plan, shuffled_plan

__all__ = ["Curriculum", "SelfPaced"]


class Curriculum(Policy):
    """Curriculum learning with a pacing function (Hacohen & Weinshall 2019; Wu et al. 2021).

    After ``warmup_epochs`` of full data (to score every example), epoch ``e`` trains on the
    ``pace(e / num_epochs)`` share of the data chosen by ``order``, shuffled:

    - ``easy_to_hard``: the easiest examples by ``signal`` (the classic curriculum);
    - ``hard_to_easy``: the hardest (the anti-curriculum);
    - ``random``: a random subset of the same size (the random-order curriculum, its baseline);
    - ``balanced``: half easiest, half hardest.

    Args:
        signal: a tracked signal (see `HARDER_WHEN_HIGHER`).
        order: which examples the paced share holds.
        pacing: a name in `PACING_FUNCTIONS` or a callable of progress ``t in [0, 1]``.
        start: share of data at the first paced epoch, in ``(0, 1]``.
        saturation: progress at which all data is used, in ``(0, 1]``.
        warmup_epochs: full-data epochs first, ``>= 1``.

    Examples:
        >>> policy = Curriculum(start=0.25, saturation=1.0)
        >>> [policy.epoch_size(100, epoch, 4) for epoch in range(4)]
        [100, 44, 63, 82]
    """

    needs_num_epochs = True

    def __init__(
        self,
        signal: str = "loss",
        *,
        order: Literal["easy_to_hard", "hard_to_easy", "random", "balanced"] = "easy_to_hard",
        pacing: str | Pacing = "linear",
        start: float = 0.2,
        saturation: float = 0.8,
        warmup_epochs: int = 1,
    ) -> None:
        check_signal(signal)
        check_warmup(warmup_epochs)
        if order not in ("easy_to_hard", "hard_to_easy", "random", "balanced"):
            raise ValueError(f"order must be easy_to_hard, hard_to_easy, random or balanced, got {order!r}.")
        self.signal = signal
        self.order = order
        self.pace = pacing_function(pacing, start=start, saturation=saturation)
        self.warmup_epochs = warmup_epochs
        self.signals = () if order == "random" else (signal,)

    def epoch_size(self, num_examples: int, epoch: int, num_epochs: int | None) -> int:  # noqa: D102
        if epoch < self.warmup_epochs or num_epochs is None:
            return num_examples
        share = min(max(self.pace(epoch / num_epochs), 0.0), 1.0)
        return max(1, math.ceil(share * num_examples - 1e-9))  # 0.3 * 100 must give 30, not 31

    def plan(self, context: EpochContext) -> Plan:  # noqa: D102
        n = context.num_examples
        size = self.epoch_size(n, context.epoch, context.num_epochs)
        if size == n:
            return full_plan(n, context.generator)
        if self.order == "random":
            return random_plan(n, size, context.generator)
        difficulty = context.difficulty(self.signal)
        if self.order != "balanced":
            chosen = easiest_set(difficulty, size, hardest=self.order == "hard_to_easy")
            return shuffled_plan(chosen, context.generator)
        easy = easiest_set(difficulty, size // 2)
        rest = torch.ones(n, dtype=torch.bool)
        rest[easy] = False
        rest_ids = rest.nonzero().squeeze(1)  # the hardest of the rest; unseen ids (NaN) come last in both orders
        hardest = rest_ids[easiest_set(difficulty[rest_ids], size - easy.numel(), hardest=True)]
        return shuffled_plan(torch.cat([easy, hardest]), context.generator)


class SelfPaced(Policy):
    """Self-paced learning (Kumar et al. 2010): train on examples whose loss is under a growing threshold.

    At epoch ``e`` (after the warm-up) the threshold is ``threshold * growth ** (e - warmup_epochs)``;
    with ``threshold=None`` it starts at the median of the current signal. At least ``min_fraction``
    of the data (the easiest) is always kept.

    Examples:
        >>> loss = torch.tensor([0.1, 0.2, 3.0, 4.0])
        >>> context = EpochContext(epoch=1, num_examples=4, generator=torch.Generator(), signals={"loss": loss})
        >>> sorted(SelfPaced(threshold=1.0).plan(context).indices.tolist())
        [0, 1]
    """

    def __init__(
        self,
        signal: str = "loss",
        *,
        threshold: float | None = None,
        growth: float = 1.3,
        min_fraction: float = 0.1,
        warmup_epochs: int = 1,
    ) -> None:
        check_signal(signal)
        check_warmup(warmup_epochs)
        check_fraction("min_fraction", min_fraction)
        if growth < 1.0:
            raise ValueError(f"growth must be >= 1 so the threshold never shrinks, got {growth!r}.")
        self.signal = signal
        self.threshold = threshold
        self.growth = growth
        self.min_fraction = min_fraction
        self.warmup_epochs = warmup_epochs
        self.signals = (signal,)

    def plan(self, context: EpochContext) -> Plan:  # noqa: D102
        n = context.num_examples
        if context.epoch < self.warmup_epochs:
            return full_plan(n, context.generator)
        hardness = context.difficulty(self.signal)
        seen = ~hardness.isnan()
        start = (
            self.threshold
            if self.threshold is not None
            else float(hardness[seen].median())
            if bool(seen.any())
            else math.inf
        )
        limit = start * self.growth ** (context.epoch - self.warmup_epochs)
        chosen = (hardness <= limit) | ~seen
        floor = fraction_size(self.min_fraction, n)
        if int(chosen.sum()) < floor:
            chosen[easiest_set(hardness, floor)] = True
        return shuffled_plan(chosen.nonzero().squeeze(1), context.generator)
