"""Pure parts of the LLM recipe's sequence selection: kept rows of a batch, the throughput metric, holdout halves."""

from __future__ import annotations

from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("reasoning_gym")

from lightning_curricula.recipes.llm.data import CausalLMCollator, ensure_pad_token, load_reasoning_gym, prepare_dataset  # noqa: E402
from lightning_curricula.recipes.llm.holdout import holdout_halves  # noqa: E402
from lightning_curricula.recipes.llm.model import tiny_tokenizer  # noqa: E402
from lightning_curricula.recipes.llm.module import TokenThroughput, kept_rows  # noqa: E402


@pytest.fixture(scope="module")
def rows() -> Any:
    tokenizer = ensure_pad_token(tiny_tokenizer())
    prepared, _ = prepare_dataset(load_reasoning_gym(size=12, seed=0), tokenizer, max_length=96)
    return [dict(prepared[i], index=i, weight=1.0 + i) for i in range(len(prepared))], tokenizer


@pytest.mark.parametrize("positions", [[0, 3, 5], [7], [1, 2, 4, 6, 8, 9, 10, 11], list(range(12))])
def test_kept_rows_are_the_batch_the_collator_makes_of_them_alone(rows: Any, positions: list[int]) -> None:
    items, tokenizer = rows
    collate = CausalLMCollator(tokenizer)
    batch = collate(items)
    part = kept_rows(batch, torch.tensor(positions))
    alone = collate([items[i] for i in positions])
    assert sorted(part) == sorted(alone)
    for key, value in alone.items():
        assert torch.equal(part[key], value), key


def test_kept_rows_cut_only_the_padding_no_kept_row_needs(rows: Any) -> None:
    items, tokenizer = rows
    batch = CausalLMCollator(tokenizer)(items)
    lengths = batch["attention_mask"].sum(1)
    shortest = int(lengths.argmin())
    longest = int(lengths.argmax())
    assert int(lengths[shortest]) < batch["input_ids"].shape[1]  # the data has padding to cut
    assert kept_rows(batch, torch.tensor([shortest]))["input_ids"].shape[1] == int(lengths[shortest])
    assert kept_rows(batch, torch.tensor([shortest, longest]))["input_ids"].shape[1] == batch["input_ids"].shape[1]
    lists = dict(batch, reference=[f"answer {i}" for i in range(len(items))])
    assert kept_rows(lists, torch.tensor([4, 1]))["reference"] == ["answer 4", "answer 1"]


def test_throughput_divides_the_summed_tokens_by_the_summed_time() -> None:
    throughput = TokenThroughput()
    assert float(throughput.compute()) == 0.0  # nothing measured yet
    steps = [(120, 3_000_000_000), (80, 1_000_000_000), (0, 500_000_000)]
    values = [float(throughput(torch.tensor(tokens), nanoseconds)) for tokens, nanoseconds in steps]
    assert values == [40.0, 80.0, 0.0]  # each step's own value
    assert float(throughput.compute()) == pytest.approx(200 / 4.5)
    throughput.reset()
    assert float(throughput.compute()) == 0.0
    throughput.to(dtype=torch.bfloat16)  # a bf16-true module: the int64 states keep their exact counts
    throughput.update(torch.tensor(1_000_003), 1_000_000_007)
    assert int(throughput.tokens) == 1_000_003
    assert int(throughput.nanoseconds) == 1_000_000_007


@pytest.mark.parametrize("size", [2, 3, 24, 101])
def test_holdout_halves_split_every_id_once_and_reproducibly(size: int) -> None:
    first, second = holdout_halves(size, seed=5)
    assert sorted(first + second) == list(range(size))
    assert not set(first) & set(second)
    assert len(first) - len(second) in (0, 1)
    assert first == sorted(first)
    assert second == sorted(second)
    assert holdout_halves(size, seed=5) == (first, second)
    if size > 3:
        assert holdout_halves(size, seed=6) != (first, second)
    with pytest.raises(ValueError, match="at least 2 training examples, got 1"):
        holdout_halves(1, seed=0)
