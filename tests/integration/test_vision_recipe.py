"""The vision recipe on CPU: the CLI end to end on tiny data, LR schedules, label noise, augmentation, data errors."""

from __future__ import annotations

import csv
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import make_trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning_curricula.recipes.vision import datamodule as vision_data
from lightning_curricula.recipes.vision.cli import VisionCLI, main
from lightning_curricula.recipes.vision.datamodule import (
    VisionDataModule,
    flip_labels,
    random_crop,
    random_horizontal_flip,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "vision" / "configs"
TINY = ["--data.train_subset", "96", "--data.test_subset", "48", "--data.batch_size", "32"]
QUIET = [
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--trainer.num_sanity_val_steps",
    "0",
    "--trainer.accelerator",
    "cpu",
]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: tiny convolutions gain nothing from more, and a shared CPU loses a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_cli(tmp_path: Path, config: str, *extra: str, epochs: int = 2) -> VisionCLI:
    args = ["--config", str(CONFIGS / f"{config}.yaml"), "--trainer.max_epochs", str(epochs), *TINY, *QUIET]
    args += ["--trainer.logger", "false", "--trainer.enable_checkpointing", "false"]
    args += ["--trainer.default_root_dir", str(tmp_path), *extra]
    return VisionCLI(args=args, run=False)


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_fit_subcommand_end_to_end(tmp_path: Path) -> None:
    """`python -m lightning_curricula.recipes.vision fit --config ...` in-process: logs, config and checkpoint."""
    main(
        [
            "fit",
            "--config",
            str(CONFIGS / "curriculum.yaml"),
            "--trainer.max_epochs",
            "3",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
            *TINY,
            *QUIET,
        ]
    )
    run = tmp_path / "curriculum" / "version_0"
    assert (run / "config.yaml").is_file()
    assert list((run / "checkpoints").glob("*.ckpt"))
    logged = scalars(run)
    for tag in ("val/acc", "val/loss", "train/loss", "val/acc_by_sample_passes", "dynamics/sample_passes"):
        assert tag in logged, tag
    # Curriculum: a full first epoch (96), then the easiest share pace(1/2) = 0.2 + 0.8 * 0.5 / 0.8 = 0.7 of it,
    # then all of it (the last epoch is at progress 1).
    passes = [step for step, _ in logged["val/acc_by_sample_passes"]]
    assert passes == [96, 96 + 68, 96 + 68 + 96]
    assert [value for _, value in logged["dynamics/sample_passes"]] == [96.0, 164.0, 260.0]


def test_schedule_ends_exactly_at_the_planned_step(tmp_path: Path) -> None:
    cli = tiny_cli(tmp_path, "infobatch", epochs=4)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    config = cli.trainer.lr_scheduler_configs[0]
    assert config.interval == "step"
    assert isinstance(config.scheduler, torch.optim.lr_scheduler.OneCycleLR)
    # InfoBatch with budget 0.75 trains 0.75 * 4 * 96 passes in fewer steps than Lightning's estimate.
    assert config.scheduler.total_steps == cli.trainer.global_step < 3 * 4  # 3 batches of 32 in a full epoch
    assert cli.history.sample_passes == round(0.75 * 4 * 96)
    assert cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]["test/acc"] >= 0.0


def test_score_dependent_epochs_fall_back_to_an_epoch_cosine(tmp_path: Path) -> None:
    cli = tiny_cli(tmp_path, "self_paced", epochs=2)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    config = cli.trainer.lr_scheduler_configs[0]
    assert config.interval == "epoch"
    assert isinstance(config.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)


def test_cli_forces_reloading_and_links_sizes(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="reload_dataloaders_every_n_epochs"):
        cli = tiny_cli(tmp_path, "full", "--trainer.reload_dataloaders_every_n_epochs", "0", "--seed_everything", "7")
    assert cli.trainer.reload_dataloaders_every_n_epochs == 1
    assert cli.datamodule.seed == 7
    assert (cli.model.hparams["num_classes"], cli.model.hparams["in_channels"]) == (10, 1)


@pytest.mark.parametrize("share", [0.0, 0.1, 0.25])
def test_label_noise_flips_exactly_the_recorded_ids(tmp_path: Path, share: float) -> None:
    data = VisionDataModule(train_subset=400, test_subset=16, label_noise=share, seed=3)
    trainer = make_trainer(tmp_path, logger=TensorBoardLogger(tmp_path, name="noise"))
    data.trainer = trainer
    data.setup("fit")
    labels = torch.tensor([int(row["label"]) for row in data.train_set])
    changed = (labels != data.clean_labels).nonzero().squeeze(1)
    assert torch.equal(changed, data.noisy_ids)
    assert data.noisy_ids.numel() == round(share * 400)
    assert torch.equal(labels, data.train_labels)
    assert int(labels.max()) < data.num_classes
    saved = Path(trainer.log_dir) / "label_noise.csv"
    if share == 0.0:
        assert not saved.exists()
        return
    with saved.open() as file:
        rows = list(csv.DictReader(file))
    assert [int(row["index"]) for row in rows] == data.noisy_ids.tolist()
    assert all(int(row["clean_label"]) != int(row["noisy_label"]) for row in rows)
    assert [int(row["noisy_label"]) for row in rows] == labels[data.noisy_ids].tolist()


def test_label_noise_is_seeded() -> None:
    labels = torch.arange(1000) % 10
    first = flip_labels(labels, 0.2, 10, torch.Generator().manual_seed(1))
    again = flip_labels(labels, 0.2, 10, torch.Generator().manual_seed(1))
    other = flip_labels(labels, 0.2, 10, torch.Generator().manual_seed(2))
    assert torch.equal(first[0], again[0])
    assert torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])
    # Symmetric: the flipped labels spread over all the other classes.
    moved = (first[0][first[1]] - labels[first[1]]) % 10
    assert set(moved.tolist()) == set(range(1, 10))


def test_random_crop_takes_a_window_of_the_padded_image() -> None:
    images = torch.rand(8, 3, 6, 5)
    crops = random_crop(images, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for image, crop in zip(padded, crops, strict=True):
        windows = [image[:, top : top + 6, left : left + 5] for top in range(5) for left in range(5)]
        assert any(torch.equal(crop, window) for window in windows)


def test_horizontal_flip_mirrors_or_keeps_each_image() -> None:
    images = torch.rand(32, 1, 4, 4)
    flipped = random_horizontal_flip(images, torch.Generator().manual_seed(0))
    mirrored = [torch.equal(f, i.flip(-1)) for f, i in zip(flipped, images, strict=True)]
    kept = [torch.equal(f, i) for f, i in zip(flipped, images, strict=True)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True))
    assert 0 < sum(mirrored) < 32


def test_unknown_dataset_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="embedded, fashion_mnist, digits"):
        VisionDataModule("cifar10")


def test_hub_dataset_fails_at_once_when_the_hub_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(vision_data, "_hub_reachable", lambda timeout=3.0: False)
    data = VisionDataModule("uoft-cs/cifar10")
    assert (data.num_classes, data.in_channels, data.image_column) == (10, 3, "img")  # known without the Hub
    with pytest.raises(ConnectionError, match="--data.dataset embedded"):
        data.prepare_data()
    with pytest.raises(ConnectionError, match="--data.dataset fashion_mnist"):
        _ = VisionDataModule("someone/unknown-images").num_classes


def test_hub_dataset_offline_mode_names_the_alternatives(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("Couldn't reach 'uoft-cs/cifar10' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConnectionError, match="HF_HUB_OFFLINE is set.*--data.dataset embedded"):
        VisionDataModule("uoft-cs/cifar10").setup("fit")


def test_digits_are_upsampled_and_split() -> None:
    pytest.importorskip("sklearn")
    data = VisionDataModule("digits")
    data.setup("fit")
    assert data.image_shape == (1, 24, 24)
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (1258, 180, 359)
    assert data.horizontal_flip is False


@pytest.mark.parametrize(
    ("options", "sizes"),
    [
        ({}, (3500, 500, 1000)),  # the embedded MNIST-5k's default: 500 of its 4,000 training images held out
        ({"train_subset": 200}, (200, 20, 1000)),  # a tenth of the subset, drawn outside it
        ({"val_size": 0}, (4000, 1000, 1000)),  # the test split doubles as the validation set
    ],
)
def test_validation_is_held_out_of_the_training_split(options: dict[str, int], sizes: tuple[int, int, int]) -> None:
    data = VisionDataModule(seed=3, **options)
    data.setup("fit")
    assert data.split_sizes() == sizes
    train, val, test = (
        {image.numpy().tobytes() for image in split["image"]} for split in (data.train_set, data.val_set, data.test_set)
    )
    if options.get("val_size") == 0:
        assert val == test
    else:  # disjoint from the training images, and from the test split
        assert not val & train
        assert not val & test
    again = VisionDataModule(seed=3, **options)
    again.setup("fit")
    assert again.val_set["label"] == data.val_set["label"]  # seeded: the same draw each time


class StopAfterFirstEpoch(pl.Callback):
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.should_stop = True


def test_resumed_run_matches_the_uninterrupted_one(tmp_path: Path) -> None:
    """Plans, augmentation, schedule and the accuracy-by-passes record all continue exactly from a checkpoint."""
    checkpoints = ["--trainer.enable_checkpointing", "true"]
    whole = tiny_cli(tmp_path / "whole", "curriculum", epochs=3)
    whole.trainer.fit(whole.model, datamodule=whole.datamodule)
    first = tiny_cli(tmp_path / "first", "curriculum", *checkpoints, epochs=3)
    first.trainer.callbacks.append(StopAfterFirstEpoch())
    first.trainer.fit(first.model, datamodule=first.datamodule)
    (checkpoint,) = (tmp_path / "first").rglob("*.ckpt")
    resumed = tiny_cli(tmp_path / "resumed", "curriculum", *checkpoints, epochs=3)
    resumed.trainer.fit(resumed.model, datamodule=resumed.datamodule, ckpt_path=str(checkpoint))
    assert [r["sample_passes"] for r in resumed.history.records] == [r["sample_passes"] for r in whole.history.records]
    assert [r["val/acc"] for r in resumed.history.records] == [r["val/acc"] for r in whole.history.records]
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_data_module_pickles_its_settings_not_its_data() -> None:
    """ddp_spawn pickles the data module into each process, which loads its own data in setup()."""
    data = VisionDataModule("embedded", seed=3, train_subset=64, test_subset=32, label_noise=0.25)
    data.setup("fit")
    copy = pickle.loads(pickle.dumps(data))
    assert copy.train_set is None
    assert copy.noisy_ids.numel() == 0
    assert (copy.dataset, copy.seed, copy.train_subset, copy.label_noise) == ("embedded", 3, 64, 0.25)
    copy.setup("fit")
    assert torch.equal(copy.train_labels, data.train_labels)
    assert torch.equal(copy.noisy_ids, data.noisy_ids)
