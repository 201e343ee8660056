"""Wall-clock overhead of `TrainingDynamics`: the same SmallCNN on Fashion-MNIST with and without tracking.

Every configuration trains the same model from the same seed on the same data in the same order. The
runs are interleaved in one process (baseline, tracked, baseline, tracked, ...; the order inside each
pair alternates from one repeat to the next) so that drifts in machine load hit both sides alike, and
the overhead is reported as the median of the per-pair time ratios and as the ratio of the fastest runs.
Two steadier figures come with it for a busy machine: the same median ratio on process CPU time, and the
in-run hook share, ``1 + (time inside the callback's hooks) / (the rest of the tracked run)``.

Variants (``--variants``):

- ``tracking``: ``TrainingDynamics()`` with default options, ``logger=False`` on both sides, so only
  the tracking itself is measured (tables, per-step ``update``, epoch-end derivation).
- ``tracking_tb``: both sides log to a ``TensorBoardLogger``; the tracked side adds
  ``DynamicsVisuals(plot_every_n_epochs=0)``: tracking plus one histogram per signal per epoch. The
  data map and hardest-example images (drawn every 5 epochs by default) are left out of this
  measurement; with ``--plots`` they are kept at their default schedule (drawn at the last epoch).

Examples:
    python benchmarks/tracking_overhead.py                       # CPU, 20k images, defaults
    python benchmarks/tracking_overhead.py --device cuda --train-size 60000 --threads 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import environment, interleaved_pairs, markdown_table, quiet_lightning, ratio_statistics, write_json
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_curricula import DynamicsVisuals, TrainingDynamics, WithIndex

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the recipes package, when run as a script
from lightning_curricula.recipes.vision.data import FASHION_MNIST_DIR, load_fashion_mnist  # noqa: E402
from lightning_curricula.recipes.vision.models import SmallCNN  # noqa: E402

CPU_TARGET, GPU_TARGET = 1.03, 1.01
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set pixel statistics


class ImageTensors(Dataset[dict[str, Tensor]]):
    """Images and labels held as tensors in memory; items are ``{"image", "label"}``."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"image": self.images[index], "label": self.labels[index]}


class Classifier(pl.LightningModule):
    """SmallCNN trained with SGD; returns what `TrainingDynamics` reads (and nothing else differs)."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.model = SmallCNN(num_classes=10, in_channels=1)
        self.lr = lr
        self.param_checksum = float("nan")

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        logits = self.model(batch["image"])
        losses = F.cross_entropy(logits, batch["label"], reduction="none")
        loss = losses.mean()
        return {"loss": loss, "losses": losses.detach(), "logits": logits.detach(), "targets": batch["label"]}

    def on_train_end(self) -> None:
        # Sanity check that both sides did the same work: the final model is the same.
        self.param_checksum = float(sum(p.detach().double().sum() for p in self.parameters()))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class TrainTimer(pl.Callback):
    """Time from ``on_train_start`` (first callback) to ``on_train_end``, synchronised on CUDA.

    Records wall-clock time and this process's CPU time (all its threads): on a shared machine the CPU
    time is far less sensitive to other processes' load than the wall clock.
    """

    def __init__(self) -> None:
        self.start = self.end = 0.0
        self.cpu_start = self.cpu_end = 0.0

    def _sync(self, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync(pl_module)
        self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync(pl_module)
        self.end, self.cpu_end = time.perf_counter(), time.process_time()

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def cpu_seconds(self) -> float:
        return self.cpu_end - self.cpu_start


class TimedDynamics(TrainingDynamics):
    """`TrainingDynamics` with the time spent in its per-step and per-epoch hooks added up (diagnostics only).

    The two ``perf_counter`` calls per hook cost well under a microsecond. On CUDA the per-step figure is
    the host-side launch time (no synchronisation is added, so the hook stays asynchronous).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batch_seconds = 0.0
        self.batches = 0
        self.epoch_end_seconds = 0.0

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        super().on_train_batch_end(*args, **kwargs)
        self.batch_seconds += time.perf_counter() - start
        self.batches += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        start = time.perf_counter()
        super().on_train_epoch_end(trainer, pl_module)
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.epoch_end_seconds += time.perf_counter() - start


def load_data(directory: str, train_size: int) -> ImageTensors:
    images, labels = load_fashion_mnist(directory, split="train")
    images, labels = images[:train_size], labels[:train_size]
    normalized = images.float().div_(255).sub_(MEAN).div_(STD).unsqueeze(1).contiguous()
    return ImageTensors(normalized, labels)


def run_once(
    args: argparse.Namespace, dataset: Dataset[Any], *, tracked: bool, tensorboard: bool, log_root: str
) -> dict[str, Any]:
    """One training run; returns its timings."""
    torch.manual_seed(args.seed)
    module = Classifier(lr=args.lr)
    loader = DataLoader(
        WithIndex(dataset),
        batch_size=args.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
        num_workers=args.workers,
        pin_memory=args.device == "cuda",
        persistent_workers=args.workers > 0,
    )
    timer = TrainTimer()
    callbacks: list[pl.Callback] = [timer]
    dynamics = None
    if tracked:
        dynamics = TimedDynamics()
        callbacks.append(dynamics)
        if tensorboard:  # the histograms (and with --plots the data map and hardest examples) are a callback
            callbacks.append(DynamicsVisuals(**({} if args.plots else {"plot_every_n_epochs": 0})))
    logger: TensorBoardLogger | bool = TensorBoardLogger(log_root, name="runs") if tensorboard else False
    trainer = pl.Trainer(
        accelerator=args.device,
        devices=1,
        max_epochs=args.epochs,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=False,
    )
    fit_start = time.perf_counter()
    trainer.fit(module, loader)
    if args.device == "cuda":
        torch.cuda.synchronize()
    result: dict[str, Any] = {
        "train_seconds": timer.seconds,
        "cpu_seconds": timer.cpu_seconds,
        "load_average_1min": os.getloadavg()[0],
        "fit_seconds": time.perf_counter() - fit_start,
        "param_checksum": module.param_checksum,
    }
    if dynamics is not None:
        result |= {
            "hook_ms_per_step": 1000 * dynamics.batch_seconds / max(dynamics.batches, 1),
            "epoch_end_ms": 1000 * dynamics.epoch_end_seconds / args.epochs,
            "hook_seconds": dynamics.batch_seconds + dynamics.epoch_end_seconds,
            "steps": dynamics.batches,
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=FASHION_MNIST_DIR, help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--train-size", type=int, default=20_000, help="first N training images (max 60000)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1, help="epochs per run")
    parser.add_argument("--repeats", type=int, default=10, help="timed pairs per variant (after one warm-up)")
    parser.add_argument(
        "--variants", nargs="+", choices=["tracking", "tracking_tb"], default=["tracking", "tracking_tb"]
    )
    parser.add_argument("--plots", action="store_true", help="tracking_tb: keep the data map / hardest-example plots")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch.set_num_threads")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("tracking_overhead.json"), help="JSON results")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")

    torch.set_num_threads(args.threads)
    quiet_lightning()
    dataset = load_data(args.data_dir, args.train_size)

    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tracking_overhead_") as log_root:
        for variant in args.variants:

            def run(tracked: bool, variant: str = variant) -> dict[str, Any]:
                return run_once(args, dataset, tracked=tracked, tensorboard=variant == "tracking_tb", log_root=log_root)

            def report(label: str, tracked: bool, result: dict[str, Any], variant: str = variant) -> None:
                print(
                    f"[{label}] {variant:<11} {'tracked' if tracked else 'baseline':<8} train "
                    f"{result['train_seconds']:.3f} s (cpu {result['cpu_seconds']:.3f} s, "
                    f"load {result['load_average_1min']:.2f})",
                    flush=True,
                )

            baseline, tracked = interleaved_pairs(run, args.repeats, warmup=1, report=report)
            runs[variant] = {"baseline": baseline, "tracked": tracked}
    elapsed = time.perf_counter() - started

    target = GPU_TARGET if args.device == "cuda" else CPU_TARGET
    summary = {}
    for variant, sides in runs.items():

        def ratios(key: str, sides: dict[str, list[dict[str, Any]]] = sides) -> dict[str, Any]:
            base, tracked = ([run[key] for run in sides[side]] for side in ("baseline", "tracked"))
            return ratio_statistics(base, tracked, names=("baseline", "tracked"))

        stats = ratios("train_seconds")
        stats["fit_median_pair_ratio"] = ratios("fit_seconds")["median_pair_ratio"]
        stats["cpu_median_pair_ratio"] = ratios("cpu_seconds")["median_pair_ratio"]
        stats["hook_ms_per_step"] = statistics.median(r["hook_ms_per_step"] for r in sides["tracked"])
        stats["epoch_end_ms"] = statistics.median(r["epoch_end_ms"] for r in sides["tracked"])
        stats["steps_per_run"] = sides["tracked"][0]["steps"]
        # In-run attribution: time inside the callback's hooks over the rest of the same run. Both parts see
        # the same machine load, so this is far steadier than the A/B ratio on a busy machine; it leaves
        # out costs outside the hooks (allocation at train start, cache effects).
        stats["hook_share_ratio"] = statistics.median(
            1 + r["hook_seconds"] / (r["train_seconds"] - r["hook_seconds"]) for r in sides["tracked"]
        )
        stats["same_final_parameters"] = all(
            b["param_checksum"] == t["param_checksum"] for b, t in zip(sides["baseline"], sides["tracked"], strict=True)
        )
        stats["target"] = target
        stats["met"] = stats["median_pair_ratio"] <= target
        summary[variant] = stats

    env = environment(args.device)
    print(
        f"\nSmallCNN on Fashion-MNIST, {args.train_size} images, batch {args.batch_size}, "
        f"{args.epochs} epoch(s) per run, {args.repeats} interleaved pairs per variant; "
        f"device {args.device} ({env['device_name']}), torch {env['torch']}, "
        f"lightning {env['lightning']}, torch threads {env['torch_threads']}, total {elapsed:.0f} s.\n"
    )
    header = [
        "variant",
        "baseline median (s)",
        "tracked median (s)",
        "ratio: median of pairs",
        "ratio: min / min",
        "CPU-time ratio",
        "in-run hook share",
        "hook ms / step",
        "epoch end ms",
        "target",
        "met",
    ]
    rows = [
        [
            variant,
            f"{s['baseline_median_s']:.3f}",
            f"{s['tracked_median_s']:.3f}",
            f"{s['median_pair_ratio']:.4f}",
            f"{s['min_ratio']:.4f}",
            f"{s['cpu_median_pair_ratio']:.4f}",
            f"{s['hook_share_ratio']:.4f}",
            f"{s['hook_ms_per_step']:.3f}",
            f"{s['epoch_end_ms']:.1f}",
            f"<= {s['target']}",
            "yes" if s["met"] else "no",
        ]
        for variant, s in summary.items()
    ]
    print(markdown_table(header, rows))
    write_json(args.out, config=vars(args), environment=env, elapsed_seconds=elapsed, summary=summary, runs=runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
