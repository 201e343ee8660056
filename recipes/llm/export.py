"""Hugging Face out: a fine-tuned `CausalLMFineTuner` as Hugging Face folders, when fitting ends or from a checkpoint.

The folders (each with the tokenizer, ``save_pretrained``, safetensors):

- ``hf_model/``: full fine-tuning, the model (``save_pretrained``); with LoRA and ``merge_lora``, the base
  model with the adapters merged into its weights (merged on a copy: the live module keeps its adapters);
- ``hf_adapter/``: LoRA, the adapters alone (PEFT's ``save_pretrained``: ``adapter_config.json``, whose
  ``base_model_name_or_path`` names the base, and ``adapter_model.safetensors``).

`export_hugging_face` writes them for a module in memory (`CausalLMFineTuner` calls it when fitting ends);
`export_checkpoint`, behind ``lightning-curricula export CHECKPOINT DIR``, rebuilds the module from a
Lightning checkpoint first (`load_fine_tuner`). Load the folders with ``transformers`` and ``peft``::

    model = AutoModelForCausalLM.from_pretrained("DIR/hf_model")
    model = AutoPeftModelForCausalLM.from_pretrained("DIR/hf_adapter")  # loads the base it names
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from lightning_curricula.recipes.llm.module import CausalLMFineTuner

__all__ = ["HF_ADAPTER", "HF_MODEL", "export_checkpoint", "export_hugging_face", "load_fine_tuner"]

#: The folder of the full (or merged) model.
HF_MODEL = "hf_model"
#: The folder of the LoRA adapters.
HF_ADAPTER = "hf_adapter"


def export_hugging_face(
    module: CausalLMFineTuner, directory: str | Path, *, merge_lora: bool | None = None
) -> dict[str, Path]:
    """Write ``module``'s model and tokenizer under ``directory`` as Hugging Face folders.

    Full fine-tuning writes ``hf_model/``; LoRA writes ``hf_adapter/`` and, with ``merge_lora``, also
    ``hf_model/`` (the adapters merged into a copy of the model, so ``module`` keeps training or testing
    with its adapters unchanged; the copy takes one more model's memory on the model's device). Existing
    files of the same names are overwritten.

    Args:
        module: the fine-tuner to export.
        directory: the parent folder (created if missing).
        merge_lora: also write the merged model; ``None``: the module's ``merge_lora`` option.

    Returns:
        The folders written, by name (``"hf_model"``, ``"hf_adapter"``).

    Raises:
        ValueError: ``merge_lora=True`` for a module without LoRA.

    Example:
        >>> import tempfile
        >>> from lightning_curricula.recipes.llm.model import tiny_llama, tiny_tokenizer
        >>> from lightning_curricula.recipes.llm.module import CausalLMFineTuner
        >>> tokenizer = tiny_tokenizer()
        >>> module = CausalLMFineTuner(tiny_llama(len(tokenizer)), tokenizer, lora_rank=2)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     sorted(export_hugging_face(module, folder, merge_lora=True))
        ['hf_adapter', 'hf_model']
    """
    merge = module.merge_lora if merge_lora is None else merge_lora
    lora = module.lora_rank > 0
    if merge and not lora:
        raise ValueError(
            f"merge_lora=True needs a LoRA model; this one fine-tunes every weight (lora_rank={module.lora_rank})."
        )
    directory = Path(directory)
    written: dict[str, Path] = {}
    if lora:
        written[HF_ADAPTER] = _save(module.model, module.tokenizer, directory / HF_ADAPTER)
        if merge:
            merged = copy.deepcopy(module.model).merge_and_unload(safe_merge=True)  # type: ignore[operator]
            written[HF_MODEL] = _save(merged, module.tokenizer, directory / HF_MODEL)
            del merged
    else:
        written[HF_MODEL] = _save(module.model, module.tokenizer, directory / HF_MODEL)
    return written


def _save(model: Any, tokenizer: Any, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


def load_fine_tuner(
    checkpoint: str | Path, *, model: str | None = None, tokenizer: str | None = None
) -> CausalLMFineTuner:
    """Rebuild a `CausalLMFineTuner` on the CPU from a Lightning checkpoint (its hyperparameters and weights).

    A LoRA checkpoint holds the trainable parameters only: the base model is built again from the
    model named in the checkpoint (or ``model``) and checked against the checkpoint's fingerprint.

    Args:
        checkpoint: a ``.ckpt`` file written by a Trainer fitting a `CausalLMFineTuner`.
        model: the base model's name, folder or ``.gguf`` file, instead of the one in the checkpoint; needed when
            the module was built from a model object (its hyperparameters then name no model).
        tokenizer: the tokenizer's name or folder, instead of the checkpoint's (by default, the model's).

    Raises:
        FileNotFoundError: no file at ``checkpoint``.
        ValueError: the file is not a checkpoint of a `CausalLMFineTuner`, or names no model and ``model`` is
            not given.
    """
    from lightning_curricula.recipes.llm.module import CausalLMFineTuner

    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"No checkpoint file at {str(path)!r}"
            + (" (it is a folder: pass one of its .ckpt files)." if path.is_dir() else ".")
        )
    try:  # memory-mapped: only the keys are read here, the weights once below
        contents = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same message
        raise ValueError(f"{str(path)!r} is not a readable Lightning checkpoint: {error}") from error
    hparams = contents.get("hyper_parameters") if isinstance(contents, dict) else None
    if not isinstance(hparams, dict) or "state_dict" not in contents or "lora_rank" not in hparams:
        found = sorted(hparams) if isinstance(hparams, dict) else "none"
        raise ValueError(
            f"{str(path)!r} is not a checkpoint of the LLM recipe's CausalLMFineTuner: it needs a state_dict and "
            f"hyper_parameters with lora_rank; its hyper_parameters are {found}."
        )
    if model is None and "model" not in hparams:
        raise ValueError(
            f"{str(path)!r} was trained from a model object, so its hyperparameters name no model: pass the base "
            "model's name or folder (model=..., or --model on the command line)."
        )
    overrides = {name: value for name, value in (("model", model), ("tokenizer", tokenizer)) if value is not None}
    del contents
    return CausalLMFineTuner.load_from_checkpoint(path, map_location="cpu", weights_only=True, **overrides)


def export_checkpoint(
    checkpoint: str | Path,
    directory: str | Path,
    *,
    merge_lora: bool | None = None,
    model: str | None = None,
    tokenizer: str | None = None,
) -> dict[str, Path]:
    """`load_fine_tuner` (``checkpoint``), then `export_hugging_face` under ``directory``: the folders of a run's end.

    Args:
        checkpoint: a ``.ckpt`` file of a `CausalLMFineTuner`.
        directory: where ``hf_model/`` and ``hf_adapter/`` go.
        merge_lora: write the merged model too; ``None``: the checkpoint's ``merge_lora`` option.
        model: see `load_fine_tuner`.
        tokenizer: see `load_fine_tuner`.

    Returns:
        The folders written, by name.
    """
    module = load_fine_tuner(checkpoint, model=model, tokenizer=tokenizer)
    module.eval()
    return export_hugging_face(module, directory, merge_lora=merge_lora)
