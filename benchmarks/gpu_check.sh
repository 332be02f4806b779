#!/usr/bin/env bash
# One-shot check on a GPU machine: build with the machine's own torch and CUDA toolkit, report the backends,
# run the kernel tests and the benchmarks. Logs go to $OUT/gpu_check (or benchmarks/results/gpu_check).
#
#   bash benchmarks/gpu_check.sh
#
# Environment: DHKD_CUDA_ARCHS overrides the architectures built (default: the visible GPU's only, which
# keeps the build short).
set -uo pipefail
cd "$(dirname "$0")/.."
LOG="${OUT:-benchmarks/results}/gpu_check"
mkdir -p "$LOG"
: > "$LOG/summary.txt"
status=0

step() {  # step NAME CMD...: run, tee the log, record the exit status
  local name=$1
  shift
  echo "== $name: $*" | tee -a "$LOG/summary.txt"
  local t0=$SECONDS
  "$@" > >(tee "$LOG/$name.log") 2>&1
  local rc=$?
  echo "   $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$LOG/summary.txt"
  [ "$rc" -eq 0 ] || status=1
  return "$rc"
}

(nvidia-smi || true) > "$LOG/nvidia-smi.txt" 2>&1
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())" \
  | tee -a "$LOG/summary.txt"
if [ -z "${DHKD_CUDA_ARCHS:-}" ]; then
  DHKD_CUDA_ARCHS=$(python -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}.{n}')" 2>/dev/null) \
    && export DHKD_CUDA_ARCHS
fi
echo "DHKD_CUDA_ARCHS=${DHKD_CUDA_ARCHS:-default}" | tee -a "$LOG/summary.txt"

step install env DHKD_FORCE_CUDA=1 python -m pip install --no-build-isolation --no-deps -e . || { cat "$LOG/summary.txt"; exit 1; }
step info dhkd info
step tests python -m pytest -q tests/kernels -x
if [ -f benchmarks/kernels.py ]; then step kernels python benchmarks/kernels.py --quick; fi
if [ -f benchmarks/latency.py ]; then step latency python benchmarks/latency.py; fi

echo "== overall: $([ $status -eq 0 ] && echo OK || echo FAILED)" | tee -a "$LOG/summary.txt"
exit $status
