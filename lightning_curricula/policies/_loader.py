"""`curriculum_dataloader`: the train ``DataLoader`` for a curriculum, wired to the ``Trainer``."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from lightning_curricula.data._with_index import WithIndex
from lightning_curricula.policies._base import Policy
from lightning_curricula.policies._sampler import CurriculumSampler, Preselection
from lightning_curricula.policies.baselines import FullData
from lightning_curricula.tracking._dynamics import find_dynamics

__all__ = ["BatchPreselector", "curriculum_dataloader"]


@runtime_checkable
class BatchPreselector(Protocol):
    """A callback that may select the train loader's batches before loading them (`OnlineBatchSelection`).

    `curriculum_dataloader` asks it for each epoch's `Preselection`; the step stage implements it, so
    the loader needs no import of that stage.
    """

    name: str

    @property
    def selects_before_loading(self) -> bool:
        """Whether it would select some epochs' batches before loading them."""

    def batch_preselection(
        self, epoch: int, num_examples: int, batch_size: int, *, drop_last: bool = False
    ) -> Preselection | None:
        """What the loader of ``epoch`` selects before loading, or ``None`` (the step selects)."""


def curriculum_dataloader(
    dataset: Any,
    trainer: pl.Trainer,
    policy: Policy | None = None,
    *,
    seed: int = 0,
    dynamics_name: str | None = None,
    drop_last_plan: bool = False,
    **dataloader_kwargs: Any,
) -> DataLoader[Any]:
    """Build the train ``DataLoader`` of a curriculum: `WithIndex`, a `CurriculumSampler`, the Trainer's tracker.

    Call it from ``train_dataloader()``. It uses ``trainer.max_epochs`` as the run length and the
    `TrainingDynamics` among ``trainer.callbacks``, and checks at setup what would otherwise break
    silently later: a policy whose epoch length changes needs
    ``Trainer(reload_dataloaders_every_n_epochs=1)`` so Lightning re-reads the length each epoch.

    With an `OnlineBatchSelection` that remembers scores (``rescore_every != 1``) on the Trainer, the
    loader of an epoch between its scoring epochs selects each batch before loading it (see
    `OnlineBatchSelection.batch_preselection`): it loads only the kept examples, in batches of
    ``round(keep * batch_size)``, one batch per batch of ``batch_size`` it would have made. This needs the
    loader re-created each epoch too.

    Args:
        dataset: the training dataset; wrapped in `WithIndex` unless it already is.
        trainer: the running ``Trainer`` (``self.trainer`` in a module or data module).
        policy: what to plan; `FullData` by default.
        seed: the plan's seed, the same on every rank.
        dynamics_name: which tracker, when the Trainer has several.
        drop_last_plan: trim rather than pad a plan that does not divide among the ranks.
        **dataloader_kwargs: passed to ``DataLoader`` (``batch_size``, ``num_workers``, ...).

    Raises:
        ValueError: the policy needs a tracker the Trainer lacks, the reload setting is missing, the
            Trainer has several `OnlineBatchSelection` that would select before loading, or
            ``dataloader_kwargs`` holds ``sampler``, ``shuffle`` or ``batch_sampler``.
    """
    for key in ("sampler", "shuffle", "batch_sampler"):
        if key in dataloader_kwargs:
            raise ValueError(f"curriculum_dataloader sets the sampler itself; remove {key}= from its arguments.")
    policy = FullData() if policy is None else policy
    reload_every = getattr(trainer, "reload_dataloaders_every_n_epochs", 0)
    if policy.varies_length and reload_every != 1:
        raise ValueError(
            f"{type(policy).__name__} changes the epoch length; set Trainer(reload_dataloaders_every_n_epochs=1) "
            f"(it is {reload_every}) so each epoch is sized from its plan."
        )
    indexed = dataset if isinstance(dataset, WithIndex) else WithIndex(dataset)
    num_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
    preselection = _batch_preselection(trainer, len(indexed), reload_every, dataloader_kwargs)
    if preselection is not None:  # batches of the kept examples: one per batch the loader would have made
        dataloader_kwargs = {**dataloader_kwargs, "batch_size": preselection.kept_per_batch, "drop_last": False}
    sampler = CurriculumSampler(
        indexed,
        policy,
        dynamics=find_dynamics(trainer, dynamics_name),
        num_epochs=num_epochs,
        seed=seed,
        num_replicas=trainer.world_size,
        rank=trainer.global_rank,
        drop_last=drop_last_plan,
        batch_preselection=preselection,
    )
    return DataLoader(indexed, sampler=sampler, **dataloader_kwargs)


def _batch_preselection(
    trainer: pl.Trainer, num_examples: int, reload_every: int, dataloader_kwargs: dict[str, Any]
) -> Preselection | None:
    """What the Trainer's `OnlineBatchSelection` selects before loading this epoch, if anything."""
    found = [
        callback
        for callback in trainer.callbacks  # type: ignore[attr-defined]
        if isinstance(callback, BatchPreselector) and callback.selects_before_loading
    ]
    if not found:
        return None
    if len(found) > 1:
        raise ValueError(
            f"{len(found)} {type(found[0]).__name__} callbacks ({[c.name for c in found]}) would select the loader's "
            "batches before loading; keep one, or set select_before_loading=False on the others."
        )
    if reload_every != 1:
        raise ValueError(
            f"{type(found[0]).__name__}(name={found[0].name!r}) selects the batches of the epochs between "
            "scoring epochs before loading, so the loader changes from epoch to epoch: set "
            f"Trainer(reload_dataloaders_every_n_epochs=1) (it is {reload_every}), or select_before_loading=False."
        )
    batch_size = dataloader_kwargs.get("batch_size", 1)
    drop_last = bool(dataloader_kwargs.get("drop_last", False))
    return found[0].batch_preselection(trainer.current_epoch, num_examples, batch_size, drop_last=drop_last)
