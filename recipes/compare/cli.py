"""The ``lightning-curricula`` command line: ``compare``'s arguments, checked before anything runs, and ``export``.

``lightning-curricula export CHECKPOINT DIR`` writes an LLM recipe checkpoint as Hugging Face folders
(`lightning_curricula.recipes.llm.export.export_checkpoint`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lightning_curricula.recipes.compare import runner
from lightning_curricula.recipes.compare.report import footnote, load_results, markdown_table
from lightning_curricula.recipes.compare.settings import (
    DEFAULT_POLICIES,
    RECIPES,
    CompareOptions,
    ComparisonMismatchError,
    PolicySettingsError,
    available_policies,
)

__all__ = ["main", "parse_args"]


def _build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The ``lightning-curricula`` parser and its ``compare`` subparser (the parser also has ``export``)."""
    parser = argparse.ArgumentParser(
        prog="lightning-curricula",
        description=(
            "Curriculum learning and data pruning for PyTorch Lightning: compare curricula, export fine-tuned LLMs."
        ),
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
    compare.add_argument(
        "--seeds", nargs="+", type=int, metavar="SEED", help="seeds (default: 0 1 for vision, 0 for llm)"
    )
    compare.add_argument(
        "--dataset",
        help=(
            "vision: embedded (default), fashion_mnist, digits, or a Hugging Face Hub id such as uoft-cs/cifar10; "
            "llm: reasoning_gym:<task> (default reasoning_gym:basic_arithmetic), testbed (or testbed:<family>,...), "
            "a local file or a Hub id"
        ),
    )
    compare.add_argument("--max-epochs", type=int, help="epochs per run (default: 12 for vision, 4 for llm)")
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
    export = commands.add_parser(
        "export",
        help="write an LLM recipe checkpoint as Hugging Face folders (hf_model/, hf_adapter/)",
        description=(
            "Rebuild the LLM recipe's CausalLMFineTuner from a Lightning checkpoint and write DIR/hf_model "
            "(full fine-tuning, or LoRA merged) and DIR/hf_adapter (LoRA adapters), each with the tokenizer: "
            "the folders a run writes when fitting ends."
        ),
    )
    export.add_argument("checkpoint", type=Path, help="a .ckpt file of the LLM recipe")
    export.add_argument("directory", type=Path, metavar="DIR", help="where hf_model/ and hf_adapter/ go")
    export.add_argument(
        "--merge-lora",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="LoRA: also write the merged model to DIR/hf_model (default: the checkpoint's model.merge_lora)",
    )
    export.add_argument(
        "--model",
        help="the base model's name or folder, instead of the checkpoint's (needed when it was a model object)",
    )
    export.add_argument("--tokenizer", help="the tokenizer's name or folder, instead of the checkpoint's")
    return parser, compare


def _split_extra(argv: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """The arguments before ``--`` and those after it (passed to every run of the recipe)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args:
        return args, []
    cut = args.index("--")
    return args[:cut], args[cut + 1 :]


def parse_args(argv: Sequence[str] | None = None) -> CompareOptions:
    """Parse ``lightning-curricula`` arguments; unknown policies and datasets are refused here.

    Raises:
        SystemExit: bad arguments (argparse prints the usage and the list of valid names).

    Example:
        >>> parse_args(["compare", "--policies", "full", "random", "--seeds", "0", "1"]).seeds
        (0, 1)
    """
    args, extra = _split_extra(argv)
    parser, compare = _build_parser()
    namespace = parser.parse_args(args)
    if namespace.command != "compare":
        parser.error(f"parse_args reads the compare command's arguments, got the {namespace.command!r} command")
    return _compare_options(namespace, extra, compare)


def _compare_options(
    namespace: argparse.Namespace, extra: list[str], compare: argparse.ArgumentParser
) -> CompareOptions:
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
        seeds=tuple(dict.fromkeys(namespace.seeds or recipe.default_seeds)),
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
        The exit status: 0 on success, 2 when the output folder holds another comparison, a policy
        cannot run with these settings, or ``export`` cannot read its checkpoint.
    """
    args, extra = _split_extra(argv)
    parser, compare = _build_parser()
    namespace = parser.parse_args(args)
    if namespace.command == "export":
        if extra:
            parser.error(f"export takes no arguments after `--`, got {extra}")
        return _export(namespace)
    options = _compare_options(namespace, extra, compare)
    try:
        rows = runner.run_comparison(options)
    except (ComparisonMismatchError, PolicySettingsError) as error:
        print(f"lightning-curricula compare: error: {error}", file=sys.stderr)
        return 2
    print(markdown_table(rows, RECIPES[options.recipe], footnote(options, load_results(options))))
    print(f"\nWrote {options.output / 'summary.md'}, summary.csv, accuracy_vs_passes.png and tensorboard/.")
    print(f"See the curves with: tensorboard --logdir {options.output / 'tensorboard'}")
    return 0


def _export(namespace: argparse.Namespace) -> int:
    from lightning_curricula.recipes.llm.export import export_checkpoint

    try:
        written = export_checkpoint(
            namespace.checkpoint,
            namespace.directory,
            merge_lora=namespace.merge_lora,
            model=namespace.model,
            tokenizer=namespace.tokenizer,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"lightning-curricula export: error: {error}", file=sys.stderr)
        return 2
    for name, folder in written.items():
        print(f"Wrote {folder} ({name})")
    return 0
