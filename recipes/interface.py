"""`RecipeDataModule`: what every recipe's data module tells the tools that run it, such as ``compare``."""

from __future__ import annotations

from abc import ABC, abstractmethod

import lightning.pytorch as pl

from lightning_curricula import Policy

__all__ = ["RecipeDataModule"]


class RecipeDataModule(pl.LightningDataModule, ABC):
    """A recipe's data module: its split sizes, its policy as the train loader binds it, and the run's final metrics.

    It serves a ``val_dataloader`` (held out of the training data) and a ``test_dataloader`` (evaluated by
    ``trainer.test`` after fitting).

    ``lightning-curricula compare`` reads a run only through these three methods, so a new recipe
    plugs into it by subclassing this class (and adding a ``Recipe`` entry to the comparison).
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
            ValueError: the policy needs scores that the model computes only when fitting starts.
        """

    def final_metrics(self, trainer: pl.Trainer) -> dict[str, float]:
        """The run's last logged scalars (``trainer.callback_metrics``), by name."""
        return {name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1}
