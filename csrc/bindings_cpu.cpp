// pybind11 module dhkd_kernels._cpu: the CPU kernels. No torch headers; raw pointers and sizes only.
#include <pybind11/pybind11.h>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

void bind_ss2d_cpu(py::module_& m);   // csrc/ss2d/ss2d_bind_cpu.cpp
void bind_scmm_cpu(py::module_& m);   // csrc/scmm/scmm_bind_cpu.cpp
void bind_fccm_cpu(py::module_& m);   // csrc/fccm/fccm_bind_cpu.cpp
void bind_selective_scan_cpu(py::module_& m);  // csrc/selective_scan/selective_scan_cpu.cpp

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "dhkd CPU kernels (C++/OpenMP, no torch dependency)";
  m.def("num_threads", []() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
  });
  bind_ss2d_cpu(m);
  bind_scmm_cpu(m);
  bind_fccm_cpu(m);
  bind_selective_scan_cpu(m);
}
