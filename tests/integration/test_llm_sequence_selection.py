"""The LLM recipe selecting sequences inside the step: Selective Backprop, Stale-SB, RHO-LOSS, the random twin.

A tiny random Llama on CPU. Where a test checks what was kept, the reference losses are computed on the step's own
batch, with the same model state and the same batch shape as the step's scoring forward (a callback's
``on_train_batch_start`` runs just before the step), so they are compared exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("reasoning_gym")

import lightning.pytorch as pl  # noqa: E402
from helpers import make_trainer  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from lightning_curricula.recipes.llm import datamodule as datamodule_module  # noqa: E402
from lightning_curricula.recipes.llm.cli import LLMRecipeCLI  # noqa: E402
from lightning_curricula.recipes.llm.data import IGNORE_INDEX, CausalLMCollator, ensure_pad_token  # noqa: E402
from lightning_curricula.recipes.llm.datamodule import InstructionDataModule  # noqa: E402
from lightning_curricula.recipes.llm.holdout import main as holdout_main  # noqa: E402
from lightning_curricula.recipes.llm.model import TINY, tiny_llama, tiny_tokenizer  # noqa: E402
from lightning_curricula.recipes.llm.module import CausalLMFineTuner, sequence_losses  # noqa: E402
from online_helpers import RecordingLogger  # noqa: E402

from lightning_curricula import OnlineBatchSelection, ReferenceLosses, TrainingDynamics  # noqa: E402
from lightning_curricula.step.selection import kept_count, reducible_loss  # noqa: E402

CONFIGS = Path(__file__).parents[2] / "recipes" / "llm" / "configs"
TRAIN_SIZE = 24
BATCH = 8
SMALL = ["--model.model", TINY, "--data.train_size", str(TRAIN_SIZE), "--data.eval_size", "0"]
SMALL += ["--data.batch_size", str(BATCH), "--model.max_new_tokens", "0", "--trainer.enable_progress_bar", "false"]
SMALL += ["--trainer.enable_model_summary", "false", "--trainer.num_sanity_val_steps", "0"]
SMALL += ["--model.hf_export", "false", "--trainer.enable_checkpointing", "false"]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return ensure_pad_token(tiny_tokenizer())


class Steps(Callback):
    """Per step: the ids loaded, the ids trained on (and their loss tokens), the full batch's eval-mode losses."""

    def __init__(self) -> None:
        self.loaded: list[list[int]] = []
        self.trained: list[list[int]] = []
        self.loss_tokens: list[int] = []
        self.losses: list[torch.Tensor] = []  # the whole loaded batch's sequence losses, scored like the step does
        self.epochs: list[int] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.loaded.append(batch["index"].tolist())
        self.epochs.append(trainer.current_epoch)
        pl_module.model.eval()
        with torch.no_grad():
            self.losses.append(sequence_losses(*pl_module.token_losses(batch)))
        pl_module.model.train()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.trained.append(outputs["index"].tolist())
        self.loss_tokens.append(int(outputs["loss_tokens"]))


def cli_run(tmp_path: Path, config: str, *extra: str, epochs: int = 2, callbacks: list[Callback] | None = None) -> Any:
    args = ["--config", str(CONFIGS / f"{config}.yaml"), *SMALL, "--trainer.max_epochs", str(epochs)]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path), *extra]
    cli = LLMRecipeCLI(args=args, run=False, trainer_defaults={"callbacks": callbacks or []})
    cli.trainer.fit(cli.model, cli.datamodule)
    return cli


def selection_of(trainer: pl.Trainer) -> OnlineBatchSelection:
    return next(c for c in trainer.callbacks if isinstance(c, OnlineBatchSelection))  # type: ignore[attr-defined]


def fit(
    tokenizer: Any,
    selection: OnlineBatchSelection,
    *callbacks: Callback,
    epochs: int = 1,
    train_size: int = TRAIN_SIZE,
    **module_options: Any,
) -> CausalLMFineTuner:
    module = CausalLMFineTuner(tiny_llama(len(tokenizer)), tokenizer, lr=1e-2, max_new_tokens=0, **module_options)
    data = InstructionDataModule(tokenizer=tokenizer, train_size=train_size, eval_size=0, batch_size=BATCH)
    trainer = make_trainer(max_epochs=epochs, callbacks=[selection, *callbacks], reload_dataloaders_every_n_epochs=1)
    trainer.fit(module, datamodule=data)
    return module


def top_ids(scores: torch.Tensor, ids: list[int], keep: float) -> list[int]:
    """The ids of the ``round(keep * n)`` highest scores, in batch order (the scores here have no ties)."""
    order = torch.sort(scores, descending=True, stable=True).indices[: kept_count(scores.numel(), keep)]
    return [ids[i] for i in sorted(order.tolist())]


def test_selective_backprop_keeps_the_highest_loss_sequences_and_trains_on_them(tokenizer: Any) -> None:
    steps = Steps()
    scored: list[torch.Tensor] = []
    selection = OnlineBatchSelection(keep=0.5, method="top_k")
    original = selection.select

    def spy(scores: torch.Tensor, **kwargs: Any) -> Any:
        scored.append(scores.clone())
        return original(scores, **kwargs)

    selection.select = spy  # type: ignore[method-assign]
    fit(tokenizer, selection, steps, epochs=2)
    assert len(steps.trained) == 2 * TRAIN_SIZE // BATCH
    for losses, scores, loaded, trained in zip(steps.losses, scored, steps.loaded, steps.trained, strict=True):
        assert torch.equal(scores, losses)  # the scoring forward: eval mode, no gradients, the whole batch
        assert len(losses.unique()) == losses.numel()  # no ties: the top half is one set
        assert trained == top_ids(losses, loaded, 0.5)
    metrics = selection.epoch_metrics
    assert metrics["kept_share"] == 0.5
    assert metrics["scoring_forwards"] == 2 * TRAIN_SIZE  # every sequence scored, in both epochs
    assert metrics["backward_passes"] == metrics["forward_only_passes"] == TRAIN_SIZE


def test_the_step_trains_on_the_kept_rows_loss_tokens_only(tokenizer: Any) -> None:
    steps = Steps()
    data = InstructionDataModule(tokenizer=tokenizer, train_size=TRAIN_SIZE, eval_size=0, batch_size=BATCH)
    data.setup("fit")
    assert data.train_dataset is not None
    labels = data.train_dataset["labels"]
    module = fit(tokenizer, OnlineBatchSelection(keep=0.5, method="percentile", beta=2.0), steps, TrainingDynamics())
    for trained, tokens in zip(steps.trained, steps.loss_tokens, strict=True):
        assert len(trained) == BATCH // 2
        assert tokens == sum(sum(label != IGNORE_INDEX for label in labels[i][1:]) for i in trained)
    dynamics = next(c for c in module.trainer.callbacks if isinstance(c, TrainingDynamics))  # type: ignore[attr-defined]
    visits = dynamics.signals()["visits"]
    expected = torch.bincount(torch.tensor([i for ids in steps.trained for i in ids]), minlength=TRAIN_SIZE)
    assert torch.equal(visits.long(), expected)  # the tracker sees the kept sequences only
    assert module.tokens_seen == sum(len(data.train_dataset[i]["input_ids"]) for ids in steps.trained for i in ids)
    assert module.scoring_tokens_seen == sum(len(row) for row in data.train_dataset["input_ids"])


@pytest.mark.parametrize("config", ["selective_backprop", "random_sequences"])
def test_configs_and_the_random_twin_keep_half_of_each_batch(tmp_path: Path, config: str) -> None:
    steps = Steps()
    cli = cli_run(tmp_path, config, callbacks=[steps])
    assert [len(ids) for ids in steps.trained] == [kept_count(BATCH, 0.5)] * (2 * TRAIN_SIZE // BATCH)
    assert all(set(trained) <= set(loaded) for trained, loaded in zip(steps.trained, steps.loaded, strict=True))
    selection = selection_of(cli.trainer)
    assert selection.method == ("random" if config == "random_sequences" else "percentile")
    assert selection.epoch_metrics["scoring_forwards"] == 2 * TRAIN_SIZE  # the twin pays the same scoring forward


@pytest.mark.parametrize("config", ["selective_backprop_stale", "random_sequences_stale"])
def test_stale_sb_skips_the_scoring_forward_and_collates_only_the_kept_rows(
    tmp_path: Path, config: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    collated: list[list[int]] = []

    class CountingCollator(CausalLMCollator):
        def __call__(self, rows: Any) -> dict[str, Any]:
            if not self.generation:
                collated.append([row["index"] for row in rows])
            return super().__call__(rows)

    monkeypatch.setattr(datamodule_module, "CausalLMCollator", CountingCollator)
    steps = Steps()
    cli = cli_run(tmp_path / "before_loading", config, epochs=3, callbacks=[steps])
    per_epoch = TRAIN_SIZE // BATCH
    kept = kept_count(BATCH, 0.5)
    assert [len(ids) for ids in steps.loaded] == [BATCH] * per_epoch + [kept] * per_epoch + [BATCH] * per_epoch
    assert collated == steps.loaded  # epoch 1 (stale) collated the kept rows only: the others never were
    assert steps.trained[per_epoch : 2 * per_epoch] == steps.loaded[per_epoch : 2 * per_epoch]
    metrics = selection_of(cli.trainer).epoch_metrics
    assert metrics["scoring_forwards"] == 2 * TRAIN_SIZE  # epochs 0 and 2 scored; epoch 1 did not
    assert metrics["backward_passes"] == 3 * TRAIN_SIZE // 2
    assert cli.model.scoring_tokens_seen == 2 * sum(len(row) for row in cli.datamodule.train_dataset["input_ids"])

    # The same run selecting in the step: the same rows trained on, to the same weights bit for bit.
    collated.clear()
    in_step = Steps()
    option = "--trainer.callbacks.init_args.select_before_loading"
    again = cli_run(tmp_path / "in_step", config, option, "false", epochs=3, callbacks=[in_step])
    assert [len(ids) for ids in in_step.loaded] == [BATCH] * 3 * per_epoch
    assert in_step.trained == steps.trained
    for name, value in cli.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[name]), name


def test_stale_epochs_run_no_scoring_forward(tmp_path: Path) -> None:
    args = ["--config", str(CONFIGS / "selective_backprop_stale.yaml"), *SMALL, "--trainer.max_epochs", "3"]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path)]
    cli = LLMRecipeCLI(args=args, run=False)
    module = cli.model
    scoring: list[int] = []

    def count(model: Any, args: Any, kwargs: Any) -> None:
        if not model.training and not module.trainer.validating:
            scoring.append(module.current_epoch)

    module.model.register_forward_pre_hook(count, with_kwargs=True)
    cli.trainer.fit(module, cli.datamodule)
    per_epoch = TRAIN_SIZE // BATCH
    assert scoring == [0] * per_epoch + [2] * per_epoch


def test_rho_loss_keeps_the_top_reducible_losses(tokenizer: Any, tmp_path: Path) -> None:
    irreducible = torch.rand(TRAIN_SIZE, generator=torch.Generator().manual_seed(3)) * 4
    path = tmp_path / "irreducible.pt"
    ReferenceLosses(irreducible).save(path)
    steps = Steps()
    scored: list[torch.Tensor] = []
    selection = OnlineBatchSelection(keep=0.25, method="top_k")
    original = selection.select

    def spy(scores: torch.Tensor, **kwargs: Any) -> Any:
        scored.append(scores.clone())
        return original(scores, **kwargs)

    selection.select = spy  # type: ignore[method-assign]
    module = fit(tokenizer, selection, steps, irreducible_losses=str(path))
    assert module.irreducible is not None
    assert torch.equal(module.irreducible.losses, irreducible)
    for losses, scores, loaded, trained in zip(steps.losses, scored, steps.loaded, steps.trained, strict=True):
        reducible = reducible_loss(losses, irreducible[torch.tensor(loaded)])
        assert torch.equal(scores, reducible)
        assert trained == top_ids(reducible, loaded, 0.25)
    by_loss = [top_ids(losses, loaded, 0.25) for losses, loaded in zip(steps.losses, steps.loaded, strict=True)]
    assert by_loss != steps.trained  # the reference changed the choice somewhere


def test_rho_loss_refuses_a_reference_of_the_wrong_size(tokenizer: Any, tmp_path: Path) -> None:
    path = tmp_path / "irreducible.pt"
    ReferenceLosses(torch.zeros(TRAIN_SIZE - 1)).save(path)
    with pytest.raises(ValueError, match="23 losses but the training dataset has 24 examples"):
        fit(tokenizer, OnlineBatchSelection(keep=0.5), irreducible_losses=str(path))


def test_rho_loss_without_a_reference_for_a_whole_batch_trains_on_nothing(tokenizer: Any, tmp_path: Path) -> None:
    path = tmp_path / "irreducible.pt"
    ReferenceLosses(torch.full((TRAIN_SIZE,), float("nan"))).save(path)  # every score NaN: nothing is kept
    model = tiny_llama(len(tokenizer))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    module = CausalLMFineTuner(model, tokenizer, lr=1e-2, max_new_tokens=0, irreducible_losses=str(path))
    data = InstructionDataModule(tokenizer=tokenizer, train_size=TRAIN_SIZE, eval_size=0, batch_size=BATCH)
    dynamics = TrainingDynamics()
    selection = OnlineBatchSelection(keep=0.5)
    make_trainer(max_epochs=1, callbacks=[selection, dynamics]).fit(module, datamodule=data)
    assert selection.epoch_metrics["kept_examples"] == 0
    assert int(dynamics.signals()["visits"].sum()) == 0
    for name, value in module.model.state_dict().items():  # zero gradients, no weight decay: AdamW moves nothing
        assert torch.equal(value, before[name]), name


def test_bad_selection_settings_fail_at_setup(tokenizer: Any, tmp_path: Path) -> None:
    path = tmp_path / "irreducible.pt"
    ReferenceLosses(torch.zeros(TRAIN_SIZE)).save(path)
    module = CausalLMFineTuner(tiny_llama(len(tokenizer)), tokenizer, irreducible_losses=str(path))
    data = InstructionDataModule(tokenizer=tokenizer, train_size=8, eval_size=0, batch_size=BATCH)
    with pytest.raises(ValueError, match="has none: add one to trainer.callbacks"):
        make_trainer(max_epochs=1).fit(module, datamodule=data)
    with pytest.raises(ValueError, match="is not a file: write it first"):
        fit(tokenizer, OnlineBatchSelection(keep=0.5), irreducible_losses=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="an OnlineBatchSelection does one of them"):
        CausalLMFineTuner(
            tiny_llama(len(tokenizer)), tokenizer, irreducible_losses=str(path), token_reference="initial"
        )
    with pytest.raises(ValueError, match="takes method in \\('top_k', 'random'\\); the OnlineBatchSelection has"):
        fit(tokenizer, OnlineBatchSelection(keep=0.5, method="percentile"), token_reference="initial")
    with pytest.raises(ValueError, match="rescore_every=2 remembers one score per sequence"):
        fit(tokenizer, OnlineBatchSelection(keep=0.5, rescore_every=2), token_reference="initial")


def test_tokens_per_second_is_logged_per_step_and_per_epoch(tokenizer: Any) -> None:
    logger = RecordingLogger()
    module = CausalLMFineTuner(tiny_llama(len(tokenizer)), tokenizer, lr=1e-2, max_new_tokens=0, hf_export=False)
    data = InstructionDataModule(tokenizer=tokenizer, train_size=TRAIN_SIZE, eval_size=0, batch_size=BATCH)
    trainer = make_trainer(max_epochs=2, logger=logger, log_every_n_steps=1, reload_dataloaders_every_n_epochs=1)
    trainer.fit(module, datamodule=data)
    steps = [m["train/tokens_per_second_step"] for _, m in logger.records if "train/tokens_per_second_step" in m]
    epochs = [m["train/tokens_per_second_epoch"] for _, m in logger.records if "train/tokens_per_second_epoch" in m]
    assert len(steps) == 2 * TRAIN_SIZE // BATCH
    assert len(epochs) == 2
    assert all(value > 0 for value in steps + epochs)
    assert float(trainer.callback_metrics["train/tokens_per_second"]) == epochs[-1]


def test_holdout_command_writes_losses_that_rho_loss_reads(tmp_path: Path) -> None:
    output = tmp_path / "irreducible.pt"
    data = ["--config", str(CONFIGS / "rho_loss.yaml"), "--model.model", TINY, "--data.train_size", str(TRAIN_SIZE)]
    data += ["--data.eval_size", "0", "--data.batch_size", str(BATCH)]
    written = holdout_main([*data, "--holdout.output", str(output), "--holdout.epochs", "1"])
    assert written == output
    reference = ReferenceLosses.load(output)
    assert len(reference) == TRAIN_SIZE
    assert bool(reference.losses.isfinite().all())
    steps = Steps()
    cli = cli_run(tmp_path / "run", "rho_loss", "--model.irreducible_losses", str(output), callbacks=[steps])
    assert cli.model.irreducible is not None
    assert torch.equal(cli.model.irreducible.losses, reference.losses)
    assert [len(ids) for ids in steps.trained] == [BATCH // 2] * (2 * TRAIN_SIZE // BATCH)


def test_packed_selective_backprop_keeps_and_trains_what_the_padded_one_does(tmp_path: Path) -> None:
    runs = []
    for packing in ("false", "true"):
        steps = Steps()
        cli_run(tmp_path / packing, "selective_backprop", "--data.packing", packing, callbacks=[steps])
        runs.append(steps)
    padded, packed = runs
    assert packed.trained == padded.trained  # the kept rows are packed anew, scored alike
    assert packed.loss_tokens == padded.loss_tokens
    for packed_losses, padded_losses in zip(packed.losses, padded.losses, strict=True):
        torch.testing.assert_close(packed_losses, padded_losses, rtol=1e-3, atol=1e-4)
