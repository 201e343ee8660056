"""Hugging Face out: the LLM recipe's ``hf_model/`` and ``hf_adapter/`` folders, at fit end and from a checkpoint.

A tiny random Llama saved with ``save_pretrained`` into a temporary folder is the base, so the module is
built from a path (as from a hub name) and the adapters' ``base_model_name_or_path`` is loadable.
Each exported folder must load with ``transformers`` / ``peft`` and give the module's logits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("reasoning_gym")

import lightning.pytorch as pl  # noqa: E402
from helpers import ClassificationDataset, Classifier, make_trainer, train_loader  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from lightning_curricula.recipes.compare import main  # noqa: E402
from lightning_curricula.recipes.llm.datamodule import InstructionDataModule  # noqa: E402
from lightning_curricula.recipes.llm.export import HF_ADAPTER, HF_MODEL, export_checkpoint, load_fine_tuner  # noqa: E402
from lightning_curricula.recipes.llm.model import load_tokenizer, tiny_llama  # noqa: E402
from lightning_curricula.recipes.llm.module import CausalLMFineTuner  # noqa: E402
from peft import AutoPeftModelForCausalLM, PeftModel  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

TEXTS = ["Calculate 12 + 7 * 3 = 33.", "Question: what is the answer? Answer: 42.", "Add 3, 4."]
FP32 = {"atol": 1e-5, "rtol": 1e-5}


def save_base(folder: Path, *, seed: int = 0) -> Path:
    """A tiny random Llama and its tokenizer, saved like a hub model."""
    from lightning_curricula.recipes.llm.model import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tiny_llama(len(tokenizer), seed=seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_base(tmp_path_factory.mktemp("tiny_base"))


def fine_tuner(model: Any, **options: Any) -> CausalLMFineTuner:
    tokenizer = None if isinstance(model, str) else load_tokenizer(str(options.pop("base")))
    return CausalLMFineTuner(model, tokenizer, lr=1e-2, max_new_tokens=0, **options)


def fit(module: CausalLMFineTuner, root: Path, *, logger: bool = True, checkpoint: bool = False) -> pl.Trainer:
    callbacks = [ModelCheckpoint(dirpath=root / "checkpoints", filename="last")] if checkpoint else []
    trainer = make_trainer(
        root,
        max_epochs=2,
        callbacks=callbacks,
        enable_checkpointing=checkpoint,
        logger=TensorBoardLogger(str(root), name="llm") if logger else False,
    )
    data = InstructionDataModule(tokenizer=module.tokenizer, train_size=16, eval_size=0, batch_size=8)
    trainer.fit(module, datamodule=data)
    return trainer


def inputs(tokenizer: Any) -> dict[str, torch.Tensor]:
    encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


@torch.no_grad()
def logits(model: Any, tokenizer: Any) -> torch.Tensor:
    model.eval()
    return model(**inputs(tokenizer)).logits


def test_full_fine_tuning_writes_hf_model_with_the_module_logits(base: Path, tmp_path: Path) -> None:
    module = fine_tuner(str(base))
    trainer = fit(module, tmp_path)
    folder = Path(trainer.log_dir) / HF_MODEL
    assert (folder / "model.safetensors").is_file()
    assert not (Path(trainer.log_dir) / HF_ADAPTER).exists()
    exported = AutoModelForCausalLM.from_pretrained(folder)
    expected = logits(module.model, module.tokenizer)
    torch.testing.assert_close(logits(exported, module.tokenizer), expected, **FP32)
    # Training moved the weights away from the base: the test would notice an export of the base.
    assert not torch.allclose(logits(AutoModelForCausalLM.from_pretrained(base), module.tokenizer), expected)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer(TEXTS)["input_ids"] == module.tokenizer(TEXTS)["input_ids"]
    assert tokenizer.pad_token == module.tokenizer.pad_token


def test_lora_writes_the_adapters_and_the_merged_model(base: Path, tmp_path: Path) -> None:
    module = fine_tuner(str(base), lora_rank=4, merge_lora=True)
    trainer = fit(module, tmp_path)
    adapter, merged_folder = Path(trainer.log_dir) / HF_ADAPTER, Path(trainer.log_dir) / HF_MODEL
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    names = load_file(adapter / "adapter_model.safetensors").keys()
    assert names
    assert all("lora_" in name for name in names)
    expected = logits(module.model, module.tokenizer)
    with_base = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    torch.testing.assert_close(logits(with_base, module.tokenizer), expected, **FP32)
    auto = AutoPeftModelForCausalLM.from_pretrained(adapter)
    torch.testing.assert_close(logits(auto, module.tokenizer), expected, **FP32)
    merged = AutoModelForCausalLM.from_pretrained(merged_folder)
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged, module.tokenizer), logits(with_base, module.tokenizer), **FP32)
    # The adapters learned something (B starts at 0), so the merged model is not the base.
    assert not torch.allclose(logits(AutoModelForCausalLM.from_pretrained(base), module.tokenizer), expected)
    # The live module kept its adapters unmerged and its base weights untouched.
    layers = [m for m in module.model.modules() if isinstance(m, LoraLayer)]
    assert layers
    assert not any(layer.merged for layer in layers)
    fresh = AutoModelForCausalLM.from_pretrained(base).state_dict()
    for name, value in module.model.get_base_model().state_dict().items():
        key = name.replace(".base_layer", "")
        if "lora_" not in name:
            assert torch.equal(value, fresh[key]), name


def test_without_a_logger_only_export_dir_exports(base: Path, tmp_path: Path) -> None:
    fit(fine_tuner(str(base), lora_rank=2), tmp_path / "quiet", logger=False)
    assert not [path.name for path in (tmp_path / "quiet").rglob("hf_*")]
    target = tmp_path / "chosen"
    fit(fine_tuner(str(base), lora_rank=2, export_dir=str(target)), tmp_path / "given", logger=False)
    assert (target / HF_ADAPTER / "adapter_model.safetensors").is_file()
    assert not (target / HF_MODEL).exists()  # merge_lora is off by default


def test_hf_export_false_writes_nothing(base: Path, tmp_path: Path) -> None:
    trainer = fit(fine_tuner(str(base), hf_export=False), tmp_path)
    assert Path(trainer.log_dir).is_dir()
    assert not list(Path(trainer.log_dir).glob("hf_*"))


def test_merge_lora_needs_lora(base: Path) -> None:
    with pytest.raises(ValueError, match="merge_lora=True needs lora_rank > 0"):
        fine_tuner(str(base), merge_lora=True)


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(next(folder.glob("*.safetensors")))


@pytest.mark.parametrize("options", [{}, {"lora_rank": 4, "merge_lora": True}], ids=["full", "lora_merged"])
def test_export_command_writes_the_folders_of_the_run(
    base: Path, tmp_path: Path, options: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    module = fine_tuner(str(base), **options)
    trainer = fit(module, tmp_path / "run", checkpoint=True)
    out = tmp_path / "exported"
    assert main(["export", str(tmp_path / "run" / "checkpoints" / "last.ckpt"), str(out)]) == 0
    assert str(out / HF_MODEL) in capsys.readouterr().out
    written = sorted(path.name for path in out.iterdir())
    assert written == sorted(path.name for path in Path(trainer.log_dir).glob("hf_*"))
    for name in written:
        at_fit_end, from_checkpoint = tensors(Path(trainer.log_dir) / name), tensors(out / name)
        assert at_fit_end.keys() == from_checkpoint.keys()
        for key, value in at_fit_end.items():
            torch.testing.assert_close(from_checkpoint[key], value, rtol=0, atol=0, msg=key)
    exported = AutoModelForCausalLM.from_pretrained(out / HF_MODEL)
    torch.testing.assert_close(logits(exported, module.tokenizer), logits(module.model, module.tokenizer), **FP32)


def test_lora_checkpoint_holds_the_trainable_parameters_only(base: Path, tmp_path: Path) -> None:
    module = fine_tuner(str(base), lora_rank=4)
    fit(module, tmp_path, checkpoint=True, logger=False)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    trainable = {f"model.{name}" for name, p in module.model.named_parameters() if p.requires_grad}
    assert set(checkpoint["state_dict"]) == trainable
    assert all("lora_" in key for key in checkpoint["state_dict"])
    assert checkpoint["lora_base"]["model"] == str(base)
    # Rebuilt from the checkpoint: the base from the model path, the adapters from the file.
    restored = load_fine_tuner(tmp_path / "checkpoints" / "last.ckpt")
    for (name, expected), (_, actual) in zip(module.state_dict().items(), restored.state_dict().items(), strict=True):
        assert torch.equal(actual, expected), name


def test_lora_checkpoint_refuses_another_base(base: Path, tmp_path: Path) -> None:
    module = fine_tuner(str(base), lora_rank=2)
    fit(module, tmp_path, checkpoint=True, logger=False)
    other = save_base(tmp_path / "other_base", seed=1)
    with pytest.raises(ValueError, match="does not match"):
        load_fine_tuner(tmp_path / "checkpoints" / "last.ckpt", model=str(other))


def test_export_command_errors(base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.ckpt"
    assert main(["export", str(missing), str(tmp_path / "out")]) == 2
    assert f"No checkpoint file at {str(missing)!r}" in capsys.readouterr().err

    classifier = make_trainer(tmp_path / "classifier", max_epochs=1, enable_checkpointing=True)
    classifier.fit(Classifier(), train_loader(ClassificationDataset()))
    (other,) = (tmp_path / "classifier").rglob("*.ckpt")
    assert main(["export", str(other), str(tmp_path / "out")]) == 2
    assert "is not a checkpoint of the LLM recipe's CausalLMFineTuner" in capsys.readouterr().err

    # Built from model objects: the checkpoint names no model, the command asks for one.
    module = fine_tuner(tiny_llama(len(load_tokenizer(str(base)))), base=base, lora_rank=2)
    fit(module, tmp_path / "objects", checkpoint=True, logger=False)
    checkpoint = tmp_path / "objects" / "checkpoints" / "last.ckpt"
    assert main(["export", str(checkpoint), str(tmp_path / "out")]) == 2
    assert "name no model" in capsys.readouterr().err
    assert main(["export", str(checkpoint), str(tmp_path / "out"), "--model", str(base), "--no-merge-lora"]) == 0
    assert (tmp_path / "out" / HF_ADAPTER).is_dir()
    assert not (tmp_path / "out" / HF_MODEL).exists()

    full = tmp_path / "full"
    fit(fine_tuner(str(base)), full, checkpoint=True, logger=False)
    assert main(["export", str(full / "checkpoints" / "last.ckpt"), str(tmp_path / "out2"), "--merge-lora"]) == 2
    assert "merge_lora=True needs a LoRA model" in capsys.readouterr().err


def test_export_checkpoint_returns_the_folders(base: Path, tmp_path: Path) -> None:
    fit(fine_tuner(str(base), lora_rank=2), tmp_path, checkpoint=True, logger=False)
    written = export_checkpoint(tmp_path / "checkpoints" / "last.ckpt", tmp_path / "out", merge_lora=True)
    assert written == {HF_ADAPTER: tmp_path / "out" / HF_ADAPTER, HF_MODEL: tmp_path / "out" / HF_MODEL}


def test_lora_checkpoint_leaves_out_a_reference_loaded_by_name(base: Path) -> None:
    module = fine_tuner(str(base), lora_rank=2, token_reference=str(base))
    checkpoint: dict[str, Any] = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert any(key.startswith("reference.") for key in module.state_dict())
    trainable = {f"model.{name}" for name, p in module.model.named_parameters() if p.requires_grad}
    assert set(checkpoint["state_dict"]) == trainable
    rebuilt = fine_tuner(str(base), lora_rank=2, token_reference=str(base))
    rebuilt.on_load_checkpoint(checkpoint)
    rebuilt.load_state_dict(checkpoint["state_dict"])  # strict: the frozen parameters came back
    for (name, expected), (_, actual) in zip(module.state_dict().items(), rebuilt.state_dict().items(), strict=True):
        assert torch.equal(actual, expected), name
