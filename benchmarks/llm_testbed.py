"""Full-data training on the LLM testbed: per-family validation accuracy after training, and the padding saved.

    taskset -c 1 python benchmarks/llm_testbed.py -- --model.model proxy-llama --model.lr 3e-3 --trainer.max_epochs 6

Everything after ``--`` goes to the LLM recipe's CLI (``python -m lightning_curricula.recipes.llm fit``);
``--data.dataset`` defaults to ``testbed``. Validation runs once, after the last epoch (the figure is read
from it). Prints, and writes as JSON to ``--out``: the per-family validation accuracy and loss, their
mean over families, the training and validation seconds, and the padding of the training batches (tokens
padded / tokens real) with and without ``group_by_length``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch


def cpu_name() -> str:
    """``lscpu``'s model name (the platform's processor when lscpu is missing)."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), "unknown")


def padding(datamodule: Any, batch_size: int) -> dict[str, float]:
    """Tokens padded / tokens real over epoch 0's training batches (full data), without and with grouping."""
    from lightning_curricula.recipes.llm.batching import LengthGroupedSampler, padding_counts

    from lightning_curricula import CurriculumSampler, FullData

    lengths = torch.tensor(list(datamodule.train_dataset["length"]))
    size = len(lengths)
    plain = [index for index, _ in CurriculumSampler(range(size), FullData(), seed=datamodule.plan_seed)]
    grouped_sampler = LengthGroupedSampler(
        range(size), FullData(), lengths=lengths, batch_size=batch_size, seed=datamodule.plan_seed
    )
    grouped = [index for index, _ in grouped_sampler]
    (padded, real), (grouped_padded, _) = (padding_counts(lengths[ids], batch_size) for ids in (plain, grouped))
    return {"without": padded / real, "with": grouped_padded / real, "real_tokens": float(real)}


def main() -> None:
    """Parse, train, validate, report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    recipe_args = argv[cut + 1 :]
    torch.set_num_threads(args.threads)
    from lightning_curricula.recipes.llm.cli import LLMRecipeCLI

    defaults = [
        "--data.dataset", "testbed",
        "--trainer.logger", "false",
        "--trainer.enable_checkpointing", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.limit_val_batches", "0",
        "--model.hf_export", "false",
        "--report.export", "false",
    ]  # fmt: skip
    # no logger, so the CLI's config would land in the working directory: do not save it
    cli = LLMRecipeCLI(args=[*defaults, *recipe_args], run=False, save_config_callback=None)
    datamodule, trainer = cli.datamodule, cli.trainer
    started = time.perf_counter()
    datamodule.setup("fit")
    setup_seconds = time.perf_counter() - started
    started = time.perf_counter()
    trainer.fit(cli.model, datamodule=datamodule)
    train_seconds = time.perf_counter() - started
    last_train_loss = trainer.callback_metrics.get("train/loss")  # validate() clears the callback metrics
    trainer.limit_val_batches = 1.0
    started = time.perf_counter()
    trainer.validate(cli.model, datamodule=datamodule, verbose=False)
    val_seconds = time.perf_counter() - started
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1}
    families = datamodule.families
    result = {
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "args": recipe_args,
        "train_examples": len(datamodule.train_dataset),
        "val_examples_per_family": {name: len(rows) for name, rows in datamodule.val_datasets.items()},
        "epochs": trainer.current_epoch,
        "setup_seconds": setup_seconds,
        "train_seconds": train_seconds,
        "val_seconds": val_seconds,
        "accuracy": {name: metrics.get(f"val/{name}/accuracy") for name in [*families, "families"]},
        "loss": {name: metrics.get(f"val/{name}/loss") for name in [*families, "families"]},
        "last_train_loss": None if last_train_loss is None else float(last_train_loss),
        "padding": padding(datamodule, datamodule.batch_size),
    }
    print("| family | val accuracy (%) | val loss |\n|---|---:|---:|")
    for name in [*families, "families"]:
        accuracy, loss = result["accuracy"][name], result["loss"][name]
        shown = "n/a" if accuracy is None else f"{100 * accuracy:.1f}"
        print(f"| {name} | {shown} | {loss:.3f} |" if loss is not None else f"| {name} | {shown} | n/a |")
    print(json.dumps({key: value for key, value in result.items() if key not in ("accuracy", "loss")}, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
