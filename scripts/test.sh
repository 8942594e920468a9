#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh, idempotent), then on the CPU:
#  1. the numerically sensitive tests under each lower SIMD level torch can be forced to here
#     (ATEN_CPU_CAPABILITY=default everywhere, avx2 on x86 CPUs that have AVX-512), so that a tolerance that
#     holds only for this CPU's rounding fails here and not on someone else's machine;
#  2. the documentation, built with mkdocs --strict (a dead link or a broken docstring reference fails);
#  3. ruff's lint and format checks;
#  4. the whole suite at the CPU's own level, last, so that its summary line closes the output.
# Any failure ends the script with a non-zero status.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
SENSITIVE=(tests/functional tests/test_hostile_inputs.py)
native=$("$PY" -c "import torch; print(torch.backends.cpu.get_cpu_capability().lower())")
levels=(default)
if [ "$native" = avx512 ]; then levels+=(avx2); fi
for level in "${levels[@]}"; do
  echo "== tests/functional and tests/test_hostile_inputs.py with ATEN_CPU_CAPABILITY=$level (native: $native)"
  ATEN_CPU_CAPABILITY=$level "$PY" -m pytest -q -p no:cacheprovider "${SENSITIVE[@]}"
done
echo "== mkdocs build --strict"
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
NO_MKDOCS_2_WARNING=1 "$PY" -m mkdocs build --strict --quiet --site-dir "$site"
echo "== ruff check and ruff format --check (configured in pyproject.toml)"
"$PY" -m ruff check --quiet .
"$PY" -m ruff format --check --quiet .
echo "== the whole suite (ATEN_CPU_CAPABILITY: $native)"
"$PY" -m pytest -q "$@"
