"""Cost of the scoring forward of selection inside the step (`OnlineBatchSelection`), against a plain step.

Selective Backprop, RHO-LOSS and Rho-1 score the whole batch with a forward pass without gradients,
then train on the kept part only. What that costs, for the vision recipe's ``SmallCNN`` on one batch
of random 1 x 28 x 28 images (a training step's cost does not depend on the pixel values), laid out
``channels_last`` as the recipe's batches are (``--memory-format contiguous`` times NCHW instead, which
PyTorch runs through slower convolutions on a CPU):

- ``step``: a plain training step on the whole batch (forward, cross-entropy, backward, SGD step);
- ``score``: the scoring forward alone on the whole batch, in eval mode without gradients, as the vision
  recipe's ``_selected`` does it;
- ``selective``: a selective step: the scoring forward on the whole batch, `OnlineBatchSelection.select`
  (``top_k``), then a training step on the kept ``round(keep * batch)`` examples with their weights;
- ``score_scaled`` and ``selective_scaled``: the same with the batch downsampled by ``--scoring-scale``
  before the scoring forward (the vision recipe's ``scoring_scale``; Composer's ``scale_factor``);
- ``stale``: a step of Stale-SB between scoring epochs: `OnlineBatchSelection.select_remembered` on the
  batch's ids (scores remembered beforehand), a training step on the kept examples, and `remember` of
  their training losses; no scoring forward.

Each run times ``--steps`` calls back to back; the variants run in interleaved rounds (the order
rotating from one round to the next, `harness.interleaved_rounds`) after one warm-up round. Reported:
``score / step``, the scoring forward as a share of a step, and ``selective / step``, a selective step
against a plain one (below 1: selection saves time per step at this kept share), each as the median
of the per-round ratios and as the ratio of the fastest runs, on wall and on process CPU time.

Examples:
    python benchmarks/scoring_overhead.py                     # CPU, batch 256, keep 0.5, a few seconds
    python benchmarks/scoring_overhead.py --device cuda --pairs 50 --out scoring_overhead.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from harness import environment, interleaved_rounds, markdown_table, ratio_statistics, write_json
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the recipes package, when run as a script
from lightning_curricula.recipes.vision.models import SmallCNN  # noqa: E402

from lightning_curricula import OnlineBatchSelection, weighted_mean  # noqa: E402

VARIANTS = ("step", "score", "selective", "score_scaled", "selective_scaled", "stale")
MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, labels: Tensor, weights: Tensor | None = None
) -> Tensor:
    """Forward, per-example cross-entropy, (weighted) mean, backward, optimizer step; the detached losses."""
    losses = F.cross_entropy(model(images), labels, reduction="none")
    optimizer.zero_grad(set_to_none=True)
    weighted_mean(losses, weights).backward()
    optimizer.step()
    return losses.detach()


def score(model: nn.Module, images: Tensor, labels: Tensor, scale: float = 1.0) -> Tensor:
    """Per-example losses from a forward in eval mode without gradients (the recipe's scoring forward)."""
    if scale < 1.0:
        images = F.interpolate(images, scale_factor=scale, mode="bilinear", antialias=True)
    model.eval()
    with torch.no_grad():
        scores = F.cross_entropy(model(images), labels, reduction="none")
    model.train()
    return scores


def variants(args: argparse.Namespace) -> dict[str, Callable[[], Any]]:
    """The timed calls on one model, optimizer and batch."""
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.batch_size, 1, 28, 28, generator=generator).to(args.device)
    images = images.to(memory_format=MEMORY_FORMATS[args.memory_format])  # the recipe's: channels_last
    labels = torch.randint(0, 10, (args.batch_size,), generator=generator).to(args.device)
    torch.manual_seed(args.seed)  # the model's initialisation (a script, not the library)
    model = SmallCNN(num_classes=10, in_channels=1).to(args.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    selection = OnlineBatchSelection(keep=args.keep)
    ids = torch.arange(args.batch_size, device=args.device)
    remembered = OnlineBatchSelection(keep=args.keep, rescore_every=2)
    remembered.select(score(model, images, labels), index=ids)  # a scoring epoch's scores
    remembered.epoch = 1  # then an epoch between scoring epochs

    def selective(scale: float) -> None:
        kept = selection.select(score(model, images, labels, scale))
        positions = kept.positions.to(args.device)
        train_step(model, optimizer, images[positions], labels[positions], kept.weights.to(args.device))

    def stale() -> None:
        kept = remembered.select_remembered(ids)
        assert kept is not None
        losses = train_step(model, optimizer, images[kept.positions], labels[kept.positions], kept.weights)
        remembered.remember(ids[kept.positions], losses)

    return {
        "step": lambda: train_step(model, optimizer, images, labels),
        "score": lambda: score(model, images, labels),
        "selective": lambda: selective(1.0),
        "score_scaled": lambda: score(model, images, labels, args.scoring_scale),
        "selective_scaled": lambda: selective(args.scoring_scale),
        "stale": stale,
    }


def timed(fn: Callable[[], Any], steps: int, device: str) -> dict[str, Any]:
    """Wall and process CPU seconds per call over ``steps`` calls, synchronised on CUDA."""
    if device == "cuda":
        torch.cuda.synchronize()
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return {
        "seconds": (time.perf_counter() - start) / steps,
        "cpu_seconds": (time.process_time() - start_cpu) / steps,
        "load_average_1min": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=256, help="examples scored per step")
    parser.add_argument("--keep", type=float, default=0.5, help="kept share of the batch, in (0, 1]")
    parser.add_argument("--pairs", type=int, default=10, help="timed rounds of the variants (after one warm-up)")
    parser.add_argument("--steps", type=int, default=3, help="calls timed back to back per run")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch.set_num_threads")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--scoring-scale", type=float, default=0.5, help="image scale of the *_scaled variants")
    parser.add_argument(
        "--memory-format",
        choices=sorted(MEMORY_FORMATS),
        default="channels_last",
        help="layout of the images: the vision recipe's channels_last, or NCHW contiguous (slower on a CPU)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("scoring_overhead.json"), help="JSON results")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    if not 0.0 < args.keep <= 1.0:
        parser.error(f"--keep must be in (0, 1], got {args.keep}")
    if args.batch_size < 1 or args.pairs < 1 or args.steps < 1:
        parser.error("--batch-size, --pairs and --steps must be at least 1")

    torch.set_num_threads(args.threads)
    calls = variants(args)

    def report(label: str, name: str, result: dict[str, Any]) -> None:
        print(
            f"[{label}] {name:<9} {1000 * result['seconds']:.2f} ms (cpu {1000 * result['cpu_seconds']:.2f} ms, "
            f"load {result['load_average_1min']:.2f})",
            flush=True,
        )

    started = time.perf_counter()
    runs = interleaved_rounds(
        lambda name: timed(calls[name], args.steps, args.device), VARIANTS, args.pairs, warmup=1, report=report
    )
    elapsed = time.perf_counter() - started

    def seconds(name: str, key: str = "seconds") -> list[float]:
        return [run[key] for run in runs[name]]

    summary: dict[str, Any] = {"kept_examples": round(args.keep * args.batch_size)}
    for name in VARIANTS[1:]:
        stats = ratio_statistics(seconds("step"), seconds(name), names=("step", name))
        stats["cpu_median_pair_ratio"] = statistics.median(
            c / b for b, c in zip(seconds("step", "cpu_seconds"), seconds(name, "cpu_seconds"), strict=True)
        )
        summary[f"{name}_over_step"] = stats

    env = environment(args.device)
    print(
        f"\nSmallCNN, batch {args.batch_size} of 1x28x28, keep {args.keep} ({summary['kept_examples']} trained), "
        f"{args.steps} calls per run, {args.pairs} interleaved rounds, {args.memory_format}; device {args.device} "
        f"({env['device_name']}), "
        f"torch {env['torch']}, torch threads {env['torch_threads']}, total {elapsed:.1f} s.\n"
    )
    step_ms = 1000 * statistics.median(seconds("step"))
    header = ["variant", "median ms", "over step: median of pairs", "over step: min / min", "over step: CPU time"]
    rows: list[list[Any]] = [["step (train on the batch)", f"{step_ms:.2f}", "1", "1", "1"]]
    labels = {
        "score": "score (forward, no grad)",
        "selective": "selective (score + train on kept)",
        "score_scaled": f"score at scale {args.scoring_scale}",
        "selective_scaled": f"selective, scored at scale {args.scoring_scale}",
        "stale": "stale (remembered scores, train on kept)",
    }
    for name, label in labels.items():
        s = summary[f"{name}_over_step"]
        rows.append(
            [
                label,
                f"{1000 * s[f'{name}_median_s']:.2f}",
                f"{s['median_pair_ratio']:.3f}",
                f"{s['min_ratio']:.3f}",
                f"{s['cpu_median_pair_ratio']:.3f}",
            ]
        )
    print(markdown_table(header, rows))
    write_json(args.out, config=vars(args), environment=env, elapsed_seconds=elapsed, summary=summary, runs=runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
