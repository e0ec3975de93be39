#!/usr/bin/env bash
# The GPU check (issue #13): runs everything in ssl-rs that needs a GPU to be measured, within
# 8 minutes, prints one table and writes results.json, results.md and the logs to a folder.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--only STEP,...] [--skip STEP,...]
#   bash benchmarks/gpu_check.sh --dry-run    # the plan and its checks, on any machine (CI)
#   bash benchmarks/gpu_check.sh --smoke      # every step at toy size on the CPU
#
# The interpreter is .venv/bin/python, created and installed as `make venv` does it, unless
# GPU_CHECK_PYTHON names another one (a machine whose torch build matches its CUDA, or one that
# cannot reach a package index). Everything else is benchmarks/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${GPU_CHECK_PYTHON:-}" ]]; then
    py="$GPU_CHECK_PYTHON"
else
    if command -v make >/dev/null 2>&1; then
        make --no-print-directory -s venv >&2  # the Makefile's own recipe: nothing to do when it is up to date
    elif [[ ! -x .venv/bin/python ]]; then     # no make: the same steps as its recipe
        python3 -m venv .venv
        .venv/bin/python -m pip install --quiet --upgrade pip
        .venv/bin/python -m pip install --quiet -e ".[dev]"
    fi
    py=.venv/bin/python
fi
exec "$py" benchmarks/gpu_check.py "$@"
