#!/usr/bin/env bash
# Create .venv and install sepme with its test tools. torch is pinned to the CPU wheel here;
# on a GPU machine install the CUDA build of torch first and it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install --quiet torch==2.13.0
fi
.venv/bin/pip install --quiet -e '.[dev]'
echo "sepme installed in .venv: run .venv/bin/sepme --help" >&2
