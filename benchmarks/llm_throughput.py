"""Training throughput (tokens per second) of the LLM recipe with and without `TrainingDynamics`.

The recipe's `CausalLMFineTuner` fine-tunes SmolLM2-135M-Instruct (the embedded default) on short
reasoning-gym arithmetic problems. Each run is a ``Trainer.fit`` of ``--warmup + --steps`` optimizer
steps over the same batches (a `FullData` plan with a fixed seed, so both sides see the same tokens);
the first ``--warmup`` steps are not timed. Runs are interleaved in one process (baseline, tracked,
tracked, baseline, ...; `harness.interleaved_pairs`) so that drifts in machine load hit both sides
alike. Reported: tokens per second of each side (total tokens / total timed step seconds), the
median of the per-pair time ratios (tracked / baseline), and the ratio of the fastest runs.

On a shared machine the end-to-end ratio is dominated by load changes between runs (one step of
SmolLM2 on two CPU cores takes seconds), so the script also times what the tracker adds to each
step in isolation: ``read_step_outputs`` + ``TrainingDynamics.update`` on a batch of the same size,
as ``on_train_batch_end`` calls them, and reports the bound ``1 + tracker seconds / fastest step``.

The tracked side adds ``TrainingDynamics()``: the
per-step ``update`` (a few tensor ops and one ``index_add_``) and the epoch-end derivation; both
sides run with ``logger=False``.

``--random-weights`` builds the model from ``--model``'s config with random (seeded) weights instead of
loading its checkpoint: the same architecture, so the same step time and memory (nothing here depends on
the weights' values), where only the config and tokenizer are at hand (a few MB, not the checkpoint).
``--dataset`` takes any source of `InstructionDataModule`, such as a ``.jsonl`` of generated problems
where reasoning-gym is not installed.

Examples:
    python benchmarks/llm_throughput.py                          # SmolLM2-135M, CPU, defaults
    python benchmarks/llm_throughput.py --model tiny-random-llama --steps 20   # a quick check of the script
    python benchmarks/llm_throughput.py --model CONFIG_AND_TOKENIZER_DIR --random-weights --dataset rows.jsonl
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from harness import environment, interleaved_pairs, markdown_table, quiet_lightning, ratio_statistics, write_json
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the recipes package, when run as a script
from lightning_curricula.recipes.llm.datamodule import REASONING_GYM_PREFIX, InstructionDataModule  # noqa: E402
from lightning_curricula.recipes.llm.model import SMOLLM2, TINY, cached_smollm2, load_causal_lm, load_tokenizer  # noqa: E402
from lightning_curricula.recipes.llm.module import CausalLMFineTuner  # noqa: E402

from lightning_curricula import TrainingDynamics, read_step_outputs  # noqa: E402

#: The recipe's default data: generated arithmetic problems (needs reasoning-gym).
DATASET = f"{REASONING_GYM_PREFIX}basic_arithmetic"


def quiet_llm_benchmark(threads: int) -> None:
    """``threads`` torch threads; Lightning's, the recipe's and the libraries' logs and warnings off."""
    torch.set_num_threads(threads)
    quiet_lightning(logging.ERROR)
    logging.getLogger("lightning_curricula.recipes.llm").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def load_model(name: str, *, random_weights: bool = False, seed: int = 0) -> Any:
    """`load_causal_lm` ``(name)``; with ``random_weights``, its architecture from its config with random weights.

    The random initialisation is the model class's own (``from_config``), seeded inside
    ``torch.random.fork_rng`` so that the caller's global RNG is untouched; `TINY` is random either way.
    """
    if not random_weights or name == TINY:
        return load_causal_lm(name)
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(cached_smollm2() / "model" if name == SMOLLM2 else name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def model_facts(model: Any, name: str, *, random_weights: bool) -> dict[str, Any]:
    """What the JSON says about the model `load_model` built: its weights' origin, parameter count and attention."""
    return {
        "weights": "random (architecture from the config; step time and memory do not depend on the values)"
        if random_weights or name == TINY
        else "pretrained",
        "parameters": sum(p.numel() for p in model.parameters()),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
    }


class StepTimer(Callback):
    """Wall-clock seconds and tokens of every training step after the first ``warmup``."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.seconds: list[float] = []
        self.tokens: list[int] = []
        self._start = 0.0

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # on_train_batch_end runs after the optimizer step and after TrainingDynamics.update (callbacks in order).
        elapsed = time.perf_counter() - self._start
        if trainer.global_step > self.warmup:
            self.seconds.append(elapsed)
            self.tokens.append(int(batch["attention_mask"].sum()))


def run_once(
    model: Any,
    tokenizer: Any,
    data: InstructionDataModule,
    args: argparse.Namespace,
    *,
    tracked: bool,
    device: str = "cpu",
    precision: str = "32-true",
) -> dict[str, Any]:
    """One fit of ``args.warmup + args.steps`` steps; the timed steps' seconds and tokens, and the peak GPU memory."""
    timer = StepTimer(args.warmup)
    callbacks: list[Callback] = [TrainingDynamics()] if tracked else []
    callbacks.append(timer)  # last, so that the tracker's update is inside the timed step
    module = CausalLMFineTuner(model, tokenizer, lr=1e-5, max_new_tokens=0)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer = pl.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        precision=precision,  # type: ignore[arg-type]
        max_epochs=1,
        max_steps=args.warmup + args.steps,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        reload_dataloaders_every_n_epochs=1,
    )
    trainer.fit(module, datamodule=data)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else 0
    return {
        "tracked": tracked,
        "seconds": sum(timer.seconds),
        "tokens": sum(timer.tokens),
        "steps": len(timer.seconds),
        "peak_memory_bytes": peak,
    }


def tracker_step_seconds(num_examples: int, batch_size: int, calls: int = 2000) -> float:
    """Seconds per training step that the tracker adds: reading the step's outputs and one ``update``."""
    dynamics = TrainingDynamics(num_examples=num_examples)
    generator = torch.Generator().manual_seed(0)
    batches = [
        (
            {"index": torch.randint(num_examples, (batch_size,), generator=generator)},
            {"losses": torch.rand(batch_size, generator=generator)},
        )
        for _ in range(16)
    ]
    for batch, outputs in batches:  # allocate the accumulator
        dynamics.update(read_step_outputs(outputs, batch))
    started = time.perf_counter()
    for call in range(calls):
        batch, outputs = batches[call % len(batches)]
        dynamics.update(read_step_outputs(outputs, batch))
    return (time.perf_counter() - started) / calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SMOLLM2, help="model name for load_causal_lm")
    parser.add_argument(
        "--random-weights", action="store_true", help="build --model from its config with random weights"
    )
    parser.add_argument("--dataset", default=DATASET, help="InstructionDataModule's source (a .jsonl file, ...)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of each run")
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs (baseline, tracked)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, default=Path("llm_throughput.json"), help="JSON results")
    args = parser.parse_args(argv)

    quiet_llm_benchmark(args.threads)
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, random_weights=args.random_weights)
    examples = args.batch_size * (args.warmup + args.steps)
    data = InstructionDataModule(
        args.dataset,
        tokenizer=tokenizer,
        train_size=examples,
        eval_size=0,
        max_length=args.max_length,
        batch_size=args.batch_size,
        system_prompt="Answer with the final number only.",
    )
    started = time.perf_counter()

    def run(tracked: bool) -> dict[str, Any]:
        return run_once(model, tokenizer, data, args, tracked=tracked)

    def report(label: str, tracked: bool, result: dict[str, Any]) -> None:
        rate = result["tokens"] / result["seconds"]
        print(f"[{label}] {'tracked ' if tracked else 'baseline'}: {rate:8.1f} tokens/s ({result['seconds']:.1f} s)")

    baseline, tracked = interleaved_pairs(run, args.repeats, report=report)
    summary = ratio_statistics(
        [r["seconds"] for r in baseline], [r["seconds"] for r in tracked], names=("baseline", "tracked")
    )
    summary |= {
        "baseline_tokens_per_s": sum(r["tokens"] for r in baseline) / sum(r["seconds"] for r in baseline),
        "tracked_tokens_per_s": sum(r["tokens"] for r in tracked) / sum(r["seconds"] for r in tracked),
        "tokens_per_step": baseline[0]["tokens"] / baseline[0]["steps"],
        "tracker_seconds_per_step": tracker_step_seconds(examples, args.batch_size),
        "fastest_step_seconds": min(r["seconds"] / r["steps"] for r in baseline + tracked),
    }
    summary["tracker_bound_ratio"] = 1 + summary["tracker_seconds_per_step"] / summary["fastest_step_seconds"]
    print()
    header = ["side", "tokens / s", "median run (s)", "fastest run (s)"]
    rows = [
        [
            side,
            f"{summary[f'{side}_tokens_per_s']:.1f}",
            f"{summary[f'{side}_median_s']:.2f}",
            f"{summary[f'{side}_min_s']:.2f}",
        ]
        for side in ("baseline", "tracked")
    ]
    print(markdown_table(header, rows))
    print(
        f"\ntime ratio tracked / baseline: median of pairs {summary['median_pair_ratio']:.3f}, fastest runs "
        f"{summary['min_ratio']:.3f} ({summary['tokens_per_step']:.0f} tokens per step)\n"
        f"tracker alone: {1e6 * summary['tracker_seconds_per_step']:.1f} us per step; fastest step "
        f"{summary['fastest_step_seconds']:.2f} s; bound on the time ratio: {summary['tracker_bound_ratio']:.6f}"
    )
    env = environment(
        "cpu",
        model=args.model,
        **model_facts(model, args.model, random_weights=args.random_weights),
        wall_seconds=time.perf_counter() - started,
    )
    write_json(
        args.out, config=vars(args), environment=env, summary=summary, runs={"baseline": baseline, "tracked": tracked}
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
