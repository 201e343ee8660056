"""LLM recipe with LoRA: the checkpoint holds the adapters only, and resuming from it ends like the uninterrupted run.

The base model is not in the checkpoint: the resumed module builds it again (here from the same tiny
random Llama) and the checkpoint's fingerprint of the base is checked before the adapters load. Crash
at the start of epoch 2, resume from the epoch-1 checkpoint, compare with three straight epochs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import CrashAt, SimulatedCrash, make_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("reasoning_gym")

from lightning_curricula.recipes.llm.data import ensure_pad_token  # noqa: E402
from lightning_curricula.recipes.llm.datamodule import InstructionDataModule  # noqa: E402
from lightning_curricula.recipes.llm.model import tiny_llama, tiny_tokenizer  # noqa: E402
from lightning_curricula.recipes.llm.module import CausalLMFineTuner  # noqa: E402

from lightning_curricula import TrainingDynamics  # noqa: E402
from lightning_curricula.policies import Curriculum  # noqa: E402

EPOCHS = 3


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return ensure_pad_token(tiny_tokenizer())


def run(
    tokenizer: Any, root: Path, *, crash: bool = False, ckpt_path: Path | None = None, seed: int = 0
) -> tuple[Any, ...]:
    with torch.random.fork_rng(devices=[]):  # peft draws LoRA's A matrices from the global RNG
        torch.manual_seed(0)
        model = CausalLMFineTuner(
            tiny_llama(len(tokenizer), seed=seed), tokenizer, lr=1e-2, lora_rank=4, max_new_tokens=0
        )
    data = InstructionDataModule(
        tokenizer=tokenizer,
        train_size=24,
        eval_size=0,
        batch_size=8,
        policy=Curriculum("loss", start=0.5, saturation=1.0, warmup_epochs=1),
    )
    dynamics = TrainingDynamics()
    checkpoints = ModelCheckpoint(dirpath=root, filename="{epoch}", every_n_epochs=1, save_top_k=-1)
    callbacks: list[Callback] = [dynamics, checkpoints, *([CrashAt(2)] if crash else [])]
    trainer = make_trainer(
        root, max_epochs=EPOCHS, callbacks=callbacks, enable_checkpointing=True, reload_dataloaders_every_n_epochs=1
    )
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return model, dynamics, trainer


def test_lora_checkpoint_has_no_base_and_resumes_exactly(tokenizer: Any, tmp_path: Path) -> None:
    straight, straight_dynamics, straight_trainer = run(tokenizer, tmp_path / "straight")
    with pytest.raises(SimulatedCrash):
        run(tokenizer, tmp_path / "crashed", crash=True)
    checkpoint = torch.load(tmp_path / "crashed" / "epoch=1.ckpt", weights_only=True)
    assert checkpoint["state_dict"]
    assert all("lora_" in key for key in checkpoint["state_dict"])
    resumed, resumed_dynamics, resumed_trainer = run(
        tokenizer, tmp_path / "crashed", ckpt_path=tmp_path / "crashed" / "epoch=1.ckpt"
    )
    assert resumed_trainer.global_step == straight_trainer.global_step
    for key, value in straight_dynamics.signals().items():
        assert torch.equal(resumed_dynamics.signals()[key].nan_to_num(-1.0), value.nan_to_num(-1.0)), key
    for (name, expected), (_, actual) in zip(straight.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.equal(actual, expected), name
    assert any("lora_B" in name and p.abs().sum() > 0 for name, p in resumed.named_parameters())  # it trained
    straight_lr = straight_trainer.optimizers[0].param_groups[0]["lr"]
    assert resumed_trainer.optimizers[0].param_groups[0]["lr"] == straight_lr


def test_resuming_on_another_base_is_refused(tokenizer: Any, tmp_path: Path) -> None:
    with pytest.raises(SimulatedCrash):
        run(tokenizer, tmp_path, crash=True)
    with pytest.raises(ValueError, match="does not match"):
        run(tokenizer, tmp_path, ckpt_path=tmp_path / "epoch=1.ckpt", seed=1)
