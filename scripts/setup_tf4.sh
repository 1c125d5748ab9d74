#!/usr/bin/env bash
# Create .venv-tf4: the older stack users still run (transformers 4.46, diffusers 0.31) on the
# same CPU torch pin, for scripts/check_tf4.py (sepme's diffusers export must load there too).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv-tf4/bin/python ]; then
  "$PY" -m venv .venv-tf4
fi
.venv-tf4/bin/pip install --quiet torch==2.13.0 "transformers==4.46.*" "diffusers==0.31.*" safetensors
echo "transformers 4.x check environment in .venv-tf4" >&2
