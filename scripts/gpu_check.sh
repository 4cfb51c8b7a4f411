#!/usr/bin/env bash
# The prepared GPU check (issue "Inference at the hardware's limit"): run once on a fresh NVIDIA
# machine with nothing but this repository and the machine's own Python (torch with CUDA):
#     bash scripts/gpu_check.sh [OUT_DIR]
# Writes OUT_DIR/gpu_check.json (default: $OUT, else build/gpu_check): the deploy artifact,
# ONNX Runtime fp32 on the CPU as reference, torch CUDA fp32 / fp16 / bf16, TensorRT fp16 where
# the tensorrt package imports; each with latency and accuracy against the reference
# (rsd_drive/bench/gpu_check.py). Needs no network; bounded to 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-build/gpu_check}}"
mkdir -p "$out"
py="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/nvidia_smi.csv" 2>&1 || true
"$py" - <<'PY' > "$out/python_env.txt" 2>&1 || true
import importlib
for name in ('torch', 'onnx', 'onnxruntime', 'transformers', 'safetensors', 'tensorrt', 'yaml'):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as e:  # noqa: BLE001
        print(name, 'missing:', e)
PY
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
timeout 480 "$py" -m rsd_drive.bench.gpu_check --json "$out/gpu_check.json" --work "$out/work" \
    2>&1 | tee "$out/gpu_check.log"
rm -rf "$out/work"
