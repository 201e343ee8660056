"""A Hugging Face stream under DDP: two CPU processes (gloo, ``ddp_spawn``), two DataLoader workers each.

`ShardedStream` gives both ranks the same number of batches and every example exactly once per epoch
across ranks and workers; `StreamDynamics` keys its tables by the stream's id column and ends identical on
both ranks; `OnlineBatchSelection` selects within each rank's batches, and the tracker reads the kept examples'
ids from the step's outputs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import lightning.pytorch as pl
import pytest
import torch
from helpers import NUM_FEATURES, Classifier, make_trainer
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader

from lightning_curricula import (
    OnlineBatchSelection,
    ShardedStream,
    StreamDynamics,
    find_online_selection,
    weighted_mean,
)

SIZE = 45  # 2 ranks x batch 4: 5 full rounds of 8, then 5 examples split 3 + 2
BATCH = 4
EPOCHS = 2
WORKERS = 2
IDS = list(range(500, 500 + SIZE))


def stream() -> datasets.IterableDataset:
    generator = torch.Generator().manual_seed(0)
    rows = {
        "id": IDS,
        "x": torch.randn(SIZE, NUM_FEATURES, generator=generator).tolist(),
        "y": torch.randint(0, 3, (SIZE,), generator=generator).tolist(),
    }
    return datasets.Dataset.from_dict(rows).to_iterable_dataset(num_shards=3).with_format("torch")


class StreamData(pl.LightningDataModule):
    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(ShardedStream(stream(), batch_size=BATCH), batch_size=None, num_workers=WORKERS)


class StreamClassifier(Classifier):
    def __init__(self) -> None:
        super().__init__(lr=0.1)
        self.seen: list[tuple[int, list[int]]] = []

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> dict[str, Tensor]:  # type: ignore[override]
        self.seen.append((self.current_epoch, batch["id"].tolist()))
        with torch.no_grad():
            scores = F.cross_entropy(self(batch["x"]), batch["y"], reduction="none")
        kept = find_online_selection(self.trainer).select(scores).positions
        losses = F.cross_entropy(self(batch["x"][kept]), batch["y"][kept], reduction="none")
        return {"loss": weighted_mean(losses), "losses": losses.detach(), "id": batch["id"][kept]}


class Dump(Callback):
    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        tracker = next(c for c in trainer.callbacks if isinstance(c, StreamDynamics))  # type: ignore[attr-defined]
        assert isinstance(pl_module, StreamClassifier)
        state = {"signals": tracker.signals(), "seen": pl_module.seen}
        torch.save(state, self.directory / f"rank{trainer.global_rank}.pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("stream_ddp")
    trainer = make_trainer(
        max_epochs=EPOCHS,
        callbacks=[OnlineBatchSelection(keep=0.5), StreamDynamics(id_column="id"), Dump(str(directory))],
        strategy="ddp_spawn",
        devices=2,
    )
    trainer.fit(StreamClassifier(), datamodule=StreamData())
    return [torch.load(directory / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


@pytest.mark.slow
def test_every_example_once_per_epoch_across_ranks_and_workers(ranks: list[dict[str, Any]]) -> None:
    for epoch in range(EPOCHS):
        batches = [[ids for e, ids in state["seen"] if e == epoch] for state in ranks]
        assert [len(b) for b in batches] == [6, 6]  # equal batch counts: ceil(45 / 8)
        assert Counter(i for per_rank in batches for ids in per_rank for i in ids) == Counter(IDS)


@pytest.mark.slow
def test_stream_tracker_is_keyed_by_id_and_identical_on_both_ranks(ranks: list[dict[str, Any]]) -> None:
    first, second = (state["signals"] for state in ranks)
    assert sorted(first) == sorted(second)
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0, equal_nan=True)
    assert set(first["id"].tolist()) <= set(IDS)
    # Per epoch, rank 0 keeps 2 of each of its 5 batches of 4 and 2 of its last 3; rank 1 then 1 of its last 2.
    assert int(first["visits"].sum()) == EPOCHS * ((5 * 2 + 2) + (5 * 2 + 1))
