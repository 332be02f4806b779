// pybind11 bindings of the SCMM CPU launchers (scmm_cpu.cpp): pointers arrive as data_ptr() ints, strides as
// 4-tuples; the GIL is released while a kernel runs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "scmm/scmm.h"

namespace py = pybind11;

void bind_scmm_cpu(py::module_& m) {
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("scmm_two_scale_fwd", &dhkd::scmm_cpu_two_scale_fwd, nogil,
        "s = concat(dw3x3_a(x_a), up(dw3x3_b(adaptive_maxpool(x_b)))): one pass, strided I/O, fp32 weights (C/2, 9)");
  m.def("scmm_two_scale_bwd", &dhkd::scmm_cpu_two_scale_bwd, nogil,
        "dx and per-plane fp32 weight/bias gradient partials (B, C, 9), (B, C) of the two-scale branch");
  m.def("scmm_gate_fwd", &dhkd::scmm_cpu_gate_fwd, nogil, "y = relu(G) * x + x (flat, same layout)");
  m.def("scmm_gate_bwd", &dhkd::scmm_cpu_gate_bwd, nogil, "dG = dy * x * [G > 0], dx = dy * (relu(G) + 1)");
}
