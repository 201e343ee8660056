"""Selection policies: what the model sees next epoch, as a `Plan` of example ids and weights.

A policy is a small object whose `Policy.plan` is a pure function of an `EpochContext`: the epoch,
the number of epochs, the synced per-example signals of `TrainingDynamics`, and a ``torch.Generator``
seeded with ``seed + epoch``. Every rank computes the same plan without talking; `CurriculumSampler`
executes this rank's shard of it.

Weights are 1 unless a policy reweights to stay unbiased (InfoBatch, importance sampling); the loss
is then ``weighted_mean(losses, batch["weight"])``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from lightning_curricula.pacing import Pacing, pacing_function
from lightning_curricula.ranking import HARDER_WHEN_HIGHER, difficulty_scores

__all__ = [
    "POLICIES",
    "Bandit",
    "Curriculum",
    "EpochContext",
    "FullData",
    "ImportanceSampling",
    "InfoBatch",
    "NoiseAware",
    "Plan",
    "Policy",
    "RandomSubset",
    "RandomTwin",
    "SelfPaced",
    "StaticPruning",
    "easiest_first",
    "shuffled_plan",
    "stratified_keep",
]


@dataclass(frozen=True)
class Plan:
    """One epoch's visits: example ``indices`` in order (int64) and a ``weight`` per visit (float32)."""

    indices: Tensor
    weights: Tensor

    def __len__(self) -> int:
        return int(self.indices.numel())


@dataclass(frozen=True)
class EpochContext:
    """Everything a policy may read to plan one epoch."""

    epoch: int
    num_examples: int
    generator: torch.Generator
    seed: int = 0
    num_epochs: int | None = None
    signals: Mapping[str, Tensor] = field(default_factory=dict)

    @property
    def progress(self) -> float:
        """Share of training done when this epoch starts: ``epoch / num_epochs``."""
        if self.num_epochs is None:
            raise ValueError("This policy needs num_epochs: pass num_epochs to CurriculumSampler.")
        return self.epoch / self.num_epochs

    def difficulty(self, signal: str) -> Tensor:
        """Scores where higher is harder (see `difficulty_scores`); NaN for unseen examples."""
        if not self.signals:
            raise ValueError(
                f"No tracked signals at epoch {self.epoch}: a policy that ranks by {signal!r} needs a "
                "TrainingDynamics tracker passed to CurriculumSampler and at least one warm-up epoch."
            )
        return difficulty_scores(self.signals, signal)


class Policy(ABC):
    """Base class: `plan` one epoch, and say in advance how large it will be when that is known."""

    #: Tracked signals the policy reads (it then needs a `TrainingDynamics`).
    signals: tuple[str, ...] = ()
    #: Whether it needs ``num_epochs`` (pacing, annealing, whole-run budgets).
    needs_num_epochs: bool = False
    #: Whether the plan size can change from one epoch to the next.
    varies_length: bool = True

    @abstractmethod
    def plan(self, context: EpochContext) -> Plan:
        """The plan for ``context.epoch``."""

    def epoch_size(self, num_examples: int, epoch: int, num_epochs: int | None) -> int | None:
        """Number of visits planned for ``epoch``, or ``None`` when it depends on the scores."""
        return None

    def validate(self, num_examples: int, num_epochs: int | None) -> None:
        """Raise ``ValueError`` at setup if the policy cannot run on this dataset and schedule."""
        if self.needs_num_epochs and num_epochs is None:
            raise ValueError(
                f"{type(self).__name__} needs num_epochs: pass num_epochs=max_epochs to CurriculumSampler."
            )


# ------------------------------------------------------------------------------------------ pure functions


def shuffled_plan(indices: Tensor, generator: torch.Generator, weights: Tensor | None = None) -> Plan:
    """A plan visiting ``indices`` in a random order drawn from ``generator``.

    Examples:
        >>> plan = shuffled_plan(torch.arange(5), torch.Generator().manual_seed(0))
        >>> sorted(plan.indices.tolist()), plan.weights.tolist()
        ([0, 1, 2, 3, 4], [1.0, 1.0, 1.0, 1.0, 1.0])
    """
    order = torch.randperm(indices.numel(), generator=generator)
    if weights is None:  # all ones: nothing to permute
        return Plan(indices[order].long(), torch.ones(indices.numel()))
    return Plan(indices[order].long(), weights.float()[order])


def _full_plan(num_examples: int, generator: torch.Generator) -> Plan:
    # shuffled_plan(torch.arange(n), generator) without the gather: arange(n)[order] is order itself.
    return Plan(torch.randperm(num_examples, generator=generator), torch.ones(num_examples))


def _random_plan(num_examples: int, size: int, generator: torch.Generator) -> Plan:
    # A uniformly random subset in a random order: the head of one permutation (no second shuffle).
    return Plan(torch.randperm(num_examples, generator=generator)[:size], torch.ones(size))


def _easiest_set(difficulty: Tensor, count: int, *, hardest: bool = False) -> Tensor:
    # The ids of easiest_first(difficulty, hardest=hardest)[:count], in id order: a selection (kthvalue) and
    # no sort, for callers that shuffle the set anyway (sorting 10M scores costs more than the whole plan).
    key = -difficulty if hardest else difficulty
    key = torch.nan_to_num(key.float(), nan=math.inf, posinf=math.inf)
    count = min(max(count, 0), key.numel())
    if count == 0:
        return torch.empty(0, dtype=torch.int64)
    kth = torch.kthvalue(key, count).values  # the count-th smallest key: the set ends among its ties
    chosen = key < kth
    chosen[(key == kth).nonzero().squeeze(1)[: count - int(chosen.sum())]] = True  # ties: lowest ids first
    return chosen.nonzero().squeeze(1)


def _easiest_prefix(difficulty: Tensor, count: int, *, hardest: bool = False) -> Tensor:
    # easiest_first(difficulty, hardest=hardest)[:count], sorting only the first `count` ids instead of all N.
    ids = _easiest_set(difficulty, count, hardest=hardest)
    key = -difficulty[ids] if hardest else difficulty[ids]
    return ids[torch.sort(torch.nan_to_num(key.float(), nan=math.inf, posinf=math.inf), stable=True).indices]


def easiest_first(difficulty: Tensor, *, hardest: bool = False) -> Tensor:
    """Example ids sorted easiest first (or hardest first); ties by lower id; unseen (NaN) last.

    Examples:
        >>> easiest_first(torch.tensor([0.5, float("nan"), 0.1, 0.5]))
        tensor([2, 0, 3, 1])
        >>> easiest_first(torch.tensor([0.5, float("nan"), 0.1, 0.5]), hardest=True)
        tensor([0, 3, 2, 1])
    """
    key = -difficulty if hardest else difficulty
    key = torch.nan_to_num(key.float(), nan=math.inf, posinf=math.inf)
    return torch.sort(key, stable=True).indices


def stratified_keep(strata: Tensor, drops: list[int], generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Drop ``drops[s]`` ids uniformly at random from each stratum ``s``; weight the kept ones unbiasedly.

    A kept id of a stratum of size ``n`` from which ``d`` were dropped gets weight ``n / (n - d)``, its
    inverse inclusion probability, so the weighted sum over the kept ids equals the full sum in
    expectation.

    Args:
        strata: ``(N,)`` int stratum id per example (``-1`` for examples never planned).
        drops: how many to drop from stratum ``0, 1, ...``.
        generator: the epoch's generator.

    Returns:
        ``(ids, weights)`` of the kept examples, in id order.

    Examples:
        >>> ids, weights = stratified_keep(torch.tensor([0, 0, 0, 0, 1]), [2, 0], torch.Generator().manual_seed(0))
        >>> len(ids), weights.tolist()
        (3, [2.0, 2.0, 1.0])
    """
    keep = strata >= 0
    weights = torch.ones(strata.numel())
    for stratum, drop in enumerate(drops):
        members = (strata == stratum).nonzero().squeeze(1)
        if drop <= 0 or members.numel() == 0:
            continue
        if drop >= members.numel():
            raise ValueError(f"Cannot drop {drop} of the {members.numel()} examples of stratum {stratum}.")
        keep[members[torch.randperm(members.numel(), generator=generator)[:drop]]] = False
        weights[members] = members.numel() / (members.numel() - drop)
    ids = keep.nonzero().squeeze(1)
    return ids, weights[ids]


def _fraction_size(fraction: float, num_examples: int) -> int:
    return max(1, round(fraction * num_examples))


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}.")


def _check_signal(signal: str) -> None:
    if signal not in HARDER_WHEN_HIGHER:
        raise ValueError(f"Unknown signal {signal!r}; policies rank by one of {sorted(HARDER_WHEN_HIGHER)}.")


def _check_warmup(warmup_epochs: int, name: str = "warmup_epochs") -> None:
    if warmup_epochs < 1:
        raise ValueError(
            f"{name} must be >= 1 (the first epochs train on all data to score it), got {warmup_epochs!r}."
        )


# ------------------------------------------------------------------------------------------ baselines


class FullData(Policy):
    """Every example once per epoch, shuffled: the baseline every policy is compared with.

    Examples:
        >>> plan = FullData().plan(EpochContext(epoch=0, num_examples=4, generator=torch.Generator().manual_seed(0)))
        >>> sorted(plan.indices.tolist())
        [0, 1, 2, 3]
    """

    varies_length = False

    def plan(self, context: EpochContext) -> Plan:  # noqa: D102
        return _full_plan(context.num_examples, context.generator)

    def epoch_size(self, num_examples: int, epoch: int, num_epochs: int | None) -> int:  # noqa: D102
        return num_examples


class RandomSubset(Policy):
    """A random ``fraction`` of the data: fixed for the whole run (``static``) or redrawn every epoch.

    The static subset is drawn from ``seed`` alone, so it is the same every epoch and on every rank.

    Args:
        fraction: share of examples per epoch, in ``(0, 1]``.
        static: keep one subset for the whole run instead of redrawing it each epoch.

    Examples:
        >>> policy = RandomSubset(0.5, static=True)
        >>> context = EpochContext(epoch=3, num_examples=10, generator=torch.Generator().manual_seed(3))
        >>> len(policy.plan(context))
        5
    """

    varies_length = False

    def __init__(self, fraction: float, *, static: bool = False) -> None:
        _check_fraction("fraction", fraction)
        self.fraction = fraction
        self.static = static

    def plan(self, context: EpochContext) -> Plan:  # noqa: D102
        size = _fraction_size(self.fraction, context.num_examples)
        if not self.static:
            return _random_plan(context.num_examples, size, context.generator)
        subset = torch.randperm(context.num_examples, generator=torch.Generator().manual_seed(context.seed))[:size]
        return shuffled_plan(subset, context.generator)

    def epoch_size(self, num_examples: int, epoch: int, num_epochs: int | None) -> int:  # noqa: D102
        return _fraction_size(self.fraction, num_examples)


class RandomTwin(Policy):
    """The random twin of ``policy``: each epoch, a uniformly random subset of the same size, weights 1.

    Compares a policy with chance at exactly its sample budget.

    Examples:
        >>> twin = RandomTwin(Curriculum(start=0.5, saturation=1.0, warmup_epochs=1))
        >>> twin.epoch_size(100, 1, 4)
        63
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.signals = policy.signals
        self.needs_num_epochs = policy.needs_num_epochs
        self.varies_length = policy.varies_length

    def plan(self, context: EpochContext) -> Plan:  # noqa: D102
        size = self.policy.epoch_size(context.num_examples, context.epoch, context.num_epochs)
        if size is None:  # sized by the scores: plan the policy to learn its size
            size = len(self.policy.plan(context))
        if size <= context.num_examples:
            return _random_plan(context.num_examples, size, context.generator)
        return Plan(torch.randint(context.num_examples, (size,), generator=context.generator), torch.ones(size))

    def epoch_size(self, num_examples: int, epoch: int, num_epochs: int | None) -> int | None:  # noqa: D102
        return self.policy.epoch_size(num_examples, epoch, num_epochs)

    def validate(self, num_examples: int, num_epochs: int | None) -> None:  # noqa: D102
        self.policy.validate(num_examples, num_epochs)


# ------------------------------------------------------------------------------------------ curricula


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
        _check_signal(signal)
        _check_warmup(warmup_epochs)
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
            return _full_plan(n, context.generator)
        if self.order == "random":
            return _random_plan(n, size, context.generator)
        difficulty = context.difficulty(self.signal)
        if self.order != "balanced":
            chosen = _easiest_set(difficulty, size, hardest=self.order == "hard_to_easy")
            return shuffled_plan(chosen, context.generator)
        easy = _easiest_set(difficulty, size // 2)
        rest = torch.ones(n, dtype=torch.bool)
        rest[easy] = False
        rest_ids = rest.nonzero().squeeze(1)  # the hardest of the rest; unseen ids (NaN) come last in both orders
        hardest = rest_ids[_easiest_set(difficulty[rest_ids], size - easy.numel(), hardest=True)]
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
        _check_signal(signal)
        _check_warmup(warmup_epochs)
        _check_fraction("min_fraction", min_fraction)
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
            return _full_plan(n, context.generator)
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
        floor = _fraction_size(self.min_fraction, n)
        if int(chosen.sum()) < floor:
            chosen[_easiest_set(hardness, floor)] = True
        return shuffled_plan(chosen.nonzero().squeeze(1), context.generator)


# ------------------------------------------------------------------------------------------ pruning


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
        _check_signal(signal)
        _check_fraction("keep", keep)
        _check_warmup(score_epochs, "score_epochs")
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
            return _fraction_size(self.keep, num_examples)
        counts = torch.bincount(self.labels)
        return sum(self._class_quota(int(count)) for count in counts if count > 0)

    def plan(self, context: EpochContext) -> Plan:  # noqa: D102
        n = context.num_examples
        if context.epoch < self.score_epochs:
            return _full_plan(n, context.generator)
        if context.epoch > self.score_epochs and "last_epoch" in context.signals:
            kept = (context.signals["last_epoch"] >= self.score_epochs).nonzero().squeeze(1)
            return shuffled_plan(kept, context.generator)
        if not self.class_balanced or self.labels is None:
            size = _fraction_size(self.keep, n)
            skip = min(round(self.band_offset * n), n - size)  # rounding must not shrink the band
            ranked = _easiest_prefix(context.difficulty(self.signal), skip + size, hardest=self.mode != "easy")
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
        _check_signal(signal)
        if not HARDER_WHEN_HIGHER[signal]:
            raise ValueError(
                f"InfoBatch prunes low scores, so signal must be one where higher is harder, got {signal!r}."
            )
        if not 0.0 <= prune < 1.0:
            raise ValueError(f"prune must be in [0, 1), got {prune!r}.")
        if not 0.0 <= anneal < 1.0:
            raise ValueError(f"anneal must be in [0, 1), got {anneal!r}.")
        if budget is not None:
            _check_fraction("budget", budget)
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
            return _full_plan(n, context.generator)
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
        _check_fraction("fraction", fraction)
        _check_signal(signal)
        _check_warmup(warmup_epochs)
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
        return num_examples if epoch < self.warmup_epochs else _fraction_size(self.fraction, num_examples)

    def plan(self, context: EpochContext) -> Plan:  # noqa: D102
        n = context.num_examples
        size = self.epoch_size(n, context.epoch, context.num_epochs)
        if size == n:
            return _full_plan(n, context.generator)
        value = context.difficulty(self.signal)
        if self.strategy == "ucb":
            pulls = context.signals["epochs_seen"].float()
            bonus = self.exploration * torch.sqrt(math.log(context.epoch + 1) / pulls)
            value = torch.where(pulls > 0, value + bonus, math.inf)
            return shuffled_plan(_easiest_set(value, size, hardest=True), context.generator)
        explore = round(self.epsilon * size)
        greedy = _easiest_set(value, size - explore, hardest=True)
        rest = torch.ones(n, dtype=torch.bool)
        rest[greedy] = False
        others = rest.nonzero().squeeze(1)
        explored = others[torch.randperm(others.numel(), generator=context.generator)[:explore]]
        return shuffled_plan(torch.cat([greedy, explored]), context.generator)


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
        _check_fraction("fraction", fraction)
        _check_warmup(warmup_epochs)
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
        return num_examples if epoch < self.warmup_epochs else _fraction_size(self.fraction, num_examples)

    def plan(self, context: EpochContext) -> Plan:  # noqa: D102
        n = context.num_examples
        if context.epoch < self.warmup_epochs:
            return _full_plan(n, context.generator)
        probabilities = sampling_probabilities(context.difficulty(self.signal), self.smoothing)
        size = _fraction_size(self.fraction, n)
        cumulative = probabilities.cumsum(0)
        draws = torch.rand(size, generator=context.generator, dtype=torch.float64) * cumulative[-1]
        order = torch.argsort(draws)  # searching in sorted order is cache-friendly: same ids, several times faster
        ids = torch.empty(size, dtype=torch.int64)
        ids[order] = torch.searchsorted(cumulative, draws[order])
        ids = ids.clamp_max(n - 1)
        return Plan(ids, (1.0 / (n * probabilities[ids])).float())


def sampling_probabilities(scores: Tensor, smoothing: float) -> Tensor:
    """``(1 - smoothing) * s / sum(s) + smoothing / N`` in float64, NaN scores replaced by the mean.

    Examples:
        >>> sampling_probabilities(torch.tensor([1.0, 3.0, float("nan")]), 0.0).tolist()
        [0.16666666666666666, 0.5, 0.3333333333333333]
    """
    scores = scores.double()
    seen = ~scores.isnan()
    fill = scores[seen].mean() if bool(seen.any()) else torch.tensor(1.0, dtype=torch.float64)
    scores = torch.where(seen, scores, fill).clamp_min(0)
    total = scores.sum()
    uniform = torch.full_like(scores, 1.0 / scores.numel())
    if total <= 0:
        return uniform
    return (1 - smoothing) * scores / total + smoothing * uniform


# ------------------------------------------------------------------------------------------ noise


class NoiseAware(Policy):
    """Keep likely-mislabeled examples from being treated as merely "hard".

    An example is flagged when its area under the margin is below ``aum_threshold`` (Pleiss et al.
    2020), or, with ``min_forgetting``, when it was forgotten at least that often (Toneva et al.
    2019). ``mode="demote"`` gives flagged examples the easiest observed score before ``policy``
    ranks them (they are never up-weighted as hard); ``mode="drop"`` removes them from the plan.

    Examples:
        >>> signals = {"aum": torch.tensor([2.0, -1.0, 0.5]), "el2n": torch.tensor([0.1, 1.3, 0.9])}
        >>> policy = NoiseAware(StaticPruning("el2n", keep=0.34, score_epochs=1), mode="demote")
        >>> context = EpochContext(epoch=1, num_examples=3, generator=torch.Generator(), signals=signals)
        >>> policy.plan(context).indices.tolist()
        [2]
    """

    def __init__(
        self,
        policy: Policy,
        *,
        mode: Literal["demote", "drop"] = "demote",
        aum_threshold: float = 0.0,
        min_forgetting: int | None = None,
    ) -> None:
        if mode not in ("demote", "drop"):
            raise ValueError(f"mode must be 'demote' or 'drop', got {mode!r}.")
        self.policy = policy
        self.mode = mode
        self.aum_threshold = aum_threshold
        self.min_forgetting = min_forgetting
        extra = ("aum",) + (("forgetting_events",) if min_forgetting is not None else ())
        self.signals = tuple(dict.fromkeys(policy.signals + extra))
        self.needs_num_epochs = policy.needs_num_epochs

    def flagged(self, signals: Mapping[str, Tensor]) -> Tensor:
        """Bool mask of likely-mislabeled examples (unseen examples are never flagged)."""
        flags = signals["aum"] < self.aum_threshold
        if self.min_forgetting is not None:
            flags |= signals["forgetting_events"] >= self.min_forgetting
        return flags

    def validate(self, num_examples: int, num_epochs: int | None) -> None:  # noqa: D102
        self.policy.validate(num_examples, num_epochs)

    def epoch_size(self, num_examples: int, epoch: int, num_epochs: int | None) -> int | None:  # noqa: D102
        return self.policy.epoch_size(num_examples, epoch, num_epochs) if self.mode == "demote" else None

    def plan(self, context: EpochContext) -> Plan:  # noqa: D102
        if "aum" not in context.signals:
            return self.policy.plan(context)
        flags = self.flagged(context.signals)
        if self.mode == "drop":
            plan = self.policy.plan(context)
            keep = ~flags[plan.indices]
            return Plan(plan.indices[keep], plan.weights[keep])
        demoted = dict(context.signals)
        for name in self.policy.signals:
            if name in HARDER_WHEN_HIGHER:
                values = demoted[name].float()
                finite = values[values.isfinite()]
                easiest = (finite.min() if HARDER_WHEN_HIGHER[name] else finite.max()) if finite.numel() else 0.0
                demoted[name] = torch.where(flags, easiest, values)
        return self.policy.plan(
            EpochContext(
                epoch=context.epoch,
                num_examples=context.num_examples,
                generator=context.generator,
                seed=context.seed,
                num_epochs=context.num_epochs,
                signals=demoted,
            )
        )


#: Policies by the names used in configs and ``lightning-curricula compare``.
POLICIES: dict[str, type[Policy]] = {
    "full": FullData,
    "random": RandomSubset,
    "curriculum": Curriculum,
    "self_paced": SelfPaced,
    "static": StaticPruning,
    "infobatch": InfoBatch,
    "bandit": Bandit,
    "importance": ImportanceSampling,
}
