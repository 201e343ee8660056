"""``lightning-curricula compare``: run curricula × seeds on a recipe and compare them by compute.

Each run is a recipe's ``LightningCLI`` (``--recipe vision``: `lightning_curricula.recipes.vision.cli.VisionCLI`, the
default; ``--recipe llm``: `lightning_curricula.recipes.llm.cli.LLMRecipeCLI`) with one of the YAML configs shipped in
``recipes/<recipe>/configs`` (the policy names are their file names), built with ``run=False`` and
fitted here, so a comparison run is exactly what ``python -m recipes.<recipe> fit --config ...``
trains. The accuracy compared is the vision recipe's test accuracy, or the LLM recipe's exact-match
accuracy on the held-out *hard* split (its easy-split accuracy, token count and the rank correlations
of the learned difficulty with the known one join the table). The comparison writes, under ``--output``:

- ``comparison.json``: the settings; a later invocation with other settings is refused;
- ``results/<policy>/seed_<s>.json``: one file per finished run (a rerun skips it);
- ``tensorboard/<policy>/seed_<s>``: the run's TensorBoard logs, with its hyperparameters and final
  metrics in the HParams tab and ``test/acc_by_sample_passes`` (test accuracy with
  ``step = cumulative sample passes``), so curricula with different epoch lengths line up;
- ``summary.md`` and ``summary.csv``: per policy, final and best accuracy (mean ± std over seeds),
  sample passes and wall-clock, as ratios of ``full`` when it is among the policies, and the recipe's
  extra metrics;
- ``accuracy_vs_passes.png``: accuracy against sample passes, one line per policy.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import importlib
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_curricula.recipes.vision.sources import check_dataset_name as check_vision_dataset

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "DEFAULT_POLICIES",
    "RECIPES",
    "CompareOptions",
    "ComparisonMismatchError",
    "PolicySettingsError",
    "PolicySummary",
    "Recipe",
    "accuracy_figure",
    "available_policies",
    "main",
    "parse_args",
    "run_comparison",
    "summarize",
]

#: The policies compared when ``--policies`` is not given (vision recipe).
DEFAULT_POLICIES = ("full", "random", "infobatch", "curriculum", "static_el2n")
_SETTINGS_VERSION = 2
_FAST_DEV_TRAIN = 256
_FAST_DEV_TEST = 128
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


def check_llm_dataset(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a reasoning-gym task, an existing path or a Hub id.

    Example:
        >>> check_llm_dataset("reasoning_gym:basic_arithmetic")
    """
    if not (name.startswith("reasoning_gym:") or "/" in name or Path(name).exists()):
        raise ValueError(
            f"Unknown dataset {name!r}; valid: reasoning_gym:<task> (such as reasoning_gym:basic_arithmetic), a "
            "local JSON / JSONL / parquet / CSV file or save_to_disk folder, or a Hugging Face Hub id with a '/'."
        )


@dataclass(frozen=True)
class Recipe:
    """What ``compare`` needs to know about a recipe: where its configs are, what it measures, how to shrink it.

    Args:
        name: the ``--recipe`` value.
        package: the recipe's package, holding ``configs/*.yaml`` (the policies) and the ``cli`` module.
        cli: the name of the recipe's ``LightningCLI`` subclass in ``<package>.cli``.
        default_dataset: ``--data.dataset`` when ``--dataset`` is not given.
        default_policies: the policies compared when ``--policies`` is not given.
        default_epochs: ``--trainer.max_epochs`` when ``--max-epochs`` is not given.
        metric: the accuracy compared, as the recipe logs it after every epoch.
        metric_label: how plots call it.
        column: how the summary table's columns call it.
        tag: the TensorBoard tag of ``metric`` against sample passes.
        recorded: the metrics the per-epoch records keep (``metric`` first).
        extras: metrics whose final logged values (or rank correlations) join the table, by column title.
        run_args: arguments of every run.
        fast_dev_args: arguments of ``--fast-dev`` runs (a pipeline check, not a measurement).
        hparams: config keys logged as TensorBoard hyperparameters, by their short names.
        check_dataset: raises ``ValueError`` for a dataset name the recipe cannot load.
        note: what the footnote of the table says about the evaluation.
    """

    name: str
    package: str
    cli: str
    default_dataset: str
    default_policies: tuple[str, ...]
    default_epochs: int
    metric: str
    metric_label: str
    column: str
    recorded: tuple[str, ...]
    extras: dict[str, str]
    run_args: tuple[str, ...]
    fast_dev_args: tuple[str, ...]
    hparams: dict[str, str]
    check_dataset: Callable[[str], None]
    note: str
    tag: str


#: The recipes ``compare`` runs, by ``--recipe`` name.
RECIPES: dict[str, Recipe] = {
    "vision": Recipe(
        name="vision",
        package="lightning_curricula.recipes.vision",
        cli="VisionCLI",
        default_dataset="embedded",
        default_policies=DEFAULT_POLICIES,
        default_epochs=6,
        metric="val/acc",
        metric_label="test accuracy",
        column="test acc",
        recorded=("val/acc", "val/loss", "train/loss"),
        extras={},
        run_args=("--data.val_size", "0"),  # per-epoch accuracy is on the test split
        fast_dev_args=("--data.train_subset", str(_FAST_DEV_TRAIN), "--data.test_subset", str(_FAST_DEV_TEST)),
        hparams={
            "model": "model.model",
            "lr": "model.lr",
            "schedule": "model.schedule",
            "batch_size": "data.batch_size",
            "label_noise": "data.label_noise",
        },
        check_dataset=check_vision_dataset,
        note=(
            "Accuracy is measured on the test split after every epoch (the test split doubles as the validation "
            "set, to get accuracy per epoch cheaply), so *best* is selected on the test set and optimistic: "
            "compare *final*."
        ),
        tag="test/acc_by_sample_passes",
    ),
    "llm": Recipe(
        name="llm",
        package="lightning_curricula.recipes.llm",
        cli="LLMRecipeCLI",
        default_dataset="reasoning_gym:basic_arithmetic",
        default_policies=("full", "random", "curriculum", "curriculum_difficulty", "anti_curriculum"),
        default_epochs=4,
        metric="val/hard/accuracy",
        metric_label="held-out hard accuracy",
        column="hard acc",
        recorded=("val/hard/accuracy", "val/easy/accuracy", "val/hard/loss", "train/loss", "train/tokens"),
        extras={
            "easy acc (%)": "val/easy/accuracy",
            "hard loss": "val/hard/loss",
            "tokens": "train/tokens_seen",
            "ρ(loss_ema, difficulty)": "rank_correlation/loss_ema",
        },
        run_args=(),
        fast_dev_args=(
            "--model.model",
            "tiny-random-llama",
            "--data.train_size",
            "32",
            "--data.eval_size",
            "16",
            "--data.batch_size",
            "8",
            "--model.max_new_tokens",
            "4",
        ),
        hparams={
            "model": "model.model",
            "lr": "model.lr",
            "lora_rank": "model.lora_rank",
            "batch_size": "data.batch_size",
            "train_size": "data.train_size",
            "max_length": "data.max_length",
        },
        check_dataset=check_llm_dataset,
        note=(
            "Accuracy is exact match of greedy answers graded by the task's scorer on held-out easy and hard "
            "splits after every epoch; *best* is selected on the same split: compare *final*. Tokens: response "
            "and prompt tokens trained on (policies plan examples, not tokens). ρ: Spearman correlation of the "
            "learned loss EMA with the known difficulty at the end of training."
        ),
        tag="val/hard_accuracy_by_sample_passes",
    ),
}


@dataclass(frozen=True)
class CompareOptions:
    """The settings of one ``compare`` invocation (see ``lightning-curricula compare --help``).

    Args:
        policies: config names (``recipes/<recipe>/configs/<name>.yaml``).
        seeds: one run per policy and seed.
        dataset: ``--data.dataset`` of every run.
        max_epochs: ``--trainer.max_epochs`` of every run.
        output: the comparison's directory.
        fast_dev: tiny data (and a tiny model for the LLM recipe): a smoke test, not a measurement.
        threads: torch intra-op threads (``None`` keeps torch's default).
        extra_args: more recipe arguments for every run, such as ``--trainer.precision bf16-mixed``.
        recipe: a name in `RECIPES`.
    """

    policies: tuple[str, ...] = DEFAULT_POLICIES
    seeds: tuple[int, ...] = (0,)
    dataset: str = "embedded"
    max_epochs: int = 6
    output: Path = Path("runs/compare")
    fast_dev: bool = False
    threads: int | None = 1
    extra_args: tuple[str, ...] = ()
    recipe: str = "vision"

    def identity(self) -> dict[str, Any]:
        """What makes two invocations the same comparison (policies and seeds may be added to it)."""
        return {
            "recipe": self.recipe,
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
    extras: dict[str, float] = field(default_factory=dict)
    train_seconds: float = math.nan


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
    train_seconds: float
    train_ratio: float
    extras: dict[str, tuple[float, float]] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ policies


def _configs_dir(recipe: str) -> Any:
    return importlib.resources.files(RECIPES[recipe].package) / "configs"


def available_policies(recipe: str = "vision") -> list[str]:
    """The policy names ``compare`` accepts for ``recipe``: the YAML configs shipped with it.

    Example:
        >>> {"full", "infobatch", "curriculum"} <= set(available_policies())
        True
        >>> "curriculum_difficulty" in available_policies("llm")
        True
    """
    configs = _configs_dir(recipe).iterdir()
    return sorted(entry.name[: -len(".yaml")] for entry in configs if entry.name.endswith(".yaml"))


def _config_text(recipe: str, policy: str) -> str:
    return str((_configs_dir(recipe) / f"{policy}.yaml").read_text())


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
        help="train a recipe with several policies and seeds, and compare them by compute",
        description=(
            "Train a recipe once per policy and seed, then summarise accuracy against sample passes and "
            "wall-clock. Arguments after `--` go to every run of the recipe, e.g. "
            "`-- --model.model resnet18 --trainer.precision bf16-mixed`."
        ),
    )
    compare.add_argument(
        "--recipe", choices=sorted(RECIPES), default="vision", help="the recipe to run (default: vision)"
    )
    valid = "; ".join(f"{name}: {', '.join(available_policies(name))}" for name in RECIPES)
    compare.add_argument(
        "--policies",
        nargs="+",
        metavar="NAME",
        help=f"configs to compare (default for vision: {' '.join(DEFAULT_POLICIES)}); valid: {valid}",
    )
    compare.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="SEED", help="seeds (default: 0)")
    compare.add_argument(
        "--dataset",
        help=(
            "vision: embedded (default), fashion_mnist, digits, or a Hugging Face Hub id such as uoft-cs/cifar10; "
            "llm: reasoning_gym:<task> (default reasoning_gym:basic_arithmetic), a local file or a Hub id"
        ),
    )
    compare.add_argument("--max-epochs", type=int, help="epochs per run (default: 6 for vision, 4 for llm)")
    compare.add_argument(
        "--output", type=Path, default=Path("runs/compare"), help="output folder (default: runs/compare)"
    )
    compare.add_argument(
        "--fast-dev",
        action="store_true",
        help="tiny data (and a tiny random model for llm): checks the pipeline in seconds, measures nothing",
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
    recipe = RECIPES[namespace.recipe]
    policies = namespace.policies or list(recipe.default_policies)
    dataset = namespace.dataset or recipe.default_dataset
    max_epochs = recipe.default_epochs if namespace.max_epochs is None else namespace.max_epochs
    valid = available_policies(recipe.name)
    unknown = [name for name in policies if name not in valid]
    if unknown:
        compare.error(f"unknown policies {unknown} for the {recipe.name} recipe; valid: {', '.join(valid)}")
    try:
        recipe.check_dataset(dataset)
    except ValueError as error:
        compare.error(str(error))
    if max_epochs < 1:
        compare.error(f"--max-epochs must be at least 1, got {max_epochs}")
    if namespace.threads < 0:
        compare.error(f"--threads must be >= 0, got {namespace.threads}")
    return CompareOptions(
        policies=tuple(dict.fromkeys(policies)),
        seeds=tuple(dict.fromkeys(namespace.seeds)),
        dataset=dataset,
        max_epochs=max_epochs,
        output=namespace.output,
        fast_dev=namespace.fast_dev,
        threads=namespace.threads or None,
        extra_args=tuple(extra),
        recipe=recipe.name,
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
    print(_markdown_table(rows, RECIPES[options.recipe], _footnote(options, _load_results(options))))
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
    # Seed by seed, every policy in turn: a shared machine's speed drifts over a long comparison, and taking
    # the policies in turn spreads the drift over all of them instead of penalising the last ones.
    pending = [
        (policy, seed)
        for seed in options.seeds
        for policy in options.policies
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
    recipe = RECIPES[options.recipe]
    (output / "summary.md").write_text(_markdown_table(rows, recipe, _footnote(options, results)) + "\n")
    _write_csv(output / "summary.csv", rows)
    figure = accuracy_figure(results, options.policies, metric=recipe.metric, label=recipe.metric_label)
    figure.savefig(output / "accuracy_vs_passes.png", dpi=120)
    return rows


def _settings_record(options: CompareOptions) -> dict[str, Any]:
    """The content of ``comparison.json``, after checking that the output folder holds this comparison or none.

    A stored comparison is the same when the dataset, epochs, ``--fast-dev`` and extra arguments are
    equal and no policy's config changed; new policies and seeds extend it.
    """
    path = options.output / "comparison.json"
    configs = {
        policy: hashlib.sha256(_config_text(options.recipe, policy).encode()).hexdigest() for policy in options.policies
    }
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
        size = _sizes(datamodule)[0]
        policy_object = _policy_to_check(datamodule)
        try:
            if policy_object is not None:
                CurriculumSampler(
                    range(size),
                    policy_object,
                    dynamics=TrainingDynamics(num_examples=size),
                    num_epochs=options.max_epochs,
                )
        except ValueError as error:
            raise PolicySettingsError(
                f"policy {policy!r} cannot run with --max-epochs {options.max_epochs}: {error}"
            ) from None


def _policy_to_check(datamodule: Any) -> Any:
    """The data module's policy as its loader will use it, or ``None`` when only the model can complete it."""
    bind = getattr(datamodule, "bound_policy", None)  # the LLM recipe gives a ScoreCurriculum its known scores
    if bind is None:
        return datamodule.policy
    try:
        return bind()
    except ValueError:  # ranks by scores the model computes when fitting starts (IFD): checked then
        return None


def _sizes(datamodule: Any) -> tuple[int, int]:
    """Training and evaluation examples of a recipe's data module, after ``setup("fit")``."""
    if hasattr(datamodule, "val_datasets"):  # the LLM recipe: held-out splits
        return len(datamodule.train_dataset), sum(len(split) for split in datamodule.val_datasets.values())
    return len(datamodule.train_set), len(datamodule.test_set)


def _build_cli(options: CompareOptions, policy: str, seed: int, *, history: Any, logger: Any) -> Any:
    recipe = RECIPES[options.recipe]
    cli_class = getattr(importlib.import_module(f"{recipe.package}.cli"), recipe.cli)
    with importlib.resources.as_file(_configs_dir(recipe.name) / f"{policy}.yaml") as config:
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
            args += recipe.fast_dev_args
        args += [*options.extra_args, *recipe.run_args]
        return cli_class(args=args, run=False, history=history, save_config_kwargs={"overwrite": True})


def _run_one(options: CompareOptions, policy: str, seed: int, progress: Any) -> RunResult:
    from lightning_curricula.recipes.vision.history import EpochHistory

    recipe = RECIPES[options.recipe]
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
    history = EpochHistory(
        monitor=recipe.metric, tag=recipe.tag, metrics=recipe.recorded, on_record=lambda record: progress.update(1)
    )
    cli = _build_cli(options, policy, seed, history=history, logger=logger)
    started = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    wall = time.perf_counter() - started
    progress.update(max(options.max_epochs - len(history.records), 0))
    accuracies = [record[recipe.metric] for record in history.records if recipe.metric in record]
    if not accuracies:
        raise RuntimeError(f"The run of {policy!r} (seed {seed}) recorded no {recipe.metric}.")
    final = _final_metrics(cli.trainer)
    train_examples, test_examples = _sizes(cli.datamodule)
    result = RunResult(
        policy=policy,
        seed=seed,
        final_acc=accuracies[-1],
        best_acc=max(accuracies),
        sample_passes=history.sample_passes,
        wall_seconds=wall,
        train_examples=train_examples,
        test_examples=test_examples,
        device=_device_name(cli.trainer),
        epochs=history.records,
        extras={name: final[name] for name in recipe.extras.values() if name in final},
        train_seconds=history.records[-1]["train_seconds"] if history.records else math.nan,
    )
    cli.trainer.logger.log_hyperparams(
        _hyperparameters(cli, policy, seed, options),
        metrics={
            "hparams/final_test_acc": result.final_acc,
            "hparams/best_test_acc": result.best_acc,
            "hparams/sample_passes": float(result.sample_passes),
            "hparams/wall_seconds": result.wall_seconds,
            "hparams/train_seconds": result.train_seconds,
        },
    )
    cli.trainer.logger.finalize("success")
    return result


def _final_metrics(trainer: Any) -> dict[str, float]:
    """The run's last logged scalars, with the rank correlations a `DifficultyReport` sends to the logger only."""
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1}
    for callback in trainer.callbacks:
        for name, value in getattr(callback, "correlations", {}).items():  # the LLM recipe's DifficultyReport
            metrics[f"rank_correlation/{name}"] = value
    return metrics


def _hyperparameters(cli: Any, policy: str, seed: int, options: CompareOptions) -> dict[str, Any]:
    """Flat, TensorBoard-friendly hyperparameters of a run: the policy's and the recipe's main settings."""
    config = cli.config
    params: dict[str, Any] = {
        "recipe": options.recipe,
        "policy": policy,
        "seed": seed,
        "dataset": options.dataset,
        "max_epochs": options.max_epochs,
    }
    for name, key in RECIPES[options.recipe].hparams.items():
        value = config.get(key)
        params[name] = value if isinstance(value, bool | int | float | str) else str(value)
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
    full_train = statistics.fmean(r.train_seconds for r in full) if full else math.nan
    rows = []
    for policy, runs in by_policy.items():
        if not runs:
            continue
        final = _mean_std([r.final_acc for r in runs])
        best = _mean_std([r.best_acc for r in runs])
        passes = statistics.fmean(r.sample_passes for r in runs)
        wall = statistics.fmean(r.wall_seconds for r in runs)
        train = statistics.fmean(r.train_seconds for r in runs)
        extras = {name: _mean_std([r.extras[name] for r in runs if name in r.extras]) for name in runs[0].extras}
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
                train_seconds=train,
                train_ratio=train / full_train,
                extras=extras,
            )
        )
    return rows


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


def _markdown_table(rows: Sequence[PolicySummary], recipe: Recipe, footnote: str) -> str:
    extras = [title for title, name in recipe.extras.items() if any(name in row.extras for row in rows)]
    lines = [
        f"| policy | seeds | final {recipe.column} (%) | best {recipe.column} (%) | sample passes | passes / full "
        f"| wall-clock (s) | wall-clock / full | train time / full |{''.join(f' {title} |' for title in extras)}",
        f"|---|---:|---:|---:|---:|---:|---:|---:|---:|{'---:|' * len(extras)}",
    ]
    for row in rows:
        cells = [row.extras.get(recipe.extras[title], (math.nan, math.nan)) for title in extras]
        lines.append(
            f"| {row.policy} | {row.seeds} | {_percent(row.final_acc_mean, row.final_acc_std)} "
            f"| {_percent(row.best_acc_mean, row.best_acc_std)} | {row.sample_passes:,.0f} "
            f"| {_ratio(row.passes_ratio)} | {row.wall_seconds:.1f} | {_ratio(row.wall_ratio)} "
            f"| {_ratio(row.train_ratio)} |"
            + "".join(f" {_extra_cell(title, *cell)} |" for title, cell in zip(extras, cells, strict=True))
        )
    return "\n".join(lines) + "\n\n" + footnote


def _footnote(options: CompareOptions, results: Sequence[RunResult]) -> str:
    recipe = RECIPES[options.recipe]
    tests = sorted({r.test_examples for r in results})
    trains = sorted({r.train_examples for r in results})
    devices = sorted({r.device for r in results})
    return (
        f"Recipe `{recipe.name}`, dataset `{options.dataset}`{' (--fast-dev)' if options.fast_dev else ''}: "
        f"{'/'.join(map(str, trains))} training and {'/'.join(map(str, tests))} evaluation examples, "
        f"{options.max_epochs} epochs. {recipe.note} ± is the sample standard deviation over seeds. Sample "
        "passes: training examples processed over the whole run. Wall-clock: `Trainer.fit`, per-epoch "
        f"evaluation included, on {', '.join(devices)}; train time: the same without the evaluation, the part "
        "a policy can save."
    )


def _write_csv(path: Path, rows: Sequence[PolicySummary]) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        names = [name for name in PolicySummary.__dataclass_fields__ if name != "extras"]
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
    label: str = "test accuracy",
) -> Figure:
    """Accuracy (``metric``) against sample passes, one line per policy (the mean over seeds, ± std as bars).

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
        epochs = min(len([e for e in r.epochs if metric in e]) for r in runs)
        passes, means, stds = [], [], []
        for index in range(epochs):
            points = [[e for e in r.epochs if metric in e][index] for r in runs]
            passes.append(
                statistics.fmean(p["sample_passes"] / r.train_examples for p, r in zip(points, runs, strict=True))
            )
            mean, std = _mean_std([100 * p[metric] for p in points])
            means.append(mean)
            stds.append(0.0 if math.isnan(std) else std)
        axes.errorbar(
            passes, means, yerr=stds if len(runs) > 1 else None, marker="o", markersize=3, capsize=2, label=policy
        )
    axes.set(
        xlabel="sample passes (multiples of the training set)",
        ylabel=f"{label} (%)",
        title=f"{label[0].upper()}{label[1:]} against compute",
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


if __name__ == "__main__":
    sys.exit(main())
