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
# Mass erasure across GPUs (accelerate, NCCL, one GPU a process): 12 toy concepts, 1 process
# against as many as there are GPUs (at least 2), increments compared by blob digest.
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$NGPU" -ge 2 ]; then
  PYTHONUNBUFFERED=1 "$PY" benchmarks/mass_erase.py --device cuda --processes "$NGPU" --steps 50 --images 4 --image-steps 10
else
  echo "mass erase: one GPU only; the multi-GPU run needs at least 2"
fi
if [ -n "${OUT:-}" ]; then cp benchmarks/results/perf-cuda.* benchmarks/results/mass_erase-cuda.* "$OUT"/ 2>/dev/null || true; fi
