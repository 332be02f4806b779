"""SS2D CUDA backend.

Two parts:
* CPU (always): a float64 PyTorch emulation of exactly the decompositions in csrc/ss2d/ss2d_cuda.cu, checked
  against the reference and its autograd gradients. Forward: segments of 64 steps, threads of 4 steps with
  the running decay products kept for the fix-up, the in-order fold of a segment's threads, and the decoupled
  look-back over earlier segments (through inclusive states or aggregates). Backward: chunks of 4 steps,
  chunk-local scans, the lane-segmented prefix combine over chunks, the reverse chunk-local g scans, reverse
  combine and per-chunk recomputation. This catches algebra mistakes without a GPU.
* CPU (when g++ with C++20 is there): the CUDA source itself, built for the host emulation of CUDA threads,
  barriers, shuffles and atomics in tests/kernels/cuda_host (CTAs run one after another, so the forward's
  look-back always finds inclusive states), against the reference: indexing, staging, shared-memory layout,
  synchronisation and the launch plans.
* GPU (skipped without one): the compiled kernels against the reference.
"""
from __future__ import annotations

import ctypes
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from dhkd_kernels import _ext, use_backend
from dhkd_kernels.ss2d import ops, reference
from kernel_checks import build_host_emulation, cuda_kernel_test

CHUNK = 4  # kChunk of the backward kernel in ss2d_cuda.cu
LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------------------------------------
# Emulation of the kernels' decomposition (float64, vectorised over batch, channels and states)
# ----------------------------------------------------------------------------------------------------------

def _directions(u, delta, B, C, delta_bias, softplus):
    """Per direction k: scan-order pixel indices, z = delta + bias, dt, u, B, C as (b, L, ·) sequences."""
    bsz, H, W, Dch = u.shape
    L = H * W
    for k in range(4):
        px = reference.to_sequence(torch.arange(L).reshape(1, H, W), k)[0]
        z = delta[:, :, :, k].reshape(bsz, L, Dch)[:, px]
        if delta_bias is not None:
            z = z + delta_bias[k]
        dt = torch.where(z <= 20, torch.log1p(torch.exp(z)), z) if softplus else z
        yield (k, px, z, dt, u.reshape(bsz, L, Dch)[:, px], B[:, :, :, k].reshape(bsz, L, -1)[:, px],
               C[:, :, :, k].reshape(bsz, L, -1)[:, px])


def _chunks(L):
    return [(c * CHUNK, min(c * CHUNK + CHUNK, L)) for c in range(math.ceil(L / CHUNK))]


def _combine(val, S, a2, G, reverse):
    """combine_chunks: val (b, NC, D, N) -> state entering each chunk, with G lanes per (channel, state)."""
    NC = val.shape[1]
    seg = math.ceil(NC / G)
    spans = [(min(lane * seg, NC), min(min(lane * seg, NC) + seg, NC)) for lane in range(G)]
    order = lambda e: NC - 1 - e if reverse else e  # noqa: E731
    ga, gb = [], []
    for e0, e1 in spans:  # each lane folds its segment
        a, b = torch.ones_like(val[:, 0]), torch.zeros_like(val[:, 0])
        for e in range(e0, e1):
            da = torch.exp2(a2 * S[:, order(e), :, None])
            a, b = a * da, da * b + val[:, order(e)]
        ga.append(a)
        gb.append(b)
    off = 1
    while off < G:  # shuffle-up inclusive scan over lanes
        ga, gb = ([ga[i] if i < off else ga[i] * ga[i - off] for i in range(G)],
                  [gb[i] if i < off else ga[i] * gb[i - off] + gb[i] for i in range(G)])
        off *= 2
    out = torch.empty_like(val)
    for lane, (e0, e1) in enumerate(spans):
        h = torch.zeros_like(val[:, 0]) if lane == 0 else gb[lane - 1]
        for e in range(e0, e1):
            out[:, order(e)] = h
            h = torch.exp2(a2 * S[:, order(e), :, None]) * h + val[:, order(e)]
    return out


def _local_scans(dt, us, Bs, a2):
    L = dt.shape[1]
    cs, cS = [], []
    for t0, t1 in _chunks(L):
        h = torch.zeros(dt.shape[0], dt.shape[2], a2.shape[1], dtype=dt.dtype)
        for t in range(t0, t1):
            h = torch.exp2(a2 * dt[:, t, :, None]) * h + (dt[:, t] * us[:, t])[..., None] * Bs[:, t, None, :]
        cs.append(h)
        cS.append(dt[:, t0:t1].sum(1))
    return torch.stack(cs, 1), torch.stack(cS, 1)


SEG_ROWS, SEG_ITEMS = 16, 4  # kRows, kItems of the forward kernel
SEG = SEG_ROWS * SEG_ITEMS  # kSeg: steps per forward CTA


def _segment_local(dt, us, Bs, Cs, a2, Dk, t0, L):
    """Steps 2-3 of ss2d_fwd_kernel for the segment starting at t0: per thread row r, the zero-state scan of
    its SEG_ITEMS steps (ylocal, Q = C * running product of a), then the in-order fold of the rows into
    exclusive prefixes (Pex, Hex) and the segment aggregate (P, H). Padding steps (t >= L) have dt = u = B = C = 0.
    """
    bsz, _, Dch = dt.shape
    N = a2.shape[1]
    rows = []
    for r in range(SEG_ROWS):
        h = torch.zeros(bsz, Dch, N, dtype=dt.dtype)
        P = torch.ones_like(h)
        Q, ylocal = [], []
        for i in range(SEG_ITEMS):
            t = t0 + r * SEG_ITEMS + i
            if t < L:
                dtt, uu, Bt, Ct = dt[:, t], us[:, t], Bs[:, t], Cs[:, t]
            else:
                dtt, uu = torch.zeros(bsz, Dch, dtype=dt.dtype), torch.zeros(bsz, Dch, dtype=dt.dtype)
                Bt = Ct = torch.zeros(bsz, N, dtype=dt.dtype)
            a = torch.exp2(a2 * dtt[..., None])  # the only exp of (t, d, n)
            h = a * h + (dtt * uu)[..., None] * Bt[:, None, :]
            P = P * a
            ylocal.append((Ct[:, None, :] * h).sum(-1) + Dk * uu)
            Q.append(Ct[:, None, :] * P)
        rows.append((P, h, Q, ylocal))
    segP, segH = torch.ones_like(rows[0][0]), torch.zeros_like(rows[0][1])
    prefixes = []
    for P, h, _, _ in rows:
        prefixes.append((segP, segH))
        segH = P * segH + h
        segP = segP * P
    return rows, prefixes, segP, segH


def emulate_forward(u, delta, A, B, C, D, delta_bias, softplus, depth=1):
    """ss2d_fwd_kernel's algebra: segments of SEG steps, thread rows of SEG_ITEMS steps with Q kept for the
    fix-up, the fold of rows, and the decoupled look-back, which finds an inclusive state ``depth`` segments
    back (or segment 0) and composes the aggregates in between (depth=1: the predecessor's inclusive state)."""
    bsz, H, W, Dch = u.shape
    L = H * W
    acc = torch.zeros(bsz, L, Dch, dtype=u.dtype)
    for k, px, _, dt, us, Bs, Cs in _directions(u, delta, B, C, delta_bias, softplus):
        a2 = A[k] * LOG2E
        Dk = D[k] if D is not None else torch.zeros(Dch, dtype=u.dtype)
        aggregates, inclusive = [], []
        for s in range(math.ceil(L / SEG)):
            rows, prefixes, segP, segH = _segment_local(dt, us, Bs, Cs, a2, Dk, s * SEG, L)
            aggregates.append((segP, segH))
            hin = torch.zeros_like(segH)
            if s > 0:
                js = max(0, s - depth)
                accP, accH = torch.ones_like(segP), torch.zeros_like(segH)
                for j in range(s - 1, js, -1):  # newest first, as the look-back walks
                    accH = accP * aggregates[j][1] + accH
                    accP = accP * aggregates[j][0]
                hin = accP * inclusive[js] + accH
            inclusive.append(segP * hin + segH)
            for r, ((_, _, Q, ylocal), (Pex, Hex)) in enumerate(zip(rows, prefixes)):
                h0 = Hex + Pex * hin
                for i in range(SEG_ITEMS):
                    t = s * SEG + r * SEG_ITEMS + i
                    if t < L:
                        acc[:, px[t]] += ylocal[i] + (Q[i] * h0).sum(-1)
    return acc.reshape(u.shape)


def emulate_backward(dy, u, delta, A, B, C, D, delta_bias, softplus, G):
    bsz, H, W, Dch = u.shape
    L, N = H * W, A.shape[2]
    du = torch.zeros(bsz, L, Dch, dtype=u.dtype)
    ddelta = torch.zeros(bsz, L, 4, Dch, dtype=u.dtype)
    dB = torch.zeros(bsz, L, 4, N, dtype=u.dtype)
    dC = torch.zeros_like(dB)
    dA = torch.zeros_like(A)
    dD = torch.zeros(4, Dch, dtype=u.dtype)
    dbias = torch.zeros(4, Dch, dtype=u.dtype)
    dyf = dy.reshape(bsz, L, Dch)
    for k, px, z, dt, us, Bs, Cs in _directions(u, delta, B, C, delta_bias, softplus):
        a2 = A[k] * LOG2E
        Dk = D[k] if D is not None else torch.zeros(Dch, dtype=u.dtype)
        dys = dyf[:, px]
        cs, cS = _local_scans(dt, us, Bs, a2)
        cg = []
        for t0, t1 in _chunks(L):  # reverse chunk-local g scans from a zero carry
            gc = torch.zeros(bsz, Dch, N, dtype=u.dtype)
            for t in range(t1 - 1, t0 - 1, -1):
                gc = torch.exp2(a2 * dt[:, t, :, None]) * (Cs[:, t, None, :] * dys[:, t, :, None] + gc)
            cg.append(gc)
        cs = _combine(cs, cS, a2, G, reverse=False)
        cg = _combine(torch.stack(cg, 1), cS, a2, G, reverse=True)
        for c, (t0, t1) in enumerate(_chunks(L)):
            hs = [cs[:, c]]
            for t in range(t0, t1):
                hs.append(torch.exp2(a2 * dt[:, t, :, None]) * hs[-1]
                          + (dt[:, t] * us[:, t])[..., None] * Bs[:, t, None, :])
            gc = cg[:, c]
            for i in range(t1 - t0 - 1, -1, -1):
                t = t0 + i
                dtt, uu, dyv = dt[:, t, :, None], us[:, t, :, None], dys[:, t, :, None]
                a = torch.exp2(a2 * dtt)
                g = Cs[:, t, None, :] * dyv + gc
                ah = a * hs[i]
                dB[:, px[t], k] += (g * dtt * uu).sum(1)
                dC[:, px[t], k] += (dyv * hs[i + 1]).sum(1)
                ddt = (g * (a2 / LOG2E * ah + uu * Bs[:, t, None, :])).sum(-1)
                dA[k] += (g * dtt * ah).sum(0)
                gc = a * g
                zt = z[:, t]
                dz = ddt * torch.sigmoid(zt) if softplus else ddt
                if softplus:
                    dz = torch.where(zt <= 20, dz, ddt)
                ddelta[:, px[t], k] = dz
                du[:, px[t]] += dt[:, t] * (g * Bs[:, t, None, :]).sum(-1) + Dk * dys[:, t]
                dD[k] += (dys[:, t] * us[:, t]).sum(0)
                dbias[k] += dz.sum(0)
    return (du.reshape(u.shape), ddelta.reshape(delta.shape), dA, dB.reshape(B.shape), dC.reshape(C.shape), dD,
            dbias)


# ----------------------------------------------------------------------------------------------------------
# Inputs and the reference
# ----------------------------------------------------------------------------------------------------------

def make_inputs(bsz, H, W, Dch, N, dtype=torch.float64, device="cpu", with_d=True, with_bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    u = r(bsz, H, W, Dch)
    delta = r(bsz, H, W, 4, Dch) * 0.5 - 1.0
    A = -torch.arange(1, N + 1, dtype=torch.float64).repeat(4, Dch, 1) * (0.5 + torch.rand(4, Dch, N, generator=g,
                                                                                         dtype=torch.float64))
    B, C = r(bsz, H, W, 4, N), r(bsz, H, W, 4, N)
    D = r(4, Dch) if with_d else None
    bias = r(4, Dch) * 0.5 if with_bias else None
    io = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    f32 = torch.float64 if dtype == torch.float64 else torch.float32
    param = lambda t: None if t is None else t.to(device=device, dtype=f32)  # noqa: E731
    return io(u), io(delta), param(A), io(B), io(C), param(D), param(bias)


def reference_grads(dy, args, softplus):
    leaves = [None if t is None else t.detach().double().requires_grad_() for t in args]
    y = reference.ss2d_scan_reference(*leaves, delta_softplus=softplus, out_float=True)
    present = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(y, present, dy.double())
    it = iter(grads)
    return [None if t is None else next(it) for t in leaves]


def rel_err(x, ref):
    x, ref = x.double().cpu(), ref.double().cpu()
    return ((x - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


EMU_CASES = [  # backward: (bsz, H, W, D, N, G, with_d, with_bias, softplus)
    (1, 1, 1, 2, 3, 1, True, True, True),
    (2, 3, 5, 3, 4, 4, True, False, True),
    (1, 6, 4, 2, 2, 32, False, True, False),
    (1, 5, 7, 2, 3, 2, True, True, True),  # L = 35: 9 chunks, a 3-step tail, 2 lanes of 5 and 4 chunks
    (1, 4, 9, 1, 1, 16, True, True, True),  # more lanes than chunks: empty lane segments
]


FWD_EMU_CASES = [  # (bsz, H, W, D, N, depth, with_d, with_bias, softplus)
    (1, 1, 1, 2, 3, 1, True, True, True),  # one step: 63 padding steps in the only segment
    (2, 3, 5, 3, 4, 1, True, False, False),  # no softplus (dt < 0 grows the state: kept short)
    (1, 9, 17, 2, 3, 1, True, True, True),  # L = 153: three segments, the last partial
    (1, 13, 20, 2, 2, 2, False, True, True),  # five segments; look-back over one aggregate
    (1, 20, 13, 1, 16, 99, True, True, True),  # look-back over every aggregate down to segment 0
]


@pytest.mark.parametrize("bsz,H,W,Dch,N,depth,with_d,with_bias,softplus", FWD_EMU_CASES)
def test_emulated_forward_matches_reference(bsz, H, W, Dch, N, depth, with_d, with_bias, softplus):
    args = make_inputs(bsz, H, W, Dch, N, with_d=with_d, with_bias=with_bias)
    want = reference.ss2d_scan_reference(*args, delta_softplus=softplus, out_float=True)
    got = emulate_forward(*args, softplus=softplus, depth=depth)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("bsz,H,W,Dch,N,G,with_d,with_bias,softplus", EMU_CASES)
def test_emulated_backward_matches_autograd(bsz, H, W, Dch, N, G, with_d, with_bias, softplus):
    args = make_inputs(bsz, H, W, Dch, N, with_d=with_d, with_bias=with_bias)
    dy = torch.randn(bsz, H, W, Dch, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want = reference_grads(dy, args, softplus)
    got = emulate_backward(dy, *args, softplus=softplus, G=G)
    names = ["du", "ddelta", "dA", "dB", "dC", "dD", "ddelta_bias"]
    for name, g, w in zip(names, got, want):
        if w is not None:
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9, msg=lambda m, n=name: f"{n}: {m}")


def test_emulated_softplus_threshold_gradient():
    """Above 20 the time step is delta + bias itself, so its gradient passes through unchanged."""
    args = list(make_inputs(1, 2, 3, 2, 2))
    args[1] = args[1] + 25.0 * (torch.arange(2, dtype=torch.float64) == 0)  # channel 0 above the threshold
    args[2] = args[2] * 0.01
    dy = torch.randn(1, 2, 3, 2, dtype=torch.float64)
    want = reference_grads(dy, args, True)
    got = emulate_backward(dy, *args, softplus=True, G=2)
    torch.testing.assert_close(got[1], want[1], rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------------------------------------
# The CUDA source on the CPU (host emulation of tests/kernels/cuda_host)
# ----------------------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
HOST_DIR = Path(__file__).resolve().parent / "cuda_host"
CUDA_SOURCE = ROOT / "csrc" / "ss2d" / "ss2d_cuda.cu"
# What the SS2D source needs beyond the emulated runtime: vector types, integer atomics, fences, L2 loads,
# memset, and launches of kernels with several arguments.
HOST_SHIM = r"""
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <algorithm>
#include <atomic>
#include <cstring>
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
template <typename T> inline T __ldcg(const T* p) { return *p; }
inline float __logf(float v) { return std::log(v); }
inline cudaError_t cudaMemsetAsync(void* p, int v, std::size_t n, cudaStream_t) {
  std::memset(p, v, n);
  return cudaSuccess;
}
template <typename K, typename A0, typename A1, typename... R>
void emu_launch(K kernel, dim3 grid, unsigned threads, std::size_t smem, cudaStream_t s, const A0& a0, const A1& a1,
                const R&... rest) {
  emu_launch([&](const int&) { kernel(a0, a1, rest...); }, grid, threads, smem, s, 0);
}
"""
HOST_HARNESS = r"""
#include "kernel_host.cu"
namespace {
alignas(16) float smem[1 << 22];
void use_smem() { emu_smem = smem; emu_smem_floats = sizeof(smem) / sizeof(float); }
}  // namespace
extern "C" {
void emu_set_sms(int n) { emu_num_sms = n; }
long long emu_workspace_floats(int bwd, int b, int H, int W, int D, int N) {
  return ss2d_cuda_workspace_floats(bwd, b, H, W, D, N);
}
void emu_forward(const void* u, const void* delta, const float* A, const void* B, const void* C, const float* Dw,
                 const float* bias, void* y, float* ws, long long ws_floats, int b, int H, int W, int D, int N,
                 int dtype, int out_f32, int softplus) {
  use_smem();
  ss2d_cuda_forward(u, delta, A, B, C, Dw, bias, y, ws, ws_floats, b, H, W, D, N, dtype, out_f32, softplus, nullptr);
}
void emu_backward(const void* dy, int dy_f32, const void* u, const void* delta, const float* A, const void* B,
                  const void* C, const float* Dw, const float* bias, void* du, void* ddelta, float* dA, float* dB,
                  float* dC, float* dD, float* dbias, float* ws, long long ws_floats, int b, int H, int W, int D,
                  int N, int dtype, int softplus) {
  use_smem();
  ss2d_cuda_backward(dy, dy_f32, u, delta, A, B, C, Dw, bias, du, ddelta, dA, dB, dC, dD, dbias, ws, ws_floats, b,
                     H, W, D, N, dtype, softplus, nullptr);
}
}
"""


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory):
    """csrc/ss2d/ss2d_cuda.cu compiled for the host emulation (g++, C++20 <barrier>), loaded with ctypes."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None or not (HOST_DIR / "cuda_runtime.h").exists():
        pytest.skip("no C++ compiler or no host emulation headers")
    out = tmp_path_factory.mktemp("ss2d_host")
    source, n = re.subn(r"([\w:]+(?:<\w+>)?)<<<(.*?)>>>\((.*?)\);", r"emu_launch(\1, \2, \3);",
                        CUDA_SOURCE.read_text(), flags=re.S)
    assert n >= 3, "kernel launches to rewrite not found"
    (out / "kernel_host.cu").write_text(HOST_SHIM + source)
    (out / "harness.cpp").write_text(HOST_HARNESS)
    lib = build_host_emulation(cxx, out / "harness.cpp", out, "libss2d_host.so", timeout=600)
    lib.emu_workspace_floats.restype = ctypes.c_longlong
    return lib


def _ptr(t):
    return ctypes.c_void_p(0 if t is None else t.data_ptr())


def run_host_forward(lib, args, out_float, softplus=True):
    u, delta, A, B, C, D, bias = args
    bsz, H, W, Dch = u.shape
    N = A.shape[2]
    sizes = (bsz, H, W, Dch, N)
    ws_n = lib.emu_workspace_floats(0, *sizes)
    ws = torch.full((ws_n,), float("nan"))  # the launcher must reset what it relies on
    y = torch.empty(u.shape, dtype=torch.float32 if out_float else u.dtype)
    lib.emu_forward(*map(_ptr, (u, delta, A, B, C, D, bias, y, ws)), ctypes.c_longlong(ws_n),
                    *map(ctypes.c_int, (*sizes, _ext.dtype_code(u), out_float, softplus)))
    return y


def run_host_backward(lib, dy, args, softplus=True):
    u, delta, A, B, C, D, bias = args
    bsz, H, W, Dch = u.shape
    N = A.shape[2]
    sizes = (bsz, H, W, Dch, N)
    ws_n = lib.emu_workspace_floats(1, *sizes)
    ws = torch.empty(max(ws_n, 1))
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dA, dB, dC = torch.zeros(A.shape), torch.zeros(B.shape), torch.zeros(C.shape)
    dD, dbias = torch.zeros(4, Dch), torch.zeros(4, Dch)
    lib.emu_backward(_ptr(dy), ctypes.c_int(1), *map(_ptr, (u, delta, A, B, C, D, bias, du, ddelta, dA, dB, dC, dD,
                                                            dbias, ws if ws_n else None)),
                     ctypes.c_longlong(ws_n), *map(ctypes.c_int, (*sizes, _ext.dtype_code(u), softplus)))
    return du, ddelta, dA, dB, dC, dD, dbias


HOST_FWD_CASES = [  # (bsz, H, W, D, N, dtype, out_float, with_d, with_bias)
    (1, 9, 17, 20, 16, torch.float32, True, True, True),  # 3 segments (last partial), 2 tiles (second partial)
    (2, 3, 5, 16, 3, torch.float32, True, False, True),  # d_state 3: scalar B/C staging
    (1, 13, 11, 5, 8, torch.bfloat16, False, True, False),  # bf16 in and out: the conversion kernel
    (1, 1, 1, 4, 16, torch.float16, True, True, True),  # one step
]


@pytest.mark.parametrize("bsz,H,W,Dch,N,dtype,out_float,with_d,with_bias", HOST_FWD_CASES)
def test_host_emulated_forward_matches_reference(host_kernels, bsz, H, W, Dch, N, dtype, out_float, with_d,
                                                 with_bias):
    args = make_inputs(bsz, H, W, Dch, N, dtype=dtype, with_d=with_d, with_bias=with_bias)
    y = run_host_forward(host_kernels, args, out_float)
    assert y.dtype == (torch.float32 if out_float else dtype)
    want = reference.ss2d_scan_reference(*[None if t is None else t.double() for t in args], out_float=True)
    assert rel_err(y, want) < (2e-5 if dtype == torch.float32 and out_float else 1e-2)


def test_host_emulated_backward_matches_reference(host_kernels):
    """32-channel tiles (one SM in the plan) over 40 channels: a partial tile with dead lanes; L = 64 keeps
    every warp's lanes in step (the emulated __syncwarp is a whole-warp barrier)."""
    host_kernels.emu_set_sms(1)
    args = make_inputs(1, 8, 8, 40, 4, dtype=torch.float32)
    dy = torch.randn(1, 8, 8, 40, generator=torch.Generator().manual_seed(1))
    got = run_host_backward(host_kernels, dy, args)
    want = reference_grads(dy.double(), args, True)
    for name, g, w in zip(["du", "ddelta", "dA", "dB", "dC", "dD", "ddelta_bias"], got, want):
        assert rel_err(g, w) < 1e-4, name


# ----------------------------------------------------------------------------------------------------------
# GPU: the compiled kernels
# ----------------------------------------------------------------------------------------------------------

gpu = cuda_kernel_test("ss2d_fwd", "the built dhkd_kernels._cuda")


GPU_SHAPES = [  # (bsz, H, W, D, N)
    (1, 1, 1, 8, 16),
    (2, 8, 8, 64, 16),
    (1, 5, 12, 24, 1),  # H != W, d_state 1
    (1, 32, 32, 48, 16),
    (1, 64, 64, 16, 16),  # long L: many chunks per lane in the combine
    (8, 8, 8, 640, 16),  # 32-channel tiles: full-warp reductions
    (160, 3, 5, 5, 4),  # partial channel tiles: dead lanes
]


def _cuda_inputs(shape, dtype, **kw):
    return make_inputs(*shape, dtype=dtype, device="cuda", **kw)


@gpu
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_cuda_forward_backward_fp32(shape):
    args = _cuda_inputs(shape, torch.float32)
    leaves = [None if t is None else t.clone().requires_grad_() for t in args]
    with use_backend("cuda"):
        y = ops.ss2d_scan(*leaves)
    want = reference.ss2d_scan_reference(*[None if t is None else t.double() for t in args])
    assert y.dtype == torch.float32
    assert rel_err(y, want) < 2e-4
    dy = torch.randn_like(y)
    y.backward(dy)
    ref = reference_grads(dy, args, True)
    for name, leaf, r in zip(["u", "delta", "A", "B", "C", "D", "delta_bias"], leaves, ref):
        assert rel_err(leaf.grad, r) < 1e-3, name


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("out_float", [False, True])
def test_cuda_half_precision(dtype, out_float):
    args = _cuda_inputs((2, 6, 10, 32, 16), dtype)
    with use_backend("cuda"):
        y = ops.ss2d_scan(*args, out_float=out_float)
    assert y.dtype == (torch.float32 if out_float else dtype)
    # The reference on the same (rounded) inputs, in float64.
    want = reference.ss2d_scan_reference(*[None if t is None else t.double() for t in args], out_float=True)
    assert rel_err(y, want) < (1e-2 if dtype == torch.float16 else 3e-2)
    leaves = [None if t is None else t.clone().requires_grad_() for t in args]
    with use_backend("cuda"):
        y = ops.ss2d_scan(*leaves, out_float=out_float)
    dy = torch.randn_like(y)
    y.backward(dy)
    ref = reference_grads(dy.float(), args, True)
    for name, leaf, r in zip(["u", "delta", "A", "B", "C", "D", "delta_bias"], leaves, ref):
        assert leaf.grad.dtype == leaf.dtype, name
        assert rel_err(leaf.grad, r) < 5e-2, name


@gpu
def test_cuda_without_d_bias_softplus():
    args = _cuda_inputs((1, 7, 3, 16, 8), torch.float32, with_d=False, with_bias=False)
    leaves = [None if t is None else t.clone().requires_grad_() for t in args]
    with use_backend("cuda"):
        y = ops.ss2d_scan(*leaves, delta_softplus=False)
    want = reference.ss2d_scan_reference(*[None if t is None else t.double() for t in args], delta_softplus=False)
    assert rel_err(y, want) < 2e-4
    dy = torch.randn_like(y)
    y.backward(dy)
    ref = reference_grads(dy, args, False)
    for name, leaf, r in zip(["u", "delta", "A", "B", "C"], leaves, ref):
        assert rel_err(leaf.grad, r) < 1e-3, name


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("bsz", [1, 16])
def test_cuda_dhkd_shape_forward(dtype, bsz):
    """DHKD's largest scan (64x64, D=128, N=16): 64 segments per (direction, channel tile), so most CTAs take
    their entering state through the look-back; batch 16 puts 32,768 CTAs in flight."""
    args = _cuda_inputs((bsz, 64, 64, 128, 16), dtype)
    with use_backend("cuda"):
        y = ops.ss2d_scan(*args, out_float=True)
    want = reference.ss2d_scan_reference(*[None if t is None else t.double() for t in args], out_float=True)
    assert rel_err(y, want) < (1e-4 if dtype == torch.float32 else 1e-2)


@gpu
def test_cuda_global_workspace_path():
    """A map too long for shared memory runs the backward with its scratch in a global workspace."""
    mod = _ext.load("_cuda")
    shape = (1, 110, 110, 2, 16)
    if mod.ss2d_workspace_floats(True, *shape) == 0:
        pytest.skip("this GPU's shared memory holds the whole backward scratch for this shape")
    args = _cuda_inputs(shape, torch.float32)
    leaves = [None if t is None else t.clone().requires_grad_() for t in args]
    with use_backend("cuda"):
        y = ops.ss2d_scan(*leaves)
    want = reference.ss2d_scan_reference(*[None if t is None else t.double() for t in args])
    assert rel_err(y, want) < 2e-4
    dy = torch.randn_like(y)
    y.backward(dy)
    ref = reference_grads(dy, args, True)
    for name, leaf, r in zip(["u", "delta", "A", "B", "C", "D", "delta_bias"], leaves, ref):
        assert rel_err(leaf.grad, r) < 1e-3, name


@gpu
def test_cuda_opcheck():
    args = _cuda_inputs((1, 4, 6, 8, 4), torch.float32)
    args = [None if t is None else t.requires_grad_() for t in args]
    torch.library.opcheck(ops._ss2d_scan_op, (*args, True, False, "cuda"))


@gpu
def test_cuda_graph_capture_forward():
    args = _cuda_inputs((1, 16, 16, 32, 16), torch.float32)
    with use_backend("cuda"):
        eager = ops.ss2d_scan(*args)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            ops.ss2d_scan(*args)  # warm-up outside the capture
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = ops.ss2d_scan(*args)
        args[0].mul_(2.0)
        graph.replay()
        torch.cuda.synchronize()
        again = ops.ss2d_scan(*args)
    assert not torch.equal(captured, eager)
    torch.testing.assert_close(captured, again)


@gpu
def test_cuda_rejects_large_state():
    mod = _ext.load("_cuda")
    args = _cuda_inputs((1, 2, 2, 4, mod.SS2D_MAX_STATE + 1), torch.float32)
    with use_backend("cuda"), pytest.raises(ValueError, match="d_state"):
        ops.ss2d_scan(*args)
