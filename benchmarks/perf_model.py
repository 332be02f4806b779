"""Offline performance model of the GPU kernels at the DHKD shapes (no GPU needed).

    python benchmarks/perf_model.py [--out FILE.md] [--json FILE.json] [--no-triton]

For every kernel (SS2D forward/backward on CUDA and Triton, SCMM, FCCM, and the selective-scan CUDA kernels
when their source is present) it reports the launch plan (CTAs, threads), what ptxas says for sm_90
(registers, spills, static shared memory: ``nvcc -Xptxas -v``, or ptxas on the PTX Triton emits for sm_90),
the occupancy that follows, the work (exps, FP32/issue slots, DRAM and L2 bytes) and a predicted time on an
H100 and an H200 from their peak rates. The model is a roofline plus fixed latencies:

    predicted = Σ over launches of max(MUFU, issue, DRAM, L2 time, dependent-chain latency)
                + exposed serial latency (look-back rounds) + launch/gap latency
    pessimistic = the same with the two largest resource times added (no overlap between them)

Each resource time is work / (peak rate per SM × SMs in use × wave efficiency), with a penalty when fewer
than ``MIN_WARPS`` warps per SM are resident (too few to hide latency). Peak rates (PEAKS below): SM count
and boost clock of GH100 (H100 SXM5 and H200 share the chip: 132 SMs, 1.98 GHz); HBM bandwidth from the
datasheets (3.35 TB/s H100 SXM5, 4.8 TB/s H200); per-SM throughputs from the CUDA programming guide's
arithmetic-instruction table for compute capability 9.0 (16 exp2/log2/rcp per clock on the MUFU, 128 FP32 lanes,
four warp schedulers issuing one instruction each per clock). L2 bandwidth has no vendor figure: 5.5 TB/s
is assumed (a commonly measured H100 value). Latencies (LAUNCH_US, GAP_US, LOOKBACK_US, CHUNK_ITER_US)
are assumptions stated with the constants; a GPU run replaces all of this with measurements.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
NVCC_FLAGS = ["-cubin", "-O3", "-std=c++17", "--use_fast_math", f"-I{CSRC}",  # device code only: no host compile
              "-gencode", "arch=compute_90,code=sm_90", "-Xptxas", "-v"]


@dataclasses.dataclass(frozen=True)
class Gpu:
    """Peak rates of one GPU."""
    name: str
    sms: int = 132
    clock_ghz: float = 1.98
    hbm_tbs: float = 3.35
    l2_tbs: float = 5.5
    regs_per_sm: int = 65536
    smem_per_sm: int = 228 * 1024
    smem_per_block: int = 227 * 1024
    max_threads_per_sm: int = 2048
    max_ctas_per_sm: int = 32
    mufu_per_clk: int = 16  # exp2/log2/rcp per clock per SM
    lanes_per_clk: int = 128  # issued thread-instructions per clock per SM (4 schedulers x 32 lanes)


PEAKS = {"H100": Gpu("H100 SXM5 (80 GB HBM3)", hbm_tbs=3.35), "H200": Gpu("H200 (141 GB HBM3e)", hbm_tbs=4.8)}
MIN_WARPS = 8  # resident warps per SM below which throughput is scaled down (latency no longer hidden)
LAUNCH_US = 2.0  # one kernel's device-side fixed cost (start, drain) inside a CUDA graph
GAP_US = 1.0  # each further dependent launch or memset on the same stream
LOOKBACK_US = 0.6  # a decoupled look-back: two dependent L2 round trips (status poll, then the states) of ~600 clocks
CHUNK_ITER_US = 0.8  # one dependent chunk iteration of a Triton program (loads, associative scan, carry)

# DHKD's four SS2D maps (HSTM blocks at 4x4, 8x8, 32x32, 64x64; d_inner 128, d_state 16), batch 1 and 16.
SS2D_MAPS = [(4, 4), (8, 8), (32, 32), (64, 64)]
SS2D_D, SS2D_N = 128, 16
SCMM_SHAPE = (384, 64, 64)  # channels, H, W of the SCMM modulation (Lnet)
FCCM_POOL_SHAPE = (384, 32, 32)  # input of bias + maxpool + ReLU (after the stride-2 convolution)
FCCM_GELU_SHAPE = (768, 16, 16)  # input of bias + GELU (the mixer's hidden layer)
BYTES = {"fp32": 4, "bf16": 2}
FWD_DYNAMIC_SMEM = (8976 + 64 + 2) * 4  # kFwdSmemBytes of the SS2D forward (csrc/ss2d/ss2d_cuda.cu)
FORWARD_KERNELS = ("ss2d_fwd_kernel", "two_scale_fwd_kernel", "gate_fwd_kernel", "pool_relu_fwd_kernel",
                   "bias_gelu_fwd_kernel", "selective_scan_fwd_kernel", "_segment_summary_kernel",
                   "_segment_carry_kernel", "_ss2d_fwd_kernel", "convert_kernel")


# ------------------------------------------------------------------------------------------------------------
# ptxas
# ------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Ptxas:
    """What ptxas reports for one kernel (the worst over its dtype instantiations)."""
    registers: int = 0
    spill_bytes: int = 0
    smem: int = 0
    instances: int = 0


def _demangle(names: list[str]) -> list[str]:
    tool = shutil.which("cu++filt") or shutil.which("c++filt")
    if not tool:
        return names
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return out if len(out) == len(names) else names


def parse_ptxas(log: str) -> dict[str, Ptxas]:
    """Kernel name (without namespace and template arguments) -> worst registers/spills/smem in a ptxas log."""
    entries, cur = [], None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            cur = {"mangled": m.group(1), "regs": 0, "spill": 0, "smem": 0}
            entries.append(cur)
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur["spill"] = int(m.group(1)) + int(m.group(2))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["regs"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            cur["smem"] = int(s.group(1)) if s else 0
    result: dict[str, Ptxas] = {}
    for entry, name in zip(entries, _demangle([e["mangled"] for e in entries])):
        m = re.search(r"(\w+)(?:<[^()]*>)?\(", name.replace("(anonymous namespace)", ""))
        base = m.group(1) if m else name
        p = result.setdefault(base, Ptxas())
        p.registers, p.smem = max(p.registers, entry["regs"]), max(p.smem, entry["smem"])
        p.spill_bytes, p.instances = max(p.spill_bytes, entry["spill"]), p.instances + 1
    return result


def nvcc_path() -> str | None:
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.path.exists(os.path.join(root, "bin", "nvcc")):
            return os.path.join(root, "bin", "nvcc")
    return shutil.which("nvcc")


@functools.lru_cache(maxsize=None)
def ptxas_cuda(source: str) -> dict[str, Ptxas]:
    """ptxas report of every kernel in csrc/<source> for sm_90 (compiled once per process)."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise RuntimeError("nvcc not found: the model needs ptxas figures")
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run([nvcc, str(CSRC / source), "-o", os.path.join(tmp, "k.cubin"), *NVCC_FLAGS],
                             capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"nvcc failed on {source}:\n{res.stderr[-3000:]}")
    return parse_ptxas(res.stderr + res.stdout)


def ptxas_triton() -> tuple[dict[str, Ptxas], dict[str, int], str]:
    """(ptxas figures, Triton's shared memory per kernel, how) for the SS2D Triton kernels at 64x64, D=128,
    N=16 (bf16 I/O), compiled for sm_90 without a GPU via ``triton.compile`` with a target. Under
    TRITON_INTERPRET=1 (the test suite without a GPU) the kernels are interpreter functions, so the compile
    runs in a child process without it."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        res = subprocess.run([sys.executable, __file__, "--triton-figures"], env=env, capture_output=True,
                             text=True, timeout=600)
        if res.returncode != 0:
            return {}, {}, f"not compiled (child process failed: {res.stderr[-300:]}); launch grid alone"
        data = json.loads(res.stdout.strip().splitlines()[-1])
        return {k: Ptxas(**v) for k, v in data["figures"].items()}, data["shared"], data["how"]
    try:
        from dhkd_kernels.ss2d import triton as tri
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except Exception as exc:  # noqa: BLE001 - reported, the model falls back to the launch grid alone
        return {}, {}, f"not compiled (Triton unavailable: {exc}); launch grid alone"
    plan = tri._plan(64 * 64, SS2D_D, SS2D_N)
    blocks = {n: plan[n] for n in ("BLOCK_T", "BLOCK_D", "BLOCK_N")}
    flags = dict(HAS_D=True, HAS_BIAS=True, SOFTPLUS=True, WITH_ADJOINT=False, REVERSE=False,
                 BLOCK_S=tri.MAX_SEGMENTS)
    io = {"u_ptr", "delta_ptr", "b_ptr", "c_ptr", "dy_ptr", "ddelta_ptr"}
    figures, shared = {}, {}
    kernels = {"_segment_summary_kernel": dict(WITH_ADJOINT=False), "_segment_summary_kernel[adjoint]":
               dict(WITH_ADJOINT=True), "_segment_carry_kernel": {}, "_ss2d_fwd_kernel": {}, "_ss2d_bwd_kernel": {}}
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    assemblers = [str(p) for p in (bundled / "ptxas-blackwell", bundled / "ptxas") if p.exists()]
    assemblers += [shutil.which("ptxas")] if shutil.which("ptxas") else []
    with tempfile.TemporaryDirectory() as tmp:
        for label, extra in kernels.items():
            fn = getattr(tri, label.split("[")[0])
            const = {n: v for n, v in {**flags, **extra, **blocks}.items() if n in fn.arg_names}
            sig = {n: "constexpr" if n in const else ("*bf16" if n in io else "*fp32") if n.endswith("_ptr")
                   else "i32" for n in fn.arg_names}
            try:
                k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const),
                                   target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4))
            except Exception as exc:  # noqa: BLE001
                return {}, {}, f"not compiled ({type(exc).__name__}: {exc}); launch grid alone"
            shared[label] = int(k.metadata.shared)
            ptx = Path(tmp) / "k.ptx"
            ptx.write_text(k.asm["ptx"])
            arch = re.search(r"\.target\s+(\w+)", k.asm["ptx"]).group(1)  # sm_90a
            for assembler in assemblers:  # the first that accepts Triton's PTX version
                res = subprocess.run([assembler, f"-arch={arch}", "-v", str(ptx), "-o", str(Path(tmp) / "k.cubin")],
                                     capture_output=True, text=True, timeout=300)
                rep = parse_ptxas(res.stderr + res.stdout)
                if res.returncode == 0 and rep:
                    figures[label] = next(iter(rep.values()))
                    break
    how = "triton.compile for sm_90 (num_warps=4) + ptxas -v on its PTX (sm_90a)" if figures else \
        "triton.compile for sm_90 (no ptxas for register figures)"
    return figures, shared, how


# ------------------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Launch:
    """One kernel launch: plan, resources and work."""
    kernel: str
    ctas: int
    threads: int
    regs: int
    smem: int  # bytes per CTA (static + dynamic)
    mufu: float  # exp2/log2/rcp operations
    issue: float  # thread-instructions issued
    dram: float  # bytes to/from HBM
    l2: float  # bytes through L2 (including DRAM traffic and L2-resident re-reads, atomics twice)
    serial_us: float = 0.0  # exposed serial latency added to the resource time (look-back rounds not covered)
    latency_us: float = 0.0  # a floor for the launch: chains of dependent steps (max'ed with the resource time)
    min_blocks: int = 1  # __launch_bounds__ minimum blocks (informational)


def occupancy(gpu: Gpu, threads: int, regs: int, smem: int) -> int:
    """Resident CTAs per SM."""
    warps = math.ceil(threads / 32)
    regs_warp = math.ceil(max(regs, 1) * 32 / 256) * 256
    by_regs = gpu.regs_per_sm // (warps * regs_warp)
    by_smem = gpu.smem_per_sm // (smem + 1024) if smem else gpu.max_ctas_per_sm
    by_threads = gpu.max_threads_per_sm // threads
    return max(0, min(by_regs, by_smem, by_threads, gpu.max_ctas_per_sm))


def launch_times(gpu: Gpu, ln: Launch) -> dict:
    per_sm = occupancy(gpu, ln.threads, ln.regs, ln.smem)
    if per_sm == 0:
        raise ValueError(f"{ln.kernel}: does not fit on an SM")
    slots = per_sm * gpu.sms
    waves = ln.ctas / slots
    sms_used = min(gpu.sms, ln.ctas)
    wave_eff = waves / math.ceil(waves) if waves >= 1 else 1.0
    warps = min(per_sm, math.ceil(ln.ctas / gpu.sms)) * math.ceil(ln.threads / 32)
    latency_eff = min(1.0, warps / MIN_WARPS)
    clk = gpu.clock_ghz * 1e3  # clocks per microsecond
    rate = sms_used * wave_eff * latency_eff
    t = {"mufu": ln.mufu / (gpu.mufu_per_clk * clk * rate), "issue": ln.issue / (gpu.lanes_per_clk * clk * rate),
         "dram": ln.dram / (gpu.hbm_tbs * 1e6), "l2": ln.l2 / (gpu.l2_tbs * 1e6)}
    return dict(per_sm=per_sm, waves=waves, occupancy=per_sm * ln.threads / gpu.max_threads_per_sm, times=t)


@dataclasses.dataclass
class Op:
    """An operation at one shape: its launches (kernels and memsets) in stream order."""
    name: str
    shape: str
    launches: list[Launch]
    memsets: int = 0
    note: str = ""

    def predict(self, gpu: Gpu) -> dict:
        rows = [launch_times(gpu, ln) for ln in self.launches]
        fixed = LAUNCH_US + GAP_US * (len(self.launches) + self.memsets - 1)
        best = worst = fixed
        for ln, r in zip(self.launches, rows):
            ts = sorted(r["times"].values(), reverse=True)
            best += max(ts[0], ln.latency_us) + ln.serial_us
            worst += max(ts[0] + ts[1], ln.latency_us) + ln.serial_us
        return dict(rows=rows, predicted_us=best, pessimistic_us=worst)


def ss2d_cuda_forward(batch: int, H: int, W: int, dtype: str, pt: dict[str, Ptxas], gpu: Gpu,
                      out_float: bool = True) -> Op:
    """The redesigned forward (csrc/ss2d/ss2d_cuda.cu): 2 memsets, the look-back kernel, and a conversion
    kernel for fp16/bf16 outputs. DHKD's SS2D module asks for fp32 outputs (out_float) whatever the input."""
    s, L, D, N = BYTES[dtype], H * W, SS2D_D, SS2D_N
    seg, tile, nmax = 64, 16, 16
    ntiles, nseg = math.ceil(D / tile), math.ceil(L / seg)
    ctas = batch * 4 * ntiles * nseg
    elems = ctas * seg * tile * nmax  # padded (step, channel, state) work
    k = pt["ss2d_fwd_kernel"]
    staged = ctas * seg * (2 * tile + 2 * N) * s  # u, delta, B, C tiles read by the CTAs
    # aggregates (P, H) and inclusive states written (3 floats per pair), one predecessor's read on average
    # (an inclusive state, or an aggregate pair: 1.5 floats)
    workspace = ctas * tile * nmax * 4 * (3 + 1.5)
    atomics = batch * 4 * L * D * 4  # one fp32 red per (direction, pixel, channel): 4 bytes SM -> L2 each
    unique = batch * L * (D + 4 * D + 8 * N) * s + batch * L * D * 4
    out_f32 = out_float or dtype == "fp32"
    fwd = Launch("ss2d_fwd_kernel", ctas, 256, k.registers, k.smem + FWD_DYNAMIC_SMEM,
                 mufu=elems + ctas * seg * tile * 3,  # one exp per element; softplus: exp, log, rcp per (t, d)
                 # per element: 7 FP32 (A*dt, du*B, h fma, P, y fma, Q, fix-up fma) + the exp + half a
                 # 16-byte LDS of B/C; per (t, d): staging, softplus and the atomic, ~12 instructions
                 issue=elems * 8.5 + ctas * seg * tile * 12,
                 dram=unique, l2=staged + workspace + atomics)
    per_sm = occupancy(gpu, 256, k.registers, k.smem)
    t_cta = (fwd.mufu / ctas) / (gpu.mufu_per_clk * gpu.clock_ghz * 1e3)  # one CTA alone on an SM
    waves = math.ceil(ctas / (per_sm * gpu.sms))
    fwd.serial_us = (waves * max(0.0, LOOKBACK_US - (per_sm - 1) * t_cta)) if nseg > 1 else 0.0
    fwd.min_blocks = 2
    launches = [fwd]
    if not out_f32:
        n = batch * L * D
        launches.append(Launch("convert_kernel", min(math.ceil(n / 256), 4096), 256, pt["convert_kernel"].registers,
                               0, mufu=0, issue=n * 6, dram=n * (4 + s), l2=n * (4 + s)))
    shape = f"b={batch} {H}x{W} D={D} N={N} {dtype}" + ("" if out_f32 else f" ({dtype} out)")
    return Op("SS2D forward, CUDA", shape, launches, memsets=2,
              note="segment-parallel, decoupled look-back")


def _ss2d_bwd_plan(batch: int, L: int, D: int, N: int, gpu: Gpu) -> tuple[int, int, bool]:
    """(DT, grid_x, global workspace) as make_plan in csrc/ss2d/ss2d_cuda.cu chooses them."""
    nc = math.ceil(L / 4)

    def floats(dt):
        return L * dt + nc * dt * N + nc * dt + nc * dt * N + 256 * (2 * N + 1) + 256 * 17

    dt = 32
    while dt > 1 and dt // 2 >= D:
        dt //= 2
    while dt > 1 and batch * math.ceil(D / dt) < gpu.sms:
        dt //= 2
    while dt > 1 and floats(dt) * 4 > gpu.smem_per_block:
        dt //= 2
    return dt, math.ceil(D / dt), floats(dt) * 4 > gpu.smem_per_block


def ss2d_cuda_backward(batch: int, H: int, W: int, dtype: str, pt: dict[str, Ptxas], gpu: Gpu) -> Op:
    s, L, D, N = BYTES[dtype], H * W, SS2D_D, SS2D_N
    dt, gx, ws = _ss2d_bwd_plan(batch, L, D, N, gpu)
    ctas = batch * gx
    elems = batch * 4 * L * gx * dt * N
    k = pt["ss2d_bwd_kernel"]
    smem = 0 if ws else (L * dt + 2 * math.ceil(L / 4) * dt * (N + 1) + 256 * (2 * N + 18)) * 4
    atomic_values = ctas * 4 * L * 2 * N  # dB/dC: one atomic per (pixel, direction, state) per channel group
    atomic_sectors = atomic_values / min(8, dt)  # consecutive lanes of a group write consecutive floats
    unique = batch * L * (D + 4 * D) * s * 3 + batch * L * 8 * N * (s + 4) + batch * L * D * (4 + s)
    bwd = Launch("ss2d_bwd_kernel", ctas, 256, k.registers, smem,
                 mufu=elems * 4.75 + batch * 4 * L * gx * dt * 8, issue=elems * 30,
                 dram=unique, l2=unique * 2 + atomic_sectors * 32 * 2)
    return Op("SS2D backward, CUDA", f"b={batch} {H}x{W} D={D} N={N} {dtype}", [bwd], memsets=5,
              note=f"whole map per CTA, DT={dt} channels, {ctas} CTAs" + (", global scratch" if ws else ""))


def _triton_plan(L: int, D: int, N: int) -> dict:
    try:
        from dhkd_kernels.ss2d.triton import _plan
        return _plan(L, D, N)
    except Exception:  # noqa: BLE001 - the same arithmetic without Triton installed
        bn = 1 << (N - 1).bit_length()
        bt = min(16, 1 << (L - 1).bit_length())
        while bt > 1 and bt * bn > 2048:
            bt //= 2
        bd = max(1, min(1 << (D - 1).bit_length(), 2048 // (bt * bn)))
        nch = math.ceil(L / bt)
        sc = math.ceil(nch / 16)
        return dict(BLOCK_T=bt, BLOCK_D=bd, BLOCK_N=bn, n_chunks=nch, seg_chunks=sc, n_seg=math.ceil(nch / sc),
                    n_dtiles=math.ceil(D / bd))


def _triton_pass(name: str, batch: int, L: int, p: dict, s: int, pt: dict, exps_per_elem: float,
                 extra_bytes: float, gpu: Gpu) -> Launch:
    """A chunk-walking SS2D Triton kernel: grid (batch·4, channel tiles, segments), 4 warps."""
    progs = batch * 4 * p["n_dtiles"] * p["n_seg"]
    steps = p["n_seg"] * p["seg_chunks"] * p["BLOCK_T"]
    elems = batch * 4 * p["n_dtiles"] * p["BLOCK_D"] * p["BLOCK_N"] * steps
    td = batch * 4 * p["n_dtiles"] * p["BLOCK_D"] * steps
    f = pt.get(name, Ptxas(registers=128))
    loads = td * 2 * s + batch * 4 * p["n_dtiles"] * steps * p["BLOCK_N"] * 2 * s
    # ~33 instructions per element and pass: the PTX of _ss2d_fwd_kernel's chunk loop has about 530 for the
    # 16 elements a thread holds (associative-scan shuffles, barriers, row extraction by masked sums)
    ln = Launch(name, progs, 128, f.registers, f.smem or 0, mufu=elems * exps_per_elem + td * 3,
                issue=elems * 33 * exps_per_elem, dram=batch * L * (5 * SS2D_D + 8 * SS2D_N) * s + extra_bytes,
                l2=loads + extra_bytes)
    per_sm = occupancy(gpu, 128, ln.regs, ln.smem)
    iters_per_slot = progs * p["seg_chunks"] / (per_sm * gpu.sms)  # dependent iterations per resident program
    ln.latency_us = max(p["seg_chunks"], iters_per_slot) * CHUNK_ITER_US
    return ln


def ss2d_triton_forward(batch: int, H: int, W: int, dtype: str, pt: dict, gpu: Gpu) -> Op:
    s, L = BYTES[dtype], H * W
    p = _triton_plan(L, SS2D_D, SS2D_N)
    summ = _triton_pass("_segment_summary_kernel", batch, L, p, s, pt, 1.0, 0, gpu)
    carry_f = pt.get("_segment_carry_kernel", Ptxas(registers=64))
    nsum = batch * 4 * p["n_seg"] * SS2D_D * SS2D_N * 4
    carry = Launch("_segment_carry_kernel", batch * 4 * p["n_dtiles"], 128, carry_f.registers, carry_f.smem,
                   mufu=nsum / 4, issue=nsum * 10 / 4, dram=0, l2=nsum * 2)
    ys = batch * 4 * L * SS2D_D * 4
    out = _triton_pass("_ss2d_fwd_kernel", batch, L, p, s, pt, 1.0, ys, gpu)
    n = batch * L * SS2D_D
    red = Launch("torch sum over directions", max(1, n // 1024), 256, 32, 0, mufu=0, issue=n * 10,
                 dram=ys + n * s, l2=ys + n * s)
    return Op("SS2D forward, Triton", f"b={batch} {H}x{W} D={SS2D_D} N={SS2D_N} {dtype}", [summ, carry, out, red],
              note=f"BLOCK_T={p['BLOCK_T']} BLOCK_D={p['BLOCK_D']}, {p['n_seg']} segments of "
                   f"{p['seg_chunks']} chunks")


def ss2d_triton_backward(batch: int, H: int, W: int, dtype: str, pt: dict, gpu: Gpu) -> Op:
    s, L = BYTES[dtype], H * W
    p = _triton_plan(L, SS2D_D, SS2D_N)
    summ = _triton_pass("_segment_summary_kernel[adjoint]", batch, L, p, s, pt, 2.0, 0, gpu)
    carry_f = pt.get("_segment_carry_kernel", Ptxas(registers=64))
    nsum = batch * 4 * p["n_seg"] * SS2D_D * SS2D_N * 4
    carries = [Launch("_segment_carry_kernel", batch * 4 * p["n_dtiles"], 128, carry_f.registers, carry_f.smem,
                      mufu=nsum / 4, issue=nsum * 10 / 4, dram=0, l2=nsum * 2) for _ in range(2)]
    grads = batch * L * SS2D_D * 4 * (4 + s) + p["n_dtiles"] * batch * L * 4 * SS2D_N * 8 \
        + batch * 4 * p["n_chunks"] * SS2D_D * SS2D_N * 8
    grad = _triton_pass("_ss2d_bwd_kernel", batch, L, p, s, pt, 3.0, grads, gpu)
    return Op("SS2D backward, Triton", f"b={batch} {H}x{W} D={SS2D_D} N={SS2D_N} {dtype}", [summ, *carries, grad],
              memsets=0, note="plus torch sums of the per-direction and per-tile partials (not modelled)")


def _elementwise(name: str, n: int, bytes_moved: float, pt: dict[str, Ptxas], mufu_per: float = 0.0,
                 grid: int | None = None) -> Launch:
    f = pt.get(name, Ptxas(registers=32))
    return Launch(name, grid or math.ceil(n / 256), 256, f.registers, f.smem, mufu=n * mufu_per, issue=n * 40,
                  dram=bytes_moved, l2=bytes_moved)


def scmm_ops(batch: int, dtype: str, pt: dict[str, Ptxas]) -> list[Op]:
    C, H, W = SCMM_SHAPE
    s, n = BYTES[dtype], batch * C * H * W
    shape = f"b={batch} {C}x{H}x{W} {dtype}"
    grid = math.ceil(H * W / 256) * batch * C
    return [
        Op("SCMM two-scale forward, CUDA", shape, [_elementwise("two_scale_fwd_kernel", n, 2 * n * s, pt, grid=grid)]),
        Op("SCMM gate forward, CUDA", shape, [_elementwise("gate_fwd_kernel", n, 3 * n * s, pt, mufu_per=1)]),
        Op("SCMM two-scale backward, CUDA", shape,
           [_elementwise("upsample_grad_kernel", n // 8, n * s / 2 + n, pt, grid=grid // 8),
            _elementwise("pooled_grad_kernel", n // 8, n * s / 2 + n, pt, grid=grid // 8),
            _elementwise("two_scale_dx_kernel", n, 3 * n * s, pt, grid=grid)]),
        Op("SCMM gate backward, CUDA", shape, [_elementwise("gate_bwd_kernel", n, 5 * n * s, pt, mufu_per=1)]),
    ]


def fccm_ops(batch: int, dtype: str, pt: dict[str, Ptxas]) -> list[Op]:
    s = BYTES[dtype]
    C, H, W = FCCM_POOL_SHAPE
    n = batch * C * H * W
    Cg, Hg, Wg = FCCM_GELU_SHAPE
    m = batch * Cg * Hg * Wg
    return [
        Op("FCCM bias+maxpool+ReLU forward, CUDA", f"b={batch} {C}x{H}x{W} {dtype}",
           [_elementwise("pool_relu_fwd_kernel", n // 4, 1.25 * n * s, pt)]),
        Op("FCCM bias+maxpool+ReLU backward, CUDA", f"b={batch} {C}x{H}x{W} {dtype}",
           [_elementwise("pool_relu_bwd_kernel", n, 2.25 * n * s, pt)]),
        Op("FCCM bias+GELU forward, CUDA", f"b={batch} {Cg}x{Hg}x{Wg} {dtype}",
           [_elementwise("bias_gelu_fwd_kernel", m, 2 * m * s, pt, mufu_per=1)]),
        Op("FCCM bias+GELU backward, CUDA", f"b={batch} {Cg}x{Hg}x{Wg} {dtype}",
           [_elementwise("bias_gelu_bwd_kernel", m, 3 * m * s, pt, mufu_per=2)]),
    ]


# ------------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------------

def build(with_triton: bool = True) -> dict:
    """Every figure of the model as one JSON-able dict (ptxas runs in parallel, once per source file)."""
    sources = ["ss2d/ss2d_cuda.cu", "scmm/scmm_cuda.cu", "fccm/fccm_cuda.cu"]
    if (CSRC / "selective_scan" / "selective_scan_cuda.cu").exists():
        sources.append("selective_scan/selective_scan_cuda.cu")
    with concurrent.futures.ThreadPoolExecutor(len(sources)) as pool:
        reports = dict(zip(sources, pool.map(ptxas_cuda, sources)))
    tri_pt, tri_shared, tri_how = ptxas_triton() if with_triton else ({}, {}, "not compiled (--no-triton)")
    ss2d_pt = reports["ss2d/ss2d_cuda.cu"]
    fused_pt = {**reports["scmm/scmm_cuda.cu"], **reports["fccm/fccm_cuda.cu"]}
    kernels = []
    for src, rep in reports.items():
        for name, p in sorted(rep.items()):
            kernels.append(dict(source=f"csrc/{src}", kernel=name, registers=p.registers, spill_bytes=p.spill_bytes,
                                smem=p.smem, forward=name in FORWARD_KERNELS))
    for name, p in sorted(tri_pt.items()):
        kernels.append(dict(source="dhkd_kernels/ss2d/triton.py", kernel=name, registers=p.registers,
                            spill_bytes=p.spill_bytes, smem=p.smem + tri_shared.get(name, 0),
                            forward=name.split("[")[0] in FORWARD_KERNELS and "adjoint" not in name))
    tri_fig = {k: Ptxas(registers=v.registers, spill_bytes=v.spill_bytes, smem=v.smem + tri_shared.get(k, 0))
               for k, v in tri_pt.items()}
    ops = []
    for gpu_key, gpu in PEAKS.items():
        cases = []
        for batch in (1, 16):
            for H, W in SS2D_MAPS:
                for dtype in ("fp32", "bf16"):
                    cases.append(ss2d_cuda_forward(batch, H, W, dtype, ss2d_pt, gpu))
                    if dtype != "fp32":
                        cases.append(ss2d_cuda_forward(batch, H, W, dtype, ss2d_pt, gpu, out_float=False))
                    cases.append(ss2d_cuda_backward(batch, H, W, dtype, ss2d_pt, gpu))
                    cases.append(ss2d_triton_forward(batch, H, W, dtype, tri_fig, gpu))
                    cases.append(ss2d_triton_backward(batch, H, W, dtype, tri_fig, gpu))
            for dtype in ("fp32", "bf16"):
                cases += scmm_ops(batch, dtype, fused_pt) + fccm_ops(batch, dtype, fused_pt)
        for op in cases:
            pr = op.predict(gpu)
            ops.append(dict(gpu=gpu_key, op=op.name, shape=op.shape, note=op.note,
                            predicted_us=round(pr["predicted_us"], 2), pessimistic_us=round(pr["pessimistic_us"], 2),
                            launches=[dict(kernel=ln.kernel, ctas=ln.ctas, threads=ln.threads, registers=ln.regs,
                                           smem=ln.smem, ctas_per_sm=r["per_sm"], occupancy=round(r["occupancy"], 3),
                                           waves=round(r["waves"], 2), mufu_ops=ln.mufu, dram_bytes=ln.dram,
                                           l2_bytes=ln.l2, serial_us=round(ln.serial_us, 2),
                                           latency_us=round(ln.latency_us, 2),
                                           times_us={k: round(v, 2) for k, v in r["times"].items()})
                                      for ln, r in zip(op.launches, pr["rows"])]))
    peaks = {k: dataclasses.asdict(v) for k, v in PEAKS.items()}
    return dict(peaks=peaks, assumptions=dict(MIN_WARPS=MIN_WARPS, LAUNCH_US=LAUNCH_US, GAP_US=GAP_US,
                                              LOOKBACK_US=LOOKBACK_US, CHUNK_ITER_US=CHUNK_ITER_US),
                nvcc_flags=NVCC_FLAGS, triton=tri_how, kernels=kernels, ops=ops)


def forward_spills(model: dict) -> list[str]:
    """Forward kernels that spill registers (the CI test requires none)."""
    return [f"{k['source']}:{k['kernel']} ({k['spill_bytes']} bytes)" for k in model["kernels"]
            if k["forward"] and k["spill_bytes"] > 0]


def find(model: dict, gpu: str, op: str, shape: str) -> dict:
    for row in model["ops"]:
        if row["gpu"] == gpu and row["op"] == op and row["shape"] == shape:
            return row
    raise KeyError((gpu, op, shape))


def markdown(model: dict, command: str) -> str:
    out = ["# Offline performance model of the GPU kernels (2026-12-06)", "",
           f"Machine: no GPU (2-core CI-class VM); figures from ptxas for sm_90 and the launch plans. Command: "
           f"`{command}`.", "",
           "Method (see the docstring of benchmarks/perf_model.py): per launch max(MUFU, issue, DRAM, L2 time, "
           "dependent-chain floor) + exposed look-back latency, summed, + launch/gap latency; pessimistic adds the "
           "two largest resource times. These are predictions, not measurements.", "", "## Peak rates used", "",
           "| | SMs | clock GHz | HBM TB/s | L2 TB/s (assumed) | MUFU/clk/SM | lanes issued/clk/SM |", "|---|---|---|---|---|---|---|"]
    for k, g in model["peaks"].items():
        out.append(f"| {g['name']} | {g['sms']} | {g['clock_ghz']} | {g['hbm_tbs']} | {g['l2_tbs']} | "
                   f"{g['mufu_per_clk']} | {g['lanes_per_clk']} |")
    out += ["", "Latency assumptions: " + ", ".join(f"{k}={v}" for k, v in model["assumptions"].items()), "",
            f"Triton: {model['triton']}.", "", "## ptxas (sm_90)", "",
            "| source | kernel | registers | spill bytes | static smem | forward |", "|---|---|---|---|---|---|"]
    for k in model["kernels"]:
        out.append(f"| {k['source']} | {k['kernel']} | {k['registers']} | {k['spill_bytes']} | {k['smem']} | "
                   f"{'yes' if k['forward'] else ''} |")
    out += ["", "## Predicted times", "",
            "| GPU | op | shape | predicted µs | pessimistic µs | launches: kernel (CTAs x threads, regs, CTAs/SM, "
            "waves; MUFU/issue/DRAM/L2 µs; chain floor µs; exposed serial µs) | note |", "|---|---|---|---|---|---|---|"]
    for row in model["ops"]:
        parts = []
        for ln in row["launches"]:
            t = ln["times_us"]
            parts.append(f"{ln['kernel']} ({ln['ctas']}x{ln['threads']}, {ln['registers']} r, {ln['ctas_per_sm']}/SM, "
                         f"{ln['waves']} w; {t['mufu']}/{t['issue']}/{t['dram']}/{t['l2']}; {ln['latency_us']}; "
                         f"{ln['serial_us']})")
        out.append(f"| {row['gpu']} | {row['op']} | {row['shape']} | {row['predicted_us']} | {row['pessimistic_us']} "
                   f"| {'; '.join(parts)} | {row['note']} |")
    spills = forward_spills(model)
    out += ["", "## Checks", "", f"- Forward kernels with register spills: {', '.join(spills) if spills else 'none'}."]
    for gpu in PEAKS:
        for dtype in ("fp32", "bf16"):
            r = find(model, gpu, "SS2D forward, CUDA", f"b=1 64x64 D=128 N=16 {dtype}")
            out.append(f"- {gpu}: SS2D CUDA forward at 64x64, D=128, N=16, batch 1, {dtype} in, fp32 out (as "
                       f"DHKD calls it): predicted {r['predicted_us']} µs (pessimistic {r['pessimistic_us']} µs; "
                       "target ≤ 15 µs).")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown report here")
    parser.add_argument("--json", type=Path, default=None, help="write every figure as JSON here")
    parser.add_argument("--no-triton", action="store_true", help="skip compiling the Triton kernels")
    parser.add_argument("--triton-figures", action="store_true", help=argparse.SUPPRESS)  # child of ptxas_triton
    args = parser.parse_args(argv)
    if args.triton_figures:
        figures, shared, how = ptxas_triton()
        print(json.dumps(dict(figures={k: dataclasses.asdict(v) for k, v in figures.items()}, shared=shared,
                              how=how)))
        return 0
    model = build(with_triton=not args.no_triton)
    text = markdown(model, "python benchmarks/perf_model.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    for path, body in ((args.out, text), (args.json, json.dumps(model, indent=1))):
        if path:
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(body)
            os.replace(tmp, path)
    if not args.out:
        print(text)
    spills = forward_spills(model)
    if spills:
        print("forward kernels spill registers: " + ", ".join(spills), file=sys.stderr)
    return 1 if spills else 0


if __name__ == "__main__":
    sys.exit(main())
