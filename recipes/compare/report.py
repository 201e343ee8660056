"""The comparison's report: per-policy summaries over seeds, ``summary.md``, ``summary.csv`` and the figure."""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_curricula.recipes.compare.settings import RECIPES, CompareOptions, Recipe
from lightning_curricula.recipes.interface import MonitoredMetrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "PolicySummary",
    "RunResult",
    "accuracy_figure",
    "footnote",
    "load_results",
    "markdown_table",
    "report_recipe",
    "result_path",
    "summarize",
    "write_csv",
    "write_report",
]


@dataclass
class RunResult:
    """What one run of one policy with one seed produced (the content of its result file).

    ``final_acc`` and ``best_acc`` are the validation metric (the last epoch's and the best epoch's),
    ``test_acc`` the test metric after training: accuracies, unless ``monitored`` (what the run's data
    module monitors, `MonitoredMetrics` as a dict; empty: the recipe's metrics) says they are a loss,
    whose best epoch is the lowest. ``trained_digest`` fingerprints the ids, weights and losses of
    every step (`EpochHistory.trained_digest`); ``position`` is the run's place in the comparison's order.
    """

    policy: str
    seed: int
    final_acc: float
    best_acc: float
    sample_passes: int
    wall_seconds: float
    train_examples: int
    test_examples: int
    device: str
    epochs: list[dict[str, float]] = field(default_factory=list)
    extras: dict[str, float] = field(default_factory=dict)
    train_seconds: float = math.nan
    scoring_forwards: int = 0
    test_acc: float = math.nan
    val_examples: int = 0
    test_seconds: float = math.nan
    trained_digest: str = ""
    position: int = -1
    monitored: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicySummary:
    """One row of the summary: a policy's results aggregated over seeds.

    ``test_acc`` is measured on the test split after training; ``final_acc`` and ``best_acc`` on the
    validation split. ``same_as_full``: every seed trained on exactly what full data's run of that seed
    did (the same ids, weights and losses at every step), so its times are only a measure of noise.
    ``monitored``: what the runs were judged by (`RunResult.monitored`), which `markdown_table` follows.
    """

    policy: str
    seeds: int
    test_acc_mean: float
    test_acc_std: float
    final_acc_mean: float
    final_acc_std: float
    best_acc_mean: float
    best_acc_std: float
    sample_passes: float
    passes_ratio: float
    wall_seconds: float
    wall_ratio: float
    train_seconds: float
    train_ratio: float
    scoring_ratio: float = 0.0
    time_to_full_ratio: float = math.nan
    same_as_full: bool = False
    extras: dict[str, tuple[float, float]] = field(default_factory=dict)
    monitored: dict[str, Any] = field(default_factory=dict)


def result_path(output: Path, policy: str, seed: int) -> Path:
    """Where the run of ``policy`` with ``seed`` stores its `RunResult`."""
    return output / "results" / policy / f"seed_{seed}.json"


def write_json(path: Path, content: Any) -> None:
    """Write atomically: a run counts as done only once its whole result file exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(partial, path)


def load_results(options: CompareOptions) -> list[RunResult]:
    """The stored results of the comparison's policies and seeds (finished runs only)."""
    results = []
    for policy in options.policies:
        for seed in options.seeds:
            path = result_path(options.output, policy, seed)
            if path.is_file():
                results.append(RunResult(**json.loads(path.read_text())))
    return results


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [value for value in values if not math.isnan(value)]  # a metric a run did not measure
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def report_recipe(recipe: Recipe, results: Sequence[RunResult]) -> Recipe:
    """``recipe`` judged by what its runs monitored (`RunResult.monitored`), or itself when they say nothing.

    Raises:
        ValueError: the runs monitored different metrics (they come from different data).
    """
    stored = [r.monitored for r in results if r.monitored]
    if not stored:
        return recipe
    if any(other != stored[0] for other in stored[1:]):
        metrics = sorted({str(other.get("metric")) for other in stored})
        raise ValueError(f"The runs of one comparison monitored different metrics ({metrics}); compare like with like.")
    return recipe.monitoring(MonitoredMetrics.from_dict(stored[0]))


def train_seconds_to(run: RunResult, target: float, metric: str, *, higher_is_better: bool = True) -> float:
    """The training time (evaluation excluded) at the end of the run's first epoch reaching ``target``, or NaN.

    Reaching is ``>= target`` for an accuracy, ``<= target`` for a loss (``higher_is_better=False``).
    """
    for record in run.epochs:
        value = record.get(metric, math.nan)
        if value >= target if higher_is_better else value <= target:
            return record["train_seconds"]
    return math.nan


def summarize(
    results: Sequence[RunResult], policies: Sequence[str], metric: str = "val/acc", *, higher_is_better: bool = True
) -> list[PolicySummary]:
    """One row per policy: the metric as mean and sample standard deviation over seeds, ratios to ``full``.

    Accuracies are fractions in ``[0, 1]``; a standard deviation over one seed is NaN, and so are the
    ratios when ``full`` is not among the results. ``scoring_ratio`` counts the scoring forwards (without
    a backward) of selection inside the step as a share of full data's passes;
    ``time_to_full_ratio`` is the mean over seeds of the training time at which a run first reaches full
    data's final validation ``metric`` (the worst over full data's seeds, so that every full-data seed
    reaches it: the lowest accuracy, or with ``higher_is_better=False`` the highest loss, reached at
    the first epoch at or below it), over full data's training time (NaN when a seed never reaches it).
    """
    by_policy = {policy: [r for r in results if r.policy == policy] for policy in policies}
    full = by_policy.get("full") or []
    full_digests = {r.seed: r.trained_digest for r in full}
    full_passes = statistics.fmean(r.sample_passes for r in full) if full else math.nan
    full_wall = statistics.fmean(r.wall_seconds for r in full) if full else math.nan
    full_train = statistics.fmean(r.train_seconds for r in full) if full else math.nan
    worst = min if higher_is_better else max
    full_final = worst(r.final_acc for r in full) if full else math.nan  # a value every full-data seed reaches
    rows = []
    for policy, runs in by_policy.items():
        if not runs:
            continue
        test = _mean_std([r.test_acc for r in runs])
        final = _mean_std([r.final_acc for r in runs])
        best = _mean_std([r.best_acc for r in runs])
        passes = statistics.fmean(r.sample_passes for r in runs)
        wall = statistics.fmean(r.wall_seconds for r in runs)
        train = statistics.fmean(r.train_seconds for r in runs)
        scoring = statistics.fmean(r.scoring_forwards for r in runs)
        to_full = statistics.fmean(
            train_seconds_to(r, full_final, metric, higher_is_better=higher_is_better) for r in runs
        )
        extras = {name: _mean_std([r.extras[name] for r in runs if name in r.extras]) for name in runs[0].extras}
        rows.append(
            PolicySummary(
                policy=policy,
                seeds=len(runs),
                test_acc_mean=test[0],
                test_acc_std=test[1],
                final_acc_mean=final[0],
                final_acc_std=final[1],
                best_acc_mean=best[0],
                best_acc_std=best[1],
                sample_passes=passes,
                passes_ratio=passes / full_passes,
                wall_seconds=wall,
                wall_ratio=wall / full_wall,
                train_seconds=train,
                train_ratio=train / full_train,
                scoring_ratio=scoring / full_passes,
                time_to_full_ratio=to_full / full_train,
                same_as_full=policy != "full" and all(_same_as_full(r, full_digests) for r in runs),
                extras=extras,
                monitored=next((dict(r.monitored) for r in runs if r.monitored), {}),
            )
        )
    return rows


def _same_as_full(run: RunResult, full_digests: dict[int, str]) -> bool:
    return bool(run.trained_digest) and full_digests.get(run.seed) == run.trained_digest


def _percent(mean: float, std: float) -> str:
    text = f"{100 * mean:.2f}"
    return text if math.isnan(std) else f"{text} ± {100 * std:.2f}"


def _ratio(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def _extra_cell(title: str, mean: float, std: float) -> str:
    if "(%)" in title:
        return _percent(mean, std)
    text = f"{mean:,.0f}" if abs(mean) >= 1000 else f"{mean:.3f}"
    return text if math.isnan(std) else f"{text} ± {std:,.3g}"


def _metric_cell(mean: float, std: float, kind: str) -> str:
    return _percent(mean, std) if kind == "accuracy" else _extra_cell("", mean, std)


def markdown_table(rows: Sequence[PolicySummary], recipe: Recipe, note: str) -> str:
    """The summary table in Markdown, the recipe's extra columns included, then ``note``.

    The rows' metric (`PolicySummary.monitored`, when their runs say what they monitored) replaces the
    recipe's: an accuracy is shown in percent, a loss as it is.
    """
    recipe = recipe.monitoring(MonitoredMetrics.from_dict(rows[0].monitored) if rows and rows[0].monitored else None)
    extras = [title for title, name in recipe.extras.items() if any(name in row.extras for row in rows)]
    scoring = any(row.scoring_ratio > 0 for row in rows)  # selection inside the step: its forwards are charged
    column = f"{recipe.column} (%)" if recipe.kind == "accuracy" else recipe.column
    lines = [
        f"| policy | seeds | test {column} | final val {column} | best val {column} "
        f"| sample passes | passes / full {'| scoring forwards / full ' if scoring else ''}"
        f"| wall-clock (s) | wall-clock / full | train time / full | time to full's val {recipe.column} / full "
        f"|{''.join(f' {title} |' for title in extras)}",
        f"|---|---:|---:|---:|---:|---:|---:|{'---:|' * scoring}---:|---:|---:|---:|{'---:|' * len(extras)}",
    ]
    for row in rows:
        cells = [row.extras.get(recipe.extras[title], (math.nan, math.nan)) for title in extras]
        name = f"{row.policy} (same as full)" if row.same_as_full else row.policy
        lines.append(
            f"| {name} | {row.seeds} | {_metric_cell(row.test_acc_mean, row.test_acc_std, recipe.kind)} "
            f"| {_metric_cell(row.final_acc_mean, row.final_acc_std, recipe.kind)} "
            f"| {_metric_cell(row.best_acc_mean, row.best_acc_std, recipe.kind)} | {row.sample_passes:,.0f} "
            f"| {_ratio(row.passes_ratio)} {f'| {_ratio(row.scoring_ratio)} ' if scoring else ''}"
            f"| {row.wall_seconds:.1f} | {_ratio(row.wall_ratio)} | {_ratio(row.train_ratio)} "
            f"| {_ratio(row.time_to_full_ratio)} |"
            + "".join(f" {_extra_cell(title, *cell)} |" for title, cell in zip(extras, cells, strict=True))
        )
    return "\n".join(lines) + "\n\n" + note


def footnote(options: CompareOptions, results: Sequence[RunResult]) -> str:
    """What the table measured: recipe, data sizes, epochs, the metric and its evaluation, devices."""
    recipe = report_recipe(RECIPES[options.recipe], results)
    better = "higher" if recipe.higher_is_better else "lower"
    measure = "accuracy" if recipe.kind == "accuracy" else "loss"
    reach = (
        f"the train time at the end of the first epoch whose validation {measure} reaches full data's final "
        f"validation {measure} (the lowest over its seeds)"
        if recipe.higher_is_better
        else f"the train time at the end of the first epoch whose validation {measure} is at or below full data's "
        f"final validation {measure} (the highest over its seeds)"
    )
    tests = sorted({r.test_examples for r in results})
    vals = sorted({r.val_examples for r in results})
    trains = sorted({r.train_examples for r in results})
    devices = sorted({r.device for r in results})
    return (
        f"Recipe `{recipe.name}`, dataset `{options.dataset}`{' (--fast-dev)' if options.fast_dev else ''}: "
        f"{'/'.join(map(str, trains))} training, {'/'.join(map(str, vals))} validation and "
        f"{'/'.join(map(str, tests))} test examples, {options.max_epochs} epochs. Runs are judged by "
        f"`{recipe.metric}` after every epoch and `{recipe.test_metric}` after training ({better} is better; *best* "
        f"is the {'highest' if recipe.higher_is_better else 'lowest'} epoch). {recipe.note} Columns: *test* "
        "is the test split after training; *final val* and *best val* are the validation split's last and best "
        "epoch. ± is the sample standard deviation over seeds. *Same as full*: every seed trained on exactly "
        "what full data's run of that seed trained on (the same examples, weights and losses at every step), so "
        "its differences in time are noise. Each seed runs the policies in a rotated order after an untimed "
        "warm-up run, and `comparison.json` keeps every run's times. Sample "
        "passes: training examples processed over the whole run (forward and backward). Scoring forwards: "
        "the extra forward passes without a backward of selection inside the step, which scores every example "
        "of a batch (in every epoch, or every few with remembered scores) and trains on some. Wall-clock: "
        "`Trainer.fit`, per-epoch evaluation included, on "
        f"{', '.join(devices)}; train time: the same without the evaluation, the part a policy can save "
        f"(a policy's own preparation, such as RHO-LOSS's holdout models, included). Time to full's {measure}: "
        f"{reach}, over full data's train time (n/a: some seed never reaches it)."
    )


def write_csv(path: Path, rows: Sequence[PolicySummary]) -> None:
    """``summary.csv``: one row per policy, the extras as ``<name>_mean`` and ``<name>_std`` columns."""
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        names = [name for name in PolicySummary.__dataclass_fields__ if name not in ("extras", "monitored")]
        extras = list(dict.fromkeys(name for row in rows for name in row.extras))
        writer.writerow(names + [f"{name}_{part}" for name in extras for part in ("mean", "std")])
        for row in rows:
            cells = [value for name in extras for value in row.extras.get(name, (math.nan, math.nan))]
            writer.writerow([getattr(row, name) for name in names] + cells)


def accuracy_figure(
    results: Sequence[RunResult],
    policies: Sequence[str] | None = None,
    *,
    metric: str = "val/acc",
    label: str = "validation accuracy",
    percent: bool = True,
) -> Figure:
    """Accuracy (``metric``) against sample passes, one line per policy (the mean over seeds, ± std as bars).

    The x axis counts passes in units of the training set (one full-data epoch is 1), so policies
    with shorter epochs end further left. ``percent=False`` plots the values as they are (a loss).

    Returns:
        A ``matplotlib.figure.Figure``; no pyplot state is touched.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), dpi=100)
    axes = figure.add_subplot()
    order = list(policies) if policies is not None else list(dict.fromkeys(r.policy for r in results))
    for policy in order:
        runs = [r for r in results if r.policy == policy]
        if not runs:
            continue
        epochs = min(len([e for e in r.epochs if metric in e]) for r in runs)
        passes, means, stds = [], [], []
        for index in range(epochs):
            points = [[e for e in r.epochs if metric in e][index] for r in runs]
            passes.append(
                statistics.fmean(p["sample_passes"] / r.train_examples for p, r in zip(points, runs, strict=True))
            )
            mean, std = _mean_std([(100 if percent else 1) * p[metric] for p in points])
            means.append(mean)
            stds.append(0.0 if math.isnan(std) else std)
        axes.errorbar(
            passes, means, yerr=stds if len(runs) > 1 else None, marker="o", markersize=3, capsize=2, label=policy
        )
    axes.set(
        xlabel="sample passes (multiples of the training set)",
        ylabel=f"{label} (%)" if percent else label,
        title=f"{label[0].upper()}{label[1:]} against compute",
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def write_report(options: CompareOptions, results: Sequence[RunResult]) -> list[PolicySummary]:
    """Write ``summary.md``, ``summary.csv`` and ``accuracy_vs_passes.png`` under ``options.output``; the rows."""
    recipe = report_recipe(RECIPES[options.recipe], results)
    rows = summarize(results, options.policies, recipe.metric, higher_is_better=recipe.higher_is_better)
    (options.output / "summary.md").write_text(markdown_table(rows, recipe, footnote(options, results)) + "\n")
    write_csv(options.output / "summary.csv", rows)
    figure = accuracy_figure(
        results, options.policies, metric=recipe.metric, label=recipe.metric_label, percent=recipe.kind == "accuracy"
    )
    figure.savefig(options.output / "accuracy_vs_passes.png", dpi=120)
    return rows
