#!/usr/bin/env bash
# One-shot check on a GPU machine: build with the machine's own torch and CUDA toolkit, report the backends,
# run the kernel tests and the benchmarks. Results go to $OUT/gpu_check (or benchmarks/results/gpu_check): summary.txt,
# log.txt (every step's output) and the benchmarks' JSON files, five files in all (the device tool returns eight).
#
#   bash benchmarks/gpu_check.sh
#
# Environment: DHKD_CUDA_ARCHS overrides the architectures built (default: the visible GPU's only, which
# keeps the build short); PYTHON is the interpreter that holds torch (default python3). Nothing is fetched:
# the machine needs torch, pybind11, setuptools, pytest, pytest-timeout and hypothesis (--no-deps install).
# Every step has a time limit, so one hang cannot eat a short GPU lease.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG="${OUT:-benchmarks/results}/gpu_check"
mkdir -p "$LOG"
: > "$LOG/summary.txt"
status=0

PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS CMD...: run under a time limit, tee the log, record the exit status
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit} s): $*" | tee -a "$LOG/summary.txt"
  local t0=$SECONDS
  echo "===== $name: $*" >> "$LOG/log.txt"
  timeout "$limit" "$@" > >(tee -a "$LOG/log.txt") 2>&1
  local rc=$?
  echo "   $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$LOG/summary.txt"
  [ "$rc" -eq 0 ] || status=1
  return "$rc"
}

(nvidia-smi || true) > "$LOG/log.txt" 2>&1
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())" \
  | tee -a "$LOG/summary.txt"
if [ -z "${DHKD_CUDA_ARCHS:-}" ]; then
  DHKD_CUDA_ARCHS=$($PY -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}.{n}')" 2>/dev/null) \
    && export DHKD_CUDA_ARCHS
fi
echo "DHKD_CUDA_ARCHS=${DHKD_CUDA_ARCHS:-default}" | tee -a "$LOG/summary.txt"

# Limits sum to under 10 minutes (one device command); typical runs take far less.
step install 150 env DHKD_FORCE_CUDA=1 "$PY" -m pip install --no-build-isolation --no-deps -e . \
  || { cat "$LOG/summary.txt"; exit 1; }
step info 30 "$PY" -m dhkd.cli info
step tests 180 "$PY" -m pytest -q -p no:cacheprovider --timeout 120 -k "cuda or triton or gpu" tests
step kernels 90 "$PY" benchmarks/kernels.py --quick --out-dir "$LOG"
step latency 120 "$PY" benchmarks/latency.py --quick --presets paper small --output-dir "$LOG" \
  --modes eager fp16 cudagraph fp16-cudagraph

echo "== overall: $([ $status -eq 0 ] && echo OK || echo FAILED)" | tee -a "$LOG/summary.txt"
exit $status
