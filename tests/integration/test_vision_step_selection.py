"""The vision recipe with selection inside the step: Selective Backprop, RHO-LOSS, their random twin, noise share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning_curricula.recipes.vision.cli import VisionCLI
from lightning_curricula.recipes.vision.holdout import holdout_losses
from lightning_curricula.recipes.vision.models import SmallCNN
from lightning_curricula.recipes.vision.module import VisionClassifier

from lightning_curricula import OnlineBatchSelection, ReferenceLosses, TrainingDynamics

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "vision" / "configs"
TINY = ["--data.train_subset", "96", "--data.test_subset", "32", "--data.batch_size", "32"]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
QUIET += ["--trainer.num_sanity_val_steps", "0", "--trainer.accelerator", "cpu"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class BatchSizes(Callback):
    """Records the size of every loaded and trained batch (the kept examples) and the ids it trained on."""

    def __init__(self) -> None:
        self.loaded: list[int] = []
        self.sizes: list[int] = []
        self.ids: list[list[int]] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.loaded.append(int(batch["index"].numel()))
        self.sizes.append(int(outputs["losses"].numel()))
        self.ids.append(outputs["index"].tolist())


def cli(
    tmp_path: Path, config: str, *extra: str, epochs: int = 2, callbacks: list[Callback] | None = None
) -> VisionCLI:
    args = ["--config", str(CONFIGS / f"{config}.yaml"), "--trainer.max_epochs", str(epochs), *TINY, *QUIET]
    args += ["--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path), *extra]
    return VisionCLI(args=args, run=False, trainer_defaults={"callbacks": callbacks or []})


def tracker(cli: VisionCLI) -> TrainingDynamics:
    return next(c for c in cli.trainer.callbacks if isinstance(c, TrainingDynamics))  # type: ignore[attr-defined]


@pytest.mark.parametrize("config", ["selective_backprop", "selective_backprop_half_res", "rho_loss", "random_step"])
def test_steps_train_on_half_of_each_batch_and_the_tracker_sees_only_those(tmp_path: Path, config: str) -> None:
    sizes = BatchSizes()
    run = cli(tmp_path, config, "--trainer.enable_checkpointing", "false", callbacks=[sizes])
    run.trainer.fit(run.model, run.datamodule)
    assert sizes.sizes == [16, 16, 16] * 2  # batches of 32, half kept
    table = tracker(run).signals()
    assert int(table["visits"].sum()) == sum(sizes.sizes)
    trained = torch.tensor([i for ids in sizes.ids for i in ids])
    assert torch.equal(torch.bincount(trained, minlength=96).int(), table["visits"].int())
    selection = next(c for c in run.trainer.callbacks if isinstance(c, OnlineBatchSelection))  # type: ignore[attr-defined]
    assert selection.epoch_metrics["kept_share"] == 0.5
    assert selection.epoch_metrics["forward_only_passes"] == selection.epoch_metrics["backward_passes"] == 96


def test_half_resolution_scoring_scores_small_images_and_trains_on_full_size_ones(tmp_path: Path) -> None:
    run = cli(tmp_path, "selective_backprop_half_res", "--trainer.enable_checkpointing", "false", epochs=1)
    shapes: list[tuple[int, ...]] = []
    run.model.model.register_forward_pre_hook(lambda module, inputs: shapes.append(tuple(inputs[0].shape)))
    run.trainer.fit(run.model, run.datamodule)
    assert shapes.count((32, 1, 14, 14)) == 3  # each whole batch scored at half height and width
    assert shapes.count((16, 1, 28, 28)) == 3  # its kept half trained at full size
    assert len(shapes) == 6 + 1  # and one validation batch (32 test images, full size)
    with pytest.raises(ValueError, match="scoring_scale must be in"):
        VisionClassifier(scoring_scale=0.0)


@pytest.mark.parametrize("config", ["selective_backprop_stale", "random_step_stale"])
def test_stale_selective_backprop_scores_only_every_third_epoch(tmp_path: Path, config: str) -> None:
    sizes = BatchSizes()
    run = cli(tmp_path, config, "--trainer.enable_checkpointing", "false", epochs=4, callbacks=[sizes])
    scoring: list[int] = []  # the epochs of the scoring forwards: whole batches of 32 in eval mode, no gradients
    module = run.model

    def count(model: Any, inputs: tuple[torch.Tensor, ...]) -> None:
        if inputs[0].shape[0] == 32 and not module.trainer.validating and not model.training:
            scoring.append(module.current_epoch)

    module.model.register_forward_pre_hook(count)
    run.trainer.fit(module, run.datamodule)
    assert scoring == [0, 0, 0, 3, 3, 3]
    assert sizes.sizes == [16, 16, 16] * 4
    assert sizes.loaded == [32] * 3 + [16] * 6 + [32] * 3  # epochs 1 and 2 load only the kept examples
    metrics = next(c for c in run.trainer.callbacks if isinstance(c, OnlineBatchSelection)).epoch_metrics  # type: ignore[attr-defined]
    assert metrics["scoring_forwards"] == 2 * 96
    assert metrics["backward_passes"] == 4 * 48
    assert metrics["scored_examples"] == 96  # the last epoch (3) scores
    assert metrics["recalled_examples"] == 0
    assert int(tracker(run).signals()["visits"].sum()) == 4 * 48
    in_step = BatchSizes()  # the same selection in the step, from whole batches
    option = "--trainer.callbacks.init_args.select_before_loading"
    run = cli(tmp_path / "in_step", config, option, "false", "--trainer.enable_checkpointing", "false", epochs=4)
    run.trainer.callbacks.append(in_step)  # type: ignore[attr-defined]
    run.trainer.fit(run.model, run.datamodule)
    assert in_step.loaded == [32] * 12
    assert in_step.ids[:6] == sizes.ids[:6]  # epoch 1 selects from epoch 0's scores alike (then augmentation differs)
    refused = cli(
        tmp_path / "refused", config, "--model.scoring_scale", "0.5", "--trainer.enable_checkpointing", "false"
    )
    with pytest.raises(ValueError, match="scoring_scale=0.5 scores downsampled images, but rescore_every=3"):
        refused.trainer.fit(refused.model, refused.datamodule)


@pytest.mark.parametrize("config", ["selective_backprop_scored_once", "random_step_scored_once"])
def test_scored_once_configs_score_the_first_epoch_only_and_load_the_kept_40_percent(
    tmp_path: Path, config: str
) -> None:
    sizes = BatchSizes()
    run = cli(tmp_path, config, "--trainer.enable_checkpointing", "false", epochs=3, callbacks=[sizes])
    run.trainer.fit(run.model, run.datamodule)
    assert sizes.loaded == [32] * 3 + [13] * 6  # round(0.4 * 32): epochs 1 and 2 load the kept examples only
    assert sizes.sizes == [13] * 9
    metrics = next(c for c in run.trainer.callbacks if isinstance(c, OnlineBatchSelection)).epoch_metrics  # type: ignore[attr-defined]
    assert metrics["scoring_forwards"] == 96
    assert metrics["recalled_examples"] == 96


def test_selective_backprop_prefers_high_losses(tmp_path: Path) -> None:
    # Deterministic top-k on the loss: every kept example's scoring loss is at least every dropped one's.
    run = cli(tmp_path, "selective_backprop", "--trainer.enable_checkpointing", "false", epochs=1)
    kept_losses: list[tuple[torch.Tensor, torch.Tensor]] = []
    module = run.model
    selection = OnlineBatchSelection(keep=0.25, method="top_k")
    original = selection.select

    def spy(scores: torch.Tensor, **kwargs: Any) -> Any:
        chosen = original(scores, **kwargs)
        kept_losses.append((scores.clone(), chosen.positions.clone()))
        return chosen

    selection.select = spy  # type: ignore[method-assign]
    run.trainer.callbacks = [c for c in run.trainer.callbacks if not isinstance(c, OnlineBatchSelection)]  # type: ignore[attr-defined]
    run.trainer.callbacks.append(selection)  # type: ignore[attr-defined]
    run.trainer.fit(module, run.datamodule)
    assert kept_losses
    for scores, positions in kept_losses:
        dropped = torch.ones(scores.numel(), dtype=torch.bool)
        dropped[positions] = False
        assert positions.numel() == 8
        assert scores[positions].min() >= scores[dropped].max()


def test_rho_loss_trains_its_holdout_models_once_and_resumes_exactly(tmp_path: Path) -> None:
    every_epoch = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_top_k=-1, filename="{epoch}")
    first = cli(tmp_path / "first", "rho_loss", "--trainer.logger", "true", callbacks=[every_epoch])
    first.trainer.fit(first.model, first.datamodule)
    reference = first.model.irreducible
    assert reference is not None
    assert len(reference) == 96
    assert bool(reference.losses.isfinite().all())
    assert first.model.holdout_seconds > 0
    saved = ReferenceLosses.load(Path(first.trainer.log_dir) / "irreducible_losses.pt")  # type: ignore[arg-type]
    assert torch.equal(saved.losses, reference.losses)
    # Crash after epoch 0, resume: the holdout models are not retrained, and the run ends where the first ended.
    resumed = cli(tmp_path / "second", "rho_loss")
    resumed.model._train_holdout_models = lambda: pytest.fail("the holdout models were trained again")  # type: ignore[method-assign]
    resumed.trainer.fit(resumed.model, resumed.datamodule, ckpt_path=str(tmp_path / "checkpoints" / "epoch=0.ckpt"))
    assert resumed.model.irreducible is not None
    assert torch.equal(resumed.model.irreducible.losses, reference.losses)
    for name, value in first.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_rho_loss_reads_a_saved_reference_and_checks_its_size(tmp_path: Path) -> None:
    path = tmp_path / "reference.pt"
    ReferenceLosses(torch.zeros(95)).save(path)
    run = cli(tmp_path, "rho_loss", "--model.irreducible_losses", str(path), "--trainer.enable_checkpointing", "false")
    with pytest.raises(ValueError, match="95 losses but the training dataset has 96"):
        run.trainer.fit(run.model, run.datamodule)


def test_reducible_loss_without_a_selection_callback_fails_at_setup(tmp_path: Path) -> None:
    run = cli(tmp_path, "full", "--model.selection_score", "reducible_loss", "--trainer.enable_checkpointing", "false")
    with pytest.raises(ValueError, match="has none: add one to trainer.callbacks"):
        run.trainer.fit(run.model, run.datamodule)


def test_bad_selection_options_fail_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="selection_score must be 'loss' or 'reducible_loss', got 'gradient'"):
        VisionClassifier(selection_score="gradient")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="missing.pt' is not a file"):
        VisionClassifier(selection_score="reducible_loss", irreducible_losses=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="holdout_epochs must be >= 1, got 0"):
        VisionClassifier(holdout_epochs=0)


def test_holdout_losses_come_from_the_model_that_did_not_see_the_example() -> None:
    images = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(40) % 2
    data = [{"image": image, "label": label} for image, label in zip(images, labels, strict=True)]
    mean, std = torch.tensor([0.5]), torch.tensor([0.25])
    first = holdout_losses(data, lambda: SmallCNN(2, 1), mean=mean, std=std, epochs=1, batch_size=8, seed=3)
    again = holdout_losses(data, lambda: SmallCNN(2, 1), mean=mean, std=std, epochs=1, batch_size=8, seed=3)
    assert torch.equal(first.losses, again.losses)  # seeded: the same losses on every rank and on resume
    assert bool(first.losses.isfinite().all())
    assert first.losses.numel() == 40
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        holdout_losses(data, lambda: SmallCNN(2, 1), mean=mean, std=std, epochs=0)


def test_noisy_share_is_the_flipped_share_of_the_trained_examples(tmp_path: Path) -> None:
    run = cli(tmp_path, "selective_backprop", "--data.label_noise", "0.25", "--trainer.enable_checkpointing", "false")
    sizes = BatchSizes()
    run.trainer.callbacks.append(sizes)  # type: ignore[attr-defined]
    run.trainer.fit(run.model, run.datamodule)
    noisy = set(run.datamodule.noisy_ids.tolist())
    per_epoch = [sizes.ids[:3], sizes.ids[3:]]
    for record, batches in zip(run.history.records, per_epoch, strict=True):
        trained = [i for ids in batches for i in ids]
        assert record["noisy_share"] == pytest.approx(sum(i in noisy for i in trained) / len(trained))
