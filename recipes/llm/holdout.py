"""RHO-LOSS's irreducible losses for the LLM recipe: holdout models, each scoring the sequences it never saw.

``python -m lightning_curricula.recipes.llm.holdout --config recipes/llm/configs/rho_loss.yaml`` builds the run's
data module from the same options (so the same training rows, with the same ids), splits the training ids in two
halves (seeded), fine-tunes a fresh copy of the run's model on each half (`CausalLMFineTuner` with the run's
options, full data, ``--holdout.epochs`` epochs) and scores the other half with it: each sequence's mean
response-token loss (`sequence_losses`, in eval mode, without gradients), from a model that did not train on it
(Mindermann et al., ICML 2022, train their irreducible-loss model on held-out data; the two halves make every
training example held-out data for one of the models). The file, one loss per training id, is what
``--model.irreducible_losses`` reads. Options after ``--holdout.*`` are the run's (``--data.train_size 128``,
``--model.model ...``): give the holdout command the same data options as the run, or the size check refuses
the file (a file for other rows of the same size is not detected).

The two models cost ``epochs`` full-data epochs of fine-tuning and one forward over the training set: charge
them to RHO-LOSS, and reuse the file across runs with the same data.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning_curricula.recipes.llm.data import CausalLMCollator
from lightning_curricula.recipes.llm.module import CausalLMFineTuner, sequence_losses
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from typing_extensions import override

from lightning_curricula import ReferenceLosses, curriculum_dataloader, irreducible_losses

__all__ = ["DEFAULT_OUTPUT", "holdout_halves", "holdout_sequence_losses", "main"]

#: Where the command writes the losses by default (the path ``rho_loss.yaml`` reads).
DEFAULT_OUTPUT = "runs/llm/irreducible_losses.pt"
#: The run's module options a holdout model does not take: it selects nothing and exports nothing.
_NOT_FOR_HOLDOUT = (
    "irreducible_losses",
    "token_reference",
    "fit_start_scores",
    "score_model",
    "hf_export",
    "export_dir",
    "merge_lora",
    "max_new_tokens",
)


def holdout_halves(size: int, seed: int) -> tuple[list[int], list[int]]:
    """The training ids split in two halves of a seeded random permutation, each sorted.

    Example:
        >>> first, second = holdout_halves(5, seed=0)
        >>> sorted(first + second), len(first), len(second)
        ([0, 1, 2, 3, 4], 3, 2)
    """
    if size < 2:
        raise ValueError(f"Two holdout halves need at least 2 training examples, got {size}.")
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    middle = (size + 1) // 2
    return sorted(order[:middle]), sorted(order[middle:])


class _Rows(pl.LightningDataModule):
    """Some of the training rows, loaded through `curriculum_dataloader` (full data, shuffled per epoch)."""

    def __init__(self, rows: Any, ids: Sequence[int], tokenizer: Any, *, batch_size: int, seed: int) -> None:
        super().__init__()
        self.train_dataset = Subset(rows, list(ids))
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.seed = seed

    @override
    def train_dataloader(self) -> DataLoader[Any]:
        return curriculum_dataloader(
            self.train_dataset,
            self.trainer,
            seed=self.seed,
            batch_size=self.batch_size,
            collate_fn=CausalLMCollator(self.tokenizer),
        )


def _per_sequence_loss(model: torch.nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    assert isinstance(model, CausalLMFineTuner)
    return sequence_losses(*model.token_losses(batch))


def holdout_sequence_losses(
    rows: Any,
    make_module: Any,
    tokenizer: Any,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    trainer_options: Mapping[str, Any] | None = None,
) -> ReferenceLosses:
    """One irreducible loss per training id: two modules, each fine-tuned on one half, score the other half.

    Args:
        rows: the prepared training rows (``InstructionDataModule.train_dataset``; ids are positions).
        make_module: ``() -> CausalLMFineTuner``, a fresh module (the same initial weights each call).
        tokenizer: the tokenizer that collates the rows.
        epochs: epochs of each holdout model.
        batch_size: training and scoring batch size.
        seed: seed of the halves and of each model's data order.
        trainer_options: more ``Trainer`` options (``accelerator``, ``precision``, ...).

    Returns:
        `ReferenceLosses` over ``len(rows)`` ids, every one scored by the model that did not train on it.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs!r}.")
    halves = holdout_halves(len(rows), seed)
    losses = torch.full((len(rows),), float("nan"))
    options = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
        **dict(trainer_options or {}),
        "max_epochs": epochs,
        "devices": 1,
    }
    for number, (trained, scored) in enumerate((halves, halves[::-1])):
        module = make_module()
        pl.Trainer(**options).fit(
            module, datamodule=_Rows(rows, trained, tokenizer, batch_size=batch_size, seed=seed + number)
        )
        reference = irreducible_losses(
            module,
            Subset(rows, scored),
            _per_sequence_loss,
            batch_size=batch_size,
            collate_fn=CausalLMCollator(tokenizer),
        )
        losses[torch.tensor(scored)] = reference.losses
        rank_zero_info(f"Holdout model {number + 1} of 2: trained on {len(trained)} rows, scored {len(scored)}.")
    return ReferenceLosses(losses)


def main(args: Sequence[str] | None = None) -> Path:
    """Entry point of ``python -m lightning_curricula.recipes.llm.holdout``: write the file, return its path."""
    from lightning_curricula.recipes.llm.cli import LLMRecipeCLI

    parser = argparse.ArgumentParser(
        prog="python -m lightning_curricula.recipes.llm.holdout",
        description="Write RHO-LOSS's irreducible losses for the LLM recipe (see the module docstring); other "
        "options are the run's (--config, --data.*, --model.*, --trainer.accelerator, --trainer.precision).",
    )
    parser.add_argument("--holdout.output", dest="output", default=DEFAULT_OUTPUT, help="the file to write")
    parser.add_argument("--holdout.epochs", dest="epochs", type=int, default=2, help="epochs of each holdout model")
    parser.add_argument("--holdout.seed", dest="seed", type=int, default=0, help="seed of the halves")
    known, rest = parser.parse_known_args(args)
    # The run's file does not exist yet: build the run's classes without it.
    cli = LLMRecipeCLI(args=[*rest, "--model.irreducible_losses", "null", "--trainer.logger", "false"], run=False)
    data = cli.datamodule
    data.setup("fit")
    options = set(inspect.signature(CausalLMFineTuner).parameters) - set(_NOT_FOR_HOLDOUT)
    hparams = {key: value for key, value in dict(cli.model.hparams).items() if key in options}
    model, tokenizer = hparams.pop("model"), hparams.pop("tokenizer", None)

    def make_module() -> CausalLMFineTuner:
        return CausalLMFineTuner(model, tokenizer, **hparams, max_new_tokens=0, hf_export=False)

    trainer = cli.config.trainer
    reference = holdout_sequence_losses(
        data.train_dataset,
        make_module,
        data.tokenizer,
        epochs=known.epochs,
        batch_size=data.batch_size,
        seed=known.seed,
        trainer_options={"accelerator": trainer.accelerator, "precision": trainer.precision},
    )
    output = Path(known.output).expanduser()
    output.parent.mkdir(parents=True, exist_ok=True)
    reference.save(output)
    rank_zero_info(f"Wrote {len(reference)} irreducible losses to {output}: pass --model.irreducible_losses {output}.")
    return output


if __name__ == "__main__":
    main()
