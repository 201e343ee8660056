"""Pruning: static pruning (Data Diet), InfoBatch soft pruning and bandit pruning."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from lightning_curricula.distributed._keyed import generator_key, keyed_uniforms
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
from lightning_curricula.policies.selection import (
    easiest_band,
    easiest_mask,
    easiest_set,
    full_plan,
    grouped_easiest_band,
    random_plan,
    shuffled_plan,
    stratified_keep,
)
from lightning_curricula.tracking.ranking import HARDER_WHEN_HIGHER

if TYPE_CHECKING:
    from lightning_curricula.distributed._sharding import TableShard

__all__ = ["Bandit", "InfoBatch", "StaticPruning", "well_learned_mask"]


class StaticPruning(Policy):
    """Static data pruning (Paul et al. 2021, Data Diet; Sorscher et al. 2022): score early, then keep a subset.

    Epochs before ``score_epochs`` train on all data; at epoch ``score_epochs`` the subset is chosen
    by ``signal``, recorded in the policy's state (`state_dict`), and planned again every later epoch,
    so later epochs have exactly `epoch_size` visits whatever the selection epoch trained (non-finite
    losses, ``drop_last_plan=True`` trimming, ``limit_train_batches`` or ``max_steps`` cutting it short):

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
        >>> policy.state_dict()
        {'version': 1, 'subset': tensor([0, 3])}

    Note:
        **DDP**: every rank chooses the same subset from the synced signals (with sharded tables,
        each rank its part of it, with a few collectives). **Resume**: the subset
        is in the policy's state, which the `TrainingDynamics` the sampler is bound to saves in its
        checkpoint state and hands back when the resumed run's sampler binds the policy.
    """

    state_version = 1

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
        self.plans_from_shards = not class_balanced
        self.subset: Tensor | None = None  # the ids chosen at epoch score_epochs, in id order (this rank's, sharded)

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        state: dict[str, Any] = {"version": self.state_version}
        if self.subset is not None:
            state["subset"] = self.subset.clone()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:  # noqa: D102
        if state_dict.get("version") != self.state_version:
            version = state_dict.get("version")
            raise ValueError(f"StaticPruning state has version {version!r}; this release reads {self.state_version}.")
        subset = state_dict.get("subset")
        self.subset = None if subset is None else subset.clone().long()

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

    def plan(self, context: EpochContext) -> Plan | ShardedPlan:  # noqa: D102
        n = context.num_examples
        if context.epoch < self.score_epochs:
            self.subset = None  # a new run: the choice is made again at the selection epoch
            return full_plan(n, context.generator, shard=context.shard)
        if context.epoch == self.score_epochs:
            self.subset = self._choose(context)
        elif self.subset is None:
            raise RuntimeError(
                f"StaticPruning has no subset for epoch {context.epoch}: it is chosen when epoch {self.score_epochs} "
                "is planned and kept in the policy's state. On resume, the TrainingDynamics state of the checkpoint "
                "restores it when the sampler is built with that tracker."
            )
        if self.subset.numel() and int(self.subset.max()) >= n:
            raise ValueError(f"StaticPruning's subset has ids up to {int(self.subset.max())}; the dataset has {n}.")
        return shuffled_plan(self.subset, context.generator, shard=context.shard)

    def _choose(self, context: EpochContext) -> Tensor:
        """The subset in id order: linear-time selections (no sort of the scores), then shuffled by `plan`."""
        n = context.num_examples
        hardest = self.mode != "easy"
        if not self.class_balanced or self.labels is None:
            size = fraction_size(self.keep, n)
            skip = min(round(self.band_offset * n), n - size)  # rounding must not shrink the band
            return easiest_band(context.difficulty(self.signal), skip, size, hardest=hardest, shard=context.shard)
        counts = torch.bincount(self.labels).tolist()
        quotas = [self._class_quota(count) for count in counts]
        skips = [
            min(round(self.band_offset * count), count - quota) for count, quota in zip(counts, quotas, strict=True)
        ]
        return grouped_easiest_band(context.difficulty(self.signal), self.labels, skips, quotas, hardest=hardest)

    def _class_quota(self, count: int) -> int:
        return min(count, max(self.min_per_class, round(self.keep * count)))


class InfoBatch(Policy):
    """Dynamic soft pruning with unbiased rescaling (Qin et al., ICLR 2024, "InfoBatch").

    Each epoch, the *well-learned* examples are those whose ``signal`` (default: the loss of their
    last epoch) is below the mean over the seen examples with a finite score; an example with a
    non-finite score (``forgetting_events`` scores never-learned examples ``+inf``) is never
    well-learned and never pulls the mean. Two ways to say how many are pruned:

    - ``prune`` (the paper's knob): each well-learned example is dropped independently with
      probability ``prune``; kept ones get weight ``1 / (1 - prune)``. The epoch size varies.
    - ``budget``: the whole run uses exactly ``round(budget * num_epochs * N)`` sample passes. Pruning
      epochs get sizes that add up to that. An epoch that drops ``d`` examples drops them uniformly
      from the easiest ``m = max(L, ceil(d / prune))`` examples, where ``L`` is the number of
      well-learned ones: the well-learned examples alone while ``d <= prune * L`` (the paper's
      InfoBatch), else the easiest examples beyond them, never the hardest first. The ``m - d`` kept
      ones get weight ``m / (m - d) <= 1 / (1 - prune)``, so ``prune`` bounds every weight, and
      `validate` refuses at setup a budget whose drops cannot stay under that bound.

    Either way the expected weighted loss *sum* of the epoch equals the full-data sum (see
    ``docs/methods/index.md`` on what that means for the learning rate). The first epoch (no scores
    yet) and the last ``anneal`` share of epochs train on all data with weight 1, which the paper
    found needed to close the remaining gap.

    Args:
        prune: probability of dropping a well-learned example, in ``[0, 1)``; with ``budget``, the largest
            share of the candidates dropped in an epoch, so weights stay at most ``1 / (1 - prune)``.
        anneal: share of final epochs on full data, in ``[0, 1)``.
        signal: the score; must be a signal where higher is harder.
        budget: share of full-data sample passes for the whole run, in ``(0, 1]``; overrides ``prune``
            as the epoch size.

    Examples:
        >>> InfoBatch(budget=0.5, anneal=0.0).validate(100, 4)
        Traceback (most recent call last):
        ...
        ValueError: budget=0.5 cannot be met with num_epochs=4, anneal=0.0 and prune=0.5 on 100 examples: ...
        >>> InfoBatch(prune=0.7, budget=0.5, anneal=0.0).epoch_size(100, 1, 4)
        33

    Note:
        **DDP and resume**: the plan depends only on ``(seed, epoch, synced signals)``, so every rank
        draws the same drops; the budget's epoch sizes depend on ``num_epochs``, so a resume with
        another ``max_epochs`` is refused.
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
        self.plans_from_shards = budget is None

    def full_epoch(self, epoch: int, num_epochs: int) -> bool:
        """Whether ``epoch`` trains on all data: the first epoch, and the annealing epochs at the end."""
        return epoch == 0 or epoch >= self.anneal_start(num_epochs)

    def anneal_start(self, num_epochs: int) -> int:
        """The first annealing epoch (full data from there on)."""
        return max(1, math.floor((1.0 - self.anneal) * num_epochs + 1e-9))

    def max_drop(self, num_examples: int) -> int:
        """The most examples a budget epoch may drop with every weight at most ``1 / (1 - prune)``."""
        return math.floor(self.prune * num_examples + 1e-9)

    def validate(self, num_examples: int, num_epochs: int | None) -> None:  # noqa: D102
        super().validate(num_examples, num_epochs)
        if self.budget is None or num_epochs is None:
            return
        pruning = [e for e in range(num_epochs) if not self.full_epoch(e, num_epochs)]
        passes = round(self.budget * num_epochs * num_examples) - (num_epochs - len(pruning)) * num_examples
        smallest = num_examples - self.max_drop(num_examples)  # the smallest pruning epoch under the weight bound
        if pruning and smallest * len(pruning) <= passes <= len(pruning) * num_examples:
            return
        full = num_epochs - len(pruning)
        context = (
            f"budget={self.budget} cannot be met with num_epochs={num_epochs}, anneal={self.anneal} and "
            f"prune={self.prune} on {num_examples} examples: "
        )
        if not pruning:
            raise ValueError(context + f"all {full} epochs train on all data, so some epoch must prune (lower anneal).")
        # Rounded up so that the stated minimum is enough.
        lowest = math.ceil(1000 * (full + len(pruning) * smallest / num_examples) / num_epochs) / 1000
        raise ValueError(
            context + f"{full} epochs train on all data and a pruning epoch drops at most "
            f"{num_examples - smallest} examples (floor(prune * N), so that every weight stays at most "
            f"1 / (1 - prune) = {1 / (1 - self.prune):.3g}); so the budget must be at least {lowest:.3f}, "
            "up to 1. Raise prune (a larger weight bound), lower anneal, or add epochs."
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

    def plan(self, context: EpochContext) -> Plan | ShardedPlan:  # noqa: D102
        n = context.num_examples
        size = self.epoch_size(n, context.epoch, context.num_epochs)
        if size == n:
            return full_plan(n, context.generator, shard=context.shard)
        scores = context.difficulty(self.signal)
        well_learned = well_learned_mask(scores, shard=context.shard)
        if size is None:
            return self._drop_at_random(well_learned, context)
        drop = n - size
        if drop > self.max_drop(n):
            raise ValueError(
                f"InfoBatch cannot drop {drop} of {n} examples with weights at most 1 / (1 - prune) (prune="
                f"{self.prune}); call validate(num_examples, num_epochs) at setup."
            )
        learned = int(torch.count_nonzero(well_learned))
        candidates = max(learned, math.ceil(drop / self.prune - 1e-9), drop + 1)
        pool = easiest_mask(scores, candidates) if candidates > learned else well_learned  # the easiest `candidates`
        strata = pool.logical_not().to(torch.int8)  # 0: the drops' pool; 1: the rest
        ids, weights = stratified_keep(strata, [drop, 0], context.generator)
        return shuffled_plan(ids, context.generator, weights)

    def _drop_at_random(self, well_learned: Tensor, context: EpochContext) -> Plan | ShardedPlan:
        """The paper's InfoBatch: drop each well-learned example with probability ``prune``, up-weight the rest.

        Each id's draw is `keyed_uniforms` of its own id, so a rank draws only for the ids it owns.
        """
        start = 0 if context.shard is None else context.shard.start
        ids = torch.arange(start, start + well_learned.numel())
        dropped = well_learned & (keyed_uniforms(generator_key(context.generator), ids) < self.prune)
        weights = torch.where(well_learned, 1.0 / (1.0 - self.prune), 1.0)
        kept = (~dropped).nonzero().squeeze(1)
        return shuffled_plan(kept + start, context.generator, weights[kept], shard=context.shard)


def well_learned_mask(scores: Tensor, *, shard: TableShard | None = None) -> Tensor:
    """InfoBatch's well-learned examples: a finite score below the mean of the finite scores.

    Unseen (NaN) and non-finite scores (a never-learned example's infinite forgetting count) are never
    well-learned and never enter the mean, so one ``+inf`` cannot make every other example well-learned.
    The mean is a float64 sum over a count (compared in the scores' dtype); with ``shard``, over every
    rank's shard of the scores.

    Examples:
        >>> well_learned_mask(torch.tensor([0.0, 5.0, float("inf"), 1.0, float("nan")])).tolist()
        [True, False, False, True, False]
    """
    finite = scores.isfinite()
    sums = torch.stack([torch.where(finite, scores, 0.0).sum(dtype=torch.float64), finite.sum().double()])
    total, count = (sums if shard is None else shard.total(sums)).tolist()
    if count == 0:
        return torch.zeros_like(finite)
    mean: float = total / count
    return finite.logical_and_(scores < mean)


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
        self.plans_from_shards = strategy == "ucb"

    def epoch_size(self, num_examples: int, epoch: int, num_epochs: int | None) -> int:  # noqa: D102
        return num_examples if epoch < self.warmup_epochs else fraction_size(self.fraction, num_examples)

    def plan(self, context: EpochContext) -> Plan | ShardedPlan:  # noqa: D102
        n, shard = context.num_examples, context.shard
        size = self.epoch_size(n, context.epoch, context.num_epochs)
        if size == n:
            return full_plan(n, context.generator, shard=shard)
        value = context.difficulty(self.signal)
        if self.strategy == "ucb":
            pulls = context.signals["epochs_seen"].float()
            bonus = self.exploration * torch.sqrt(math.log(context.epoch + 1) / pulls)
            value = torch.where(pulls > 0, value + bonus, math.inf)
            return shuffled_plan(easiest_set(value, size, hardest=True, shard=shard), context.generator, shard=shard)
        explore = round(self.epsilon * size)
        greedy = easiest_set(value, size - explore, hardest=True)
        rest = torch.ones(n, dtype=torch.bool)
        rest[greedy] = False
        others = rest.nonzero().squeeze(1)
        explored = others[random_plan(others.numel(), explore, context.generator).indices]
        return shuffled_plan(torch.cat([greedy, explored]), context.generator)
