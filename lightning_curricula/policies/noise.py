"""Noise-aware selection: keep likely-mislabeled examples from counting as hard."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor

from lightning_curricula.policies._base import EpochContext, Plan, Policy, PolicyWrapper, ShardedPlan
from lightning_curricula.tracking.ranking import HARDER_WHEN_HIGHER

__all__ = ["NoiseAware"]


class NoiseAware(PolicyWrapper):
    """Keep likely-mislabeled examples from being treated as merely "hard".

    An example is flagged when its area under the margin is below ``aum_threshold`` (Pleiss et al.
    2020), or, with ``min_forgetting``, when it was forgotten at least that often (Toneva et al.
    2019). ``mode="demote"`` gives flagged examples the easiest observed score before ``policy``
    ranks them (they are never up-weighted as hard); ``mode="drop"`` removes them from the plan.

    Examples:
        >>> signals = {"aum": torch.tensor([2.0, -1.0, 0.5]), "el2n": torch.tensor([0.1, 1.3, 0.9])}
        >>> from lightning_curricula.policies import StaticPruning
        >>> policy = NoiseAware(StaticPruning("el2n", keep=0.34, score_epochs=1), mode="demote")
        >>> context = EpochContext(epoch=1, num_examples=3, generator=torch.Generator(), signals=signals)
        >>> policy.plan(context).indices.tolist()
        [2]

    Note:
        **DDP and resume**: the flags come from the synced signals, so every rank flags the same
        examples; the wrapped policy's state is this policy's state. A ``training_step`` without
        ``logits`` and ``targets`` gives no ``aum``: the sampler then fails at the first plan after
        the first tracked epoch, rather than let this policy flag nothing.
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
        super().__init__(policy)
        self.mode = mode
        self.aum_threshold = aum_threshold
        self.min_forgetting = min_forgetting
        extra = ("aum",) + (("forgetting_events",) if min_forgetting is not None else ())
        self.signals = tuple(dict.fromkeys(policy.signals + extra))
        self.varies_length = mode == "drop" or policy.varies_length  # dropping flagged examples changes the size
        self.plans_from_shards = False  # the flags and the demoted scores read the whole table

    def flagged(self, signals: Mapping[str, Tensor]) -> Tensor:
        """Bool mask of likely-mislabeled examples (unseen examples are never flagged).

        `CurriculumSampler` checks that the tracker produces ``aum`` (and ``forgetting_events``) before
        it plans, so a loss-only ``training_step`` fails at once rather than flag nothing.
        """
        for name in self.signals:
            if name not in signals:
                raise ValueError(f"NoiseAware needs the tracked signal {name!r}; the signals are {sorted(signals)}.")
        flags = signals["aum"] < self.aum_threshold
        if self.min_forgetting is not None:
            flags |= signals["forgetting_events"] >= self.min_forgetting
        return flags

    def epoch_size(self, num_examples: int, epoch: int, num_epochs: int | None) -> int | None:  # noqa: D102
        return self.policy.epoch_size(num_examples, epoch, num_epochs) if self.mode == "demote" else None

    def plan(self, context: EpochContext) -> Plan | ShardedPlan:  # noqa: D102
        if not context.tracked:  # before the first tracked epoch (the inner policy's warm-up)
            return self.policy.plan(context)
        flags = self.flagged(context.signals)
        if self.mode == "drop":
            plan = self.policy.plan(context)
            assert isinstance(plan, Plan), "NoiseAware does not plan from sharded tables"  # plans_from_shards is False
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
