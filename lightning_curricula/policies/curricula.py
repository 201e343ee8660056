"""Curricula: paced easy-to-hard (and other orders) selection, and self-paced learning."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from lightning_curricula.policies._base import (
    EpochContext,
    Plan,
    Policy,
    ShardedPlan,
    check_fraction,
    check_signal,
    check_warmup,
    fraction_size,
)
from lightning_curricula.policies.pacing import Pacing, pacing_function, training_progress
from lightning_curricula.policies.selection import easiest_mask, easiest_set, full_plan, random_plan, shuffled_plan

if TYPE_CHECKING:
    from lightning_curricula.distributed._sharding import TableShard

__all__ = ["Curriculum", "ScoreCurriculum", "SelfPaced", "paced_size"]

Order = Literal["easy_to_hard", "hard_to_easy", "random", "balanced"]


def paced_size(pace: Pacing, num_examples: int, epoch: int, num_epochs: int | None, *, warmup_epochs: int) -> int:
    """Examples in ``epoch`` of a paced curriculum: all of them during the warm-up, then ``pace``'s share.

    The one sizing rule of `Curriculum` and `ScoreCurriculum`, so both give the same budget. The
    share is ``pace(training_progress(epoch, num_epochs))``: the last epoch is at progress 1, so it
    trains on all data whenever ``saturation`` is reached.

    Examples:
        >>> pace = pacing_function("linear", start=0.3, saturation=1.0)
        >>> [paced_size(pace, 100, epoch, 4, warmup_epochs=1) for epoch in range(4)]
        [100, 54, 77, 100]
    """
    if epoch < warmup_epochs or num_epochs is None:
        return num_examples
    share = min(max(pace(training_progress(epoch, num_epochs)), 0.0), 1.0)
    return max(1, math.ceil(share * num_examples - 1e-9))  # 0.3 * 100 must give 30, not 31


def check_order(order: str, allowed: tuple[str, ...]) -> None:
    if order not in allowed:
        raise ValueError(f"order must be one of {', '.join(allowed)}; got {order!r}.")


def ordered_subset(difficulty: Tensor, size: int, order: str, *, shard: TableShard | None = None) -> Tensor:
    """The ``size`` ids that ``order`` takes by ``difficulty`` (higher is harder; ties to the lower id; NaN last).

    ``shard`` (see `easiest_set`) works for every order but ``balanced``.
    """
    if order != "balanced":
        return easiest_set(difficulty, size, hardest=order == "hard_to_easy", shard=shard)
    if shard is not None:
        raise ValueError("The balanced order does not plan from sharded tables.")
    easy = easiest_mask(difficulty, size // 2)
    hard = easiest_mask(difficulty, size - size // 2, hardest=True)
    if not bool(torch.logical_and(easy, hard).any()):  # then the hardest are the hardest of the rest: two selections
        return torch.cat([easy.nonzero().squeeze(1), hard.nonzero().squeeze(1)])
    # They meet (at ties, or in the unseen ids, which come last in both orders): the hardest of the rest.
    easy_ids = easy.nonzero().squeeze(1)
    rest_ids = easy.logical_not_().nonzero().squeeze(1)
    return torch.cat([easy_ids, rest_ids[easiest_set(difficulty[rest_ids], size - easy_ids.numel(), hardest=True)]])


class Curriculum(Policy):
    """Curriculum learning with a pacing function (Hacohen & Weinshall 2019; Wu et al. 2021).

    After ``warmup_epochs`` of full data (to score every example), epoch ``e`` trains on the
    ``pace(e / (num_epochs - 1))`` share of the data chosen by ``order``, shuffled (the last epoch is
    at progress 1, so every pacing reaches all data by then):

    - ``easy_to_hard``: the easiest examples by ``signal`` (the classic curriculum);
    - ``hard_to_easy``: the hardest (the anti-curriculum);
    - ``random``: a random subset of the same size (the random-order curriculum, its baseline);
    - ``balanced``: half easiest, half hardest.

    Args:
        signal: a tracked signal (see `HARDER_WHEN_HIGHER`).
        order: which examples the paced share holds.
        pacing: a name in `PACING_FUNCTIONS` or a callable of progress ``t in [0, 1]``.
        start: share of data at progress 0 (the first epoch), in ``(0, 1]``.
        saturation: progress at which all data is used, in ``(0, 1]``; ``1.0`` reaches it at the last epoch.
        warmup_epochs: full-data epochs first, ``>= 1``.

    Examples:
        >>> policy = Curriculum(start=0.25, saturation=1.0)
        >>> [policy.epoch_size(100, epoch, 4) for epoch in range(4)]
        [100, 50, 75, 100]
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
        check_order(order, ("easy_to_hard", "hard_to_easy", "random", "balanced"))
        self.signal = signal
        self.order = order
        self.pace = pacing_function(pacing, start=start, saturation=saturation)
        self.warmup_epochs = warmup_epochs
        self.signals = () if order == "random" else (signal,)
        self.plans_from_shards = order != "balanced"

    def epoch_size(self, num_examples: int, epoch: int, num_epochs: int | None) -> int:  # noqa: D102
        return paced_size(self.pace, num_examples, epoch, num_epochs, warmup_epochs=self.warmup_epochs)

    def plan(self, context: EpochContext) -> Plan | ShardedPlan:  # noqa: D102
        n, shard = context.num_examples, context.shard
        size = self.epoch_size(n, context.epoch, context.num_epochs)
        if size == n:
            return full_plan(n, context.generator, shard=shard)
        if self.order == "random":
            return random_plan(n, size, context.generator, shard=shard)
        chosen = ordered_subset(context.difficulty(self.signal), size, self.order, shard=shard)
        return shuffled_plan(chosen, context.generator, shard=shard)


class ScoreCurriculum(Policy):
    """A curriculum, or a fixed share, ranked by *given* per-example scores instead of a tracked signal.

    `Curriculum` ranks by what `TrainingDynamics` learns, so it needs a warm-up. With a difficulty
    known before training (a dataset's level, a length, a teacher's score, a previous run's exported
    losses) the ranking exists before the first step: pass it as ``scores`` (higher is harder).

    - ``keep=None`` (a curriculum, Hacohen & Weinshall 2019): epoch ``e`` trains on exactly as many
      examples as ``Curriculum`` with the same ``pacing``, ``start``, ``saturation`` and
      ``warmup_epochs`` (both use `paced_size`), chosen by ``order``.
    - ``keep`` in ``(0, 1]``: every epoch trains on the same ``keep`` share (the easy-to-hard
      generalisation set-up of Hase et al. 2024); no ``num_epochs`` needed, and no tracker.

    Ties (a known difficulty has many) are broken by a permutation drawn once from the sampler's
    ``seed``, so successive epochs' subsets are nested and do not favour low ids; ``order="random"``
    takes the head of that permutation (reads no scores). ``scores`` may come later through
    `with_scores`; ``score`` only names them (a recipe reads the dataset column of that name).

    Args:
        score: the scores' name (for example a dataset column such as ``difficulty``).
        scores: ``(N,)`` higher is harder; NaN ranks last whichever the order.
        order: ``easy_to_hard``, ``hard_to_easy``, ``random`` or ``balanced`` (as in `Curriculum`).
        pacing: a name in `PACING_FUNCTIONS` or a callable of progress.
        start: share of data at progress 0 (the first epoch), in ``(0, 1]``.
        saturation: progress at which all data is used, in ``(0, 1]``; ``1.0`` reaches it at the last epoch.
        keep: a fixed share instead of pacing, in ``(0, 1]``.
        warmup_epochs: full-data epochs first, ``>= 0`` (the scores are already known).

    Examples:
        >>> policy = ScoreCurriculum(scores=torch.tensor([0.9, 0.1, 0.5, 0.3]), keep=0.5)
        >>> context = EpochContext(epoch=0, num_examples=4, generator=torch.Generator().manual_seed(0))
        >>> sorted(policy.plan(context).indices.tolist())
        [1, 3]
        >>> paced = ScoreCurriculum(start=0.3, saturation=1.0, warmup_epochs=1)
        >>> learned = Curriculum(start=0.3, saturation=1.0)
        >>> [paced.epoch_size(100, e, 4) for e in range(4)] == [learned.epoch_size(100, e, 4) for e in range(4)]
        True

    Note:
        **DDP and resume**: the plan depends only on ``(seed, epoch, scores)``, so it is the same on
        every rank and after a resume, as long as the scores are. A paced curriculum changes the
        epoch length, so the sampler still needs a `TrainingDynamics` for its epoch clock.
    """

    def __init__(
        self,
        score: str = "difficulty",
        *,
        scores: Tensor | None = None,
        order: Order = "easy_to_hard",
        pacing: str | Pacing = "linear",
        start: float = 0.2,
        saturation: float = 0.8,
        keep: float | None = None,
        warmup_epochs: int = 0,
    ) -> None:
        check_order(order, ("easy_to_hard", "hard_to_easy", "random", "balanced"))
        if keep is not None:
            check_fraction("keep", keep)
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs!r}.")
        if scores is not None and scores.dim() != 1:
            raise ValueError(f"scores must be one score per example, shape (N,); got shape {tuple(scores.shape)}.")
        self.score = score
        self.scores = None if scores is None else scores.detach().float().cpu()
        self.order: Order = order
        self.pacing = pacing
        self.start = start
        self.saturation = saturation
        self.pace = pacing_function(pacing, start=start, saturation=saturation)
        self.keep = keep
        self.warmup_epochs = warmup_epochs
        self.needs_num_epochs = keep is None
        self.varies_length = keep is None

    def with_scores(self, scores: Tensor) -> ScoreCurriculum:
        """The same policy, ranking by ``scores``.

        Examples:
            >>> ScoreCurriculum("length", keep=0.5).with_scores(torch.tensor([3.0, 1.0])).scores
            tensor([3., 1.])
        """
        return ScoreCurriculum(
            self.score,
            scores=scores,
            order=self.order,
            pacing=self.pacing,
            start=self.start,
            saturation=self.saturation,
            keep=self.keep,
            warmup_epochs=self.warmup_epochs,
        )

    def validate(self, num_examples: int, num_epochs: int | None) -> None:  # noqa: D102
        super().validate(num_examples, num_epochs)
        if self.order != "random" and self.scores is None:
            raise ValueError(f"ScoreCurriculum(score={self.score!r}) has no scores: pass scores= or use with_scores().")
        if self.scores is not None and self.scores.numel() != num_examples:
            raise ValueError(f"scores has {self.scores.numel()} entries, the dataset has {num_examples} examples.")

    def epoch_size(self, num_examples: int, epoch: int, num_epochs: int | None) -> int:  # noqa: D102
        if self.keep is not None:
            return fraction_size(self.keep, num_examples)
        return paced_size(self.pace, num_examples, epoch, num_epochs, warmup_epochs=self.warmup_epochs)

    def plan(self, context: EpochContext) -> Plan:  # noqa: D102
        n = context.num_examples
        size = self.epoch_size(n, context.epoch, context.num_epochs)
        if size == n:
            return full_plan(n, context.generator)
        tie_break = torch.randperm(n, generator=torch.Generator().manual_seed(context.seed))
        if self.order == "random":
            return shuffled_plan(tie_break[:size], context.generator)
        if self.scores is None:
            raise ValueError(f"ScoreCurriculum(score={self.score!r}) has no scores: pass scores= or use with_scores().")
        chosen = tie_break[ordered_subset(self.scores[tie_break], size, self.order)]
        return shuffled_plan(chosen, context.generator)


class SelfPaced(Policy):
    """Self-paced learning (Kumar et al. 2010): train on examples whose loss is under a growing threshold.

    At epoch ``e`` (after the warm-up) the examples whose difficulty score (`difficulty_scores`:
    higher is harder, negated for signals where higher is easier) is at most `limit` train: the
    threshold's height above ``min(0, easiest score)`` grows by ``growth`` per epoch, which is
    ``threshold * growth ** (e - warmup_epochs)`` for a loss, and grows for every signal. With
    ``threshold=None`` it starts at the median of the current scores. At least ``min_fraction`` of
    the data (the easiest) is always kept.

    Args:
        signal: a tracked signal (see `HARDER_WHEN_HIGHER`).
        threshold: the first threshold, in difficulty units (so ``-0.8`` admits a confidence of at
            least 0.8); ``None``: the median of the scores, recomputed every epoch.
        growth: factor per epoch, ``>= 1``.
        min_fraction: share of the data always kept (the easiest), in ``(0, 1]``.
        warmup_epochs: full-data epochs first, ``>= 1``.

    Note:
        **DDP and resume**: the plan depends only on ``(seed, epoch, synced signals)``; the signals
        are in the tracker's checkpoint, so every rank and a resumed run plan the same epoch.

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
        chosen = (hardness <= self.limit(hardness[seen], context.epoch - self.warmup_epochs)) | ~seen
        floor = fraction_size(self.min_fraction, n)
        if int(chosen.sum()) < floor:
            chosen[easiest_set(hardness, floor)] = True
        return shuffled_plan(chosen.nonzero().squeeze(1), context.generator)

    def limit(self, seen: Tensor, step: int) -> float:
        """The threshold ``step`` epochs after the warm-up, for the difficulty scores of the seen examples.

        Its height above the origin ``min(0, easiest score)`` is multiplied by ``growth`` each epoch:
        for a loss (never below 0) that is the paper's ``threshold * growth ** step``, and for a
        negated signal (confidence, margin, AUM, correctness, all <= 0 when negated) it still grows.

        Examples:
            >>> round(SelfPaced(threshold=1.0, growth=2.0).limit(torch.tensor([0.5, 1.0, 3.0]), 2), 3)
            4.0
            >>> round(SelfPaced(growth=2.0).limit(-torch.tensor([0.9, 0.6, 0.2]), 1), 3)  # confidence: from -0.9 up
            -0.3
        """
        finite = seen[seen.isfinite()]
        if seen.numel() == 0:
            return math.inf
        # Scores equal in exact arithmetic differ by float noise (means of repeated sums): treat them as ties.
        tie = 1e-5 * float(finite.abs().max()) if finite.numel() else 0.0
        origin = min(0.0, float(finite.min())) if finite.numel() else 0.0
        start = self.threshold if self.threshold is not None else float(seen.median())
        height = start - origin
        if height <= tie and self.threshold is None:  # most scores tie at the easiest: reach the next one a step later
            above = finite[finite > start + tie]
            height = (float(above.min()) - origin) / self.growth if above.numel() else 0.0
        return origin + height * self.growth**step + tie
