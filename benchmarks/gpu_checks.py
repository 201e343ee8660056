"""The two GPU measurements `benchmarks/gpu.sh` needs that the CPU scripts do not take options for.

- ``vision``: the vision recipe's SmallCNN on Fashion-MNIST (the model, data and module of
  ``tracking_overhead.py``) under ``bf16-mixed`` with the model and inputs in ``channels_last``, as the
  recipe runs on CUDA: images per second with and without `TrainingDynamics`, interleaved pairs.
- ``llm``: the LLM recipe's `CausalLMFineTuner` (the setup of ``llm_throughput.py``) on the GPU under
  ``bf16-mixed``: tokens per second with and without `TrainingDynamics`, and the peak GPU memory of each
  side (``torch.cuda.max_memory_allocated``).

Both reuse the classes of those scripts rather than copying them. ``--device cpu`` with a tiny model runs
the same code on a CPU (to check the script, not to measure).

Where the data and model packages are not installed (a lent GPU machine, see ``gpu_device.sh``):
``--data-dir`` names a folder with the Fashion-MNIST IDX files; ``llm --random-weights --model DIR``
builds the model from the config in ``DIR`` (with its tokenizer) with random weights, which changes
neither the step time nor the memory (the JSON says ``"weights": "random ..."``); ``--dataset`` takes
any `InstructionDataModule` source, such as a ``.jsonl`` of pre-generated problems.

Examples:
    python benchmarks/gpu_checks.py vision --out vision_gpu.json
    python benchmarks/gpu_checks.py llm --out llm_gpu.json
    python benchmarks/gpu_checks.py llm --device cpu --model tiny-random-llama --steps 2 --repeats 1 --out /tmp/x.json
    python benchmarks/gpu_checks.py llm --model .gpu/smollm2-config --random-weights \
        --dataset .gpu/llm-data/basic_arithmetic.jsonl --out llm_gpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark scripts
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the recipes package, when run as a script
import llm_throughput  # noqa: E402
import tracking_overhead  # noqa: E402
from lightning_curricula.recipes.llm.datamodule import InstructionDataModule  # noqa: E402
from lightning_curricula.recipes.llm.model import SMOLLM2, load_tokenizer  # noqa: E402
from lightning_curricula.recipes.vision.data import FASHION_MNIST_DIR  # noqa: E402

from lightning_curricula import TrainingDynamics, WithIndex  # noqa: E402


class ChannelsLastClassifier(tracking_overhead.Classifier):
    """The recipe's CUDA layout: model and images in ``channels_last``."""

    def on_fit_start(self) -> None:  # noqa: D102
        self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:  # noqa: D102
        batch = {**batch, "image": batch["image"].contiguous(memory_format=torch.channels_last)}
        return super().training_step(batch, batch_idx)


def vision(args: argparse.Namespace) -> dict[str, Any]:
    """Images per second with and without tracking, bf16-mixed and channels_last, interleaved pairs."""
    dataset = tracking_overhead.load_data(args.data_dir, args.train_size)
    runs = []
    for repeat in range(args.repeats + 1):  # the first pair warms up (cuDNN autotuning, allocator)
        for tracked in (False, True) if repeat % 2 == 0 else (True, False):
            module = ChannelsLastClassifier(lr=0.05)
            timer = tracking_overhead.TrainTimer()
            callbacks: list[pl.Callback] = [timer] + ([TrainingDynamics()] if tracked else [])
            trainer = pl.Trainer(
                accelerator="gpu" if args.device == "cuda" else "cpu",
                devices=1,
                precision="bf16-mixed",
                max_epochs=1,
                logger=False,
                callbacks=callbacks,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
            )
            loader = DataLoader(
                WithIndex(dataset),
                batch_size=args.batch_size,
                shuffle=True,
                generator=torch.Generator().manual_seed(repeat),
                num_workers=args.workers,
                pin_memory=args.device == "cuda",
                persistent_workers=args.workers > 0,
            )
            trainer.fit(module, loader)
            if repeat:
                runs.append({"repeat": repeat, "tracked": tracked, "seconds": timer.seconds})
    return summarize(runs, len(dataset), "images")


def llm(args: argparse.Namespace) -> dict[str, Any]:
    """Tokens per second and peak memory with and without tracking, bf16-mixed, interleaved pairs."""
    tokenizer = load_tokenizer(args.model)
    model = llm_throughput.load_model(args.model, random_weights=args.random_weights)
    data = InstructionDataModule(
        args.dataset,
        tokenizer=tokenizer,
        train_size=args.batch_size * (args.warmup + args.steps),
        eval_size=0,
        max_length=args.max_length,
        batch_size=args.batch_size,
        system_prompt="Answer with the final number only.",
    )
    runs = []
    for repeat in range(args.repeats):
        for tracked in (False, True) if repeat % 2 == 0 else (True, False):
            run = llm_throughput.run_once(
                model, tokenizer, data, args, tracked=tracked, device=args.device, precision="bf16-mixed"
            )
            runs.append({"repeat": repeat, **run})
    result = summarize(runs, None, "tokens") | llm_throughput.model_facts(
        model, args.model, random_weights=args.random_weights
    )
    for tracked, name in ((False, "baseline"), (True, "tracked")):
        result[f"{name}_peak_memory_bytes"] = max(r["peak_memory_bytes"] for r in runs if r["tracked"] == tracked)
    return result


def summarize(runs: list[dict[str, Any]], items_per_run: int | None, unit: str) -> dict[str, Any]:
    """Per-side throughput, the median of the per-pair time ratios, and every run."""
    sides = {tracked: [r for r in runs if r["tracked"] == tracked] for tracked in (False, True)}

    def rate(side: list[dict[str, Any]]) -> float:
        items = sum(r["tokens"] for r in side) if items_per_run is None else items_per_run * len(side)
        return float(items / sum(r["seconds"] for r in side))

    ratios = [t["seconds"] / b["seconds"] for b, t in zip(sides[False], sides[True], strict=True)]
    return {
        f"baseline_{unit}_per_s": rate(sides[False]),
        f"tracked_{unit}_per_s": rate(sides[True]),
        "median_time_ratio": statistics.median(ratios),
        "throughput_ratio": 1 / statistics.median(ratios),
        "runs": runs,
    }


def main() -> None:  # noqa: D103
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("check", choices=["vision", "llm"])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--repeats", type=int, default=3, help="timed pairs (baseline, tracked)")
    parser.add_argument("--train-size", type=int, default=60_000, help="vision: training images per run")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 512 (vision), 8 (llm)")
    parser.add_argument("--workers", type=int, default=4, help="vision: DataLoader workers")
    parser.add_argument("--data-dir", default=FASHION_MNIST_DIR, help="vision: folder with the Fashion-MNIST IDX files")
    parser.add_argument("--model", default=SMOLLM2, help="llm: model for load_causal_lm, or a config folder")
    parser.add_argument(
        "--random-weights", action="store_true", help="llm: build --model from its config with random weights"
    )
    parser.add_argument("--dataset", default=llm_throughput.DATASET, help="llm: InstructionDataModule's source")
    parser.add_argument("--max-length", type=int, default=256, help="llm: tokens per sequence at most")
    parser.add_argument("--steps", type=int, default=20, help="llm: timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="llm: untimed steps per run")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA device")
    args.batch_size = args.batch_size or (512 if args.check == "vision" else 8)
    started = time.perf_counter()
    result = vision(args) if args.check == "vision" else llm(args)
    result |= {
        "check": args.check,
        "args": {key: str(value) for key, value in vars(args).items()},
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "wall_seconds": time.perf_counter() - started,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
