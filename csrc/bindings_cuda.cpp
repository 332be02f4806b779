// pybind11 module dhkd_kernels._cuda: the CUDA kernels. Compiled by the host compiler; no torch and no
// CUDA headers here: launchers take raw device pointers and a cudaStream_t passed as an integer.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_ss2d_cuda(py::module_& m);   // csrc/ss2d/ss2d_bind_cuda.cpp
void bind_scmm_cuda(py::module_& m);   // csrc/scmm/scmm_bind_cuda.cpp
void bind_fccm_cuda(py::module_& m);   // csrc/fccm/fccm_bind_cuda.cpp
void bind_selective_scan_cuda(py::module_& m);   // csrc/selective_scan/selective_scan_bind_cuda.cpp

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "dhkd CUDA kernels (CUDA runtime only, no torch dependency)";
  bind_ss2d_cuda(m);
  bind_scmm_cuda(m);
  bind_fccm_cuda(m);
  bind_selective_scan_cuda(m);
}
