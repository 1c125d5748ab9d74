#!/usr/bin/env bash
# GPU check: SepME erasure iterations at SD 1.5 and SDXL base size in bf16 — s/iteration and peak
# GPU memory.
# Run on a machine with a CUDA build of torch (e.g. the device tool):
#   bash benchmarks/gpu_check.sh
# Writes benchmarks/results/perf-cuda.{md,json} (and copies them to $OUT when that is set).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
PYTHONUNBUFFERED=1 "$PY" -m benchmarks.perf --only iteration,nullspace,iteration-sdxl --device cuda --dtype bf16 --iters 20
if [ -n "${OUT:-}" ]; then cp benchmarks/results/perf-cuda.* "$OUT"/; fi
