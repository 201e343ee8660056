"""Pruning: static pruning (Data Diet), InfoBatch soft pruning and bandit pruning."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from lightning_curricula.policies._base import (
    EpochContext,
    Plan,
    Policy,
    check_fraction,
    check_signal,
    check_warmup,
    fraction_size,
)
from lightning_curricula.policies.selection import (
    easiest_first,
    easiest_prefix,
    easiest_set,
    full_plan,
    shuffled_plan,
    stratified_keep,
)
from lightning_curricula.ranking import HARDER_WHEN_HIGHER

__all__ = ["Bandit", "InfoBatch", "StaticPruning"]


class StaticPruning(Policy):
    """Static data pruning (Paul et al. 2021, Data Diet; Sorscher et al. 2022): score early, then keep a subset.

    Epochs before ``score_epochs`` train on all data; at epoch ``score_epochs`` the subset is chosen
    by ``signal`` and kept for the rest of the run (on later epochs it is read back as the examples
    seen since the pruning epoch, so the plan stays a pure function of the synced tables):

    - ``hard``: the hardest ``keep`` share (Data Diet; best when data is plentiful);
    - ``easy``: the easiest (Sorscher et al.: best when data is scarce);
    - ``band``: the hardest after skipping the ``band_offset`` hardest (drops likely noise).

    With ``labels`` and ``class_balanced=True``, each class keeps its own ``keep`` share, at least
    ``min_per_class``.

    Examples:
        >>> el2n = torch.tensor([0.9, 0.1, 0.5, 0.7])
        >>> policy = StaticPruning("el2n", keep=0.5, mode="hard", score_epochs=1)
        >>> context = EpochContext(epoch=1, num_examples=4, generator=torch.Generator(), signals={"el2n": el2n})
        >>> sorted(policy.plan(context).indices.tolist())
        [0, 3]
    """

    def __init__(
        self,
        signal: str = "el2n",
        *,
        keep: float = 0.5,
        mode: Literal["hard", "easy", "band"] = "hard",
        band_offset: float = 0.0,
        score_epochs: int = 1,
        labels: Tensor | None = None,
        class_balanced: bool = False,
        min_per_class: int = 1,
    ) -> None:
        check_signal(signal)
        check_fraction("keep", keep)
        check_warmup(score_epochs, "score_epochs")
        if mode not in ("hard", "easy", "band"):
            raise ValueError(f"mode must be 'hard', 'easy' or 'band', got {mode!r}.")
        if not 0.0 <= band_offset < 1.0 or band_offset + keep > 1.0:
            raise ValueError(f"band_offset must be in [0, 1 - keep], got {band_offset!r} with keep={keep!r}.")
        if class_balanced and labels is None:
            raise ValueError("class_balanced=True needs labels: one class id per example.")
        self.signal = signal
        self.keep = keep
        self.mode = mode
        self.band_offset = band_offset if mode == "band" else 0.0
        self.score_epochs = score_epochs
        self.labels = labels.long() if labels is not None else None
        self.class_balanced = class_balanced
        self.min_per_class = min_per_class
        self.signals = (signal,)

    def validate(self, num_examples: int, num_epochs: int | None) -> None:  # noqa: D102
        super().validate(num_examples, num_epochs)
        if self.labels is not None and self.labels.numel() != num_examples:
            raise ValueError(f"labels has {self.labels.numel()} entries, the dataset has {num_examples} examples.")

    def epoch_size(self, num_examples: int, epoch: int, num_epochs: int | None) -> int:  # noqa: D102
        if epoch < self.score_epochs:
            return num_examples
        if not self.class_balanced or self.labels is None:
            return fraction_size(self.keep, num_examples)
        counts = torch.bincount(self.labels)
        return sum(self._class_quota(int(count)) for count in counts if count > 0)

    def plan(self, context: EpochContext) -> Plan:  # noqa: D102
        n = context.num_examples
        if context.epoch < self.score_epochs:
            return full_plan(n, context.generator)
        if context.epoch > self.score_epochs and "last_epoch" in context.signals:
            kept = (context.signals["last_epoch"] >= self.score_epochs).nonzero().squeeze(1)
            return shuffled_plan(kept, context.generator)
        if not self.class_balanced or self.labels is None:
            size = fraction_size(self.keep, n)
            skip = min(round(self.band_offset * n), n - size)  # rounding must not shrink the band
            ranked = easiest_prefix(context.difficulty(self.signal), skip + size, hardest=self.mode != "easy")
            return shuffled_plan(ranked[skip:], context.generator)
        ranked = easiest_first(context.difficulty(self.signal), hardest=self.mode != "easy")
        labels = self.labels[ranked]
        chosen = []
        for label in torch.unique(labels):
            members = ranked[labels == label]
            quota = self._class_quota(members.numel())
            skip = min(round(self.band_offset * members.numel()), members.numel() - quota)
            chosen.append(members[skip : skip + quota])
        return shuffled_plan(torch.cat(chosen), context.generator)

    def _class_quota(self, count: int) -> int:
        return min(count, max(self.min_per_class, round(self.keep * count)))


class InfoBatch(Policy):
    """Dynamic soft pruning with unbiased rescaling (Qin et al., ICLR 2024, "InfoBatch").

    Each epoch, the *well-learned* examples are those whose ``signal`` (default: the loss of their
    last epoch) is below the mean over seen examples. Two ways to say how many are pruned:

    - ``prune`` (the paper's knob): each well-learned example is dropped independently with
      probability ``prune``; kept ones get weight ``1 / (1 - prune)``. The epoch size varies.
    - ``budget``: the whole run uses exactly ``round(budget * num_epochs * N)`` sample passes. Pruning
      epochs get sizes that add up to that; the drops come uniformly from the well-learned examples,
      at most a ``prune`` share of them (so their weights stay at most ``1 / (1 - prune)``), and the
      rest of the drops uniformly from the other examples. Each kept example of a group of ``n`` with
      ``d`` dropped gets weight ``n / (n - d)`` (an epoch of one visit draws it from all ``N``, weight ``N``).

    Either way the expected weighted loss equals the full-data loss. The first epoch (no scores yet)
    and the last ``anneal`` share of epochs train on all data with weight 1, which the paper found
    needed to close the remaining gap.

    Args:
        prune: probability of dropping a well-learned example, in ``[0, 1)``; with ``budget``, the largest
            share of the well-learned examples dropped in an epoch.
        anneal: share of final epochs on full data, in ``[0, 1)``.
        signal: the score; must be a signal where higher is harder.
        budget: share of full-data sample passes for the whole run, in ``(0, 1]``; overrides ``prune``.
    """

    needs_num_epochs = True

    def __init__(
        self, prune: float = 0.5, *, anneal: float = 0.125, signal: str = "loss", budget: float | None = None
    ) -> None:
        check_signal(signal)
        if not HARDER_WHEN_HIGHER[signal]:
            raise ValueError(
                f"InfoBatch prunes low scores, so signal must be one where higher is harder, got {signal!r}."
            )
        if not 0.0 <= prune < 1.0:
            raise ValueError(f"prune must be in [0, 1), got {prune!r}.")
        if not 0.0 <= anneal < 1.0:
            raise ValueError(f"anneal must be in [0, 1), got {anneal!r}.")
        if budget is not None:
            check_fraction("budget", budget)
        self.prune = prune
        self.anneal = anneal
        self.signal = signal
        self.budget = budget
        self.signals = (signal,)

    def full_epoch(self, epoch: int, num_epochs: int) -> bool:
        """Whether ``epoch`` trains on all data: the first epoch, and the annealing epochs at the end."""
        return epoch == 0 or epoch >= self.anneal_start(num_epochs)

    def anneal_start(self, num_epochs: int) -> int:
        """The first annealing epoch (full data from there on)."""
        return max(1, math.floor((1.0 - self.anneal) * num_epochs + 1e-9))

    def validate(self, num_examples: int, num_epochs: int | None) -> None:  # noqa: D102
        super().validate(num_examples, num_epochs)
        if self.budget is None or num_epochs is None:
            return
        pruning = [e for e in range(num_epochs) if not self.full_epoch(e, num_epochs)]
        passes = round(self.budget * num_epochs * num_examples) - (num_epochs - len(pruning)) * num_examples
        if not pruning or not len(pruning) <= passes <= len(pruning) * num_examples:
            full = num_epochs - len(pruning)
            # Full epochs, plus at least one visit per pruning epoch; rounded up so the stated minimum is enough.
            lowest = math.ceil(1000 * (full * num_examples + len(pruning)) / (num_epochs * num_examples)) / 1000
            need = f"the budget must be at least {lowest:.3f}" if pruning else "some epoch must prune"
            raise ValueError(
                f"budget={self.budget} cannot be met with num_epochs={num_epochs} and anneal={self.anneal}: "
                f"{full} epochs train on all data, so {need} (or lower anneal, or add epochs)."
            )

    def epoch_size(self, num_examples: int, epoch: int, num_epochs: int | None) -> int | None:  # noqa: D102
        if num_epochs is None:
            return None
        if self.full_epoch(epoch, num_epochs):
            return num_examples
        if self.budget is None:
            return None
        pruning = [e for e in range(num_epochs) if not self.full_epoch(e, num_epochs)]
        passes = round(self.budget * num_epochs * num_examples) - (num_epochs - len(pruning)) * num_examples
        slot = pruning.index(epoch)
        return passes * (slot + 1) // len(pruning) - passes * slot // len(pruning)

    def plan(self, context: EpochContext) -> Plan:  # noqa: D102
        n = context.num_examples
        size = self.epoch_size(n, context.epoch, context.num_epochs)
        if size == n:
            return full_plan(n, context.generator)
        scores = context.difficulty(self.signal)
        seen = ~scores.isnan()
        mean = scores[seen].mean() if bool(seen.any()) else torch.tensor(math.inf)
        well_learned = seen & (scores < mean)
        strata = (~well_learned).long()  # 0: well learned, 1: the rest
        if size is None:
            dropped = well_learned & (torch.rand(n, generator=context.generator) < self.prune)
            weights = torch.where(well_learned, 1.0 / (1.0 - self.prune), 1.0)
            kept = (~dropped).nonzero().squeeze(1)
            return shuffled_plan(kept, context.generator, weights[kept])
        drop = n - size
        learned = int(well_learned.sum())
        drops = [min(drop, math.floor(self.prune * learned)), 0]
        drops[1] = drop - drops[0]
        if drops[1] >= n - learned:  # a single visit cannot stand for both groups: draw it from all, weight n
            strata, drops = torch.zeros_like(strata), [drop]
        ids, weights = stratified_keep(strata, drops, context.generator)
        return shuffled_plan(ids, context.generator, weights)


class Bandit(Policy):
    """Dynamic data pruning as a multi-armed bandit (Raju et al. 2021): keep a ``fraction`` each epoch.

    Each example is an arm whose value is its ``signal`` (higher is harder: the loss EMA by default);
    the kept share is

    - ``ucb``: the top by ``value + exploration * sqrt(ln(epoch + 1) / epochs_seen)`` (UCB1; unseen
      examples first);
    - ``epsilon_greedy``: the top ``(1 - epsilon)`` share by value, the rest uniformly from the others.

    Examples:
        >>> Bandit(0.25).epoch_size(100, 3, None), Bandit(0.25).epoch_size(100, 0, None)
        (25, 100)
    """

    def __init__(
        self,
        fraction: float,
        *,
        strategy: Literal["ucb", "epsilon_greedy"] = "ucb",
        signal: str = "loss_ema",
        exploration: float = 1.0,
        epsilon: float = 0.1,
        warmup_epochs: int = 1,
    ) -> None:
        check_fraction("fraction", fraction)
        check_signal(signal)
        check_warmup(warmup_epochs)
        if strategy not in ("ucb", "epsilon_greedy"):
            raise ValueError(f"strategy must be 'ucb' or 'epsilon_greedy', got {strategy!r}.")
        if exploration < 0 or not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"exploration must be >= 0 and epsilon in [0, 1], got {exploration!r} and {epsilon!r}.")
        self.fraction = fraction
        self.strategy = strategy
        self.signal = signal
        self.exploration = exploration
        self.epsilon = epsilon
        self.warmup_epochs = warmup_epochs
        self.signals = (signal, "epochs_seen")

    def epoch_size(self, num_examples: int, epoch: int, num_epochs: int | None) -> int:  # noqa: D102
        return num_examples if epoch < self.warmup_epochs else fraction_size(self.fraction, num_examples)

    def plan(self, context: EpochContext) -> Plan:  # noqa: D102
        n = context.num_examples
        size = self.epoch_size(n, context.epoch, context.num_epochs)
        if size == n:
            return full_plan(n, context.generator)
        value = context.difficulty(self.signal)
        if self.strategy == "ucb":
            pulls = context.signals["epochs_seen"].float()
            bonus = self.exploration * torch.sqrt(math.log(context.epoch + 1) / pulls)
            value = torch.where(pulls > 0, value + bonus, math.inf)
            return shuffled_plan(easiest_set(value, size, hardest=True), context.generator)
        explore = round(self.epsilon * size)
        greedy = easiest_set(value, size - explore, hardest=True)
        rest = torch.ones(n, dtype=torch.bool)
        rest[greedy] = False
        others = rest.nonzero().squeeze(1)
        explored = others[torch.randperm(others.numel(), generator=context.generator)[:explore]]
        return shuffled_plan(torch.cat([greedy, explored]), context.generator)
