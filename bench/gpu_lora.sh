#!/usr/bin/env bash
# LoRA on an 8B-shaped Llama (random bf16 weights) on one GPU: ours vs HF Trainer + peft.
# Run from the repository root on a GPU machine with the project installed (make install):
#   bash bench/gpu_lora.sh [extra args for bench/gpu_lora.py]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export PYTHONPATH="$PWD/trainer_image${PYTHONPATH:+:$PYTHONPATH}"
"$PY" bench/gpu_lora.py --shape 8b --seq 2048 --batch 2 --steps 20 --warmup 3 --repeats 2 "$@"
