#!/usr/bin/env bash
# One-shot GPU check: every GPU number of the package in one run of at most 8 minutes, most valuable first.
#
#   bash benchmarks/gpu_check.sh            # results in $OUT (the device machine's output folder) or
#                                           # benchmarks/results/gpu_check_<date>_<time>/
#
# Steps, in order; each writes its own file as soon as it finishes (8 files at most, none in sub-folders):
#   1 preflight      versions (python, torch + CUDA, Triton, pybind11, setuptools, nvcc, gcc), nvidia-smi -L,
#                    the GPU                                                       -> summary.txt (also the index)
#   2 build          the extensions in place, both at once (setup.py build_ext -j); without nvcc, or when the
#                    CUDA build fails, the CPU build alone (the GPU then runs Triton + reference)  -> 2_build.txt
#   3 ss2d           SS2D correctness of every GPU backend and dtype at the four DHKD maps, batch 1 and 16,
#                    forward + backward vs the float64 reference, CUDA-graph/CUDA-event timings -> 3_ss2d.json
#   4 latency        paper preset batch-1 latency vs EfficientAD-M and the reference path, one process per
#                    group of modes (one failure loses one group)                      -> 4_latency.json
#   5 tests          an explicit, ordered list of GPU tests, JUnit XML of all groups    -> 5_tests.xml
#   6 fused          SCMM/FCCM kernel benchmark                                         -> 6_fused.json
#   7 selective_scan selective-scan kernel benchmark                                    -> 7_selective_scan.json
#   8 small          small preset latency                                               -> 8_small.json
# Without a GPU every GPU step is skipped with a line saying so (the script then only checks itself). Nothing
# is fetched: pip is never called, the build uses the machine's torch, pybind11 and setuptools.
# Environment: PYTHON (default python3), DHKD_CUDA_ARCHS (default: the visible GPU's architecture only),
# GPU_CHECK_BUDGET_S (default 470: later steps are skipped once the run is past it).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
if [ -n "${OUT:-}" ]; then DEST=$OUT; else DEST=benchmarks/results/gpu_check_$(date +%Y%m%d_%H%M%S); fi
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
SUMMARY=$DEST/summary.txt
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-470}
export PYTHONUNBUFFERED=1 PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} PIP_NO_INDEX=1 PIP_NO_DEPS=1
START=$SECONDS
status=0
: > "$SUMMARY"

say() { echo "$*" | tee -a "$SUMMARY"; }

# run_step NAME LIMIT_S LOG CMD...: runs CMD under a time limit, its output into LOG; records rc and seconds.
run_step() {
  local name=$1 limit=$2 log=$3
  shift 3
  local left=$((BUDGET - (SECONDS - START)))
  if [ "$left" -lt 15 ]; then
    say "== $name: SKIPPED (time budget of ${BUDGET} s used)"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  say "== $name (limit ${limit} s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  say "   $name: rc=$rc in $((SECONDS - t0)) s$([ "$rc" -eq 124 ] && echo ' (time limit)')"
  if [ "$rc" -ne 0 ]; then
    status=1
    tail -n 15 "$log" | sed 's/^/   | /' >> "$SUMMARY"
  fi
  return "$rc"
}

# ---- 1 preflight -------------------------------------------------------------------------------------------
say "== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname) in $ROOT"
say "-- nvidia-smi -L: $( (command -v nvidia-smi > /dev/null && nvidia-smi -L 2>&1 || echo 'not available') | tr '\n' ';')"
say "-- nvcc: $( (nvcc --version 2>/dev/null | tail -n 2 | head -n 1) || echo 'not found')"
say "-- gcc: $( (gcc --version 2>/dev/null | head -n 1) || echo 'not found')"
"$PY" - 2>&1 <<'EOF' | tee -a "$SUMMARY"
import importlib, platform
print("-- python", platform.python_version())
for name in ("torch", "triton", "pybind11", "setuptools", "pytest", "hypothesis"):
    try:
        print(f"-- {name}", importlib.import_module(name).__version__)
    except Exception as exc:  # noqa: BLE001
        print(f"-- {name}: not importable ({exc})")
import torch
print("-- torch CUDA", torch.version.cuda, "| GPU visible:", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"-- GPU {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB")
EOF
GPU=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
gpu_step() {  # gpu_step NAME ...: run_step when a GPU is visible, else one clear line
  if [ "$GPU" != 1 ]; then
    say "== $1: SKIPPED (no GPU visible)"
    return 0
  fi
  run_step "$@"
}

# ---- 2 build -----------------------------------------------------------------------------------------------
if [ "$GPU" = 1 ]; then
  if [ -z "${DHKD_CUDA_ARCHS:-}" ]; then
    DHKD_CUDA_ARCHS=$("$PY" -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}.{n}')")
    export DHKD_CUDA_ARCHS
  fi
  say "-- DHKD_CUDA_ARCHS=$DHKD_CUDA_ARCHS"
  BUILD_LOG=$DEST/2_build.txt
  if ! run_step build 150 "$BUILD_LOG" "$PY" setup.py build_ext --inplace -j 8; then
    say "   build: the CUDA build failed; building the CPU kernels alone (the GPU runs Triton + reference)"
    run_step build-cpu-only 90 "$BUILD_LOG" env DHKD_NO_CUDA=1 "$PY" setup.py build_ext --inplace -j 8
  fi
  run_step backends 20 "$BUILD_LOG" "$PY" -m dhkd.cli info
else
  say "== build: SKIPPED (no GPU visible; building the CPU kernels is CI's job)"
fi

# ---- 3 SS2D correctness and timings -----------------------------------------------------------------------
gpu_step ss2d 140 "$TMP/ss2d.log" "$PY" benchmarks/kernels_ss2d.py --gpu-check "$DEST/3_ss2d.json" --budget 100

# ---- 4 paper preset latency: one process per group of modes, merged --------------------------------------
latency_group() {  # latency_group PRESET TAG LIMIT MODES...: one benchmark process into $TMP/lat_TAG
  local preset=$1 tag=$2 limit=$3
  shift 3
  gpu_step "latency[$preset: $*]" "$limit" "$TMP/lat_$tag.log" "$PY" benchmarks/latency.py --presets "$preset" \
    --quick --device cuda --throughput-batch 0 --modes "$@" --output-dir "$TMP/lat_$tag"
}
merge_latency() {  # merge_latency OUT_JSON TAG...: every group's JSON (or its error log tail) in one file
  local out=$1
  shift
  "$PY" - "$out" "$TMP" "$@" <<'EOF'
import json, os, sys
from pathlib import Path
out, tmp, tags = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
merged = {}
for tag in tags:
    files = sorted((tmp / f"lat_{tag}").glob("*.json"))
    log = tmp / f"lat_{tag}.log"
    if files:
        merged[tag] = json.loads(files[-1].read_text())
    else:
        merged[tag] = {"error": log.read_text()[-3000:] if log.exists() else "not run"}
tmp_out = out.with_suffix(".json.tmp")
tmp_out.write_text(json.dumps(merged, indent=1))
os.replace(tmp_out, out)
EOF
}
if [ "$GPU" = 1 ]; then
  latency_group paper best 70 eager fp16-cudagraph
  merge_latency "$DEST/4_latency.json" best
  latency_group paper more 50 cudagraph fp16 bf16
  merge_latency "$DEST/4_latency.json" best more
else
  say "== latency: SKIPPED (no GPU visible)"
fi

# ---- 5 explicit, ordered GPU test list ---------------------------------------------------------------------
PYTEST=("$PY" -m pytest -q -p no:cacheprovider --timeout 60)
test_group() {  # test_group TAG LIMIT ARGS...: one pytest process, JUnit XML into $TMP
  local tag=$1 limit=$2
  shift 2
  gpu_step "tests[$tag]" "$limit" "$TMP/tests.log" "${PYTEST[@]}" --junitxml "$TMP/junit_$tag.xml" "$@"
}
test_group ss2d 90 tests/kernels/test_ss2d_cuda.py tests/kernels/test_ss2d_triton.py \
  -k "not emulated and not compile_for"  # the CPU emulations and the offline sm_90 compile are CI's
test_group ss2d-op 30 tests/kernels/test_ss2d.py -m gpu -k "not random_shapes"
test_group fused 30 tests/kernels/test_scmm.py tests/kernels/test_fccm.py -m gpu
test_group selective-scan 40 tests/kernels/test_selective_scan_cuda.py tests/kernels/test_selective_scan_triton.py
test_group latency 40 tests/benchmark/test_latency.py -k gpu
if [ "$GPU" = 1 ]; then
  "$PY" - "$DEST/5_tests.xml" "$TMP" <<'EOF'
import os, sys
import xml.etree.ElementTree as ET
from pathlib import Path
out, tmp = Path(sys.argv[1]), Path(sys.argv[2])
root = ET.Element("testsuites")
for f in sorted(tmp.glob("junit_*.xml")):
    tree = ET.parse(f).getroot()
    for suite in ([tree] if tree.tag == "testsuite" else list(tree)):
        suite.set("name", f.stem[len("junit_"):])
        root.append(suite)
tmp_out = out.with_suffix(".xml.tmp")
ET.ElementTree(root).write(tmp_out, encoding="utf-8", xml_declaration=True)
os.replace(tmp_out, out)
EOF
  tail -n 3 "$TMP/tests.log" | sed 's/^/   | /' >> "$SUMMARY"
fi

# ---- 6 fused kernels, 7 selective scan, 8 small preset -----------------------------------------------------
gpu_step fused 60 "$TMP/fused.log" "$PY" benchmarks/kernels_fused.py --quick --out "$DEST/6_fused.json"
gpu_step selective_scan 35 "$TMP/selscan.log" "$PY" benchmarks/kernels_selective_scan.py --quick \
  --out "$DEST/7_selective_scan.json"
if [ "$GPU" = 1 ]; then
  latency_group small small 60 eager fp16-cudagraph
  merge_latency "$DEST/8_small.json" small
else
  say "== small: SKIPPED (no GPU visible)"
fi

say "== overall: $([ $status -eq 0 ] && echo OK || echo FAILED) in $((SECONDS - START)) s; files in $DEST"
exit $status
