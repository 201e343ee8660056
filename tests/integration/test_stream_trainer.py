"""Streams in a real CPU `Trainer`: `StreamDynamics` fails at fit start when the stream lacks its id column,
tracks a Hugging Face stream by id with selection inside the step, and resumes from an epoch-end checkpoint."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch
from helpers import NUM_FEATURES, Classifier, make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader

from lightning_curricula import OnlineBatchSelection, ShardedStream, StreamDynamics, find_online_selection

SIZE = 30


def stream() -> datasets.IterableDataset:
    generator = torch.Generator().manual_seed(0)
    rows = {
        "doc": list(range(100, 100 + SIZE)),
        "x": torch.randn(SIZE, NUM_FEATURES, generator=generator).tolist(),
        "y": torch.randint(0, 3, (SIZE,), generator=generator).tolist(),
    }
    return datasets.Dataset.from_dict(rows).to_iterable_dataset(num_shards=2).with_format("torch")


class StreamClassifier(Classifier):
    """Selects half of each batch with the callback it brings itself (``configure_callbacks``)."""

    def __init__(self) -> None:
        super().__init__(lr=0.1)

    def configure_callbacks(self) -> list[Any]:
        return [OnlineBatchSelection(keep=0.5, method="random", seed=1)]

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(ShardedStream(stream(), batch_size=8), batch_size=None)

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> dict[str, Tensor]:  # type: ignore[override]
        kept = find_online_selection(self.trainer).select(torch.zeros(batch["y"].numel())).positions
        losses = F.cross_entropy(self(batch["x"][kept]), batch["y"][kept], reduction="none")
        return {"loss": losses.mean(), "losses": losses.detach(), "doc": batch["doc"][kept]}


def test_a_stream_without_the_id_column_fails_at_fit_start() -> None:
    trainer = make_trainer(max_epochs=1, callbacks=[StreamDynamics(id_column="id")])
    with pytest.raises(ValueError, match=r"key by the column 'id', but the stream has the columns \['doc', 'x', 'y'\]"):
        trainer.fit(StreamClassifier())


def test_tracks_the_kept_examples_by_id_and_resumes(tmp_path: Path) -> None:
    tracker = StreamDynamics(id_column="doc")  # the kept ids come from the step's outputs, not from the batch
    checkpoints = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1, save_on_train_epoch_end=True)
    make_trainer(tmp_path, max_epochs=2, callbacks=[tracker, checkpoints], enable_checkpointing=True).fit(
        StreamClassifier()
    )
    signals = tracker.signals()
    # 4 batches per epoch (8, 8, 8, 6), half kept: 4 + 4 + 4 + 3 = 15 visits per epoch.
    assert int(signals["visits"].sum()) == 2 * 15
    assert set(signals["doc"].tolist()) <= set(range(100, 100 + SIZE))

    resumed = StreamDynamics(id_column="doc")
    make_trainer(tmp_path / "resumed", max_epochs=2, callbacks=[resumed], enable_checkpointing=True).fit(
        StreamClassifier(), ckpt_path=tmp_path / "epoch=0.ckpt"
    )
    for key, value in signals.items():
        torch.testing.assert_close(resumed.signals()[key], value, rtol=0, atol=0, equal_nan=True, msg=key)
