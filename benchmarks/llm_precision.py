"""bf16-mixed against fp32 for the LLM recipe on a CPU: tokens per second, and the loss over the first steps.

Two measurements, both of ``CausalLMFineTuner`` fits over the same batches (a `FullData` plan with a
fixed seed):

- **Throughput.** ``--repeats`` pairs of short fits (``--warmup`` untimed steps, then ``--steps`` timed
  ones), fp32 and bf16-mixed in turn, the order alternating from pair to pair
  (`harness.interleaved_pairs`); tokens per second of each side and the median of the per-pair time
  ratios.
- **Agreement.** One fit of ``--agree-steps`` steps per precision, each from a copy of the same
  initial weights: the training loss of every step, compared step by step (the largest absolute and
  relative difference, and the difference of the means).

Whether bf16 pays on a CPU depends on its instructions: AMX tiles and AVX-512-BF16 compute bf16
matrix products natively, older CPUs convert. The JSON records the CPU's bf16 flags
(`precision.cpu_bf16_flags`) beside the figures, and `precision.choose_precision` is what the recipe
does with them.

Examples:
    python benchmarks/llm_precision.py                              # SmolLM2-135M, the defaults
    python benchmarks/llm_precision.py --model proxy-llama --agree-steps 50
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from harness import environment, interleaved_pairs, markdown_table, ratio_statistics, write_json
from lightning.pytorch.callbacks import Callback
from llm_throughput import DATASET, StepTimer, load_model, model_facts, quiet_llm_benchmark

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the recipes package, when run as a script
from lightning_curricula.recipes.llm.datamodule import InstructionDataModule  # noqa: E402
from lightning_curricula.recipes.llm.model import SMOLLM2, load_tokenizer  # noqa: E402
from lightning_curricula.recipes.llm.module import CausalLMFineTuner  # noqa: E402
from lightning_curricula.recipes.llm.precision import cpu_bf16_flags  # noqa: E402

PRECISIONS = ("32-true", "bf16-mixed")


class LossRecorder(Callback):
    """The training loss of every step, as a float."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.losses.append(float(outputs["loss"]))


def fit(model: Any, tokenizer: Any, data: InstructionDataModule, *, precision: str, steps: int, callbacks: list[Any]):
    """One fit of ``steps`` steps of ``model`` (trained in place) at ``precision``."""
    module = CausalLMFineTuner(model, tokenizer, lr=1e-4, warmup_ratio=0.0, max_new_tokens=0)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,  # type: ignore[arg-type]
        max_epochs=1,
        max_steps=steps,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        reload_dataloaders_every_n_epochs=1,
    )
    trainer.fit(module, datamodule=data)


def agreement(fp32: list[float], bf16: list[float]) -> dict[str, float]:
    """How far the bf16 losses stray from the fp32 ones, step by step."""
    differences = [abs(a - b) for a, b in zip(fp32, bf16, strict=True)]
    return {
        "steps": len(fp32),
        "max_abs_difference": max(differences),
        "max_relative_difference": max(d / abs(a) for d, a in zip(differences, fp32, strict=True)),
        "mean_abs_difference": statistics.fmean(differences),
        "fp32_mean_loss": statistics.fmean(fp32),
        "bf16_mean_loss": statistics.fmean(bf16),
        "fp32_first_loss": fp32[0],
        "fp32_last_loss": fp32[-1],
        "bf16_last_loss": bf16[-1],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SMOLLM2, help="model name for load_causal_lm")
    parser.add_argument("--dataset", default=DATASET, help="InstructionDataModule's source")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per throughput run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of each throughput run")
    parser.add_argument("--repeats", type=int, default=3, help="pairs of throughput runs (fp32, bf16)")
    parser.add_argument("--agree-steps", type=int, default=50, help="steps of the loss agreement fits")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, default=Path("llm_precision.json"), help="JSON results")
    args = parser.parse_args(argv)

    quiet_llm_benchmark(args.threads)
    tokenizer = load_tokenizer(args.model)
    initial = load_model(args.model)
    steps = max(args.agree_steps, args.warmup + args.steps)
    data = InstructionDataModule(
        args.dataset,
        tokenizer=tokenizer,
        train_size=args.batch_size * steps,
        eval_size=0,
        max_length=args.max_length,
        batch_size=args.batch_size,
        system_prompt="Answer with the final number only.",
    )
    started = time.perf_counter()

    losses: dict[str, list[float]] = {}
    for precision in PRECISIONS:
        recorder = LossRecorder()
        fit(copy.deepcopy(initial), tokenizer, data, precision=precision, steps=args.agree_steps, callbacks=[recorder])
        losses[precision] = recorder.losses
        print(f"agreement fit {precision}: first loss {recorder.losses[0]:.4f}, last {recorder.losses[-1]:.4f}")

    model = copy.deepcopy(initial)

    def run(bf16: bool) -> dict[str, Any]:
        timer = StepTimer(args.warmup)
        precision = PRECISIONS[bf16]
        fit(model, tokenizer, data, precision=precision, steps=args.warmup + args.steps, callbacks=[timer])
        return {"precision": precision, "seconds": sum(timer.seconds), "tokens": sum(timer.tokens)}

    def report(label: str, bf16: bool, result: dict[str, Any]) -> None:
        rate = result["tokens"] / result["seconds"]
        print(f"[{label}] {result['precision']:>10}: {rate:8.1f} tokens/s ({result['seconds']:.1f} s)")

    fp32, bf16 = interleaved_pairs(run, args.repeats, report=report)
    summary = ratio_statistics([r["seconds"] for r in fp32], [r["seconds"] for r in bf16], names=("fp32", "bf16"))
    summary |= {
        "fp32_tokens_per_s": sum(r["tokens"] for r in fp32) / sum(r["seconds"] for r in fp32),
        "bf16_tokens_per_s": sum(r["tokens"] for r in bf16) / sum(r["seconds"] for r in bf16),
        "agreement": agreement(losses["32-true"], losses["bf16-mixed"]),
    }
    print()
    rows = [
        [side, f"{summary[f'{side}_tokens_per_s']:.1f}", f"{summary[f'{side}_median_s']:.2f}"]
        for side in ("fp32", "bf16")
    ]
    print(markdown_table(["precision", "tokens / s", "median run (s)"], rows))
    agree = summary["agreement"]
    print(
        f"\ntime ratio bf16 / fp32: median of pairs {summary['median_pair_ratio']:.3f}; loss over {agree['steps']} "
        f"steps: largest difference {agree['max_abs_difference']:.4f} ({100 * agree['max_relative_difference']:.2f}%), "
        f"means {agree['fp32_mean_loss']:.4f} (fp32) and {agree['bf16_mean_loss']:.4f} (bf16)"
    )
    env = environment(
        "cpu",
        model=args.model,
        **model_facts(initial, args.model, random_weights=False),
        cpu_bf16_flags=cpu_bf16_flags(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        wall_seconds=time.perf_counter() - started,
    )
    write_json(
        args.out,
        config=vars(args),
        environment=env,
        summary=summary,
        runs={"fp32": fp32, "bf16": bf16, "losses": losses},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
