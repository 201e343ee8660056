"""`OnlineBatchSelection` in a real CPU `Trainer`: the same training as a plain loop that selects by hand,
cost counters and once-per-epoch logging, and automatic / manual optimisation, gradient accumulation and
mixed precision with every method."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import ClassificationDataset, Classifier, make_trainer, train_loader
from online_helpers import RecordingLogger, SelectiveClassifier, per_example_loss
from torch.nn import functional as F

from lightning_curricula import (
    FrozenReference,
    OnlineBatchSelection,
    excess_loss,
    find_online_selection,
    irreducible_losses,
    vocabulary_size,
    weighted_token_mean,
)
from lightning_curricula.step.selection import kept_count, reducible_loss, top_k_selection

SIZE = 37
BATCH = 8
BATCH_SIZES = [8, 8, 8, 8, 5]


def fit(model: SelectiveClassifier, selection: OnlineBatchSelection, *, epochs: int = 2, **kwargs: object) -> None:
    trainer = make_trainer(max_epochs=epochs, callbacks=[selection], **kwargs)  # type: ignore[arg-type]
    trainer.fit(model, train_loader(ClassificationDataset(SIZE), batch_size=BATCH))


def test_training_equals_a_plain_loop_that_selects_by_hand() -> None:
    model = SelectiveClassifier()
    fit(model, OnlineBatchSelection(keep=0.5), epochs=2)

    reference = Classifier()
    optimizer = torch.optim.SGD(reference.parameters(), lr=reference.lr, momentum=reference.momentum)
    loader = train_loader(ClassificationDataset(SIZE), batch_size=BATCH)
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        for batch in loader:
            with torch.no_grad():
                kept = top_k_selection(per_example_loss(reference, batch), 0.5).positions
            optimizer.zero_grad()
            F.cross_entropy(reference(batch["x"][kept]), batch["y"][kept]).backward()
            optimizer.step()
    for got, want in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want)


def test_counts_and_logs_once_per_epoch() -> None:
    logger = RecordingLogger()
    selection = OnlineBatchSelection(keep=0.5, name="sb")
    model = SelectiveClassifier()
    fit(model, selection, epochs=2, logger=logger)
    kept = sum(kept_count(size, 0.5) for size in BATCH_SIZES)  # 4 * 4 + 3 = 19
    assert [len(ids) for ids in model.kept_ids[:5]] == [4, 4, 4, 4, 3]
    records = [metrics for _, metrics in logger.records if "sb/kept_share" in metrics]
    assert len(records) == 2  # one write per epoch
    assert records[-1] == {
        "sb/scored_examples": 37.0,
        "sb/kept_examples": float(kept),
        "sb/kept_share": kept / 37,
        "sb/scoring_forwards": 74.0,
        "sb/forward_only_passes": 2.0 * (37 - kept),
        "sb/backward_passes": 2.0 * kept,
    }
    assert selection.calls == 10
    assert selection.state_dict()["totals"] == [74, 38, 0, 0, 10, 0, 0]


@pytest.mark.parametrize("method", ["top_k", "percentile", "random"])
@pytest.mark.parametrize(
    "options",
    [{"manual": True}, {"accumulate_grad_batches": 2}, {"precision": "bf16-mixed"}],
    ids=["manual", "accumulate", "bf16"],
)
def test_methods_with_manual_optimisation_accumulation_and_mixed_precision(method: str, options: dict) -> None:
    manual = bool(options.pop("manual", False))
    model = SelectiveClassifier(manual=manual)
    before = [p.detach().clone() for p in model.parameters()]
    selection = OnlineBatchSelection(keep=0.3, method=method, unbiased=method == "percentile", seed=3)  # type: ignore[arg-type]
    fit(model, selection, epochs=1, **options)
    assert [len(ids) for ids in model.kept_ids] == [kept_count(size, 0.3) for size in BATCH_SIZES]
    for scored, kept in zip(model.scored_ids, model.kept_ids, strict=True):
        assert set(kept) <= set(scored)
        assert len(set(kept)) == len(kept)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert selection.epoch_metrics["backward_passes"] == sum(kept_count(size, 0.3) for size in BATCH_SIZES)


def test_rho_loss_keeps_the_top_reducible_losses_of_each_batch() -> None:
    holdout = Classifier(seed=7)
    reference = irreducible_losses(holdout, ClassificationDataset(SIZE), per_example_loss, batch_size=5)
    model = SelectiveClassifier(reference=reference, lr=0.0)  # frozen: the scores are known in advance
    fit(model, OnlineBatchSelection(keep=0.5), epochs=1)
    dataset, frozen = ClassificationDataset(SIZE), Classifier()
    for scored, kept in zip(model.scored_ids, model.kept_ids, strict=True):
        ids = torch.tensor(scored)
        # The scored batch's rows in its order, not all 37 at once: a batch of another shape may run another
        # matrix-multiply kernel, and losses that differ in the last bits could swap two nearly tied scores.
        with torch.no_grad():
            losses = per_example_loss(frozen, {"x": dataset.x[ids], "y": dataset.y[ids]})
        scores = reducible_loss(losses, reference.lookup(ids))
        assert kept == ids[top_k_selection(scores, 0.5).positions].tolist()


def test_bad_options_fail_at_construction_naming_the_value() -> None:
    with pytest.raises(ValueError, match=r"keep must be a share in \(0, 1\], got 1.5"):
        OnlineBatchSelection(keep=1.5)
    with pytest.raises(ValueError, match="method must be one of .* got 'loss'"):
        OnlineBatchSelection(keep=0.5, method="loss")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unbiased=True reweights the 'percentile' method only, got method='top_k'"):
        OnlineBatchSelection(keep=0.5, unbiased=True)
    with pytest.raises(ValueError, match="seed must be a non-negative integer, got -1"):
        OnlineBatchSelection(keep=0.5, seed=-1)
    with pytest.raises(ValueError, match="Token selection takes method in .* has 'percentile'"):
        OnlineBatchSelection(keep=0.5, method="percentile").select_tokens(torch.ones(1, 2), torch.ones(1, 2))
    with pytest.raises(ValueError, match=r"keep must be a share in \(0, 1\], got 0"):
        OnlineBatchSelection(keep=0.5).select(torch.ones(3), keep=0)


def test_find_and_resume_checks(tmp_path: Path) -> None:
    trainer = make_trainer(callbacks=[])
    with pytest.raises(ValueError, match=r"Expected one OnlineBatchSelection in trainer.callbacks, found 0"):
        find_online_selection(trainer)
    state = OnlineBatchSelection(keep=0.5, method="random", seed=1).state_dict()
    with pytest.raises(
        ValueError, match="checkpoint has method 'random' and seed 1, this run has method 'random' and seed 2"
    ):
        OnlineBatchSelection(keep=0.5, method="random", seed=2).load_state_dict(state)
    path = tmp_path / "state.pt"
    torch.save(state, path)
    assert torch.load(path, weights_only=True)["version"] == 2


def test_token_selection_counts_tokens() -> None:
    selection = OnlineBatchSelection(keep=0.5, name="rho1")
    scores = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    kept = selection.select_tokens(scores, torch.tensor([[1, 1, 1], [1, 1, 0]]))
    assert kept.tolist() == [[False, False, True], [True, True, False]]
    assert selection.state_dict()["epoch"] == [2, 2, 5, 3, 1, 0, 0]


class TinyLM(torch.nn.Module):
    def __init__(self, vocab: int = 13) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(vocab)
        self.embed = torch.nn.Embedding(vocab, 6)
        self.dropout = torch.nn.Dropout(0.3)
        self.head = torch.nn.Linear(6, vocab)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.head

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.embed(ids)))


def next_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    labels = labels[:, 1:]
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels, reduction="none", ignore_index=-100)
    return losses, labels != -100


class Rho1LM(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.lm = TinyLM()
        self.reference = FrozenReference(TinyLM(), vocab_size=vocabulary_size(self.lm))
        self.lm.dropout.p = 0.0  # the gradient check recomputes the step's forward
        self.first: dict[str, Any] = {}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        losses, mask = next_token_losses(self.lm(batch["ids"]), batch["labels"])
        reference_losses, _ = next_token_losses(self.reference(batch["ids"]), batch["labels"])
        kept = find_online_selection(self.trainer).select_tokens(excess_loss(losses, reference_losses), mask)
        if not self.first:
            self.first = {"batch": batch, "kept": kept, "lm": copy.deepcopy(self.lm)}
        return weighted_token_mean(losses, kept)

    def on_after_backward(self) -> None:
        if "grads" not in self.first:
            self.first["grads"] = [p.grad.clone() for p in self.lm.parameters()]  # type: ignore[union-attr]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.5)


def test_rho1_token_selection_trains_on_the_kept_tokens_only_with_a_frozen_reference() -> None:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 13, (24, 7), generator=generator)
    labels = ids.clone()
    labels[:, :2] = -100
    data = [{"ids": i, "labels": label} for i, label in zip(ids, labels, strict=True)]
    module = Rho1LM()
    reference_before = copy.deepcopy(module.reference.state_dict())
    selection = OnlineBatchSelection(keep=0.4, name="rho1")
    make_trainer(max_epochs=2, callbacks=[selection]).fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    # The reference never trained and stayed in eval mode although Lightning called train() every epoch.
    assert not module.reference.training
    for key, value in module.reference.state_dict().items():
        assert torch.equal(value, reference_before[key]), key
    # The first step's gradient is the gradient of the mean loss over the kept tokens alone.
    first = module.first
    losses, _ = next_token_losses(first["lm"](first["batch"]["ids"]), first["batch"]["labels"])
    losses[first["kept"]].mean().backward()
    for got, want in zip(first["grads"], (p.grad for p in first["lm"].parameters()), strict=True):
        torch.testing.assert_close(got, want)
    assert selection.epoch_metrics["kept_token_share"] == 3 * round(0.4 * 40) / 120  # 8 sequences x 5 loss tokens
