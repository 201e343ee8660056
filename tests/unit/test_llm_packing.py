"""Sequence packing of the LLM recipe: every example keeps its own loss, attends only to itself, and keeps its id."""

from __future__ import annotations

from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("reasoning_gym")

from lightning_curricula.recipes.llm.data import (  # noqa: E402
    IGNORE_INDEX,
    CausalLMCollator,
    ensure_pad_token,
    load_reasoning_gym,
    prepare_dataset,
)
from lightning_curricula.recipes.llm.model import proxy_llama, tiny_llama, tiny_tokenizer  # noqa: E402
from lightning_curricula.recipes.llm.module import kept_rows, model_token_losses, sequence_losses  # noqa: E402
from lightning_curricula.recipes.llm.packing import (  # noqa: E402
    MAX_WIDTHS,
    PackingCollator,
    candidate_widths,
    narrowest_packing,
    pack_batch,
    pack_rows,
)

from lightning_curricula.step import weighted_token_mean  # noqa: E402

# Packed and padded forwards run different shapes through different kernels: equal to float tolerance only.
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture(scope="module")
def rows() -> Any:
    tokenizer = ensure_pad_token(tiny_tokenizer())
    prepared, _ = prepare_dataset(load_reasoning_gym(size=10, seed=0), tokenizer, max_length=96)
    return [dict(prepared[i], index=i, weight=1.0 + i) for i in range(len(prepared))], tokenizer


@pytest.mark.parametrize("seed", range(5))
def test_pack_rows_places_every_example_once_within_the_capacity(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 40, (int(torch.randint(1, 30, (), generator=generator)),), generator=generator).tolist()
    rows = pack_rows(lengths, capacity=48)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 48 for row in rows)
    assert pack_rows(lengths, capacity=48) == rows  # deterministic
    # First-fit decreasing never needs more than 11/9 of the optimum plus one row; the volume bounds the optimum.
    assert len(rows) <= 11 / 9 * -(-sum(lengths) // 48) + 1


@pytest.mark.parametrize("seed", range(5))
def test_the_narrowest_packing_never_computes_more_than_padding_nor_than_full_rows(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 40, (16,), generator=generator).tolist()
    rows = narrowest_packing(lengths, capacity=96)
    assert sorted(i for row in rows for i in row) == list(range(16))

    def cost(packing: list[list[int]]) -> int:
        return len(packing) * max(sum(lengths[i] for i in row) for row in packing)

    assert cost(rows) <= len(lengths) * max(lengths)  # the padded batch
    assert cost(rows) <= cost(pack_rows(lengths, 96))  # rows of the full capacity
    assert cost(rows) >= sum(lengths)


@pytest.mark.parametrize(("longest", "capacity"), [(7, 7), (5, 5 + MAX_WIDTHS - 1), (5, 5 + MAX_WIDTHS), (3, 131_072)])
def test_candidate_widths_are_bounded_and_keep_both_ends(longest: int, capacity: int) -> None:
    widths = candidate_widths(longest, capacity)
    assert widths[0] == longest
    assert widths[-1] == capacity
    assert widths == sorted(set(widths))
    assert len(widths) == min(capacity - longest + 1, MAX_WIDTHS)


def test_a_long_context_packing_still_computes_no_more_than_padding_nor_than_full_rows() -> None:
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 3000, (64,), generator=generator).tolist()
    rows = narrowest_packing(lengths, capacity=32_768)  # 29,769 widths: 256 tried
    assert sorted(i for row in rows for i in row) == list(range(64))
    cost = len(rows) * max(sum(lengths[i] for i in row) for row in rows)
    full_rows = pack_rows(lengths, 32_768)
    assert cost <= len(lengths) * max(lengths)
    assert cost <= len(full_rows) * max(sum(lengths[i] for i in row) for row in full_rows)


def test_pack_rows_refuses_an_example_longer_than_a_row_and_a_capacity_below_one() -> None:
    with pytest.raises(ValueError, match="does not fit a packed row of 4"):
        pack_rows([3, 5], capacity=4)
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        pack_rows([1], capacity=0)


def test_the_packed_rows_hold_each_example_whole_with_its_positions_restarted(rows: Any) -> None:
    items, tokenizer = rows
    batch = CausalLMCollator(tokenizer)(items)
    packed = pack_batch(batch, capacity=128)
    lengths = batch["attention_mask"].sum(1)
    assert packed["packed_input_ids"].shape[0] < len(items)  # it packed something
    assert packed["packed_input_ids"].shape[1] <= 128
    shifted_labels = packed["packed_labels"][:, 1:].flatten()
    for i, length in enumerate(lengths.tolist()):
        index = packed["pack_index"][i, : length - 1]
        row, start = divmod(int(index[0]), packed["packed_input_ids"].shape[1] - 1)
        assert torch.equal(packed["packed_input_ids"][row, start : start + length], batch["input_ids"][i, :length])
        assert packed["packed_position_ids"][row, start : start + length].tolist() == list(range(length))
        assert packed["packed_labels"][row, start] == IGNORE_INDEX  # never trained to predict across examples
        # The gather index reads back exactly this example's targets, in order.
        assert torch.equal(shifted_labels[index], batch["labels"][i, 1:length])


def losses_of(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return model_token_losses(model, batch)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("make_model", [tiny_llama, proxy_llama])
def test_packed_losses_are_the_padded_batchs_per_example(rows: Any, attention: str, make_model: Any) -> None:
    items, tokenizer = rows
    model = make_model(len(tokenizer))
    model.set_attn_implementation(attention)
    padded = CausalLMCollator(tokenizer)(items)
    packed = PackingCollator(CausalLMCollator(tokenizer), 128)(items)
    (padded_losses, padded_mask), (packed_losses, packed_mask) = losses_of(model, padded), losses_of(model, packed)
    assert torch.equal(packed_mask, padded_mask)
    assert bool((packed_losses[~packed_mask] == 0).all())
    torch.testing.assert_close(packed_losses, padded_losses, **TOLERANCE)
    torch.testing.assert_close(sequence_losses(packed_losses, packed_mask), sequence_losses(padded_losses, padded_mask))
    assert torch.equal(packed["index"], padded["index"])
    assert torch.equal(packed["weight"], padded["weight"])


def test_an_example_attends_only_to_itself_inside_a_packed_row(rows: Any) -> None:
    items, tokenizer = rows
    model = tiny_llama(len(tokenizer))
    collate = PackingCollator(CausalLMCollator(tokenizer), 512)  # wide rows: every example shares a row with others
    batch = collate(items)
    width = batch["packed_input_ids"].shape[1] - 1
    rows = batch["pack_index"][:, 0] // width
    assert bool((rows[1:] == rows[0]).any())  # example 0 shares its row with others
    changed = [dict(items[0]), *items[1:]]
    changed[0]["input_ids"] = [5] * len(items[0]["input_ids"])  # a different first example, the same length
    before, after = losses_of(model, batch)[0], losses_of(model, collate(changed))[0]
    assert not torch.allclose(before[0], after[0])
    # The same packing (the same lengths): every other example's losses are the same computation.
    torch.testing.assert_close(after[1:], before[1:], rtol=0, atol=1e-6)


def test_the_packed_gradient_is_the_padded_one(rows: Any) -> None:
    items, tokenizer = rows
    gradients = []
    for collate in (CausalLMCollator(tokenizer), PackingCollator(CausalLMCollator(tokenizer), 128)):
        model = proxy_llama(len(tokenizer))
        batch = collate(items)
        losses, mask = model_token_losses(model, batch)
        weighted_token_mean(losses, mask, batch["weight"]).backward()
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(gradients[1], gradients[0], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("positions", [[0, 3, 5], [7], list(range(10))])
def test_kept_rows_of_a_packed_batch_are_packed_anew(rows: Any, positions: list[int]) -> None:
    items, tokenizer = rows
    collate = PackingCollator(CausalLMCollator(tokenizer), 128)
    part = kept_rows(collate(items), torch.tensor(positions))
    alone = collate([items[i] for i in positions])
    assert sorted(part) == sorted(alone)
    for key, value in alone.items():
        assert value == part[key] if isinstance(value, int) else torch.equal(part[key], value), key


def test_repeated_ids_and_an_example_without_loss_tokens_pack(rows: Any) -> None:
    items, tokenizer = rows
    short = dict(items[1], input_ids=items[1]["input_ids"][:1], labels=[IGNORE_INDEX], prompt_length=1)
    batch_rows = [items[0], items[0], short, items[2]]  # id 0 twice (sampling with replacement), a 1-token row
    model = tiny_llama(len(tokenizer))
    padded = CausalLMCollator(tokenizer)(batch_rows)
    packed = PackingCollator(CausalLMCollator(tokenizer), 128)(batch_rows)
    (padded_losses, mask), (packed_losses, _) = losses_of(model, padded), losses_of(model, packed)
    torch.testing.assert_close(packed_losses, padded_losses, **TOLERANCE)
    assert packed["index"].tolist() == [0, 0, 1, 2]
    assert sequence_losses(packed_losses, mask)[2].isnan()  # no loss token: NaN, as unpacked (the tracker skips it)
