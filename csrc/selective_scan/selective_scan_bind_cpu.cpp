// pybind11 bindings of the selective-scan CPU launchers (selective_scan_cpu.cpp); the GIL is released while a
// kernel runs.
#include <pybind11/pybind11.h>

#include "selective_scan/selective_scan.h"

namespace py = pybind11;

void bind_selective_scan_cpu(py::module_& m) {
  using namespace pybind11::literals;
  m.def("selective_scan_fwd", &dhkd::selective_scan_fwd, py::call_guard<py::gil_scoped_release>(),
        "Selective scan forward; writes out and last_state. Pointers are data_ptr() ints (Dw, z, delta_bias "
        "may be 0 for None); var_B / var_C tell whether B / C are (b, G, N, L) (else (D, N) fp32).",
        "u"_a, "delta"_a, "A"_a, "B"_a, "C"_a, "Dw"_a, "z"_a, "delta_bias"_a, "out"_a, "last_state"_a, "batch"_a,
        "D"_a, "L"_a, "N"_a, "G"_a, "var_B"_a, "var_C"_a, "dtype"_a, "delta_softplus"_a, "num_threads"_a = 0);
  m.def("selective_scan_bwd", &dhkd::selective_scan_bwd, py::call_guard<py::gil_scoped_release>(),
        "Selective scan backward with chunked recomputation; writes du, ddelta, dA, dB, dC, dD, dz (if z), "
        "ddelta_bias.",
        "dout"_a, "dout_dtype"_a, "u"_a, "delta"_a, "A"_a, "B"_a, "C"_a, "Dw"_a, "z"_a, "delta_bias"_a, "du"_a,
        "ddelta"_a, "dA"_a, "dB"_a, "dC"_a, "dD"_a, "dz"_a, "ddelta_bias"_a, "batch"_a, "D"_a, "L"_a, "N"_a,
        "G"_a, "var_B"_a, "var_C"_a, "dtype"_a, "delta_softplus"_a, "num_threads"_a = 0);
  m.def("selective_scan_bwd_workspace_bytes", &dhkd::selective_scan_bwd_workspace_bytes,
        "Bytes selective_scan_bwd allocates for itself (besides its outputs) for these sizes and threads.",
        "batch"_a, "D"_a, "L"_a, "N"_a, "G"_a, "var_B"_a, "var_C"_a, "has_z"_a, "num_threads"_a = 0);
}
