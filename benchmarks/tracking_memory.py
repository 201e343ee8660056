"""Memory of `TrainingDynamics`: bytes held per tracked example, and the largest dataset that fits in 1 GiB.

For each signal set, a ``TrainingDynamics(num_examples=N)`` sized for ``--max-epochs`` (its count
tables take the narrowest dtype that holds them) gets one real ``update()`` (a batch of
``StepOutputs``) and one ``_finish_epoch``, which allocate everything it keeps for the rest of
training. The steady-state footprint is the sum of ``numel * element_size`` over its tables and its
per-epoch accumulator (and its loss history when ``--history-epochs`` is given); for classification,
the per-rank predictions table of a ``DynamicsVisuals`` that draws the hardest examples is added. Each signal set is
measured in a fresh process, whose peak resident-memory growth over the same calls is reported too: it
adds the short-lived temporaries of the epoch-end derivation (an approximate, process-wide figure).

Signal sets:

- ``classification``: ``training_step`` returns ``losses``, ``logits`` and ``targets`` (the default
  signals: loss, loss EMA, EL2N, margin / AUM, confidence, variability, correctness, forgetting);
- ``loss-only``: ``training_step`` returns ``losses`` only.

Example:
    python benchmarks/tracking_memory.py --num-examples 1000000
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import math
import multiprocessing
import resource
import sys
from pathlib import Path
from typing import Any

import torch
from harness import environment, markdown_table, write_json
from torch import Tensor

from lightning_curricula import DynamicsVisuals, StepOutputs, TrainingDynamics

GIB = 2**30


def tensor_bytes(tensors: list[Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def peak_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def measure(
    num_examples: int, *, classification: bool, history_epochs: int, batch_size: int, max_epochs: int
) -> dict[str, Any]:
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    index = torch.randperm(num_examples, generator=generator)[:batch_size]
    losses = torch.rand(batch_size, generator=generator)
    logits = torch.randn(batch_size, 10, generator=generator) if classification else None
    targets = torch.randint(0, 10, (batch_size,), generator=generator) if classification else None
    step = StepOutputs(index=index, losses=losses, logits=logits, targets=targets)
    gc.collect()
    rss_before = peak_rss_bytes()
    dynamics = TrainingDynamics(num_examples=num_examples, history_epochs=history_epochs)
    dynamics._max_epochs = max_epochs  # what on_train_start reads from trainer.max_epochs
    if history_epochs:  # on_train_start allocates the history; update() does not
        dynamics._history = torch.full((history_epochs, num_examples), math.nan)
    dynamics.update(step)
    assert dynamics._accumulator is not None
    dynamics._finish_epoch(dynamics._accumulator, epoch=0)
    visuals = DynamicsVisuals()  # its on_train_batch_end keeps each example's predicted class
    visuals.dynamics = dynamics
    if classification:
        batch = {"index": index}
        visuals.on_train_batch_end(None, None, {"losses": losses, "logits": logits, "targets": targets}, batch, 0)  # type: ignore[arg-type]
    rss_peak_growth = peak_rss_bytes() - rss_before
    tables = dict(dynamics._tables)
    parts: dict[str, int] = {name: tensor_bytes([t]) for name, t in tables.items()}
    parts["accumulator"] = tensor_bytes([dynamics._accumulator])
    if dynamics._history is not None:
        parts["history"] = tensor_bytes([dynamics._history])
    if visuals._predictions is not None:
        parts["predictions (DynamicsVisuals)"] = tensor_bytes([visuals._predictions])
    total = sum(parts.values())
    per_example = total / num_examples
    del dynamics
    gc.collect()
    return {
        "num_examples": num_examples,
        "total_bytes": total,
        "bytes_per_example": per_example,
        "bytes_per_example_by_tensor": {name: size / num_examples for name, size in parts.items()},
        "max_examples_in_1_gib": math.floor(GIB / per_example),
        "peak_rss_growth_bytes_per_example": rss_peak_growth / num_examples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-examples", type=int, default=1_000_000, help="N, the tracked dataset size")
    parser.add_argument("--history-epochs", type=int, default=0, help="TrainingDynamics(history_epochs=...)")
    parser.add_argument("--max-epochs", type=int, default=100, help="the run's max_epochs (sizes the count tables)")
    parser.add_argument("--batch-size", type=int, default=128, help="size of the one batch given to update()")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    results = {}
    for name, classification in (("classification", True), ("loss-only", False)):
        # A fresh process per measurement, so that its peak RSS starts from the same point.
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            results[name] = pool.submit(
                measure,
                args.num_examples,
                classification=classification,
                history_epochs=args.history_epochs,
                batch_size=args.batch_size,
                max_epochs=args.max_epochs,
            ).result()
    env = environment("cpu", measured_torch_threads=1)  # each measurement runs in a 1-thread process
    print(
        f"TrainingDynamics memory at N = {args.num_examples:,}, max_epochs = {args.max_epochs}, "
        f"history_epochs = {args.history_epochs}; "
        f"torch {env['torch']}, lightning {env['lightning']}, {env['device_name']}."
    )
    print()
    header = ["signal set", "bytes / example", "total at N (MiB)", "largest N in 1 GiB", "peak RSS growth / example"]
    rows = [
        [
            name,
            f"{r['bytes_per_example']:g}",
            f"{r['total_bytes'] / 2**20:.1f}",
            f"{r['max_examples_in_1_gib']:,}",
            f"{r['peak_rss_growth_bytes_per_example']:.0f}",
        ]
        for name, r in results.items()
    ]
    print(markdown_table(header, rows))
    print()
    print("Bytes per example by tensor:")
    print()
    tensors = list(results["classification"]["bytes_per_example_by_tensor"])
    rows = [
        [tensor, *(f"{r['bytes_per_example_by_tensor'].get(tensor, 0):g}" for r in results.values())]
        for tensor in tensors
    ]
    print(markdown_table(["tensor", *results], rows))
    if args.out is not None:
        summary = {
            name: {key: r[key] for key in ("bytes_per_example", "max_examples_in_1_gib")} for name, r in results.items()
        }
        write_json(args.out, config=vars(args), environment=env, summary=summary, runs=results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
