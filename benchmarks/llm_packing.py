"""Padded, length-grouped and packed training batches of the LLM recipe: real tokens per second, side by side.

Three variants of the same fits of ``CausalLMFineTuner`` (the same data, model, precision and plan):

- ``padded``: each batch right-padded to its longest example (the default);
- ``grouped``: ``group_by_length`` (`LengthGroupedSampler`), batches of similar lengths;
- ``packed``: ``packing`` (`PackingCollator`), each batch's examples end to end in rows of ``max_length``
  tokens, every example keeping its own loss.

``--repeats`` rounds, each fitting every variant for ``--warmup`` untimed and ``--steps`` timed steps,
the order rotating from round to round (`harness.interleaved_rounds`). Reported: real (unpadded)
tokens per second of each variant, the median over rounds of its time per real token over
``padded``'s (each variant's timed steps hold different examples, so times are compared per token), and the
tokens the model computed per real token (padding included). The testbed's families mix short and
long examples (about 20 to 150 tokens), the case where padding costs most.

Examples:
    python benchmarks/llm_packing.py                                  # SmolLM2-135M on the testbed, fp32
    python benchmarks/llm_packing.py --model proxy-llama --steps 20
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from harness import environment, interleaved_rounds, markdown_table, ratio_statistics, write_json
from lightning.pytorch.callbacks import Callback
from llm_precision import fit
from llm_throughput import StepTimer, load_model, model_facts, quiet_llm_benchmark

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the recipes package, when run as a script
from lightning_curricula.recipes.llm.datamodule import InstructionDataModule  # noqa: E402
from lightning_curricula.recipes.llm.model import SMOLLM2, load_tokenizer  # noqa: E402

VARIANTS = {"padded": {}, "grouped": {"group_by_length": True}, "packed": {"packing": True}}


class ComputedTokens(Callback):
    """Tokens the model ran on per step (the packed rows when packed, else the padded batch) and real tokens."""

    def __init__(self) -> None:
        self.computed = 0
        self.real = 0

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.computed += int((batch["packed_input_ids"] if "packed_input_ids" in batch else batch["input_ids"]).numel())
        self.real += int(batch["attention_mask"].sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SMOLLM2, help="model name for load_causal_lm")
    parser.add_argument("--dataset", default="testbed", help="InstructionDataModule's source")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=160)
    parser.add_argument("--precision", default="32-true", help="the Trainer's precision, the same for every variant")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of each run")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of runs (every variant once per round)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, default=Path("llm_packing.json"), help="JSON results")
    args = parser.parse_args(argv)

    quiet_llm_benchmark(args.threads)
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model)
    initial_facts = model_facts(model, args.model, random_weights=False)
    steps = args.warmup + args.steps
    common = {"tokenizer": tokenizer, "train_size": args.batch_size * steps, "eval_size": 0}
    common |= {"max_length": args.max_length, "batch_size": args.batch_size}
    data = {name: InstructionDataModule(args.dataset, **common, **options) for name, options in VARIANTS.items()}
    model = copy.deepcopy(model)
    started = time.perf_counter()

    def run(name: str) -> dict[str, Any]:
        timer, counts = StepTimer(args.warmup), ComputedTokens()
        fit(model, tokenizer, data[name], precision=args.precision, steps=steps, callbacks=[timer, counts])
        seconds, tokens = sum(timer.seconds), sum(timer.tokens)
        return {
            "variant": name,
            "seconds": seconds,
            "tokens": tokens,
            "computed_per_real": counts.computed / counts.real,
        }

    def report(label: str, name: str, result: dict[str, Any]) -> None:
        rate = result["tokens"] / result["seconds"]
        print(f"[{label}] {name:>8}: {rate:8.1f} real tokens/s ({result['seconds']:.1f} s)", flush=True)

    results = interleaved_rounds(run, list(VARIANTS), args.repeats, report=report)
    padded_per_token = [r["seconds"] / r["tokens"] for r in results["padded"]]
    summary: dict[str, Any] = {}
    rows = []
    for name, runs in results.items():
        rate = sum(r["tokens"] for r in runs) / sum(r["seconds"] for r in runs)
        per_token = [r["seconds"] / r["tokens"] for r in runs]
        ratio = ratio_statistics(padded_per_token, per_token)["median_pair_ratio"]
        computed = runs[0]["computed_per_real"]
        summary[name] = {
            "real_tokens_per_s": rate,
            "median_time_per_token_ratio_to_padded": ratio,
            "computed_per_real": computed,
        }
        rows.append([name, f"{rate:.1f}", f"{ratio:.3f}", f"{computed:.2f}"])
    print()
    print(
        markdown_table(
            ["batches", "real tokens / s", "time per real token / padded (median of rounds)", "tokens computed / real"],
            rows,
        )
    )
    env = environment(
        "cpu",
        model=args.model,
        **initial_facts,
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        wall_seconds=time.perf_counter() - started,
    )
    write_json(args.out, config=vars(args), environment=env, summary=summary, runs=results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
