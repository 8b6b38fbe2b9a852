#!/usr/bin/env bash
# One short, prepared GPU measurement (under 5 minutes on one H100/H200): gpt2-small, bf16,
# with and without torch.compile, plain and chunked loss, one GPU and (with several) DDP;
# tokens/s and MFU from the device table. See bench/gpu.py for what each case is.
#
#   bash bench/gpu.sh                 # python: $PYTHON, else .venv/bin/python, else python3
#   OUT=/some/dir bash bench/gpu.sh   # also writes gpu_bench.md and gpu_bench.json there
#
# Needs a CUDA build of torch and reatt's dependencies in that python (pip install -e .).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || {
  echo "bench/gpu.sh: nvidia-smi found no GPU: nothing to measure" >&2
  exit 2
}
"$PY" -c 'import torch, reatt.train; assert torch.cuda.is_available(), "torch has no CUDA here"; print("torch", torch.__version__, "cuda", torch.version.cuda)'
args=()
[ -n "${OUT:-}" ] && args+=(--out "$OUT")
PYTHONUNBUFFERED=1 timeout 290 "$PY" bench/gpu.py "${args[@]}" "$@"
