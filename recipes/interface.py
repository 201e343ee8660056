"""`RecipeDataModule`: what every recipe's data module tells the tools that run it, such as ``compare``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import lightning.pytorch as pl

from lightning_curricula import Policy

__all__ = ["MetricKind", "MissingScoresError", "MonitoredMetrics", "RecipeDataModule"]

#: ``"accuracy"``: a fraction in ``[0, 1]``, higher is better, shown in percent; ``"loss"``: lower is better, as is.
MetricKind = Literal["accuracy", "loss"]


class MissingScoresError(ValueError):
    """`RecipeDataModule.bound_policy`: the policy ranks by scores that nothing provides (not the data, not the model).

    Unlike a plain ``ValueError`` from `RecipeDataModule.bound_policy` (scores the model computes only
    when fitting starts), no run can fix this: ``compare`` refuses the policy before any run starts.
    """


@dataclass(frozen=True)
class MonitoredMetrics:
    """What a run is judged by: the validation metric after every epoch and the test metric after training.

    Args:
        metric: the validation metric, logged after every epoch: the curves, the best epoch and the time
            to full data's value use it.
        test_metric: the same measure on the test splits, logged once by ``trainer.test``.
        label: how plots call ``metric`` (``"validation held-out loss"``).
        column: how the summary table's columns call it (``val`` or ``test`` in front).
        kind: ``"accuracy"`` (higher is better) or ``"loss"`` (lower is better: the best epoch is the
            lowest, and a run reaches full data's value at the first epoch at or below it).
        recorded: more per-epoch metrics the records keep.
        extras: final metrics that join the summary table, by column title (a title with ``(%)`` is
            shown in percent).
        note: what the table's footnote says about the evaluation; empty: the recipe's own note.

    Example:
        >>> loss = MonitoredMetrics("val/heldout/loss", "test/heldout/loss", "validation loss", "loss", kind="loss")
        >>> loss.higher_is_better, loss.column
        (False, 'loss')
    """

    metric: str
    test_metric: str
    label: str
    column: str
    kind: MetricKind = "accuracy"
    recorded: tuple[str, ...] = ()
    extras: dict[str, str] = field(default_factory=dict)
    note: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("accuracy", "loss"):
            raise ValueError(f"kind must be 'accuracy' or 'loss', got {self.kind!r}.")

    @property
    def higher_is_better(self) -> bool:
        """Whether a higher ``metric`` is better (an accuracy) or a lower one (a loss)."""
        return self.kind == "accuracy"

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> MonitoredMetrics:
        """The metrics as stored in a result file (``dataclasses.asdict``, through JSON)."""
        return cls(
            **{**stored, "recorded": tuple(stored.get("recorded", ())), "extras": dict(stored.get("extras", {}))}
        )


class RecipeDataModule(pl.LightningDataModule, ABC):
    """A recipe's data module: its split sizes, its policy as the train loader binds it, and the run's final metrics.

    It serves a ``val_dataloader`` (held out of the training data) and a ``test_dataloader`` (evaluated by
    ``trainer.test`` after fitting).

    ``lightning-curricula compare`` reads a run only through these methods, so a new recipe plugs into it
    by subclassing this class (and adding a ``Recipe`` entry to the comparison). A data module whose
    metrics depend on its data (the LLM recipe's: ``val/hard/accuracy`` with a difficulty column,
    ``val/heldout/accuracy`` without, a loss when no answer can be graded) says which in
    `monitored_metrics`; otherwise the ``Recipe``'s are used.
    """

    @abstractmethod
    def split_sizes(self) -> tuple[int, int, int]:
        """Training, validation and test examples, after ``setup("fit")``.

        The validation examples are held out of the training data: per-epoch curves, "best" epochs and
        tuned settings use them; the test examples are evaluated once, after training.
        """

    @abstractmethod
    def bound_policy(self) -> Policy | None:
        """The policy exactly as `train_dataloader` gives it to the sampler.

        Raises:
            MissingScoresError: the policy ranks by scores that neither the data nor the model provides.
            ValueError: the policy needs scores that the model computes only when fitting starts.
        """

    def monitored_metrics(self, *, model: pl.LightningModule | None = None) -> MonitoredMetrics | None:
        """What runs on this data are judged by, after ``setup("fit")``; ``None``: the recipe's fixed metrics.

        Args:
            model: the module that will train on it, when what it logs matters (the LLM recipe grades
                answers only when its model generates them).
        """
        return None

    def final_metrics(self, trainer: pl.Trainer) -> dict[str, float]:
        """The run's last logged scalars (``trainer.callback_metrics``), by name."""
        return {name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1}
