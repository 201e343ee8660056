"""``lightning-curricula compare``: run curricula × seeds on the vision recipe and compare them by compute.

Each run is the vision recipe (`recipes.vision.cli.VisionCLI`) with one of the YAML configs shipped
in ``recipes/vision/configs`` (the policy names are their file names), built with ``run=False`` and
fitted here, so a comparison run is exactly what ``python -m recipes.vision fit --config ...``
trains. The comparison writes, under ``--output``:

- ``comparison.json``: the settings; a later invocation with other settings is refused;
- ``results/<policy>/seed_<s>.json``: one file per finished run (a rerun skips it);
- ``tensorboard/<policy>/seed_<s>``: the run's TensorBoard logs, with its hyperparameters and final
  metrics in the HParams tab and ``test/acc_by_sample_passes`` (test accuracy with
  ``step = cumulative sample passes``), so curricula with different epoch lengths line up;
- ``summary.md`` and ``summary.csv``: per policy, final and best test accuracy (mean ± std over
  seeds), sample passes and wall-clock, as ratios of ``full`` when it is among the policies;
- ``accuracy_vs_passes.png``: test accuracy against sample passes, one line per policy.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import importlib.resources
import json
import logging
import math
import os
import shutil
import statistics
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recipes.vision.sources import check_dataset_name

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "DEFAULT_POLICIES",
    "CompareOptions",
    "ComparisonMismatchError",
    "PolicySettingsError",
    "PolicySummary",
    "accuracy_figure",
    "available_policies",
    "main",
    "parse_args",
    "run_comparison",
    "summarize",
]

#: The policies compared when ``--policies`` is not given.
DEFAULT_POLICIES = ("full", "random", "infobatch", "curriculum", "static_el2n")
_SETTINGS_VERSION = 1
_FAST_DEV_TRAIN = 256
_FAST_DEV_TEST = 128
_ACCURACY_TAG = "test/acc_by_sample_passes"
_QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning")
# Warnings that every run of a comparison would repeat: expected here, and they would break the progress bar.
_EXPECTED_WARNINGS = (
    ".*does not have many workers.*",
    ".*smaller than the logging interval.*",
    ".*isinstance\\(treespec, LeafSpec\\).*",
    ".*LightningCLI's args parameter is intended to run from within Python.*",
)


class ComparisonMismatchError(RuntimeError):
    """The output directory holds a comparison with other settings."""


class PolicySettingsError(ValueError):
    """A policy cannot run with the comparison's settings (found before any run starts)."""


@dataclass(frozen=True)
class CompareOptions:
    """The settings of one ``compare`` invocation (see ``lightning-curricula compare --help``).

    Args:
        policies: config names (``recipes/vision/configs/<name>.yaml``).
        seeds: one run per policy and seed.
        dataset: ``--data.dataset`` of every run.
        max_epochs: ``--trainer.max_epochs`` of every run.
        output: the comparison's directory.
        fast_dev: tiny subsets (256 training, 128 test images): a smoke test, not a measurement.
        threads: torch intra-op threads (``None`` keeps torch's default).
        extra_args: more recipe arguments for every run, such as ``--trainer.precision bf16-mixed``.
    """

    policies: tuple[str, ...] = DEFAULT_POLICIES
    seeds: tuple[int, ...] = (0,)
    dataset: str = "embedded"
    max_epochs: int = 6
    output: Path = Path("runs/compare")
    fast_dev: bool = False
    threads: int | None = 1
    extra_args: tuple[str, ...] = ()

    def identity(self) -> dict[str, Any]:
        """What makes two invocations the same comparison (policies and seeds may be added to it)."""
        return {
            "dataset": self.dataset,
            "max_epochs": self.max_epochs,
            "fast_dev": self.fast_dev,
            "extra_args": list(self.extra_args),
        }


@dataclass
class RunResult:
    """What one run of one policy with one seed produced (the content of its result file)."""

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


@dataclass(frozen=True)
class PolicySummary:
    """One row of the summary: a policy's results aggregated over seeds."""

    policy: str
    seeds: int
    final_acc_mean: float
    final_acc_std: float
    best_acc_mean: float
    best_acc_std: float
    sample_passes: float
    passes_ratio: float
    wall_seconds: float
    wall_ratio: float


# ------------------------------------------------------------------------------------------ policies


def _configs_dir() -> Any:
    return importlib.resources.files("recipes.vision") / "configs"


def available_policies() -> list[str]:
    """The policy names ``compare`` accepts: the YAML configs shipped with the vision recipe.

    Example:
        >>> {"full", "infobatch", "curriculum"} <= set(available_policies())
        True
    """
    return sorted(entry.name[: -len(".yaml")] for entry in _configs_dir().iterdir() if entry.name.endswith(".yaml"))


def _config_text(policy: str) -> str:
    return str((_configs_dir() / f"{policy}.yaml").read_text())


# ------------------------------------------------------------------------------------------ command line


def _build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The ``lightning-curricula`` parser and its ``compare`` subparser."""
    parser = argparse.ArgumentParser(
        prog="lightning-curricula",
        description="Curriculum learning and data pruning for PyTorch Lightning: compare curricula.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    compare = commands.add_parser(
        "compare",
        help="train the vision recipe with several policies and seeds, and compare them by compute",
        description=(
            "Train the vision recipe once per policy and seed, then summarise test accuracy against sample "
            "passes and wall-clock. Arguments after `--` go to every run of the recipe, e.g. "
            "`-- --model.model resnet18 --trainer.precision bf16-mixed`."
        ),
    )
    compare.add_argument(
        "--policies",
        nargs="+",
        default=list(DEFAULT_POLICIES),
        metavar="NAME",
        help=f"configs to compare (default: {' '.join(DEFAULT_POLICIES)}); valid: {', '.join(available_policies())}",
    )
    compare.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="SEED", help="seeds (default: 0)")
    compare.add_argument(
        "--dataset",
        default="embedded",
        help="embedded (default), fashion_mnist, digits, or a Hugging Face Hub id such as uoft-cs/cifar10",
    )
    compare.add_argument("--max-epochs", type=int, default=6, help="epochs per run (default: 6)")
    compare.add_argument(
        "--output", type=Path, default=Path("runs/compare"), help="output folder (default: runs/compare)"
    )
    compare.add_argument(
        "--fast-dev",
        action="store_true",
        help=f"tiny subsets ({_FAST_DEV_TRAIN} training, {_FAST_DEV_TEST} test images): checks the pipeline in seconds",
    )
    compare.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads per run (default: 1, best for the small CNN on a shared CPU; 0: torch's default)",
    )
    return parser, compare


def parse_args(argv: Sequence[str] | None = None) -> CompareOptions:
    """Parse ``lightning-curricula`` arguments; unknown policies and datasets are refused here.

    Raises:
        SystemExit: bad arguments (argparse prints the usage and the list of valid names).

    Example:
        >>> parse_args(["compare", "--policies", "full", "random", "--seeds", "0", "1"]).seeds
        (0, 1)
    """
    args = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in args:
        cut = args.index("--")
        args, extra = args[:cut], args[cut + 1 :]
    parser, compare = _build_parser()
    namespace = parser.parse_args(args)
    valid = available_policies()
    unknown = [name for name in namespace.policies if name not in valid]
    if unknown:
        compare.error(f"unknown policies {unknown}; valid: {', '.join(valid)}")
    try:
        check_dataset_name(namespace.dataset)
    except ValueError as error:
        compare.error(str(error))
    if namespace.max_epochs < 1:
        compare.error(f"--max-epochs must be at least 1, got {namespace.max_epochs}")
    if namespace.threads < 0:
        compare.error(f"--threads must be >= 0, got {namespace.threads}")
    return CompareOptions(
        policies=tuple(dict.fromkeys(namespace.policies)),
        seeds=tuple(dict.fromkeys(namespace.seeds)),
        dataset=namespace.dataset,
        max_epochs=namespace.max_epochs,
        output=namespace.output,
        fast_dev=namespace.fast_dev,
        threads=namespace.threads or None,
        extra_args=tuple(extra),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-curricula`` console script.

    Returns:
        The exit status: 0 on success, 2 when the output folder holds another comparison or a policy
        cannot run with these settings.
    """
    options = parse_args(argv)
    try:
        rows = run_comparison(options)
    except (ComparisonMismatchError, PolicySettingsError) as error:
        print(f"lightning-curricula compare: error: {error}", file=sys.stderr)
        return 2
    print(_markdown_table(rows, _footnote(options, _load_results(options))))
    print(f"\nWrote {options.output / 'summary.md'}, summary.csv, accuracy_vs_passes.png and tensorboard/.")
    print(f"See the curves with: tensorboard --logdir {options.output / 'tensorboard'}")
    return 0


# ------------------------------------------------------------------------------------------ the comparison


def run_comparison(options: CompareOptions) -> list[PolicySummary]:
    """Run every missing (policy, seed), then write the summary, the CSV and the figure.

    Raises:
        ComparisonMismatchError: ``options.output`` holds a comparison with other settings.
        PolicySettingsError: a policy cannot run with these settings (checked before any run starts).
    """
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    output = options.output
    settings = _settings_record(options)
    pending = [
        (policy, seed)
        for policy in options.policies
        for seed in options.seeds
        if not _result_path(output, policy, seed).is_file()
    ]
    runs = len(options.policies) * len(options.seeds)
    with _quiet_runs(options.threads):
        if pending:
            _preflight(options, sorted({policy for policy, _ in pending}))
        _write_json(output / "comparison.json", settings)
        progress = tqdm(total=runs * options.max_epochs, unit="epoch", desc="compare", dynamic_ncols=True)
        progress.update((runs - len(pending)) * options.max_epochs)
        with progress:
            for policy, seed in pending:
                progress.set_postfix_str(f"{policy} seed {seed}")
                result = _run_one(options, policy, seed, progress)
                _write_json(_result_path(output, policy, seed), asdict(result))
    results = _load_results(options)
    rows = summarize(results, options.policies)
    footnote = _footnote(options, results)
    (output / "summary.md").write_text(_markdown_table(rows, footnote) + "\n")
    _write_csv(output / "summary.csv", rows)
    accuracy_figure(results, options.policies).savefig(output / "accuracy_vs_passes.png", dpi=120)
    return rows


def _settings_record(options: CompareOptions) -> dict[str, Any]:
    """The content of ``comparison.json``, after checking that the output folder holds this comparison or none.

    A stored comparison is the same when the dataset, epochs, ``--fast-dev`` and extra arguments are
    equal and no policy's config changed; new policies and seeds extend it.
    """
    path = options.output / "comparison.json"
    configs = {policy: hashlib.sha256(_config_text(policy).encode()).hexdigest() for policy in options.policies}
    identity = options.identity()
    if path.is_file():
        stored = json.loads(path.read_text())
        differences = [
            f"{key}: stored {stored.get(key)!r}, now {value!r}"
            for key, value in identity.items()
            if stored.get(key) != value
        ]
        differences += [
            f"config of {policy!r} changed since its runs"
            for policy, digest in configs.items()
            if stored.get("configs", {}).get(policy, digest) != digest
        ]
        if stored.get("version") != _SETTINGS_VERSION:
            differences.append(f"version: stored {stored.get('version')!r}, now {_SETTINGS_VERSION}")
        if differences:
            raise ComparisonMismatchError(
                f"{options.output} holds a different comparison ({'; '.join(differences)}). Pick another "
                f"--output, or delete {options.output} to start over."
            )
        configs = {**stored.get("configs", {}), **configs}
        policies = list(dict.fromkeys([*stored.get("policies", []), *options.policies]))
        seeds = sorted({*stored.get("seeds", []), *options.seeds})
    elif options.output.exists() and any(options.output.iterdir()):
        raise ComparisonMismatchError(
            f"{options.output} is not empty and holds no comparison.json. Pick another --output, or delete it."
        )
    else:
        policies, seeds = list(options.policies), sorted(options.seeds)
    return {"version": _SETTINGS_VERSION, **identity, "configs": configs, "policies": policies, "seeds": seeds}


def _preflight(options: CompareOptions, policies: list[str]) -> None:
    """Build each policy's run and check its policy against the dataset size: fail before hours of training."""
    from lightning_curricula import CurriculumSampler, TrainingDynamics

    for policy in policies:
        cli = _build_cli(options, policy, options.seeds[0], history=None, logger=False)
        datamodule = cli.datamodule
        datamodule.setup("fit")
        size = len(datamodule.train_set)
        try:
            if datamodule.policy is not None:
                CurriculumSampler(
                    range(size),
                    datamodule.policy,
                    dynamics=TrainingDynamics(num_examples=size),
                    num_epochs=options.max_epochs,
                )
        except ValueError as error:
            raise PolicySettingsError(
                f"policy {policy!r} cannot run with --max-epochs {options.max_epochs}: {error}"
            ) from None


def _build_cli(options: CompareOptions, policy: str, seed: int, *, history: Any, logger: Any) -> Any:
    from recipes.vision.cli import VisionCLI

    with importlib.resources.as_file(_configs_dir() / f"{policy}.yaml") as config:
        args = [
            "--config",
            str(config),
            "--seed_everything",
            str(seed),
            "--trainer.max_epochs",
            str(options.max_epochs),
            "--trainer.logger",
            json.dumps(logger),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
            "--trainer.enable_checkpointing",
            "false",
            "--trainer.num_sanity_val_steps",
            "0",
            "--trainer.default_root_dir",
            str(options.output / "tensorboard"),
            "--data.dataset",
            options.dataset,
            "--data.seed",
            str(seed),
        ]
        if options.fast_dev:
            args += ["--data.train_subset", str(_FAST_DEV_TRAIN), "--data.test_subset", str(_FAST_DEV_TEST)]
        args += [*options.extra_args, "--data.val_size", "0"]  # per-epoch accuracy is on the test split
        return VisionCLI(args=args, run=False, history=history, save_config_kwargs={"overwrite": True})


def _run_one(options: CompareOptions, policy: str, seed: int, progress: Any) -> RunResult:
    from recipes.vision.history import EpochHistory

    log_dir = options.output / "tensorboard" / policy / f"seed_{seed}"
    if log_dir.exists():  # the partial logs of an interrupted run
        shutil.rmtree(log_dir)
    logger = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {
            "save_dir": str(options.output / "tensorboard"),
            "name": policy,
            "version": f"seed_{seed}",
            "default_hp_metric": False,
        },
    }
    history = EpochHistory(tag=_ACCURACY_TAG, on_record=lambda record: progress.update(1))
    cli = _build_cli(options, policy, seed, history=history, logger=logger)
    started = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    wall = time.perf_counter() - started
    progress.update(max(options.max_epochs - len(history.records), 0))
    accuracies = [record["val/acc"] for record in history.records if "val/acc" in record]
    if not accuracies:
        raise RuntimeError(f"The run of {policy!r} (seed {seed}) recorded no test accuracy.")
    result = RunResult(
        policy=policy,
        seed=seed,
        final_acc=accuracies[-1],
        best_acc=max(accuracies),
        sample_passes=history.sample_passes,
        wall_seconds=wall,
        train_examples=len(cli.datamodule.train_set),
        test_examples=len(cli.datamodule.test_set),
        device=_device_name(cli.trainer),
        epochs=history.records,
    )
    cli.trainer.logger.log_hyperparams(
        _hyperparameters(cli, policy, seed, options),
        metrics={
            "hparams/final_test_acc": result.final_acc,
            "hparams/best_test_acc": result.best_acc,
            "hparams/sample_passes": float(result.sample_passes),
            "hparams/wall_seconds": result.wall_seconds,
        },
    )
    cli.trainer.logger.finalize("success")
    return result


def _hyperparameters(cli: Any, policy: str, seed: int, options: CompareOptions) -> dict[str, Any]:
    """Flat, TensorBoard-friendly hyperparameters of a run: the policy's and the recipe's main settings."""
    config = cli.config
    params: dict[str, Any] = {
        "policy": policy,
        "seed": seed,
        "dataset": options.dataset,
        "max_epochs": options.max_epochs,
        "model": config.model.model,
        "lr": config.model.lr,
        "schedule": config.model.schedule,
        "batch_size": config.data.batch_size,
        "label_noise": config.data.label_noise,
    }
    spec = config.data.policy
    if spec is not None:
        params["policy_class"] = str(spec.class_path).rsplit(".", 1)[-1]
        init_args = spec.get("init_args") or {}
        items = init_args.as_dict() if hasattr(init_args, "as_dict") else dict(init_args)
        for key, value in items.items():
            if isinstance(value, bool | int | float | str):
                params[f"policy_{key}"] = value
    return params


def _device_name(trainer: Any) -> str:
    import torch

    root = trainer.strategy.root_device
    if root.type == "cuda":
        return torch.cuda.get_device_name(root)
    return f"CPU ({torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''})"


@contextlib.contextmanager
def _quiet_runs(threads: int | None) -> Iterator[None]:
    """Lightning's per-run info lines and expected warnings off, and ``threads`` torch threads, for the duration."""
    import lightning.pytorch  # noqa: F401  (its import sets its loggers' levels: set ours after it)
    import torch

    levels = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    previous_threads = torch.get_num_threads()
    try:
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        if threads is not None:
            torch.set_num_threads(threads)
        with warnings.catch_warnings():
            for pattern in _EXPECTED_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        torch.set_num_threads(previous_threads)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


# ------------------------------------------------------------------------------------------ results


def _result_path(output: Path, policy: str, seed: int) -> Path:
    return output / "results" / policy / f"seed_{seed}.json"


def _write_json(path: Path, content: Any) -> None:
    """Write atomically: a run counts as done only once its whole result file exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(partial, path)


def _load_results(options: CompareOptions) -> list[RunResult]:
    results = []
    for policy in options.policies:
        for seed in options.seeds:
            path = _result_path(options.output, policy, seed)
            if path.is_file():
                results.append(RunResult(**json.loads(path.read_text())))
    return results


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def summarize(results: Sequence[RunResult], policies: Sequence[str]) -> list[PolicySummary]:
    """One row per policy: accuracies as mean and sample standard deviation over seeds, ratios to ``full``.

    Accuracies are fractions in ``[0, 1]``; a standard deviation over one seed is NaN, and so are the
    ratios when ``full`` is not among the results.
    """
    by_policy = {policy: [r for r in results if r.policy == policy] for policy in policies}
    full = by_policy.get("full") or []
    full_passes = statistics.fmean(r.sample_passes for r in full) if full else math.nan
    full_wall = statistics.fmean(r.wall_seconds for r in full) if full else math.nan
    rows = []
    for policy, runs in by_policy.items():
        if not runs:
            continue
        final = _mean_std([r.final_acc for r in runs])
        best = _mean_std([r.best_acc for r in runs])
        passes = statistics.fmean(r.sample_passes for r in runs)
        wall = statistics.fmean(r.wall_seconds for r in runs)
        rows.append(
            PolicySummary(
                policy=policy,
                seeds=len(runs),
                final_acc_mean=final[0],
                final_acc_std=final[1],
                best_acc_mean=best[0],
                best_acc_std=best[1],
                sample_passes=passes,
                passes_ratio=passes / full_passes,
                wall_seconds=wall,
                wall_ratio=wall / full_wall,
            )
        )
    return rows


def _percent(mean: float, std: float) -> str:
    text = f"{100 * mean:.2f}"
    return text if math.isnan(std) else f"{text} ± {100 * std:.2f}"


def _ratio(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def _markdown_table(rows: Sequence[PolicySummary], footnote: str) -> str:
    lines = [
        "| policy | seeds | final test acc (%) | best test acc (%) | sample passes | passes / full "
        "| wall-clock (s) | wall-clock / full |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.policy} | {row.seeds} | {_percent(row.final_acc_mean, row.final_acc_std)} "
            f"| {_percent(row.best_acc_mean, row.best_acc_std)} | {row.sample_passes:,.0f} "
            f"| {_ratio(row.passes_ratio)} | {row.wall_seconds:.1f} | {_ratio(row.wall_ratio)} |"
        )
    return "\n".join(lines) + "\n\n" + footnote


def _footnote(options: CompareOptions, results: Sequence[RunResult]) -> str:
    tests = sorted({r.test_examples for r in results})
    trains = sorted({r.train_examples for r in results})
    devices = sorted({r.device for r in results})
    return (
        f"Dataset `{options.dataset}`{' (--fast-dev subsets)' if options.fast_dev else ''}: "
        f"{'/'.join(map(str, trains))} training and {'/'.join(map(str, tests))} test images, "
        f"{options.max_epochs} epochs. Accuracy is measured on the test split after every epoch (the test split "
        "doubles as the validation set, to get accuracy per epoch cheaply), so *best* is selected on the test "
        "set and optimistic: compare *final*. ± is the sample standard deviation over seeds. Sample passes: "
        "training examples processed over the whole run. Wall-clock: `Trainer.fit`, per-epoch evaluation "
        f"included, on {', '.join(devices)}."
    )


def _write_csv(path: Path, rows: Sequence[PolicySummary]) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        names = list(PolicySummary.__dataclass_fields__)
        writer.writerow(names)
        for row in rows:
            writer.writerow([getattr(row, name) for name in names])


def accuracy_figure(results: Sequence[RunResult], policies: Sequence[str] | None = None) -> Figure:
    """Test accuracy against sample passes, one line per policy (the mean over seeds, ± std as bars).

    The x axis counts passes in units of the training set (one full-data epoch is 1), so policies
    with shorter epochs end further left.

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
        epochs = min(len([e for e in r.epochs if "val/acc" in e]) for r in runs)
        passes, means, stds = [], [], []
        for index in range(epochs):
            points = [[e for e in r.epochs if "val/acc" in e][index] for r in runs]
            passes.append(
                statistics.fmean(p["sample_passes"] / r.train_examples for p, r in zip(points, runs, strict=True))
            )
            mean, std = _mean_std([100 * p["val/acc"] for p in points])
            means.append(mean)
            stds.append(0.0 if math.isnan(std) else std)
        axes.errorbar(
            passes, means, yerr=stds if len(runs) > 1 else None, marker="o", markersize=3, capsize=2, label=policy
        )
    axes.set(
        xlabel="sample passes (multiples of the training set)",
        ylabel="test accuracy (%)",
        title="Test accuracy against compute",
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


if __name__ == "__main__":
    sys.exit(main())
