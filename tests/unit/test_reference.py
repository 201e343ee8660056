"""Reference losses: computed once by id with a frozen model, saved and exported; the frozen reference
wrapper stays in eval mode without gradients and checks the vocabulary."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import ClassificationDataset, Classifier
from online_helpers import per_example_loss
from torch import nn
from torch.utils.data import IterableDataset

from lightning_curricula import FrozenReference, ReferenceLosses, irreducible_losses, vocabulary_size


def test_irreducible_losses_are_by_id_in_eval_mode_without_grad_and_restore_the_mode() -> None:
    dataset = ClassificationDataset(23)
    model = Classifier(seed=3)
    model.layer = nn.Sequential(nn.Dropout(0.9), model.layer)  # eval mode or the losses are random
    model.train()
    reference = irreducible_losses(model, dataset, per_example_loss, batch_size=4)
    assert model.training
    assert not reference.losses.requires_grad
    model.eval()
    with torch.no_grad():
        expected = per_example_loss(model, {"x": dataset.x, "y": dataset.y})
    # Batches of 4 against one batch of 23: different shapes may run different kernels, so the last bits may differ.
    torch.testing.assert_close(reference.losses, expected)
    # The lookup is a plain gather from the table, so it equals indexing the table by the same ids exactly.
    assert reference.lookup(torch.tensor([5, 0])).tolist() == reference.losses[[5, 0]].tolist()
    assert all(p.grad is None for p in model.parameters())


def test_irreducible_losses_refuse_streams_and_short_outputs() -> None:
    class Stream(IterableDataset):  # type: ignore[type-arg]
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield {"x": torch.zeros(8), "y": 0}

    with pytest.raises(TypeError, match="needs a map-style dataset with a length, got Stream; .* FrozenReference"):
        irreducible_losses(Classifier(), Stream(), per_example_loss)
    with pytest.raises(ValueError, match=r"per_example_loss returned shape \(2,\) for a batch of 7 examples"):
        irreducible_losses(Classifier(), ClassificationDataset(7), lambda m, b: per_example_loss(m, b).mean().expand(2))


def test_save_load_and_parquet_round_trip_bit_for_bit(tmp_path: Path) -> None:
    reference = ReferenceLosses(torch.tensor([0.25, float("nan"), 3.5, 1e-7]))
    reference.save(tmp_path / "reference.pt")
    assert torch.load(tmp_path / "reference.pt", weights_only=True)["version"] == 1
    loaded = ReferenceLosses.load(tmp_path / "reference.pt")
    torch.testing.assert_close(loaded.losses, reference.losses, rtol=0, atol=0, equal_nan=True)
    reference.to_parquet(tmp_path / "reference.parquet")
    read = ReferenceLosses.from_parquet(tmp_path / "reference.parquet")
    torch.testing.assert_close(read.losses, reference.losses, rtol=0, atol=0, equal_nan=True)
    shuffled = reference.to_dataset().select([2, 0, 3, 1])
    torch.testing.assert_close(
        ReferenceLosses.from_dataset(shuffled).losses, reference.losses, rtol=0, atol=0, equal_nan=True
    )


def test_reference_tables_fail_clearly() -> None:
    table = ReferenceLosses(torch.zeros(3)).to_dataset()
    with pytest.raises(ValueError, match=r"no column 'loss'; its columns are \['index', 'irreducible_loss'\]"):
        ReferenceLosses.from_dataset(table, loss_column="loss")
    with pytest.raises(ValueError, match="each id 0 .. 2 exactly once"):
        ReferenceLosses.from_dataset(table.map(lambda row: {"index": 0}))
    with pytest.raises(ValueError, match="The reference has 3 losses but the training dataset has 4 examples"):
        ReferenceLosses(torch.zeros(3)).check_size(4)
    with pytest.raises(ValueError, match=r"1-D floating-point tensor .* got \(2, 2\)"):
        ReferenceLosses(torch.zeros(2, 2))


class TinyLM(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 4)
        self.dropout = nn.Dropout(0.5)
        self.head = nn.Linear(4, vocab)

    def get_output_embeddings(self) -> nn.Module:
        return self.head

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.embed(ids)))


def test_frozen_reference_stays_in_eval_mode_without_grad_inside_a_module() -> None:
    class Trained(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm = TinyLM(11)
            self.reference = FrozenReference(TinyLM(11), vocab_size=vocabulary_size(self.lm))

    trained = Trained().train()
    assert trained.lm.training
    assert not trained.reference.training
    assert not trained.reference.model.dropout.training
    assert not any(p.requires_grad for p in trained.reference.parameters())
    ids = torch.tensor([[1, 2, 3]])
    first, second = trained.reference(ids), trained.reference(ids)
    assert not first.requires_grad
    assert torch.equal(first, second)  # no dropout


def test_frozen_reference_with_another_vocabulary_fails_naming_both() -> None:
    with pytest.raises(ValueError, match="reference model has a vocabulary of 12 tokens but the trained model has 11"):
        FrozenReference(TinyLM(12), vocab_size=11)
    hidden = FrozenReference(nn.Embedding(12, 12), vocab_size=11)  # no config or head: checked at the first forward
    with pytest.raises(ValueError, match="vocabulary of 12 tokens but the trained model has 11"):
        hidden(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="vocab_size must be a positive integer or None, got 0"):
        FrozenReference(TinyLM(3), vocab_size=0)
