#!/usr/bin/env bash
# One-GPU device check (issue 10): estimator kernels at B=262144 x T=1024 vs the memory floor, then a
# 20-step bf16 training run of the 100M preset; prints a table and writes OUT_DIR/gpu_check.json.
#   bash benchmarks/gpu_check.sh OUT_DIR        (PYTHON=... to choose the interpreter)
# No network, no downloads. Exits 2 at once when no CUDA GPU is visible; a 10-minute timeout stops
# anything that would hang. Not yet run on a GPU (see docs/gpu.md).
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: bash benchmarks/gpu_check.sh OUT_DIR" >&2
  exit 2
fi
OUT="$1"
PY="${PYTHON:-python}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$HERE/../src${PYTHONPATH:+:$PYTHONPATH}"
if ! timeout 60 "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA GPU visible to torch ($PY); this check needs one NVIDIA GPU and a CUDA build of torch." >&2
  exit 2
fi
mkdir -p "$OUT"
exec timeout 600 "$PY" "$HERE/gpu_check.py" "$OUT" --device cuda "${@:2}"
