"""`ScoreCurriculum`: a curriculum (or a fixed subset) ranked by given per-example scores, not a tracked signal.

The library's `Curriculum` ranks by a signal that `TrainingDynamics` learns while training, so it
needs a warm-up epoch. With a *known* difficulty (reasoning-gym's level, a length, a teacher's score,
the IFD of the model before training, a previous run's exported losses) the ranking exists before the
first step: this policy takes it as a tensor and needs neither a tracker nor a warm-up.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from lightning_curricula import EpochContext, Plan, Policy, pacing_function
from lightning_curricula.policies.selection import easiest_first, shuffled_plan

__all__ = ["ScoreCurriculum"]

Order = Literal["easy_to_hard", "hard_to_easy", "random"]


class ScoreCurriculum(Policy):
    """Train on the easiest (or hardest) examples by a fixed score: paced, or a fixed share.

    - With ``keep=None`` (a curriculum, Hacohen & Weinshall 2019): epoch ``e`` trains on the
      ``pace(e / num_epochs)`` share of the data, the easiest first (``easy_to_hard``), the hardest
      first (``hard_to_easy``, the anti-curriculum) or a random subset of the same size
      (``random``, the baseline at the same sample budget). The first ``warmup_epochs`` use all data.
    - With ``keep`` in ``(0, 1]``: every epoch trains on the same ``keep`` share, chosen by ``order``
      (the easy-to-hard generalisation set-up of Hase et al. 2024: train on the easiest, test on
      the hardest).

    Ties (a known difficulty has many) are broken by a permutation drawn once from ``seed``, so that
    the subsets of successive epochs are nested and do not favour low ids. ``scores`` may be given
    later with `with_scores`: the recipe binds the column named ``score`` of its dataset.

    Args:
        score: name of the score (a dataset column such as ``difficulty``, or ``ifd`` /
            ``initial_loss`` computed by the recipe before training); only read by the recipe.
        scores: ``(N,)`` higher is harder; NaN ranks last whichever the order.
        order: which examples the share holds.
        pacing: a pacing function name or callable (see `pacing_function`).
        start: share of data at the first paced epoch.
        saturation: progress at which all data is used.
        keep: a fixed share instead of pacing.
        warmup_epochs: full-data epochs before pacing (``0``: none; the scores are already known).

    Example:
        >>> policy = ScoreCurriculum(scores=torch.tensor([0.9, 0.1, 0.5, 0.3]), keep=0.5)
        >>> context = EpochContext(epoch=0, num_examples=4, generator=torch.Generator().manual_seed(0))
        >>> sorted(policy.plan(context).indices.tolist())
        [1, 3]

    Note:
        The plan depends only on ``(seed, epoch, scores)``, so it is identical on every rank and on
        resume, as long as the scores are (a known label always is).
    """

    needs_num_epochs = True

    def __init__(
        self,
        score: str = "difficulty",
        *,
        scores: Tensor | None = None,
        order: Order = "easy_to_hard",
        pacing: str = "linear",
        start: float = 0.2,
        saturation: float = 0.8,
        keep: float | None = None,
        warmup_epochs: int = 0,
    ) -> None:
        if order not in ("easy_to_hard", "hard_to_easy", "random"):
            raise ValueError(f"order must be easy_to_hard, hard_to_easy or random, got {order!r}.")
        if keep is not None and not 0.0 < keep <= 1.0:
            raise ValueError(f"keep must be in (0, 1] or None, got {keep!r}.")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs!r}.")
        self.score = score
        self.scores = None if scores is None else scores.detach().float().cpu()
        self.order: Order = order
        self.pacing = pacing
        self.start = start
        self.saturation = saturation
        pacing_function(pacing, start=start, saturation=saturation)  # validates the pacing now
        self.keep = keep
        self.warmup_epochs = warmup_epochs
        self.needs_num_epochs = keep is None
        self.varies_length = keep is None

    def with_scores(self, scores: Tensor) -> ScoreCurriculum:
        """The same policy ranking by ``scores``."""
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
        if self.scores is not None and self.scores.shape != (num_examples,):
            raise ValueError(f"scores has shape {tuple(self.scores.shape)}, the dataset has {num_examples} examples.")

    def epoch_size(self, num_examples: int, epoch: int, num_epochs: int | None) -> int:  # noqa: D102
        if self.keep is not None:
            return max(1, round(self.keep * num_examples))
        if epoch < self.warmup_epochs or num_epochs is None:
            return num_examples
        pace = pacing_function(self.pacing, start=self.start, saturation=self.saturation)
        share = min(max(pace(epoch / num_epochs), 0.0), 1.0)
        return max(1, math.ceil(share * num_examples))

    def plan(self, context: EpochContext) -> Plan:  # noqa: D102
        n = context.num_examples
        size = self.epoch_size(n, context.epoch, context.num_epochs)
        if size == n:
            return shuffled_plan(torch.arange(n), context.generator)
        tie_break = torch.randperm(n, generator=torch.Generator().manual_seed(context.seed))
        if self.order == "random":
            return shuffled_plan(tie_break[:size], context.generator)
        assert self.scores is not None
        ranked = tie_break[easiest_first(self.scores[tie_break], hardest=self.order == "hard_to_easy")]
        return shuffled_plan(ranked[:size], context.generator)
