"""Build the dhkd kernels: ``dhkd_kernels._cpu`` always, ``dhkd_kernels._cuda`` whenever nvcc is found.

Neither module includes or links torch: they are plain C++/CUDA on raw pointers, bound with pybind11,
so one build works with whichever torch is installed and the build needs only setuptools and pybind11.

Environment:
  DHKD_NO_CUDA=1          skip the CUDA module even when nvcc is present
  DHKD_FORCE_CUDA=1       fail instead of silently skipping when nvcc is missing
  DHKD_CUDA_ARCHS / TORCH_CUDA_ARCH_LIST   e.g. "8.0;9.0" (default 8.0;8.6;9.0 plus PTX of the last)
  CUDA_HOME / CUDA_PATH   the toolkit root (else the root of the nvcc found on PATH, else /usr/local/cuda)
"""
from __future__ import annotations

import os
import shutil
import subprocess

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup
from setuptools.command.build_ext import build_ext

CXX_FLAGS = ["-O3", "-g0", "-fopenmp", "-ffp-contract=fast", "-fno-math-errno"]
NVCC_FLAGS = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo", "-Xcompiler", "-fPIC"]
DEFAULT_ARCHS = "8.0;8.6;9.0"


# Every C++/CUDA source of the two modules, by name: a file under csrc/ that is in neither list is an error
# (tests/test_setup_sources.py), not silently left out of the build. Headers are found through -Icsrc.
CPU_SOURCES = [
    "csrc/bindings_cpu.cpp",
    "csrc/ss2d/ss2d_cpu.cpp",
    "csrc/ss2d/ss2d_bind_cpu.cpp",
    "csrc/scmm/scmm_cpu.cpp",
    "csrc/scmm/scmm_bind_cpu.cpp",
    "csrc/fccm/fccm_cpu.cpp",
    "csrc/fccm/fccm_bind_cpu.cpp",
    "csrc/selective_scan/selective_scan_cpu.cpp",
    "csrc/selective_scan/selective_scan_bind_cpu.cpp",
]
CUDA_SOURCES = [
    "csrc/bindings_cuda.cpp",
    "csrc/ss2d/ss2d_bind_cuda.cpp",
    "csrc/ss2d/ss2d_cuda.cu",
    "csrc/scmm/scmm_bind_cuda.cpp",
    "csrc/scmm/scmm_cuda.cu",
    "csrc/fccm/fccm_bind_cuda.cpp",
    "csrc/fccm/fccm_cuda.cu",
    "csrc/selective_scan/selective_scan_bind_cuda.cpp",
    "csrc/selective_scan/selective_scan_cuda.cu",
]


def find_cuda_home() -> str | None:
    """The toolkit root holding bin/nvcc and include/cuda_runtime.h, or None."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for root in candidates:
        if root and os.path.exists(os.path.join(root, "bin", "nvcc")) and os.path.exists(
            os.path.join(root, "include", "cuda_runtime.h")
        ):
            return root
    if nvcc:
        # A wrapper script (e.g. /usr/local/bin/nvcc -> exec .../cuda-13.0/bin/nvcc): ask nvcc itself.
        try:
            out = subprocess.run([nvcc, "-###", "-E", "-x", "cu", os.devnull], capture_output=True, text=True)
            for token in (out.stdout + out.stderr).split():
                if token.startswith("-I") and token.endswith("include"):
                    root = os.path.dirname(token[2:].strip('"'))
                    if os.path.exists(os.path.join(root, "include", "cuda_runtime.h")):
                        return root
        except OSError:
            pass
    return None


def cuda_arch_flags() -> list[str]:
    spec = os.environ.get("DHKD_CUDA_ARCHS") or os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_ARCHS
    archs = [a.strip().replace("+PTX", "") for a in spec.replace(",", ";").replace(" ", ";").split(";") if a.strip()]
    flags = []
    for a in archs:
        num = a.replace(".", "")
        flags += ["-gencode", f"arch=compute_{num},code=sm_{num}"]
    last = archs[-1].replace(".", "")
    flags += ["-gencode", f"arch=compute_{last},code=compute_{last}"]  # PTX for newer GPUs
    return flags


class BuildExt(build_ext):
    """build_ext that compiles ``.cu`` sources with nvcc and links the CUDA runtime."""

    def build_extension(self, ext):
        cu = [s for s in ext.sources if s.endswith(".cu")]
        if cu:
            cuda_home = ext.cuda_home
            nvcc = os.path.join(cuda_home, "bin", "nvcc")
            objects = []
            tmp = os.path.join(self.build_temp, "cuda")
            os.makedirs(tmp, exist_ok=True)
            for src in cu:
                obj = os.path.join(tmp, os.path.basename(src) + ".o")
                cmd = [nvcc, "-c", src, "-o", obj, "-Icsrc", *NVCC_FLAGS, *cuda_arch_flags()]
                print(" ".join(cmd), flush=True)
                subprocess.check_call(cmd)
                objects.append(obj)
            ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
            ext.extra_objects = list(ext.extra_objects or []) + objects
            ext.depends = list(ext.depends or []) + objects  # relink when only a .cu changed
        super().build_extension(ext)


def extensions() -> list[Pybind11Extension]:
    exts = [
        Pybind11Extension(
            "dhkd_kernels._cpu",
            CPU_SOURCES,
            include_dirs=["csrc"],
            extra_compile_args=CXX_FLAGS,
            extra_link_args=["-fopenmp"],
            cxx_std=17,
        )
    ]
    if os.environ.get("DHKD_NO_CUDA") == "1":
        return exts
    cuda_home = find_cuda_home()
    if cuda_home is None:
        if os.environ.get("DHKD_FORCE_CUDA") == "1":
            raise RuntimeError("DHKD_FORCE_CUDA=1 but no CUDA toolkit (nvcc + cuda_runtime.h) was found")
        print("dhkd: nvcc not found, building the CPU kernels only", flush=True)
        return exts
    libdirs = [d for d in (os.path.join(cuda_home, "lib64"), os.path.join(cuda_home, "lib")) if os.path.isdir(d)]
    cuda_ext = Pybind11Extension(
        "dhkd_kernels._cuda",
        CUDA_SOURCES,
        include_dirs=["csrc", os.path.join(cuda_home, "include")],
        library_dirs=libdirs,
        runtime_library_dirs=libdirs,
        libraries=["cudart"],
        extra_compile_args=["-O3", "-g0"],
        cxx_std=17,
    )
    cuda_ext.cuda_home = cuda_home
    exts.append(cuda_ext)
    return exts


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
