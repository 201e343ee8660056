"""`planned_optimizer_steps`: the run's exact optimizer step count, for a learning-rate schedule that ends on time."""

from __future__ import annotations

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from lightning_curricula.policies._sampler import CurriculumSampler

__all__ = ["planned_optimizer_steps"]


def planned_optimizer_steps(trainer: pl.Trainer) -> int:
    """The optimizer steps this rank takes in the whole run, read from the Trainer's train loader.

    Lightning's ``estimated_stepping_batches`` sizes every epoch like the first, so a schedule sized
    from it ends too late under pruning and too early under a growing curriculum. This sums every
    epoch's planned size instead (`CurriculumSampler.planned_steps`), with the loader's
    ``batch_size`` and ``drop_last`` and the Trainer's ``accumulate_grad_batches`` (a short
    accumulation at an epoch's end still steps), capped by ``max_steps``. Call it from
    ``configure_optimizers``: the train loader is not built yet there, and this builds it the way
    ``estimated_stepping_batches`` does (``trainer.fit_loop.setup_data()``); Lightning then reuses
    that loader for the first epoch.

    Args:
        trainer: the fitting ``Trainer``; its train loader comes from `curriculum_dataloader` (or
            holds a `CurriculumSampler` with ``num_epochs=max_epochs``).

    Returns:
        The exact step count (at least 1).

    Raises:
        ValueError: what would make the count wrong: the loader has no `CurriculumSampler` or no
            ``batch_size`` (a custom ``batch_sampler``), its ``num_epochs`` is not ``max_epochs``,
            ``limit_train_batches`` cuts epochs, or the policy sizes its epochs from the scores
            (InfoBatch without ``budget``, self-paced learning): use a schedule stepped per epoch then.

    Examples:
        >>> import lightning.pytorch as pl, torch
        >>> from lightning_curricula import curriculum_dataloader
        >>> class Module(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.layer = torch.nn.Linear(1, 1)
        ...     def train_dataloader(self):
        ...         return curriculum_dataloader([{"x": torch.ones(1)}] * 100, self.trainer, batch_size=32)
        ...     def training_step(self, batch, batch_idx):
        ...         return self.layer(batch["x"]).sum()
        ...     def configure_optimizers(self):
        ...         optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        ...         self.total = planned_optimizer_steps(self.trainer)
        ...         schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=self.total)
        ...         return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
        >>> module = Module()
        >>> trainer = pl.Trainer(max_epochs=3, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
        ...                      enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(module)
        >>> module.total, trainer.global_step  # 3 epochs of ceil(ceil(100 / 32) / 2) steps
        (6, 6)
    """
    if trainer.train_dataloader is None:
        trainer.fit_loop.setup_data()
    loader = trainer.train_dataloader
    sampler = getattr(loader, "sampler", None)
    if not isinstance(loader, DataLoader) or not isinstance(sampler, CurriculumSampler):
        raise ValueError(
            f"planned_optimizer_steps needs a train DataLoader with a CurriculumSampler (from curriculum_dataloader); "
            f"got {type(loader).__name__} with sampler {type(sampler).__name__}."
        )
    if loader.batch_size is None:
        raise ValueError(
            "planned_optimizer_steps needs the train DataLoader's batch_size; this one batches with a custom "
            f"batch_sampler ({type(loader.batch_sampler).__name__})."
        )
    if sampler.num_epochs != trainer.max_epochs:
        raise ValueError(
            f"The sampler plans num_epochs={sampler.num_epochs} but the Trainer runs max_epochs={trainer.max_epochs}: "
            "pass num_epochs=max_epochs to CurriculumSampler (curriculum_dataloader does)."
        )
    if trainer.limit_train_batches != 1.0:
        raise ValueError(
            f"limit_train_batches={trainer.limit_train_batches!r} cuts every epoch, so the planned step count would "
            "be wrong; leave it at 1.0, or size the schedule another way."
        )
    # A loader that selects before loading batches the kept part of each batch of the unselected size.
    preselection = sampler.batch_preselection
    batch_size, drop_last = (
        (loader.batch_size, loader.drop_last)
        if preselection is None
        else (preselection.batch_size, preselection.drop_last)
    )
    steps = sampler.planned_steps(
        batch_size, accumulate_grad_batches=trainer.accumulate_grad_batches, drop_last=drop_last
    )
    if trainer.max_steps > 0:
        steps = min(steps, trainer.max_steps)
    return max(steps, 1)
