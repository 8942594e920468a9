#!/usr/bin/env bash
# Model selection for SelfRegulationSCP1 by repeated hold-out on the training file: every configuration is
# trained with softmax attention on seeds 0-4 (each seed draws its own stratified 80/20 split of the
# training file) and scored by select_scp1.py on validation accuracy only. The test file is never looked at
# here; select_scp1.py prints the table of results/uea/README.md. Every configuration is scp1.yaml's model and
# optimiser with patch 32, 20% held out for validation and no jitter, unless its options say otherwise
# (scp1.yaml itself is the final choice: patch 64, jitter 0.5, trained on the whole training file).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-runs/scp1_select}
run() {  # name, then options over scp1.yaml
  local name=$1; shift
  primaldual compare --config results/uea/scp1.yaml --attention softmax --seeds 0 1 2 3 4 --no-report \
    --output "$out/$name" --val-fraction 0.2 --jitter 0 --patch-size 32 "$@"
}
run p32
run p16 --patch-size 16
run p64 --patch-size 64
run p112 --patch-size 112
run p32_drop0.5 --dropout 0.5
run p32_d64 --d-model 64 --num-heads 8
run p32_lr3e-4 --lr 3e-4 --epochs 100
run p64_lr3e-4 --patch-size 64 --lr 3e-4 --epochs 100
run p32_jitter0.3 --jitter 0.3                         # Gaussian noise on the training series (normalised units)
run p32_jitter0.5 --jitter 0.5
run p64_jitter0.5 --patch-size 64 --jitter 0.5      # the choice: best on validation over the last 10 epochs
