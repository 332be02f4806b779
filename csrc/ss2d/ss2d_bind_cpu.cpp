// pybind11 bindings of the SS2D CPU launchers (ss2d_cpu.cpp); the GIL is released while a kernel runs.
#include <pybind11/pybind11.h>

#include "ss2d/ss2d.h"

namespace py = pybind11;

void bind_ss2d_cpu(py::module_& m) {
  using namespace pybind11::literals;
  m.def("ss2d_fwd", &dhkd::ss2d_fwd, py::call_guard<py::gil_scoped_release>(),
        "Fused SS2D forward. Pointers are data_ptr() ints (Dw, delta_bias may be 0 for None).", "u"_a,
        "delta"_a, "A"_a, "B"_a, "C"_a, "Dw"_a, "delta_bias"_a, "y"_a, "batch"_a, "H"_a, "W"_a, "D"_a, "N"_a,
        "dtype"_a, "y_dtype"_a, "delta_softplus"_a, "num_threads"_a = 0);
  m.def("ss2d_bwd", &dhkd::ss2d_bwd, py::call_guard<py::gil_scoped_release>(),
        "Fused SS2D backward with chunked recomputation; writes du, ddelta, dA, dB, dC, dD, ddelta_bias.",
        "dy"_a, "dy_dtype"_a, "u"_a, "delta"_a, "A"_a, "B"_a, "C"_a, "Dw"_a, "delta_bias"_a, "du"_a,
        "ddelta"_a, "dA"_a, "dB"_a, "dC"_a, "dD"_a, "ddelta_bias"_a, "batch"_a, "H"_a, "W"_a, "D"_a, "N"_a,
        "dtype"_a, "delta_softplus"_a, "num_threads"_a = 0);
  m.def("ss2d_bwd_workspace_bytes", &dhkd::ss2d_bwd_workspace_bytes,
        "Bytes ss2d_bwd allocates for itself (besides its outputs) for these sizes and threads.", "batch"_a,
        "H"_a, "W"_a, "D"_a, "N"_a, "dtype"_a, "num_threads"_a = 0);
}
