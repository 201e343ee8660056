"""`FrozenReference` checks, given both tokenizers, that the reference numbers every token as the trained model does:
two tokenizers of the same size (Llama 2's and Mistral's both have 32,000 tokens) give per-token losses of
different tokens, which a size check cannot see."""

from __future__ import annotations

import pytest
import torch
from lightning_curricula.recipes.llm.model import tiny_llama, tiny_tokenizer
from tokenizer_helpers import renumbered_tokenizer

from lightning_curricula.step import FrozenReference, vocabulary_fingerprint, vocabulary_size


def test_the_fingerprint_is_of_the_token_to_id_mapping() -> None:
    tokenizer = tiny_tokenizer()
    assert vocabulary_fingerprint(tokenizer) == vocabulary_fingerprint(tiny_tokenizer())
    assert vocabulary_fingerprint(tokenizer) == vocabulary_fingerprint(dict(reversed(tokenizer.get_vocab().items())))
    other = renumbered_tokenizer()
    assert len(other) == len(tokenizer)
    assert vocabulary_fingerprint(other) != vocabulary_fingerprint(tokenizer)
    assert vocabulary_fingerprint({"a": 0, "b": 1}) != vocabulary_fingerprint({"a": 1, "b": 0})
    assert vocabulary_fingerprint({"a\\tb": 0}) != vocabulary_fingerprint({"a": 0, "b": 0})  # no separator clash


def test_a_reference_whose_tokenizer_numbers_tokens_differently_fails_at_construction() -> None:
    tokenizer, other = tiny_tokenizer(), renumbered_tokenizer()
    trained, reference = tiny_llama(len(tokenizer)), tiny_llama(len(other))
    assert vocabulary_size(trained) == vocabulary_size(reference)  # the size check alone lets it through
    with pytest.raises(ValueError, match=r"numbers its tokens differently.*id 0 is '<s>' for the trained model"):
        FrozenReference(reference, vocab_size=vocabulary_size(trained), tokenizer=tokenizer, reference_tokenizer=other)
    same = FrozenReference(reference, tokenizer=tokenizer, reference_tokenizer=tiny_tokenizer())
    assert same.vocabulary_fingerprint == vocabulary_fingerprint(tokenizer)
    assert not same(torch.tensor([[1, 2]])).logits.requires_grad


def test_both_tokenizers_or_neither() -> None:
    with pytest.raises(ValueError, match="tokenizer and reference_tokenizer go together: got only tokenizer"):
        FrozenReference(torch.nn.Linear(2, 2), tokenizer=tiny_tokenizer())
    with pytest.raises(TypeError, match="a tokenizer with get_vocab\\(\\) or a mapping of token to id, got int"):
        vocabulary_fingerprint(3)
