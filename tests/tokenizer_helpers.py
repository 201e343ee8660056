"""A tokenizer with `tiny_tokenizer`'s tokens and size that numbers two of them the other way round."""

from __future__ import annotations

import json

from lightning_curricula.recipes.llm.model import tiny_tokenizer
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast


def renumbered_tokenizer() -> PreTrainedTokenizerFast:
    """`tiny_tokenizer` with the ids of its first two tokens swapped: the same tokens, the same size."""
    state = json.loads(tiny_tokenizer().backend_tokenizer.to_str())
    vocab = state["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[:2]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    for added in state["added_tokens"]:
        if added["content"] in vocab:
            added["id"] = vocab[added["content"]]
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(state)))
