#!/usr/bin/env bash
# The long-range tables of results/lra/README.md on a 2-core CPU: ListOps (generated here), pixel-level
# Fashion-MNIST and ListOps with four times the training expressions (listops-32k.yaml), softmax / bn / sh /
# bn+sh, seed 0, two runs at a time (one core each: a slow variant beside a fast one), then the summaries and
# reports; then the cost of every variant from 512 to 4096 tokens.
# Outputs: runs/lra/{listops,pixels,listops-32k}/ (summary.md, report/), runs/lra/scaling/.
set -euo pipefail
cd "$(dirname "$0")/../.."
P=${PRIMALDUAL:-primaldual}
for task in listops pixels listops-32k; do
  for pair in "softmax sh" "bn bn+sh"; do  # each process trains one slow and one fast variant
    $P compare --config results/lra/$task.yaml --attention $pair --seeds 0 --no-report --output runs/lra/$task &
  done
  wait
  $P compare --config results/lra/$task.yaml --attention softmax bn sh bn+sh --seeds 0 --output runs/lra/$task
done
OMP_NUM_THREADS=1 python -m benchmarks.scaling --lengths 512 1024 2048 4096 --repeats 7 --output runs/lra/scaling
