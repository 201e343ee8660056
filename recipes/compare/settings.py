"""What ``compare`` knows about each recipe (`RECIPES`), the settings of one invocation, and its errors."""

from __future__ import annotations

import dataclasses
import importlib.resources
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_curricula.recipes.interface import MetricKind, MonitoredMetrics
from lightning_curricula.recipes.vision.sources import check_dataset_name as check_vision_dataset

__all__ = [
    "DEFAULT_POLICIES",
    "RECIPES",
    "CompareOptions",
    "ComparisonMismatchError",
    "PolicySettingsError",
    "Recipe",
    "available_policies",
    "check_llm_dataset",
    "config_text",
    "configs_dir",
]

#: The policies compared when ``--policies`` is not given (vision recipe): the two that reach full data's
#: accuracy for the least training on Fashion-MNIST (Stale-SB scoring once and selecting before loading, the
#: bandit), each beside its random twin, and full data.
DEFAULT_POLICIES = ("full", "selective_backprop_scored_once", "random_step_scored_once", "bandit", "random_bandit")
_FAST_DEV_TRAIN = 256
_FAST_DEV_TEST = 128


class ComparisonMismatchError(RuntimeError):
    """The output directory holds a comparison with other settings."""


class PolicySettingsError(ValueError):
    """A policy cannot run with the comparison's settings (found before any run starts)."""


def check_llm_dataset(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a reasoning-gym task, the testbed, an existing path or a Hub id.

    Example:
        >>> check_llm_dataset("reasoning_gym:basic_arithmetic"), check_llm_dataset("testbed:chain_sum,gcd")
        (None, None)
    """
    if name.split(":")[0] == "testbed":
        from lightning_curricula.recipes.llm.testbed import parse_testbed

        parse_testbed(name)  # unknown families: a ValueError naming the valid ones
        return
    if not (name.startswith("reasoning_gym:") or "/" in name or Path(name).exists()):
        raise ValueError(
            f"Unknown dataset {name!r}; valid: reasoning_gym:<task> (such as reasoning_gym:basic_arithmetic), "
            "testbed or testbed:<family>,..., a local JSON / JSONL / parquet / CSV file or save_to_disk folder, or "
            "a Hugging Face Hub id with a '/'."
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
        default_seeds: ``--seeds`` when not given.
        metric: the validation accuracy, as the recipe logs it after every epoch: the curves, "best" and
            the time to full data's accuracy use it. These fields up to ``tag`` (and ``kind``) are
            defaults: a data module that says what it monitors (`RecipeDataModule.monitored_metrics`)
            replaces them for its runs (`monitoring`).
        test_metric: the test accuracy, logged once by ``trainer.test`` after fitting: the report's figure.
        metric_label: how plots call ``metric``.
        column: how the summary table's columns call the accuracy (``val`` or ``test`` in front).
        recorded: the metrics the per-epoch records keep (``metric`` first).
        extras: metrics whose final logged values (or rank correlations) join the table, by column title.
        run_args: arguments of every run.
        fast_dev_args: arguments of ``--fast-dev`` runs (a pipeline check, not a measurement).
        warmup_args: the data of the untimed warm-up run before the timed ones (imports, kernels, caches).
        hparams: config keys logged as TensorBoard hyperparameters, by their short names.
        check_dataset: raises ``ValueError`` for a dataset name the recipe cannot load.
        note: what the footnote of the table says about the evaluation.
        tag: the TensorBoard tag of ``metric`` against sample passes.
        kind: ``"accuracy"`` (higher is better, shown in percent) or ``"loss"`` (lower is better).
    """

    name: str
    package: str
    cli: str
    default_dataset: str
    default_policies: tuple[str, ...]
    default_epochs: int
    default_seeds: tuple[int, ...]
    metric: str
    test_metric: str
    metric_label: str
    column: str
    recorded: tuple[str, ...]
    extras: dict[str, str]
    run_args: tuple[str, ...]
    fast_dev_args: tuple[str, ...]
    warmup_args: tuple[str, ...]
    hparams: dict[str, str]
    check_dataset: Callable[[str], None]
    note: str
    tag: str
    kind: MetricKind = "accuracy"

    @property
    def higher_is_better(self) -> bool:
        """Whether a higher ``metric`` is better (an accuracy) or a lower one (a loss)."""
        return self.kind == "accuracy"

    def monitoring(self, monitored: MonitoredMetrics | None) -> Recipe:
        """This recipe judged by ``monitored`` (what a run's data module monitors); itself for ``None``.

        ``metric`` and its records come first, the recipe's recorded metrics and extras follow (those a
        run does not log are left out of its records and of the table), and the tag is the metric's.

        Example:
            >>> monitored = MonitoredMetrics("val/heldout/loss", "test/heldout/loss", "held-out loss", "loss", "loss")
            >>> recipe = RECIPES["llm"].monitoring(monitored)
            >>> recipe.metric, recipe.tag, recipe.higher_is_better
            ('val/heldout/loss', 'val/heldout_loss_by_sample_passes', False)
        """
        if monitored is None:
            return self
        stage, _, name = monitored.metric.partition("/")
        return dataclasses.replace(
            self,
            metric=monitored.metric,
            test_metric=monitored.test_metric,
            metric_label=monitored.label,
            column=monitored.column,
            kind=monitored.kind,
            recorded=tuple(dict.fromkeys((monitored.metric, *monitored.recorded, *self.recorded))),
            extras={**self.extras, **monitored.extras},
            note=monitored.note or self.note,
            tag=f"{stage}/{name.replace('/', '_')}_by_sample_passes",
        )


#: The recipes ``compare`` runs, by ``--recipe`` name.
RECIPES: dict[str, Recipe] = {
    "vision": Recipe(
        name="vision",
        package="lightning_curricula.recipes.vision",
        cli="VisionCLI",
        default_dataset="embedded",
        default_policies=DEFAULT_POLICIES,
        default_epochs=12,
        default_seeds=(0, 1),
        metric="val/acc",
        test_metric="test/acc",
        metric_label="validation accuracy",
        column="acc",
        recorded=("val/acc", "val/loss", "train/loss"),
        extras={"test loss": "test/loss"},
        run_args=(),
        fast_dev_args=("--data.train_subset", str(_FAST_DEV_TRAIN), "--data.test_subset", str(_FAST_DEV_TEST)),
        warmup_args=("--data.train_subset", str(_FAST_DEV_TRAIN), "--data.test_subset", str(_FAST_DEV_TEST)),
        hparams={
            "model": "model.model",
            "lr": "model.lr",
            "schedule": "model.schedule",
            "batch_size": "data.batch_size",
            "label_noise": "data.label_noise",
        },
        check_dataset=check_vision_dataset,
        note=(
            "Validation accuracy is measured after every epoch on examples held out of the training split (a "
            "seeded draw: 500 of MNIST-5k's 4,000, 5,000 of Fashion-MNIST's 60,000); *best* and the time to full "
            "data's accuracy are read from it. Test accuracy is measured once, after training, on the test split."
        ),
        tag="val/acc_by_sample_passes",
    ),
    "llm": Recipe(
        name="llm",
        package="lightning_curricula.recipes.llm",
        cli="LLMRecipeCLI",
        default_dataset="reasoning_gym:basic_arithmetic",
        default_policies=("full", "random", "curriculum", "curriculum_difficulty", "anti_curriculum"),
        default_epochs=4,
        default_seeds=(0,),
        metric="val/hard/accuracy",
        test_metric="test/hard/accuracy",
        metric_label="validation hard accuracy",
        column="hard acc",
        recorded=("val/hard/accuracy", "val/easy/accuracy", "val/hard/loss", "train/loss", "train/tokens"),
        extras={
            "test easy acc (%)": "test/easy/accuracy",
            "test hard loss": "test/hard/loss",
            "tokens": "train/tokens_seen",
            "scoring tokens": "train/scoring_tokens_seen",  # the forwards of selection inside the step, charged
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
        warmup_args=("--data.train_size", "16", "--data.eval_size", "8", "--data.batch_size", "8"),
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
            "Accuracy is exact match of greedy answers graded by the task's scorer on the easy and hard parts of "
            "two disjoint held-out pools: validation after every epoch (*best* and the time to full data's "
            "accuracy are read from it), test once after training. Tokens: response "
            "and prompt tokens trained on (policies plan examples, not tokens); scoring tokens: those of the scoring "
            "forwards of selection inside the step (no backward), charged beside them. ρ: Spearman correlation of the "
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
    max_epochs: int = 12
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


def configs_dir(recipe: str) -> Any:
    """The folder of ``recipe``'s policy configs, inside the installed package."""
    return importlib.resources.files(RECIPES[recipe].package) / "configs"


def available_policies(recipe: str = "vision") -> list[str]:
    """The policy names ``compare`` accepts for ``recipe``: the YAML configs shipped with it.

    Example:
        >>> {"full", "infobatch", "curriculum"} <= set(available_policies())
        True
        >>> "curriculum_difficulty" in available_policies("llm")
        True
    """
    configs = configs_dir(recipe).iterdir()
    return sorted(entry.name[: -len(".yaml")] for entry in configs if entry.name.endswith(".yaml"))


def config_text(recipe: str, policy: str) -> str:
    """The YAML text of ``policy``'s config for ``recipe``."""
    return str((configs_dir(recipe) / f"{policy}.yaml").read_text())
