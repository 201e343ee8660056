"""Selection inside the step on Fashion-MNIST: full data, Selective Backprop, RHO-LOSS and the random twin.

A self-contained comparison with the public API only (the recipes will get configs for these methods):

    python examples/in_step_selection.py --train-size 20000 --epochs 4 --noise 0.2

It reads Fashion-MNIST's IDX files (Debian's ``dataset-fashion-mnist``: ``apt-get install -y
dataset-fashion-mnist``), flips ``--noise`` of the training labels to another class, trains a small CNN
with each method and prints a markdown table: test accuracy, measured training time (the scoring forward
included; RHO-LOSS's holdout model reported separately), forward-only and backward passes, and the share of
flipped labels among the examples backpropagated (the noise share itself for full data).
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_curricula import (
    OnlineBatchSelection,
    ReferenceLosses,
    WithIndex,
    find_online_selection,
    irreducible_losses,
    reducible_loss,
    weighted_mean,
)

METHODS = ("full", "selective_backprop", "selective_backprop_percentile", "rho_loss", "random")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip) as an array: magic, dimensions, then unsigned bytes."""
    with gzip.open(path, "rb") as file:
        data = file.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(folder: Path, split: str) -> tuple[Tensor, Tensor]:
    """Normalised ``(N, 1, 28, 28)`` images and labels of a split."""
    prefix = "train" if split == "train" else "t10k"
    images = torch.from_numpy(read_idx(folder / f"{prefix}-images-idx3-ubyte.gz").copy()).float().div(255)
    labels = torch.from_numpy(read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz").copy()).long()
    return ((images - 0.286) / 0.353).unsqueeze(1), labels


class Items(torch.utils.data.Dataset[dict[str, Tensor]]):
    """Dict items ``{"x", "y"}``; `WithIndex` adds the id."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return self.y.numel()

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


def small_cnn() -> nn.Module:
    """Two conv blocks and a small head."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
    )  # fmt: skip


def per_example_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Unreduced cross-entropy of a batch."""
    return F.cross_entropy(model(batch["x"]), batch["y"], reduction="none")


class InStep(pl.LightningModule):
    """Full data, or score without grad, select with the Trainer's `OnlineBatchSelection`, train on the kept."""

    def __init__(self, *, select: bool, flipped: Tensor, reference: ReferenceLosses | None = None, lr: float) -> None:
        super().__init__()
        self.net = small_cnn()
        self.select, self.reference, self.lr = select, reference, lr
        self.flipped = flipped
        self.kept_flipped = 0
        self.kept_total = 0

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.net(x)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:  # noqa: D102
        positions = torch.arange(batch["y"].numel(), device=self.device)
        weights = None
        if self.select:
            with torch.no_grad():
                scores = per_example_loss(self, batch)
            if self.reference is not None:
                scores = reducible_loss(scores, self.reference.lookup(batch["index"]))
            kept = find_online_selection(self.trainer).select(scores)
            positions, weights = kept.positions, kept.weights
        self.kept_flipped += int(self.flipped[batch["index"][positions].cpu()].sum())
        self.kept_total += positions.numel()
        x, y = batch["x"][positions], batch["y"][positions]
        return weighted_mean(F.cross_entropy(self(x), y, reduction="none"), weights)

    def configure_optimizers(self) -> Any:  # noqa: D102
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Top-1 accuracy on ``(x, y)``."""
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(chunk).argmax(1) for chunk in x.split(2048)])
    return float((predictions == y).float().mean())


def trainer(epochs: int, callbacks: list[pl.Callback]) -> pl.Trainer:
    """A quiet Trainer on the best accelerator available."""
    return pl.Trainer(
        max_epochs=epochs, callbacks=callbacks, accelerator="auto", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip


def main() -> None:
    """Parse the options, train each method, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--train-size", type=int, default=20000)
    parser.add_argument("--holdout-size", type=int, default=10000, help="RHO-LOSS's held-out split (from the rest)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--holdout-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--noise", type=float, default=0.0, help="share of training labels flipped")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {METHODS}")
    args = parser.parse_args()

    x, y = load(args.data, "train")
    test_x, test_y = load(args.data, "test")
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(y.numel(), generator=generator)
    flip = torch.rand(y.numel(), generator=generator) < args.noise
    noisy_y = torch.where(flip, (y + torch.randint(1, 10, y.shape, generator=generator)) % 10, y)
    train_ids = order[: args.train_size]
    holdout_ids = order[args.train_size : args.train_size + args.holdout_size]
    train_set = Items(x[train_ids], noisy_y[train_ids])
    flipped = flip[train_ids]

    reference = None
    holdout_seconds = 0.0
    rows = []
    for method in args.methods.split(","):
        if method not in METHODS:
            raise SystemExit(f"Unknown method {method!r}; choose from {METHODS}.")
        if method == "rho_loss" and reference is None:
            start = time.perf_counter()
            torch.manual_seed(args.seed + 1)  # an example script: its own models' initialisation
            holdout = InStep(select=False, flipped=torch.zeros(len(holdout_ids), dtype=torch.bool), lr=args.lr)
            holdout_data = WithIndex(Items(x[holdout_ids], noisy_y[holdout_ids]))
            trainer(args.holdout_epochs, []).fit(holdout, DataLoader(holdout_data, args.batch_size, shuffle=True))
            reference = irreducible_losses(holdout, train_set, per_example_loss, batch_size=1024)
            holdout_seconds = time.perf_counter() - start
        torch.manual_seed(args.seed)
        selection_method = "percentile" if method == "selective_backprop_percentile" else "top_k"
        selection_method = "random" if method == "random" else selection_method
        callbacks: list[pl.Callback] = []
        if method != "full":
            callbacks.append(OnlineBatchSelection(keep=args.keep, method=selection_method, seed=args.seed))  # type: ignore[arg-type]
        model = InStep(
            select=method != "full", flipped=flipped, reference=reference if method == "rho_loss" else None, lr=args.lr
        )
        loader = DataLoader(WithIndex(train_set), batch_size=args.batch_size, shuffle=True)
        start = time.perf_counter()
        trainer(args.epochs, callbacks).fit(model, loader)
        seconds = time.perf_counter() - start
        metrics = callbacks[0].epoch_metrics if callbacks else {}  # type: ignore[attr-defined]
        passes = args.epochs * len(train_set)
        rows.append(
            (
                method,
                accuracy(model.net, test_x.to(model.device), test_y.to(model.device)),
                seconds,
                int(metrics.get("forward_only_passes", 0)),
                int(metrics.get("backward_passes", passes)),
                model.kept_flipped / max(model.kept_total, 1),
            )
        )
    setting = f"{args.train_size} training images, {args.epochs} epochs, keep {args.keep}, noise {args.noise}"
    print(f"\nFashion-MNIST, {setting}")
    if reference is not None:
        print(f"RHO-LOSS holdout model: {holdout_seconds:.1f} s (training and scoring the training set), not below")
    columns = ["method", "test accuracy", "training time (s)", "forward-only passes", "backward passes"]
    print("\n| " + " | ".join([*columns, "flipped among trained"]) + " |")
    print("|---|---|---|---|---|---|")
    for method, acc, seconds, forward_only, backward, noisy in rows:
        print(f"| {method} | {acc:.4f} | {seconds:.1f} | {forward_only} | {backward} | {noisy:.3f} |")


if __name__ == "__main__":
    main()
