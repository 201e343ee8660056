"""Accuracy against training time across `lightning-curricula compare` runs of different lengths.

Within one comparison every policy trains the same number of epochs, and a learning-rate schedule that
ends with the run makes the last epochs decide the final accuracy: "the time at which a policy first
reaches full data's accuracy" then mostly measures the schedule. This script puts runs of different
lengths (each its own ``compare --max-epochs E``) side by side against one reference, usually full
data at the longest length: each row's final validation accuracy, its training time over the reference's,
the training time at which it first reaches the reference's final validation accuracy (the lowest over the
reference's seeds), over the reference's training time, its typical epoch (the median training time of one
epoch, over epochs and seeds, over the reference's, which for Stale-SB is the cost of an epoch between scoring
epochs), and its test accuracy after training. Choose settings by the validation columns; the test column
only reports.

    python benchmarks/budget_frontier.py --reference full@12 \\
        full@12=runs/e12/results/full sb@6=runs/e6/results/selective_backprop ...

A label may name several folders, comma-separated (more seeds run later). Times are the median over
seeds (one disturbed run moves a mean, not a median), compared as ratios, so the runs should share the
machine alike (run them in one batch). A row reaches the reference's accuracy when every seed does; the
median of their times is reported.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
from pathlib import Path

from lightning_curricula.recipes.compare.report import RunResult, train_seconds_to


def load(folders: str) -> list[RunResult]:
    """The runs of every seed in the comma-separated ``results/<policy>`` folders (seeds run in separate batches)."""
    paths = [path for folder in folders.split(",") for path in sorted(Path(folder).glob("seed_*.json"))]
    if not paths:
        raise SystemExit(f"No seed_*.json results in {folders}.")
    return [RunResult(**json.loads(path.read_text())) for path in paths]


def row(label: str, runs: list[RunResult], reference: list[RunResult]) -> str:
    accuracies = [100 * run.final_acc for run in runs]
    std = statistics.stdev(accuracies) if len(accuracies) > 1 else math.nan
    target = min(run.final_acc for run in reference)
    reference_time = statistics.median(run.train_seconds for run in reference)
    time_ratio = statistics.median(run.train_seconds for run in runs) / reference_time
    to_target = [train_seconds_to(run, target, "val/acc") / reference_time for run in runs]
    reached = [value for value in to_target if not math.isnan(value)]
    if len(reached) == len(runs):
        when = f"{statistics.median(reached):.2f}"
    else:
        when = f"never ({len(reached)} of {len(runs)} seeds)" if reached else "never"
    per_seed = ", ".join(f"{accuracy:.2f}" for accuracy in accuracies)
    epoch_ratio = median_epoch_seconds(runs) / median_epoch_seconds(reference)
    tests = [100 * run.test_acc for run in runs]
    test_std = statistics.stdev(tests) if len(tests) > 1 else math.nan
    return (
        f"| {label} | {len(runs[0].epochs)} | {statistics.fmean(accuracies):.2f} ± {std:.2f} | {per_seed} "
        f"| {time_ratio:.2f} | {when} | {epoch_ratio:.2f} | {statistics.fmean(tests):.2f} ± {test_std:.2f} |"
    )


def median_epoch_seconds(runs: list[RunResult]) -> float:
    """The median training time of one epoch, over every epoch of every seed (validation excluded)."""
    seconds = []
    for run in runs:
        elapsed = [0.0] + [record["train_seconds"] for record in run.epochs]
        seconds += [end - start for start, end in itertools.pairwise(elapsed)]
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, help="the label of the reference runs")
    parser.add_argument(
        "runs", nargs="+", metavar="LABEL=FOLDER[,FOLDER]", help="a label and its results/<policy> folders"
    )
    args = parser.parse_args()
    groups = dict(spec.split("=", 1) for spec in args.runs)
    if args.reference not in groups:
        parser.error(f"--reference {args.reference!r} is not one of the labels {sorted(groups)}.")
    loaded = {label: load(folders) for label, folders in groups.items()}
    reference = loaded[args.reference]
    print(
        "| runs | epochs | final val acc (%) | per seed (val) | train time / reference | time to reference's val acc "
        "| median epoch / reference's | test acc (%) |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for label, runs in loaded.items():
        print(row(label, runs, reference))


if __name__ == "__main__":
    main()
