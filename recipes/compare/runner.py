"""Running a comparison: every missing (policy, seed) as its recipe's ``LightningCLI``, one result file each."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.resources
import json
import logging
import math
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from lightning_curricula.recipes.compare.report import (
    PolicySummary,
    RunResult,
    load_results,
    result_path,
    write_json,
    write_report,
)
from lightning_curricula.recipes.compare.settings import (
    RECIPES,
    CompareOptions,
    ComparisonMismatchError,
    PolicySettingsError,
    config_text,
    configs_dir,
)
from lightning_curricula.recipes.interface import MissingScoresError, RecipeDataModule

__all__ = ["run_comparison"]

_SETTINGS_VERSION = 3
_QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning")
# Warnings that every run of a comparison would repeat: expected here, and they would break the progress bar.
_EXPECTED_WARNINGS = (
    ".*does not have many workers.*",
    ".*smaller than the logging interval.*",
    ".*isinstance\\(treespec, LeafSpec\\).*",
    ".*LightningCLI's args parameter is intended to run from within Python.*",
)


def run_comparison(options: CompareOptions) -> list[PolicySummary]:
    """Run every missing (policy, seed), then write the summary, the CSV and the figure.

    Raises:
        ComparisonMismatchError: ``options.output`` holds a comparison with other settings.
        PolicySettingsError: a policy cannot run with these settings (checked before any run starts).
    """
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    output = options.output
    settings = _settings_record(options)
    order = run_order(options.policies, options.seeds)
    pending = [(policy, seed) for policy, seed in order if not result_path(output, policy, seed).is_file()]
    runs = len(order)
    with _quiet_runs(options.threads):
        if pending:
            _preflight(options, sorted({policy for policy, _ in pending}))
        write_json(output / "comparison.json", settings)
        progress = tqdm(total=runs * options.max_epochs, unit="epoch", desc="compare", dynamic_ncols=True)
        progress.update((runs - len(pending)) * options.max_epochs)
        with progress:
            if pending:  # the first timed run must not pay for imports, kernel selection and cold caches
                progress.set_postfix_str("warm-up (untimed)")
                settings["warmup_seconds"] = _warm_up(options, pending[0][0])
            for policy, seed in pending:
                progress.set_postfix_str(f"{policy} seed {seed}")
                result = _run_one(options, policy, seed, progress, position=order.index((policy, seed)))
                write_json(result_path(output, policy, seed), asdict(result))
                settings["runs"] = [*settings.get("runs", []), _timing(result)]
                write_json(output / "comparison.json", settings)
    return write_report(options, load_results(options))


def run_order(policies: tuple[str, ...], seeds: tuple[int, ...]) -> list[tuple[str, int]]:
    """Seed by seed, every policy in turn, the order rotated by one policy from each seed to the next.

    A shared machine's speed drifts over a long comparison: taking the policies in turn spreads the drift
    over all of them, and rotating the order keeps any one policy from always running first (or last).

    Example:
        >>> run_order(("full", "random", "bandit"), (0, 1))
        [('full', 0), ('random', 0), ('bandit', 0), ('random', 1), ('bandit', 1), ('full', 1)]
    """
    order = []
    for turn, seed in enumerate(seeds):
        shift = turn % len(policies)
        order += [(policy, seed) for policy in (*policies[shift:], *policies[:shift])]
    return order


def _timing(result: RunResult) -> dict[str, Any]:
    """A run's times, for ``comparison.json``."""
    return {
        "policy": result.policy,
        "seed": result.seed,
        "position": result.position,
        "wall_seconds": result.wall_seconds,
        "train_seconds": result.train_seconds,
        "test_seconds": result.test_seconds,
    }


def _warm_up(options: CompareOptions, policy: str) -> float:
    """One untimed run of ``policy`` on the recipe's warm-up data, without logs; its seconds."""
    recipe = RECIPES[options.recipe]
    cli = _build_cli(options, policy, options.seeds[0], history=None, logger=False, data_args=recipe.warmup_args)
    started = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return time.perf_counter() - started


def _settings_record(options: CompareOptions) -> dict[str, Any]:
    """The content of ``comparison.json``, after checking that the output folder holds this comparison or none.

    A stored comparison is the same when the dataset, epochs, ``--fast-dev`` and extra arguments are
    equal and no policy's config changed; new policies and seeds extend it, and its runs' times are kept.
    """
    path = options.output / "comparison.json"
    configs = {
        policy: hashlib.sha256(config_text(options.recipe, policy).encode()).hexdigest() for policy in options.policies
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
        runs = list(stored.get("runs", []))
    elif options.output.exists() and any(options.output.iterdir()):
        raise ComparisonMismatchError(
            f"{options.output} is not empty and holds no comparison.json. Pick another --output, or delete it."
        )
    else:
        policies, seeds, runs = list(options.policies), sorted(options.seeds), []
    return {
        "version": _SETTINGS_VERSION,
        **identity,
        "configs": configs,
        "policies": policies,
        "seeds": seeds,
        "runs": runs,
    }


def _preflight(options: CompareOptions, policies: list[str]) -> None:
    """Build each policy's run and check its policy against the dataset size: fail before hours of training."""
    from lightning_curricula import CurriculumSampler, TrainingDynamics

    for policy in policies:
        cli = _build_cli(options, policy, options.seeds[0], history=None, logger=False)
        datamodule = _recipe_data(cli, policy)
        datamodule.setup("fit")
        size = datamodule.split_sizes()[0]
        try:
            bound = datamodule.bound_policy()
        except MissingScoresError as error:
            raise PolicySettingsError(f"policy {policy!r} cannot run on --dataset {options.dataset}: {error}") from None
        except ValueError:  # ranks by scores the model computes when fitting starts (IFD): checked then
            continue
        try:
            if bound is not None:
                CurriculumSampler(
                    range(size), bound, dynamics=TrainingDynamics(num_examples=size), num_epochs=options.max_epochs
                )
        except ValueError as error:
            raise PolicySettingsError(
                f"policy {policy!r} cannot run with --max-epochs {options.max_epochs}: {error}"
            ) from None


def _recipe_data(cli: Any, policy: str) -> RecipeDataModule:
    """The run's data module, which every recipe makes a `RecipeDataModule`."""
    datamodule = cli.datamodule
    if not isinstance(datamodule, RecipeDataModule):
        raise TypeError(
            f"The data module of policy {policy!r} is a {type(datamodule).__name__}; compare needs a "
            "RecipeDataModule (split_sizes, bound_policy, final_metrics)."
        )
    return datamodule


def _build_cli(
    options: CompareOptions, policy: str, seed: int, *, history: Any, logger: Any, data_args: tuple[str, ...] = ()
) -> Any:
    recipe = RECIPES[options.recipe]
    cli_class = getattr(importlib.import_module(f"{recipe.package}.cli"), recipe.cli)
    with importlib.resources.as_file(configs_dir(recipe.name) / f"{policy}.yaml") as config:
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
        args += [*data_args, *options.extra_args, *recipe.run_args]
        return cli_class(args=args, run=False, history=history, save_config_kwargs={"overwrite": True})


def _run_one(options: CompareOptions, policy: str, seed: int, progress: Any, *, position: int) -> RunResult:
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
    datamodule = _recipe_data(cli, policy)
    started = time.perf_counter()
    datamodule.setup("fit")  # inside the wall-clock, as in fit; its splits say what the run is judged by
    monitored = datamodule.monitored_metrics(model=cli.model)
    recipe = recipe.monitoring(monitored)
    history.monitor, history.tag, history.metrics = recipe.metric, recipe.tag, recipe.recorded
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    wall = time.perf_counter() - started
    progress.update(max(options.max_epochs - len(history.records), 0))
    values = [record[recipe.metric] for record in history.records if recipe.metric in record]
    if not values:
        raise RuntimeError(f"The run of {policy!r} (seed {seed}) recorded no {recipe.metric}.")
    final = datamodule.final_metrics(cli.trainer)
    started = time.perf_counter()
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)  # resets callback_metrics: read first
    test_seconds = time.perf_counter() - started
    final |= datamodule.final_metrics(cli.trainer)
    if recipe.test_metric not in final:
        raise RuntimeError(f"The test of {policy!r} (seed {seed}) logged no {recipe.test_metric}.")
    train_examples, val_examples, test_examples = datamodule.split_sizes()
    result = RunResult(
        policy=policy,
        seed=seed,
        final_acc=values[-1],
        best_acc=max(values) if recipe.higher_is_better else min(values),
        sample_passes=history.sample_passes,
        wall_seconds=wall,
        train_examples=train_examples,
        test_examples=test_examples,
        device=_device_name(cli.trainer),
        epochs=history.records,
        extras={name: final[name] for name in recipe.extras.values() if name in final},
        train_seconds=history.records[-1]["train_seconds"] if history.records else math.nan,
        scoring_forwards=_scoring_forwards(cli.trainer),
        test_acc=final[recipe.test_metric],
        val_examples=val_examples,
        test_seconds=test_seconds,
        trained_digest=history.trained_digest,
        position=position,
        monitored=dataclasses.asdict(monitored) if monitored is not None else {},
    )
    cli.trainer.logger.log_hyperparams(
        _hyperparameters(cli, policy, seed, options),
        metrics={
            "hparams/test_acc": result.test_acc,
            "hparams/final_val_acc": result.final_acc,
            "hparams/best_val_acc": result.best_acc,
            "hparams/sample_passes": float(result.sample_passes),
            "hparams/wall_seconds": result.wall_seconds,
            "hparams/train_seconds": result.train_seconds,
        },
    )
    cli.trainer.logger.finalize("success")
    return result


def _scoring_forwards(trainer: Any) -> int:
    """Scoring forwards over the run (no backward): selection inside the step scores the batches it selects from."""
    from lightning_curricula import OnlineBatchSelection

    selections = [c for c in trainer.callbacks if isinstance(c, OnlineBatchSelection)]
    return sum(int(selection.epoch_metrics.get("scoring_forwards", 0)) for selection in selections)


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
