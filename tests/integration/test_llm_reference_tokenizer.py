"""The LLM recipe's Rho-1 reference loaded by name is checked against the trained model's tokenizer at construction:
a folder whose tokenizer numbers its tokens differently is refused even with the same vocabulary size."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
from lightning_curricula.recipes.llm.model import ensure_pad_token, tiny_llama, tiny_tokenizer
from lightning_curricula.recipes.llm.module import CausalLMFineTuner
from tokenizer_helpers import renumbered_tokenizer

from lightning_curricula.step import vocabulary_fingerprint


def saved_reference(folder: Path, tokenizer: object | None) -> str:
    tiny_llama(len(tiny_tokenizer()), seed=1).save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)  # type: ignore[attr-defined]
    return str(folder)


def test_a_reference_with_another_numbering_of_the_same_tokens_is_refused(tmp_path: Path) -> None:
    tokenizer = ensure_pad_token(tiny_tokenizer())
    other = saved_reference(tmp_path / "other", renumbered_tokenizer())  # it has no pad or EOS token: checked anyway
    named = re.escape(f"The reference's tokenizer ('{other}', {len(tokenizer)} tokens) numbers its tokens differently")
    with pytest.raises(ValueError, match=rf"{named}.*id 0 is '<s>' for the trained model and '</s>' for the reference"):
        CausalLMFineTuner(tiny_llama(len(tokenizer)), tokenizer, token_reference=other, max_new_tokens=0)

    same = saved_reference(tmp_path / "same", tiny_tokenizer())
    module = CausalLMFineTuner(tiny_llama(len(tokenizer)), tokenizer, token_reference=same, max_new_tokens=0)
    assert module.reference is not None
    assert module.reference.vocabulary_fingerprint == vocabulary_fingerprint(tokenizer)


def test_a_reference_folder_without_a_tokenizer_is_checked_by_size_with_a_warning(tmp_path: Path) -> None:
    tokenizer = ensure_pad_token(tiny_tokenizer())
    bare = saved_reference(tmp_path / "bare", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = CausalLMFineTuner(tiny_llama(len(tokenizer)), tokenizer, token_reference=bare, max_new_tokens=0)
    assert any("has no tokenizer to check" in str(warning.message) for warning in caught)
    assert module.reference is not None
    assert module.reference.vocabulary_fingerprint is None
