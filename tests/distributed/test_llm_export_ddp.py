"""LLM recipe with LoRA under DDP (two CPU processes, gloo, ``ddp_spawn``): the checkpoint and the Hugging Face folders.

Rank 0 alone writes ``hf_adapter/`` and the merged ``hf_model/`` when fitting ends, and every rank waits
for it; the epoch-end checkpoint holds the adapters only. The adapters loaded on the base give the
logits of the module rebuilt from the checkpoint, and the merged model gives the same.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("reasoning_gym")

from lightning_curricula.recipes.llm.datamodule import InstructionDataModule  # noqa: E402
from lightning_curricula.recipes.llm.export import HF_ADAPTER, HF_MODEL, load_fine_tuner  # noqa: E402
from lightning_curricula.recipes.llm.model import tiny_llama, tiny_tokenizer  # noqa: E402
from lightning_curricula.recipes.llm.module import CausalLMFineTuner  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

WORLD_SIZE = 2


class ReportingFineTuner(CausalLMFineTuner):
    """Each rank writes, once the export hook has returned, whether the exported folders were there."""

    def on_fit_end(self) -> None:
        super().on_fit_end()
        seen = (Path(str(self.export_dir)) / HF_ADAPTER / "adapter_model.safetensors").is_file()
        (Path(str(self.export_dir)).parent / f"rank{self.global_rank}.seen").write_text(str(seen))


@pytest.mark.slow
def test_rank_zero_exports_and_the_checkpoint_holds_the_adapters_only(tmp_path: Path) -> None:
    base = tmp_path / "base"
    tokenizer = tiny_tokenizer()
    tiny_llama(len(tokenizer)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    module = ReportingFineTuner(
        str(base), lr=1e-2, lora_rank=4, max_new_tokens=0, merge_lora=True, export_dir=str(tmp_path / "export")
    )
    data = InstructionDataModule(tokenizer=module.tokenizer, train_size=16, eval_size=0, batch_size=4)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="last")
    trainer = make_trainer(
        tmp_path,
        max_epochs=2,
        callbacks=[checkpoints],
        enable_checkpointing=True,
        strategy="ddp_spawn",
        devices=WORLD_SIZE,
    )
    trainer.fit(module, datamodule=data)
    assert [(tmp_path / f"rank{rank}.seen").read_text() for rank in range(WORLD_SIZE)] == ["True"] * WORLD_SIZE

    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["state_dict"]
    assert all("lora_" in key for key in checkpoint["state_dict"])
    restored = load_fine_tuner(tmp_path / "checkpoints" / "last.ckpt").eval()
    encoded = restored.tokenizer(["Calculate 12 + 7 = 19.", "Add 3, 4."], padding=True, return_tensors="pt")
    inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    with torch.no_grad():
        expected = restored.model(**inputs).logits
        base_model = AutoModelForCausalLM.from_pretrained(base)
        adapter = PeftModel.from_pretrained(base_model, tmp_path / "export" / HF_ADAPTER)
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "export" / HF_MODEL)
        torch.testing.assert_close(adapter.eval()(**inputs).logits, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(merged.eval()(**inputs).logits, expected, atol=1e-5, rtol=1e-5)
        base_logits = AutoModelForCausalLM.from_pretrained(base).eval()(**inputs).logits
    assert not torch.allclose(base_logits, expected)  # the adapters trained: an export of the base would fail
