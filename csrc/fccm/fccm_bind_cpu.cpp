// pybind11 bindings of the FCCM CPU launchers (fccm_cpu.cpp): pointers arrive as data_ptr() ints, strides as
// 4-tuples; the GIL is released while a kernel runs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "fccm/fccm.h"

namespace py = pybind11;

void bind_fccm_cpu(py::module_& m) {
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("fccm_pool_relu_fwd", &dhkd::fccm_cpu_pool_relu_fwd, nogil,
        "out = relu(maxpool2x2(z + bias)) (strided, fp32 bias)");
  m.def("fccm_pool_relu_bwd", &dhkd::fccm_cpu_pool_relu_bwd, nogil,
        "dz and fp32 bias-gradient partials (B, max(H/2, 1), C), zero on entry, of pool_relu");
  m.def("fccm_bias_gelu_fwd", &dhkd::fccm_cpu_bias_gelu_fwd, nogil,
        "out = gelu(h + bias), exact erf (strided, fp32 bias)");
  m.def("fccm_bias_gelu_bwd", &dhkd::fccm_cpu_bias_gelu_bwd, nogil,
        "dh and fp32 bias-gradient partials (B, H, C), zero on entry, of bias_gelu");
}
