"""The LLM recipe with Rho-1 token selection, and with its training rows read as a stream (tiny model, CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("reasoning_gym")

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from lightning_curricula.recipes.llm.cli import LLMRecipeCLI  # noqa: E402
from lightning_curricula.recipes.llm.data import ensure_pad_token  # noqa: E402
from lightning_curricula.recipes.llm.datamodule import InstructionDataModule  # noqa: E402
from lightning_curricula.recipes.llm.model import TINY, tiny_llama, tiny_tokenizer  # noqa: E402
from lightning_curricula.recipes.llm.module import CausalLMFineTuner  # noqa: E402

from lightning_curricula import OnlineBatchSelection, TrainingDynamics  # noqa: E402
from lightning_curricula.policies import InfoBatch  # noqa: E402

CONFIGS = Path(__file__).parents[2] / "recipes" / "llm" / "configs"
SMALL = ["--model.model", TINY, "--data.train_size", "24", "--data.eval_size", "8", "--data.batch_size", "8"]
SMALL += ["--model.max_new_tokens", "0", "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false"]
SMALL += ["--trainer.enable_model_summary", "false", "--trainer.num_sanity_val_steps", "0"]


class Batches(Callback):
    """The ids each training batch carried, and the token shares the selection kept."""

    def __init__(self) -> None:
        self.ids: list[list[int]] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ids.append(batch["index"].tolist())


def run(tmp_path: Path, config: str, *extra: str, callbacks: list[Callback] | None = None) -> LLMRecipeCLI:
    args = ["--config", str(CONFIGS / f"{config}.yaml"), *SMALL, "--trainer.logger.init_args.save_dir", str(tmp_path)]
    cli = LLMRecipeCLI(args=[*args, *extra], run=False, trainer_defaults={"callbacks": callbacks or []})
    cli.trainer.fit(cli.model, cli.datamodule)
    return cli


@pytest.mark.parametrize("config", ["rho1", "random_tokens"])
def test_token_selection_trains_on_sixty_percent_of_the_response_tokens(tmp_path: Path, config: str) -> None:
    cli = run(tmp_path, config)
    selection = next(c for c in cli.trainer.callbacks if isinstance(c, OnlineBatchSelection))
    metrics = selection.epoch_metrics
    assert metrics["kept_token_share"] == pytest.approx(0.6, abs=0.02)  # rounding per batch
    assert metrics["kept_share"] == 1.0  # every sequence is still trained on; only its tokens are chosen
    assert cli.model.reference is not None  # no LoRA: a frozen copy of the model before fine-tuning
    assert not any(p.requires_grad for p in cli.model.reference.parameters())


def test_rho1_reference_is_the_model_before_fine_tuning(tmp_path: Path) -> None:
    tokenizer = ensure_pad_token(tiny_tokenizer())
    model = tiny_llama(len(tokenizer))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    module = CausalLMFineTuner(model, tokenizer, token_reference="initial", max_new_tokens=0, lr=1e-2)
    data = InstructionDataModule(tokenizer=tokenizer, train_size=16, eval_size=0, batch_size=8)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        callbacks=[OnlineBatchSelection(keep=0.6)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        reload_dataloaders_every_n_epochs=1,
    )
    trainer.fit(module, data)
    assert module.reference is not None
    reference = module.reference.model.state_dict()
    assert all(torch.equal(reference[name], value) for name, value in before.items())
    assert any(not torch.equal(module.model.state_dict()[name], value) for name, value in before.items())


def test_rho1_with_lora_scores_with_the_adapters_off(tmp_path: Path) -> None:
    tokenizer = ensure_pad_token(tiny_tokenizer())
    module = CausalLMFineTuner(tiny_llama(len(tokenizer)), tokenizer, token_reference="initial", lora_rank=4)
    assert module.reference is None  # no copy: the base model is the model without its adapters
    data = InstructionDataModule(tokenizer=tokenizer, train_size=8, eval_size=0, batch_size=8)
    data.setup("fit")
    from lightning_curricula.recipes.llm.data import CausalLMCollator

    batch = CausalLMCollator(tokenizer)([data.train_dataset[i] for i in range(8)])
    for module_ in module.model.modules():  # make the adapters matter: LoRA's B starts at zero
        if hasattr(module_, "lora_B"):
            for layer in module_.lora_B.values():
                torch.nn.init.normal_(layer.weight)
    with torch.no_grad():
        trained, _ = module.token_losses(batch)
        with module.model.disable_adapter():
            base, _ = module.token_losses(batch)
    reference = module.reference_token_losses(batch)
    assert torch.equal(reference, base)
    assert not torch.equal(reference, trained)
    assert module.model.training  # the reference pass leaves the model in train mode


def test_selection_and_reference_must_come_together(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs both an OnlineBatchSelection"):
        run(tmp_path, "full", "--model.token_reference", "initial")


def test_stream_config_reads_every_row_once_per_epoch(tmp_path: Path) -> None:
    batches = Batches()
    cli = run(tmp_path, "stream", callbacks=[batches])
    epochs = [sorted(i for ids in batches.ids[:3] for i in ids), sorted(i for ids in batches.ids[3:] for i in ids)]
    assert epochs == [list(range(24))] * 2
    assert batches.ids[:3] != batches.ids[3:]  # reshuffled each epoch
    dynamics = next(c for c in cli.trainer.callbacks if isinstance(c, TrainingDynamics))
    assert dynamics.num_examples == 24
    assert dynamics.signals()["visits"].tolist() == [2] * 24


@pytest.mark.parametrize("config", ["selective_backprop", "selective_backprop_stale"])
def test_stream_with_sequence_selection_loads_every_row_and_trains_on_half(tmp_path: Path, config: str) -> None:
    batches = Batches()
    cli = run(tmp_path, config, "--data.streaming", "true", callbacks=[batches])
    assert sorted(i for ids in batches.ids for i in ids) == sorted(list(range(24)) * 2)  # no selection before loading
    selection = next(c for c in cli.trainer.callbacks if isinstance(c, OnlineBatchSelection))
    metrics = selection.epoch_metrics
    assert metrics["kept_share"] == 0.5
    stale = config.endswith("stale")
    assert metrics["scored_examples"] == (0 if stale else 24)  # epoch 1 of Stale-SB recalls instead of scoring
    assert metrics.get("recalled_examples", 0) == (24 if stale else 0)


def test_streaming_refuses_an_epoch_policy() -> None:
    tokenizer = ensure_pad_token(tiny_tokenizer())
    with pytest.raises(ValueError, match="an epoch policy cannot choose them; got InfoBatch"):
        InstructionDataModule(tokenizer=tokenizer, streaming=True, policy=InfoBatch())
