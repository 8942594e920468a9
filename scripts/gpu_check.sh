#!/usr/bin/env bash
# The GPU check, under 5 minutes on one GPU: the CUDA tests (float16, bfloat16 against float32 on the CPU), then the
# layer benchmark in float16 and bfloat16 printing each variant's time ratio to softmax and the SDPA backend
# (flash, memory-efficient, cudnn, math) it reached. Results: runs/gpu-check/{float16,bfloat16}/layer.{md,csv,json}.
# Usage: bash scripts/gpu_check.sh [python]   (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
timeout 150 "$PY" -m pytest -q -p no:randomly tests/test_cuda.py
for dtype in float16 bfloat16; do
  timeout 60 "$PY" -m benchmarks.layer --device cuda --dtype "$dtype" --shapes 128x4 96x6 \
    --lengths 128 512 2048 8192 --tokens 65536 --modes train inference --warmup 3 --repeats 15 \
    --output "runs/gpu-check/$dtype"
done
