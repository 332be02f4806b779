"""selective_scan CUDA backend.

Four parts:
* CPU (always): a float64 PyTorch emulation of exactly the decomposition in
  csrc/selective_scan/selective_scan_cuda.cu (chunks of kLanes lanes x kItems steps in the forward's and the
  backward's lane geometries, each lane's composed affine map, the shuffle-up Hillis-Steele scan with the carry
  held per state, the re-walk from the exclusive prefix; the states-only forward's chunk-entry states, the
  backward's shuffle-down suffix scan of the adjoint with its carry, and the per-step gradient formulas and
  reductions) checked against the reference's autograd gradients. This catches algebra mistakes in the scans,
  carries and gradient formulas without a GPU.
* CPU with a C++20 compiler: the kernel source itself, built on the host emulation of CUDA's threads, barriers
  and shuffles in tests/kernels/cuda_host, against the reference. This catches indexing, shared-memory layout,
  synchronisation and launch-plan mistakes without a GPU (not speed, and not the GPU's memory model).
* nvcc (when present): the kernels compile for sm_90 with no register spills (``-Xptxas -v``).
* GPU (skipped without one): the compiled kernels against the reference through the public op.
"""
from __future__ import annotations

import ctypes
import itertools
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hypothesis import given, settings

import dhkd_kernels
from dhkd_kernels import _ext, use_backend
from kernel_checks import build_host_emulation, cuda_kernel_test
from selective_scan_cases import HYPOTHESIS, NAMES, TOL, assert_near, check_backend, make_inputs, require, \
    run_reference, scan_cases

ROOT = Path(__file__).resolve().parents[2]
FWD_GEO, BWD_GEO = (16, 16), (8, 32)  # (steps per lane, lanes per channel): Narrow and Wide in the .cu
CHUNK = 256  # kChunk
LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------------------------------------
# Emulation of the kernels' decomposition (float64, vectorised over batch, channels and states)
# ----------------------------------------------------------------------------------------------------------

def _shift(x: torch.Tensor, off: int, fill: float, up: bool) -> torch.Tensor:
    """__shfl_up_sync / __shfl_down_sync over the last (lane) axis; lanes without a source get ``fill``
    (the kernel keeps its own value there and masks it out, which the callers mirror)."""
    out = torch.full_like(x, fill)
    if up:
        out[..., off:] = x[..., :-off]
    else:
        out[..., :-off] = x[..., off:]
    return out


def _scan_up(pa, px):
    """scan_up: inclusive Hillis-Steele scan over lanes of the affine maps h -> pa h + px, earlier lanes first."""
    lane = torch.arange(pa.shape[-1])
    off = 1
    while off < pa.shape[-1]:
        qa, qx = _shift(pa, off, 1.0, True), _shift(px, off, 0.0, True)
        m = lane >= off
        pa, px = torch.where(m, pa * qa, pa), torch.where(m, pa * qx + px, px)
        off *= 2
    return pa, px


def _scan_down(pp, pq):
    """scan_down: inclusive suffix scan over lanes of g -> pp g + pq, later lanes first."""
    lanes = pp.shape[-1]
    lane = torch.arange(lanes)
    off = 1
    while off < lanes:
        rp, rq = _shift(pp, off, 1.0, False), _shift(pq, off, 0.0, False)
        m = lane + off < lanes
        pp, pq = torch.where(m, pp * rp, pp), torch.where(m, pp * rq + pq, pq)
        off *= 2
    return pp, pq


def _expand_proj(t, bsz, Dch, L):
    """B or C as (batch, D, N, L): a variable (batch, G, N, L) repeated over each group's channels, or a
    constant (D, N) broadcast over batch and steps."""
    if t.dim() == 4:
        return t.repeat_interleave(Dch // t.shape[1], dim=1)
    return t[None, :, :, None].expand(bsz, Dch, t.shape[1], L)


def _reduce_proj(g, like):
    """The gradient of a B/C input from per-channel, per-step contributions (batch, D, N, L)."""
    if like.dim() == 4:
        bsz, Dch, N, L = g.shape
        return g.reshape(bsz, like.shape[1], Dch // like.shape[1], N, L).sum(2)
    return g.sum((0, 3))


def emulate(u, delta, A, B, C, D, z, bias, softplus, dout, fwd_geo=FWD_GEO, bwd_geo=BWD_GEO):
    """float64 (out, last_state, grads) computed the kernels' way; grads in NAMES order (None for absent inputs).

    ``fwd_geo`` / ``bwd_geo``: (steps per lane, lanes per channel) of the forward and of the backward with its
    states-only forward; both cover chunks of the same length.
    """
    bsz, Dch, L = u.shape
    N = A.shape[1]
    T = fwd_geo[0] * fwd_geo[1]
    assert T == bwd_geo[0] * bwd_geo[1]
    nc = math.ceil(L / T)
    pad = nc * T - L
    valid = F.pad(torch.ones(L, dtype=torch.bool), (0, pad))
    zr = delta + (bias[:, None] if bias is not None else 0.0)
    dt = torch.where(zr <= 20, torch.log1p(torch.exp(zr)), zr) if softplus else zr
    dt, uu, dout_p = (F.pad(t, (0, pad)) for t in (dt, u, dout))
    Bx, Cx = (F.pad(_expand_proj(t, bsz, Dch, L), (0, pad)) for t in (B, C))
    zp = F.pad(z, (0, pad)) if z is not None else None
    Dd = D[:, None] if D is not None else torch.zeros(Dch, 1, dtype=u.dtype)
    a2 = (A * LOG2E)[None, :, :, None, None]  # (1, D, N, 1, 1)

    def view(t, c, geo):  # chunk c of a (..., L) tensor as (..., lanes, items): lane l owns steps l*items ..
        items, lanes = geo
        return t[..., c * T:(c + 1) * T].reshape(*t.shape[:-1], lanes, items)

    def lane_maps(c, geo):
        """Per-step a, x and the inclusive scan over lanes of the lanes' composed maps (pa, px)."""
        dtc, uc, Bc = view(dt, c, geo), view(uu, c, geo), view(Bx, c, geo)
        a = torch.exp2(dtc[:, :, None] * a2)
        x = (dtc * uc)[:, :, None] * Bc
        pa, px = torch.ones_like(a[..., 0]), torch.zeros_like(a[..., 0])
        for k in range(geo[0]):
            pa, px = pa * a[..., k], a[..., k] * px + x[..., k]
        return a, x, *_scan_up(pa, px)

    def chunk_states(c, h_in, geo):
        """Per-step a, a*h_{t-1}, h of chunk c from the state entering it (the kernels' forward over a chunk)."""
        a, x, pa, px = lane_maps(c, geo)
        ea, ex = _shift(pa, 1, 1.0, True), _shift(px, 1, 0.0, True)  # lane 0: the identity map
        h = ea * h_in[..., None] + ex
        ah, hs = [], []
        for k in range(geo[0]):
            ah.append(a[..., k] * h)
            h = ah[-1] + x[..., k]
            hs.append(h)
        return a, torch.stack(ah, -1), torch.stack(hs, -1)

    # forward
    carry = torch.zeros(bsz, Dch, N, dtype=u.dtype)
    ys = []
    for c in range(nc):
        _, _, h = chunk_states(c, carry, fwd_geo)
        ys.append((view(Cx, c, fwd_geo) * h).sum(2).reshape(bsz, Dch, T))
        carry = h[..., -1, -1]  # the last lane's last step
    y = torch.cat(ys, -1) + Dd * uu
    out = y * F.silu(zp) if z is not None else y

    # states-only forward: the last lane's inclusive map applied to the carry
    entry = [torch.zeros(bsz, Dch, N, dtype=u.dtype)]
    for c in range(nc - 1):
        _, _, pa, px = lane_maps(c, bwd_geo)
        entry.append(pa[..., -1] * entry[-1] + px[..., -1])

    # backward
    dy = dout_p * F.silu(zp) if z is not None else dout_p
    gcarry = torch.zeros(bsz, Dch, N, dtype=u.dtype)
    gB, gAh = torch.zeros_like(dt), torch.zeros_like(dt)
    dA = torch.zeros(bsz, Dch, N, dtype=u.dtype)
    dBx, dCx = torch.zeros_like(Bx), torch.zeros_like(Cx)
    for c in reversed(range(nc)):
        a, ah, h = chunk_states(c, entry[c], bwd_geo)
        dyC = view(dy, c, bwd_geo)[:, :, None] * view(Cx, c, bwd_geo)
        pp, pq = torch.ones_like(a[..., 0]), torch.zeros_like(a[..., 0])
        for k in reversed(range(bwd_geo[0])):
            pq, pp = a[..., k] * (dyC[..., k] + pq), a[..., k] * pp
        pp, pq = _scan_down(pp, pq)
        sp, sq = _shift(pp, 1, 1.0, False), _shift(pq, 1, 0.0, False)  # lane 31: the identity map
        gnext = sp * gcarry[..., None] + sq
        gcarry = pp[..., 0] * gcarry + pq[..., 0]  # lane 0's inclusive map applied to the carry
        gs = [None] * bwd_geo[0]
        for k in reversed(range(bwd_geo[0])):
            gs[k] = dyC[..., k] + gnext
            gnext = a[..., k] * gs[k]
        g = torch.stack(gs, -1)  # (b, D, N, lanes, items)
        flat = lambda t: t.reshape(*t.shape[:-2], T)  # noqa: E731
        sl = slice(c * T, (c + 1) * T)
        gB[..., sl] = flat((g * view(Bx, c, bwd_geo)).sum(2))
        gAh[..., sl] = flat((g * A[None, :, :, None, None] * ah).sum(2))
        dA += (g * view(dt, c, bwd_geo)[:, :, None] * ah).sum((-1, -2))
        dBx[..., sl] = flat(g * (view(dt, c, bwd_geo) * view(uu, c, bwd_geo))[:, :, None])
        dCx[..., sl] = flat(view(dy, c, bwd_geo)[:, :, None] * h)
    ddt = uu * gB + gAh
    if softplus:
        zp_r = F.pad(zr, (0, pad))
        ddt = torch.where(zp_r <= 20, ddt * torch.sigmoid(zp_r), ddt)
    ddt = torch.where(valid, ddt, 0.0)
    du = dt * gB + Dd * dy
    cut = lambda t: t[..., :L]  # noqa: E731
    grads = {
        "u": cut(du), "delta": cut(ddt), "A": dA.sum(0),
        "B": _reduce_proj(cut(dBx), B), "C": _reduce_proj(cut(dCx), C),
        "D": (dy * uu).sum((0, 2)) if D is not None else None,
        "z": cut(dout_p * y * torch.sigmoid(zp) * (1 + zp * (1 - torch.sigmoid(zp)))) if z is not None else None,
        "delta_bias": ddt.sum((0, 2)) if bias is not None else None,
    }
    return cut(out), carry, [grads[n] for n in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]


def _as_groups(inputs: list) -> list:
    """The op hands the kernels mamba's 3-D (b, N, L) B/C as one group (b, 1, N, L)."""
    return [t.unsqueeze(1) if i in (3, 4) and t.dim() == 3 else t for i, t in enumerate(inputs)]


EMULATION_CASES = [  # ((batch, D, L, N, groups), options, forward geometry, backward geometry)
    ((2, 3, 21, 3, 1), dict(), (4, 2), (2, 4)),  # 3 chunks of 8, the last partial
    ((1, 4, 37, 2, 2), dict(var_C=False, softplus=False), (2, 4), (4, 2)),
    ((1, 3, 16, 4, 1), dict(var_B=False, has_z=False, has_bias=False), (4, 4), (2, 8)),  # one full chunk
    ((1, 2, 300, 2, 1), dict(three_d=True, has_d=False), FWD_GEO, BWD_GEO),  # the kernels' geometry
]


@pytest.mark.parametrize("shape,opts,fwd_geo,bwd_geo", EMULATION_CASES, ids=lambda v: str(v))
def test_emulation_matches_reference(shape, opts, fwd_geo, bwd_geo):
    softplus = opts.get("softplus", True)
    inputs = _as_groups([None if t is None else t.double() for t in make_inputs(*shape, **opts)])
    dout = torch.randn(shape[:3], generator=torch.Generator().manual_seed(1)).double()
    out, last, grads = emulate(*inputs, softplus, dout, fwd_geo, bwd_geo)
    out_ref, last_ref, grads_ref = run_reference(inputs, dout, softplus)
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, last_ref, rtol=1e-10, atol=1e-10)
    names = [n for n, t in zip(NAMES, inputs) if t is not None]
    for name, got, want in zip(names, [g for g in grads if g is not None], grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=lambda m: f"d{name}: {m}")


# ----------------------------------------------------------------------------------------------------------
# The kernel source itself, run on the CPU (tests/kernels/cuda_host: threads, barriers, shuffles emulated)
# ----------------------------------------------------------------------------------------------------------

HOST_DIR = Path(__file__).resolve().parent / "cuda_host"
CUDA_SOURCE = ROOT / "csrc" / "selective_scan" / "selective_scan_cuda.cu"


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory):
    """The CUDA kernels compiled for the host emulation (g++ with C++20 <barrier>) and loaded with ctypes."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    out = tmp_path_factory.mktemp("cuda_host")
    source, n = re.subn(r"(\w+)<<<(.*)>>>\((\w+)\);", r"emu_launch(\1, \2, \3);", CUDA_SOURCE.read_text())
    assert n >= 1, "no kernel launch found to rewrite"
    (out / "kernel_host.cu").write_text(source)
    dll = build_host_emulation(cxx, HOST_DIR / "harness.cpp", out, "libselective_scan_host.so", timeout=300)
    dll.emu_error.restype = ctypes.c_char_p
    return dll


def _check(lib, status: int) -> None:
    if status != 0:
        raise RuntimeError(lib.emu_error().decode())


def run_host_kernels(lib, inputs: list, softplus: bool, sms: int, smem_kib: int = 227):
    """(out, last_state, grads by input name, dout) of the kernels on the host emulation of a device with ``sms``
    SMs and ``smem_kib`` KiB of shared memory per block, allocated as cuda.py does, for ``make_inputs`` inputs."""
    lib.emu_set_device(sms, smem_kib * 1024)
    u, delta, A, B, C, D, z, bias = _as_groups(inputs)
    bsz, Dch, L = u.shape
    N = A.shape[1]
    B_var, C_var = B.dim() == 4, C.dim() == 4
    groups = B.shape[1] if B_var else (C.shape[1] if C_var else 1)
    ptr = lambda t: ctypes.c_void_p(0 if t is None else t.data_ptr())  # noqa: E731
    sizes = [ctypes.c_int(v) for v in (bsz, Dch, L, N, groups, B_var, C_var, _ext.dtype_code(u), softplus)]
    out, last = torch.empty_like(u), torch.empty(bsz, Dch, N)
    _check(lib, lib.emu_forward(*map(ptr, (u, delta, A, B, C, D, z, bias, out, last)), *sizes))
    dout = torch.randn(bsz, Dch, L, generator=torch.Generator().manual_seed(1)).to(u.dtype)
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    dA, dB, dC = torch.zeros(A.shape), torch.zeros(B.shape), torch.zeros(C.shape)
    dD, dbias = torch.zeros(Dch), torch.zeros(Dch)
    chunk_states = torch.empty(bsz, Dch, math.ceil(L / CHUNK), N)
    _check(lib, lib.emu_backward(*map(ptr, (dout, u, delta, A, B, C, D, z, bias, du, ddelta, dz, dA, dB, dC, dD,
                                            dbias, chunk_states)), ctypes.c_int64(chunk_states.numel()), *sizes))
    grads = dict(u=du, delta=ddelta, A=dA, B=dB, C=dC, D=dD, z=dz, delta_bias=dbias)
    return out, last, grads, dout


HOST_CASES = [  # ((batch, D, L, N, groups), options, dtype, SM count the launch plans see[, shared KiB])
    ((1, 4, 21, 4, 1), dict(), torch.float32, 4),                       # one partial chunk
    ((2, 6, 300, 3, 2), dict(has_z=False), torch.float32, 4),           # 2 chunks, B/C staged 4 steps per load
    ((1, 5, 17, 2, 1), dict(var_B=False, three_d=True, has_d=False, has_bias=False, softplus=False),
     torch.float32, 4),
    ((1, 10, 37, 3, 5), dict(var_C=False), torch.float32, 1),           # 8 channels per block, 6 of them dead
    ((1, 3, 1, 4, 1), dict(var_B=False, var_C=False), torch.float32, 4),  # L = 1
    ((1, 2, 40, 32, 1), dict(), torch.float32, 4),                      # largest state: two carries per lane
    ((1, 10, 40, 32, 1), dict(), torch.float32, 1, 163),                # an A100's shared memory: fewer channels
    ((2, 4, 260, 4, 2), dict(), torch.float16, 2),
    ((3, 6, 128, 2, 1), dict(var_B=False, three_d=True), torch.bfloat16, 64),
]


@pytest.mark.parametrize("case", HOST_CASES, ids=lambda v: str(v).replace("torch.", ""))
def test_kernel_source_on_host_matches_reference(host_kernels, case):
    shape, opts, dtype, *device = case
    softplus = opts.get("softplus", True)
    inputs = make_inputs(*shape, dtype=dtype, **opts)
    out, last, grads, dout = run_host_kernels(host_kernels, inputs, softplus, *device)
    out_ref, last_ref, grads_ref = run_reference(inputs, dout, softplus)
    tol = TOL[dtype]
    assert_near("out", out, out_ref, tol)
    assert_near("last_state", last, last_ref, tol)
    present = [(n, t) for n, t in zip(NAMES, inputs) if t is not None]
    for (name, inp), want in zip(present, grads_ref):
        got = grads[name].reshape(inp.shape)  # dB/dC of mamba's 3-D layout come back as one group
        assert_near(f"d{name}", got, want, tol)


def test_launch_plan_rejects_what_cannot_fit(host_kernels):
    """A device whose shared memory cannot hold one block's B/C rows is a clear error naming the alternatives."""
    inputs = make_inputs(1, 2, 40, 32, 1)
    with pytest.raises(RuntimeError, match="shared memory.*'triton' or 'reference'"):
        run_host_kernels(host_kernels, inputs, True, sms=4, smem_kib=48)


# ----------------------------------------------------------------------------------------------------------
# Compilation: registers and spills for sm_90
# ----------------------------------------------------------------------------------------------------------

def _nvcc() -> str | None:
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.path.exists(os.path.join(root, "bin", "nvcc")):
            return os.path.join(root, "bin", "nvcc")
    return shutil.which("nvcc")


def ptxas_report(source: Path, arch: str = "sm_90") -> dict[str, tuple[int, int, int]]:
    """{kernel entry: (registers, spill store bytes, spill load bytes)} from ``nvcc -Xptxas -v`` on ``source``."""
    cmd = [_nvcc(), "-cubin", "-std=c++17", "--use_fast_math", "-O3", f"-I{ROOT / 'csrc'}", f"-arch={arch}",
           "-Xptxas", "-v", str(source), "-o", os.devnull]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    report, name, spills = {}, None, (0, 0)
    for line in res.stderr.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            name = m.group(1)
        elif m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line):
            spills = (int(m.group(1)), int(m.group(2)))
        elif (m := re.search(r"Used (\d+) registers", line)) and name:
            report[name] = (int(m.group(1)), *spills)
            name = None
    return report


@pytest.mark.skipif(_nvcc() is None, reason="no nvcc")
def test_kernels_compile_for_sm90_without_spills():
    report = ptxas_report(ROOT / "csrc" / "selective_scan" / "selective_scan_cuda.cu")
    for kernel in ("selective_scan_fwd_kernel", "selective_scan_bwd_kernel"):
        entries = {k: v for k, v in report.items() if kernel in k}
        assert len(entries) >= 3, f"{kernel}: expected one entry per io dtype, got {sorted(report)}"
        spilling = {k: v for k, v in entries.items() if v[1] or v[2]}
        assert not spilling, f"{kernel} spills registers (registers, store bytes, load bytes): {spilling}"


# ----------------------------------------------------------------------------------------------------------
# GPU
# ----------------------------------------------------------------------------------------------------------

needs_gpu = cuda_kernel_test("selective_scan_fwd", "the selective-scan CUDA kernels")

GPU_CASES = [  # (batch, D, L, N, groups), options
    ((1, 4, 21, 4, 1), dict()),
    ((2, 6, 300, 3, 2), dict(has_z=False)),                                  # 2 chunks, 2 groups, partial block
    ((1, 5, 17, 2, 1), dict(var_B=False, three_d=True, has_d=False, has_bias=False, softplus=False)),
    ((2, 20, 513, 16, 4), dict(var_C=False)),                                # 3 chunks, 5 channels per group
    ((1, 3, 1, 4, 1), dict(var_B=False, var_C=False)),                       # L = 1, both constant
    ((3, 33, 700, 32, 1), dict()),                                           # largest state, dead channels
]


@needs_gpu
@pytest.mark.parametrize("shape,opts", GPU_CASES, ids=lambda v: str(v))
def test_fp32_matches_reference(shape, opts):
    check_backend("cuda", "cuda", shape, **opts)


FLAGS = {"var_B": "B", "var_C": "C", "has_d": "D", "has_z": "z", "has_bias": "b", "softplus": "s"}
FLAG_CASES = [dict(zip(FLAGS, values)) for values in itertools.product((True, False), repeat=len(FLAGS))]


@needs_gpu
@pytest.mark.parametrize("opts", FLAG_CASES, ids=lambda o: "".join(FLAGS[k] if v else "-" for k, v in o.items()))
def test_every_feature_combination(opts):
    """All 64 combinations of variable/constant B and C, D, z, delta_bias and softplus (two chunks, groups)."""
    check_backend("cuda", "cuda", (2, 6, 259, 5, 2), **opts)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape,opts", [GPU_CASES[0], GPU_CASES[3]], ids=lambda v: str(v))
def test_half_precision_io(shape, opts, dtype):
    check_backend("cuda", "cuda", shape, dtype=dtype, **opts)


@needs_gpu
@settings(max_examples=40, **HYPOTHESIS)
@given(kw=scan_cases(dtypes=(torch.float32, torch.float16, torch.bfloat16)))
def test_fuzzed_shapes(kw):
    check_backend("cuda", "cuda", **kw)


@needs_gpu
def test_mamba_shape():
    """A Mamba-LM layer's shape (D = 1536 channels, N = 16, L = 2048, z gate, delta_bias, softplus) at batch 1;
    fp32 forward and backward against the reference (loose: long sequences accumulate rounding)."""
    check_backend("cuda", "cuda", (1, 1536, 2048, 16, 1), three_d=True, tol=1e-3)


@needs_gpu
def test_vmamba_layout_and_non_contiguous():
    """VMamba's (B, K*D, L) layout with K = 4 groups of B/C, from non-contiguous views."""
    u, delta, A, B, C, D, _, bias = make_inputs(2, 4 * 24, 64 * 64, 16, 4, has_z=False, device="cuda")
    u_nc = u.transpose(1, 2).contiguous().transpose(1, 2)
    B_nc = B.transpose(2, 3).contiguous().transpose(2, 3)
    with use_backend("cuda"):
        out = dhkd_kernels.selective_scan(u_nc, delta, A, B_nc, C, D=D, delta_bias=bias, delta_softplus=True)
    ref, _, _ = run_reference([u, delta, A, B, C, D, None, bias], torch.zeros_like(u), True)
    torch.testing.assert_close(out.double().cpu(), ref, atol=1e-3, rtol=1e-3)


@needs_gpu
def test_opcheck():
    inputs = make_inputs(1, 3, 40, 4, 1, seed=5, device="cuda")
    args = [None if t is None else t.requires_grad_() for t in inputs] + [True, "cuda"]
    torch.library.opcheck(torch.ops.dhkd.selective_scan.default, args)


@needs_gpu
def test_large_state_is_a_clear_error():
    require("cuda", "cuda")
    inputs = make_inputs(1, 2, 8, 64, 1, device="cuda")
    with use_backend("cuda"), pytest.raises(ValueError, match="d_state"):
        dhkd_kernels.selective_scan(*inputs)
