"""The CUDA kernels build without a GPU: the _cuda module exists whenever nvcc does, and every .cu file
compiles to real sm_80 and sm_90 code."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from dhkd_kernels import registry

ROOT = Path(__file__).resolve().parents[2]


def _nvcc() -> str | None:
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.path.exists(os.path.join(root, "bin", "nvcc")):
            return os.path.join(root, "bin", "nvcc")
    return shutil.which("nvcc")


NVCC = _nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="no nvcc")


def cubin_archs(fatbin: bytes) -> set[int]:
    """SM numbers of the CUDA ELF images (e_machine 190) inside an uncompressed fatbin."""
    archs = set()
    pos = fatbin.find(b"\x7fELF")
    while pos >= 0:
        if struct.unpack_from("<H", fatbin, pos + 18)[0] == 190:
            flags = struct.unpack_from("<I", fatbin, pos + 48)[0]
            archs.add((flags >> 8) & 0xFF)  # current ELF ABI; older toolkits kept the SM in the low byte
            archs.add(flags & 0xFF)
        pos = fatbin.find(b"\x7fELF", pos + 4)
    return archs


@needs_nvcc
def test_cuda_module_built_with_ss2d():
    if os.environ.get("DHKD_NO_CUDA") == "1":
        pytest.skip("DHKD_NO_CUDA=1")
    mod = registry.extension("_cuda")
    assert mod is not None, f"nvcc is present but dhkd_kernels._cuda is missing: {registry.extension_error('_cuda')}"
    for name in ("ss2d_fwd", "ss2d_bwd", "ss2d_workspace_floats"):
        assert hasattr(mod, name), name
    assert mod.SS2D_MAX_STATE >= 16


CUDA_KERNELS = sorted(p.relative_to(ROOT / "csrc").as_posix() for p in (ROOT / "csrc").rglob("*.cu"))


@pytest.mark.slow
@needs_nvcc
@pytest.mark.parametrize("source", CUDA_KERNELS)
def test_kernels_compile_for_sm80_and_sm90(tmp_path, source):
    """Every CUDA kernel file compiles to real sm_80 and sm_90 code with the shared csrc/ headers."""
    out = tmp_path / "kernels.fatbin"
    cmd = [NVCC, "-fatbin", "--no-compress", "-std=c++17", "--use_fast_math", f"-I{ROOT / 'csrc'}",
           str(ROOT / "csrc" / source), "-o", str(out),
           "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr
    data = out.read_bytes()
    assert struct.unpack_from("<I", data, 0)[0] == 0xBA55ED50, "not a fatbin"
    archs = cubin_archs(data)
    assert {80, 90} <= archs, f"fatbin holds SM {sorted(archs)}"
