"""Easy-to-hard generalisation (Hase et al. 2024) for the LLM recipe: train on the easiest or hardest share, test hard.

    taskset -c 0 python benchmarks/llm_easy_to_hard.py --seeds 0 1 2 --out llm_easy_to_hard.json -- \\
        --model.model proxy-llama --model.lr 3e-3 --trainer.max_epochs 4 \\
        --data.dataset reasoning_gym:letter_counting --data.train_size 2000 --data.eval_size 600 \\
        --data.levels '[{"min_words": 3, "max_words": 4}, {"min_words": 5, "max_words": 8}]'

Everything after ``--`` goes to the LLM recipe's CLI. Per seed (``--data.seed`` and ``--seed_everything``:
the data draw and the training's randomness), three arms:

- **zero-shot**: the model before any training, tested;
- **easy**: a fresh model trained on the easiest ``--keep`` share of the training pool by its known
  difficulty (`ScoreCurriculum`, ``easy_to_hard``, the same share every epoch), then tested;
- **hard**: the same on the hardest share (``hard_to_easy``).

Every arm trains the given epochs and is tested once, on the test split's ``easy`` and ``hard`` parts
(disjoint from the training pool); nothing is chosen from the test split. The gain share is the paper's
question, how much of the hard data's gain on hard problems easy data recovers:
``(acc_easy→hard − acc_zero-shot) / (acc_hard→hard − acc_zero-shot)``, per seed and from the means. Prints a
markdown table and writes the JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

from llm_testbed import cpu_name
from llm_throughput import quiet_llm_benchmark

ARMS = {"easy": "easy_to_hard", "hard": "hard_to_easy"}


def run_arm(recipe_args: list[str], seed: int, order: str | None, keep: float) -> dict[str, float]:
    """One arm: test accuracies (and losses) after training on ``order``'s ``keep`` share; ``None``: zero-shot."""
    from lightning_curricula.recipes.llm.cli import LLMRecipeCLI

    policy = {"class_path": "lightning_curricula.policies.ScoreCurriculum", "init_args": {"keep": keep}}
    policy["init_args"]["order"] = order or "easy_to_hard"  # zero-shot trains nothing: any policy builds the data
    defaults = [
        "--trainer.logger", "false",
        "--trainer.enable_checkpointing", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.limit_val_batches", "0",
        "--model.hf_export", "false",
        "--report.export", "false",
        "--data.policy", json.dumps(policy),
    ]  # fmt: skip
    seeded = ["--data.seed", str(seed), "--seed_everything", str(seed)]
    cli = LLMRecipeCLI(args=[*defaults, *recipe_args, *seeded], run=False, save_config_callback=None)
    started = time.perf_counter()
    if order is not None:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    train_seconds = time.perf_counter() - started
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    metrics = {name: float(value) for name, value in cli.trainer.callback_metrics.items() if name.startswith("test/")}
    return {**metrics, "train_seconds": train_seconds, "train_pool": len(cli.datamodule.train_dataset)}


def gain_share(easy: float, hard: float, zero: float) -> float:
    """``(easy − zero) / (hard − zero)``; NaN when hard data gains nothing over zero-shot.

    Example:
        >>> gain_share(0.3, 0.4, 0.1)
        0.6666666666666666
    """
    return (easy - zero) / (hard - zero) if hard != zero else math.nan


def main() -> None:
    """Parse, run every seed's three arms, report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    parser.add_argument("--keep", type=float, default=0.3, help="the share each arm trains on (default 0.3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    recipe_args = argv[cut + 1 :]
    quiet_llm_benchmark(args.threads)
    runs: dict[int, dict[str, dict[str, float]]] = {}
    for seed in args.seeds:
        runs[seed] = {"zero_shot": run_arm(recipe_args, seed, None, args.keep)}
        for arm, order in ARMS.items():
            runs[seed][arm] = run_arm(recipe_args, seed, order, args.keep)
    hard = "test/hard/accuracy"
    shares = [gain_share(r["easy"][hard], r["hard"][hard], r["zero_shot"][hard]) for r in runs.values()]
    means = {arm: statistics.fmean(r[arm][hard] for r in runs.values()) for arm in ("zero_shot", "easy", "hard")}
    result = {
        "cpu": cpu_name(),
        "args": recipe_args,
        "keep": args.keep,
        "runs": runs,
        "gain_share_per_seed": shares,
        "gain_share_of_means": gain_share(means["easy"], means["hard"], means["zero_shot"]),
    }
    print("| seed | zero-shot hard / easy (%) | easy→ hard / easy (%) | hard→ hard / easy (%) | gain share |")
    print("|---|---:|---:|---:|---:|")
    for (seed, arms), share in zip(runs.items(), shares, strict=True):
        cells = [f"{100 * arms[a][hard]:.1f} / {100 * arms[a]['test/easy/accuracy']:.1f}" for a in arms]
        print(f"| {seed} | {' | '.join(cells)} | {share:.2f} |")
    print(f"gain share of the means: {result['gain_share_of_means']:.2f}")
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
