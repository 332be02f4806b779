// pybind11 bindings of the SS2D CUDA launchers (csrc/ss2d/ss2d_cuda.cu). Compiled by the host compiler: no
// CUDA headers; device pointers and the stream arrive as Python ints.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "common/strided.h"
#include "ss2d/ss2d.h"

namespace py = pybind11;

using dhkd::as_ptr;

namespace {

void fwd(std::uintptr_t u, std::uintptr_t delta, std::uintptr_t A, std::uintptr_t B, std::uintptr_t C,
         std::uintptr_t Dw, std::uintptr_t bias, std::uintptr_t y, std::uintptr_t workspace,
         int64_t workspace_floats, int batch, int H, int W, int D, int N, int dtype, bool out_f32,
         bool softplus, std::uintptr_t stream) {
  ss2d_cuda_forward(as_ptr<const void>(u), as_ptr<const void>(delta), as_ptr<const float>(A),
                    as_ptr<const void>(B), as_ptr<const void>(C), as_ptr<const float>(Dw),
                    as_ptr<const float>(bias), as_ptr<void>(y), as_ptr<float>(workspace), workspace_floats, batch,
                    H, W, D, N, dtype, out_f32, softplus, as_ptr<CUstream_st>(stream));
}

void bwd(std::uintptr_t dy, bool dy_f32, std::uintptr_t u, std::uintptr_t delta, std::uintptr_t A,
         std::uintptr_t B, std::uintptr_t C, std::uintptr_t Dw, std::uintptr_t bias, std::uintptr_t du,
         std::uintptr_t ddelta, std::uintptr_t dA, std::uintptr_t dB, std::uintptr_t dC, std::uintptr_t dD,
         std::uintptr_t dbias, std::uintptr_t workspace, int64_t workspace_floats, int batch, int H, int W, int D,
         int N, int dtype, bool softplus, std::uintptr_t stream) {
  ss2d_cuda_backward(as_ptr<const void>(dy), dy_f32, as_ptr<const void>(u), as_ptr<const void>(delta),
                     as_ptr<const float>(A), as_ptr<const void>(B), as_ptr<const void>(C), as_ptr<const float>(Dw),
                     as_ptr<const float>(bias), as_ptr<void>(du), as_ptr<void>(ddelta), as_ptr<float>(dA),
                     as_ptr<float>(dB), as_ptr<float>(dC), as_ptr<float>(dD), as_ptr<float>(dbias),
                     as_ptr<float>(workspace), workspace_floats, batch, H, W, D, N, dtype, softplus,
                     as_ptr<CUstream_st>(stream));
}

}  // namespace

void bind_ss2d_cuda(py::module_& m) {
  m.attr("SS2D_MAX_STATE") = ss2d_cuda_max_state();
  m.def("ss2d_workspace_floats", &ss2d_cuda_workspace_floats, py::arg("backward"), py::arg("batch"), py::arg("H"),
        py::arg("W"), py::arg("D"), py::arg("N"),
        "fp32 elements of global scratch ss2d_fwd/ss2d_bwd need on the current device (0: shared memory suffices)");
  m.def("ss2d_fwd", &fwd, py::call_guard<py::gil_scoped_release>(), py::arg("u"), py::arg("delta"), py::arg("A"),
        py::arg("B"), py::arg("C"), py::arg("D_skip"), py::arg("delta_bias"), py::arg("y"), py::arg("workspace"),
        py::arg("workspace_floats"), py::arg("batch"), py::arg("H"), py::arg("W"), py::arg("D"), py::arg("N"),
        py::arg("dtype"), py::arg("out_float"), py::arg("delta_softplus"), py::arg("stream"),
        "Fused SS2D forward on device pointers (channels-last); y in fp32 if out_float else the I/O dtype");
  m.def("ss2d_bwd", &bwd, py::call_guard<py::gil_scoped_release>(), py::arg("dy"), py::arg("dy_float"), py::arg("u"),
        py::arg("delta"), py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D_skip"), py::arg("delta_bias"),
        py::arg("du"), py::arg("ddelta"), py::arg("dA"), py::arg("dB"), py::arg("dC"), py::arg("dD"),
        py::arg("ddelta_bias"), py::arg("workspace"), py::arg("workspace_floats"), py::arg("batch"), py::arg("H"),
        py::arg("W"), py::arg("D"), py::arg("N"), py::arg("dtype"), py::arg("delta_softplus"), py::arg("stream"),
        "Fused SS2D backward; dA, dB, dC, dD, ddelta_bias are fp32 buffers that must be zero on entry");
}
