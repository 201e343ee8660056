"""`TrainingDynamics(sharded=True)` under DDP on 2 and 4 gloo processes: the tables and plans of the unsharded run.

Each run trains a linear classifier (``lr > 0``, so the scores change) through a `CurriculumSampler`, and every
rank writes, per epoch, the ``(index, weight)`` pairs it trained on and its tracker's signals. The sharded and
the unsharded run must train the same visits on the same ranks, and the sharded ranks' signals, concatenated in
rank order, must equal the unsharded tables. The resume test crashes a sharded run and resumes it from the
checkpoint of the last finished epoch, which refers to the files each rank wrote beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import lightning.pytorch as pl
import pytest
import torch
from helpers import COUNT_COLUMNS, ClassificationDataset, CrashAt, make_trainer
from selection_helpers import one_thread  # noqa: F401
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from lightning_curricula import (
    Bandit,
    FullData,
    InfoBatch,
    Policy,
    StaticPruning,
    TrainingDynamics,
    curriculum_dataloader,
)
from lightning_curricula.step.losses import weighted_mean

SIZE = 53  # prime: unequal shards, and padded plans
EPOCHS = 4
BATCH_SIZE = 4


class Recorder(pl.LightningModule):
    """A linear classifier behind a `curriculum_dataloader`; writes what each rank trained and tracked."""

    def __init__(self, directory: str, policy: Policy) -> None:
        super().__init__()
        self.layer = nn.Linear(8, 3)
        with torch.no_grad():  # the same weights in every run
            self.layer.weight.copy_(torch.randn(3, 8, generator=torch.Generator().manual_seed(0)))
            self.layer.bias.zero_()
        self.policy = policy
        self.directory = Path(directory)
        self.visits: list[tuple[int, float]] = []

    def train_dataloader(self) -> DataLoader[Any]:
        dynamics = next(c for c in self.trainer.callbacks if isinstance(c, TrainingDynamics))  # type: ignore[attr-defined]
        # Lightning builds the first loader before on_train_start: a resumed shard must already read as one.
        assert not (dynamics.sharded and dynamics.has_tables) or dynamics.table_shard is not None
        dataset = ClassificationDataset(SIZE)
        return curriculum_dataloader(dataset, self.trainer, self.policy, seed=3, batch_size=BATCH_SIZE)

    def on_train_epoch_start(self) -> None:
        self.visits = []

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        self.visits += list(zip(batch["index"].tolist(), batch["weight"].tolist(), strict=True))
        logits = self.layer(batch["x"])
        losses = F.cross_entropy(logits, batch["y"], reduction="none")
        return {
            "loss": weighted_mean(losses, batch["weight"]),
            "losses": losses.detach(),
            "logits": logits.detach(),
            "targets": batch["y"],
        }

    def on_train_epoch_end(self) -> None:  # runs after the callbacks' epoch end: the tables include this epoch
        dynamics = next(c for c in self.trainer.callbacks if isinstance(c, TrainingDynamics))  # type: ignore[attr-defined]
        record = {"visits": self.visits, "signals": dynamics.signals()}
        torch.save(record, self.directory / f"rank{self.global_rank}_epoch{self.current_epoch}.pt")

    def on_train_end(self) -> None:  # every rank writes its shard (a sharded tracker) or the whole table (rank 0)
        dynamics = next(c for c in self.trainer.callbacks if isinstance(c, TrainingDynamics))  # type: ignore[attr-defined]
        if dynamics.sharded:
            dynamics.to_parquet(self.directory / "export")
        elif self.global_rank == 0:
            dynamics.to_parquet(self.directory / "export.parquet")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)


def fit(
    directory: Path,
    policy: Policy,
    world: int,
    *,
    sharded: bool,
    ckpt_path: Path | None = None,
    root: Path | None = None,
    epochs: int = EPOCHS,
    dynamics: Mapping[str, Any] | None = None,
    **options: Any,
) -> None:
    """Train and record into ``directory``; ``root`` (by default ``directory``) is the ``default_root_dir``.

    ``dynamics`` holds more options of the `TrainingDynamics`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    callbacks = [TrainingDynamics(sharded=sharded, **(dynamics or {})), *options.pop("callbacks", [])]
    trainer = make_trainer(
        directory if root is None else root,
        max_epochs=epochs,
        callbacks=callbacks,
        reload_dataloaders_every_n_epochs=1,
        strategy="ddp_spawn",
        devices=world,
        **options,
    )
    trainer.fit(Recorder(str(directory), policy), ckpt_path=ckpt_path)


def load(directory: Path, rank: int, epoch: int) -> dict[str, Any]:
    return torch.load(directory / f"rank{rank}_epoch{epoch}.pt", weights_only=True)  # type: ignore[no-any-return]


def table(directory: Path, world: int, epoch: int) -> dict[str, Tensor]:
    """The whole table after ``epoch``: any rank's if unsharded, else the ranks' shards concatenated in rank order."""
    shards = [load(directory, rank, epoch)["signals"] for rank in range(world)]
    if shards[0]["index"].numel() == SIZE:
        return shards[0]  # type: ignore[no-any-return]
    return {key: torch.cat([shard[key] for shard in shards]) for key in shards[0]}


def assert_same_runs(run: Path, reference: Path, world: int, epochs: range = range(EPOCHS)) -> None:
    """The same visits on every rank in every epoch, and the same tables after it."""
    for epoch in epochs:
        for rank in range(world):
            assert load(run, rank, epoch)["visits"] == load(reference, rank, epoch)["visits"], (epoch, rank)
        expected, actual = table(reference, world, epoch), table(run, world, epoch)
        assert sorted(actual) == sorted(expected)
        for key, values in expected.items():
            assert torch.equal(actual[key].isnan(), values.isnan()), (epoch, key)
            assert torch.equal(actual[key].nan_to_num(-9.0), values.nan_to_num(-9.0)), (epoch, key)
    assert set(expected) >= set(COUNT_COLUMNS) | {"el2n", "aum"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("world", "policy"),
    [(2, InfoBatch(0.6)), (2, StaticPruning("el2n", keep=0.5, mode="band", band_offset=0.1)), (4, Bandit(0.4))],
    ids=["2-infobatch", "2-static_band", "4-bandit"],
)
def test_sharded_tables_and_plans_equal_the_unsharded_ones(world: int, policy: Policy, tmp_path: Path) -> None:
    fit(tmp_path / "sharded", policy, world, sharded=True)
    fit(tmp_path / "unsharded", policy, world, sharded=False)
    assert_same_runs(tmp_path / "sharded", tmp_path / "unsharded", world)
    sizes = [len(load(tmp_path / "sharded", rank, 0)["signals"]["index"]) for rank in range(world)]
    assert sum(sizes) == SIZE
    assert max(sizes) < SIZE  # each rank held its slice only
    files = sorted(str(path) for path in (tmp_path / "sharded" / "export").glob("shard-*.parquet"))
    assert len(files) == world
    exported = datasets.load_dataset("parquet", data_files=files, split="train").with_format("torch")[:]
    expected = datasets.Dataset.from_parquet(str(tmp_path / "unsharded" / "export.parquet")).with_format("torch")[:]
    assert list(exported) == list(expected)
    for column, values in expected.items():
        assert torch.equal(exported[column].nan_to_num(-9.0), values.nan_to_num(-9.0)), column
    later = [len(load(tmp_path / "sharded", 0, epoch)["visits"]) for epoch in range(EPOCHS)]
    assert min(later) < later[0]  # the policy pruned: plans of another length than full data


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")  # the refused run has no ModelCheckpoint
def test_a_sharded_run_resumed_after_a_crash_ends_with_the_straight_runs_tables(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    def checkpoints(directory: Path) -> ModelCheckpoint:
        return ModelCheckpoint(dirpath=directory / "checkpoints", filename="{epoch}", save_top_k=-1)

    policy = InfoBatch(0.6)
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    fit(straight, policy, 2, sharded=True, enable_checkpointing=True, callbacks=[checkpoints(straight)])
    with pytest.raises(Exception, match="crash at the start of epoch 2"):
        fit(crashed, policy, 2, sharded=True, enable_checkpointing=True, callbacks=[checkpoints(crashed), CrashAt(2)])
    checkpoint = crashed / "checkpoints" / "epoch=1.ckpt"
    shard_files = sorted(path.name for path in crashed.glob("dynamics_shards/dynamics/*/epoch=2/*"))  # one fit's
    assert shard_files == ["shard-00000-of-00002.pt", "shard-00001-of-00002.pt"]
    fit(
        crashed,
        policy,
        2,
        sharded=True,
        enable_checkpointing=True,
        callbacks=[checkpoints(crashed)],
        ckpt_path=checkpoint,
    )
    assert_same_runs(crashed, straight, 2, epochs=range(2, EPOCHS))

    with pytest.raises(ValueError, match="sharded over 2 ranks, but this run has 1"):
        make_trainer(
            tmp_path / "one",
            max_epochs=EPOCHS,
            callbacks=[TrainingDynamics(sharded=True)],
            reload_dataloaders_every_n_epochs=1,
        ).fit(Recorder(str(tmp_path), policy), ckpt_path=checkpoint)


class TablesAtStart(pl.Callback):
    """Writes each rank's tables as a resumed run starts (after the checkpoint is loaded) to ``rank<r>_start.pt``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dynamics = next(c for c in trainer.callbacks if isinstance(c, TrainingDynamics))  # type: ignore[attr-defined]
        torch.save(dynamics.signals(), self.directory / f"rank{trainer.global_rank}_start.pt")


def tables_at_start(directory: Path, world: int) -> dict[str, Tensor]:
    """The whole table a resumed run started from: its ranks' shards concatenated in rank order."""
    shards = [torch.load(directory / f"rank{rank}_start.pt", weights_only=True) for rank in range(world)]
    return {key: torch.cat([shard[key] for shard in shards]) for key in shards[0]}


def assert_tables_equal(actual: Mapping[str, Tensor], expected: Mapping[str, Tensor], what: str) -> None:
    assert sorted(actual) == sorted(expected), what
    for key, values in expected.items():
        assert torch.equal(actual[key].isnan(), values.isnan()), (what, key)
        assert torch.equal(actual[key].nan_to_num(-9.0), values.nan_to_num(-9.0)), (what, key)


def every_checkpoint(directory: Path) -> Any:
    from lightning.pytorch.callbacks import ModelCheckpoint

    return ModelCheckpoint(dirpath=directory, filename="{epoch}", save_top_k=-1)


def latest_checkpoint(directory: Path) -> Any:
    from lightning.pytorch.callbacks import ModelCheckpoint

    return ModelCheckpoint(dirpath=directory, filename="{epoch}", save_top_k=1)  # removes the one before


def shard_bytes(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*.pt"))}


def shard_record(checkpoint: Path) -> dict[str, Any]:
    """What ``checkpoint`` says of the tracker's shards: run id, directory, world size, epochs tracked."""
    state = torch.load(checkpoint, weights_only=True)["callbacks"][TrainingDynamics().state_key]
    return state["shard"]  # type: ignore[no-any-return]


@pytest.mark.slow
def test_two_runs_in_one_root_directory_resume_each_their_own_tables(tmp_path: Path) -> None:
    """Run B, started later in the same ``default_root_dir``, neither overwrites nor lends its shards to run A."""
    root, a, b = tmp_path / "root", tmp_path / "a", tmp_path / "b"
    options = {"sharded": True, "root": root, "enable_checkpointing": True}
    fit(a, InfoBatch(0.6), 2, callbacks=[every_checkpoint(a / "checkpoints")], **options)
    a_shards = shard_bytes(root / "dynamics_shards")
    fit(b, InfoBatch(0.3), 2, callbacks=[every_checkpoint(b / "checkpoints")], **options)
    assert not torch.equal(table(a, 2, 1)["visits"], table(b, 2, 1)["visits"])  # the runs' tables differ
    b_shards = {name: data for name, data in shard_bytes(root / "dynamics_shards").items() if name not in a_shards}

    # Resume A after epoch 1 (two epochs tracked): A's tables, then the rest of A's straight run.
    resumed = tmp_path / "a_resumed"
    fit(
        resumed,
        InfoBatch(0.6),
        2,
        callbacks=[every_checkpoint(resumed / "checkpoints"), TablesAtStart(resumed)],
        ckpt_path=a / "checkpoints" / "epoch=1.ckpt",
        **options,
    )
    assert_tables_equal(tables_at_start(resumed, 2), table(a, 2, 1), "resumed A")
    assert_same_runs(resumed, a, 2, epochs=range(2, EPOCHS))

    # One run id per run, the same on both ranks; the resumed run wrote on under A's, B's files are untouched.
    run_a, run_b = (shard_record(run / "checkpoints" / "epoch=1.ckpt")["run_id"] for run in (a, b))
    assert run_a != run_b
    for epoch in range(2, EPOCHS):
        record = shard_record(resumed / "checkpoints" / f"epoch={epoch}.ckpt")
        assert record["run_id"] == run_a
        assert Path(record["directory"]) == root / "dynamics_shards" / "dynamics" / run_a / f"epoch={epoch + 1}"
    for name in a_shards:
        assert name.startswith(f"dynamics/{run_a}/epoch="), name
        shard = torch.load(root / "dynamics_shards" / name, weights_only=True)
        assert shard["run_id"] == run_a, name
    assert {name: data for name, data in shard_bytes(root / "dynamics_shards").items() if name in b_shards} == b_shards
    assert all(name.startswith(f"dynamics/{run_b}/") for name in b_shards)


@pytest.mark.slow
def test_shards_whose_checkpoints_are_gone_are_deleted_and_no_other_runs(tmp_path: Path) -> None:
    root, kept, collected = tmp_path / "root", tmp_path / "kept", tmp_path / "collected"
    options = {"sharded": True, "root": root, "enable_checkpointing": True}
    policy = FullData()  # plans that do not depend on max_epochs: the resumed run trains one epoch more
    fit(
        kept,
        policy,
        2,
        callbacks=[latest_checkpoint(kept / "checkpoints")],
        dynamics={"delete_stale_shards": False},
        **options,
    )
    (kept_run,) = (root / "dynamics_shards" / "dynamics").iterdir()
    kept_files = shard_bytes(kept_run)
    assert sorted(path.name for path in kept_run.iterdir()) == [f"epoch={e}" for e in range(1, EPOCHS + 1)]

    fit(collected, policy, 2, callbacks=[latest_checkpoint(collected / "checkpoints")], **options)
    (run,) = [path for path in (root / "dynamics_shards" / "dynamics").iterdir() if path != kept_run]
    assert shard_bytes(kept_run) == kept_files  # another run's shards: untouched
    assert [path.name for path in (collected / "checkpoints").iterdir()] == [f"epoch={EPOCHS - 1}.ckpt"]
    # Only the shards of the one checkpoint left, both ranks' files.
    assert [path.name for path in run.iterdir()] == [f"epoch={EPOCHS}"]
    assert sorted(path.name for path in (run / f"epoch={EPOCHS}").iterdir()) == [
        "shard-00000-of-00002.pt",
        "shard-00001-of-00002.pt",
    ]

    resumed = tmp_path / "resumed"
    fit(
        resumed,
        policy,
        2,
        epochs=EPOCHS + 1,
        callbacks=[latest_checkpoint(resumed / "checkpoints"), TablesAtStart(resumed)],
        ckpt_path=collected / "checkpoints" / f"epoch={EPOCHS - 1}.ckpt",
        **options,
    )
    assert_tables_equal(tables_at_start(resumed, 2), table(collected, 2, EPOCHS - 1), "resumed after the collection")
    # The resumed run wrote on under its run's id; the shards it resumed from belong to a checkpoint it never
    # held (another folder), so they stay.
    assert sorted(path.name for path in run.iterdir()) == [f"epoch={EPOCHS}", f"epoch={EPOCHS + 1}"]
    assert shard_record(resumed / "checkpoints" / f"epoch={EPOCHS}.ckpt")["run_id"] == run.name
    assert shard_bytes(kept_run) == kept_files
