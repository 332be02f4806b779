// pybind11 bindings of the selective-scan CUDA launchers (csrc/selective_scan/selective_scan_cuda.cu). Compiled by
// the host compiler: no CUDA headers; device pointers and the stream arrive as Python ints.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "common/strided.h"
#include "selective_scan/selective_scan.h"

namespace py = pybind11;

using dhkd::as_ptr;

namespace {

void fwd(std::uintptr_t u, std::uintptr_t delta, std::uintptr_t A, std::uintptr_t B, std::uintptr_t C,
         std::uintptr_t Dw, std::uintptr_t z, std::uintptr_t bias, std::uintptr_t out, std::uintptr_t last_state,
         int batch, int Dch, int L, int N, int groups, bool B_var, bool C_var, int dtype, bool softplus,
         std::uintptr_t stream) {
  selective_scan_cuda_forward(as_ptr<const void>(u), as_ptr<const void>(delta), as_ptr<const float>(A),
                              as_ptr<const void>(B), as_ptr<const void>(C), as_ptr<const float>(Dw),
                              as_ptr<const void>(z), as_ptr<const float>(bias), as_ptr<void>(out),
                              as_ptr<float>(last_state), batch, Dch, L, N, groups, B_var, C_var, dtype, softplus,
                              as_ptr<CUstream_st>(stream));
}

void bwd(std::uintptr_t dout, std::uintptr_t u, std::uintptr_t delta, std::uintptr_t A, std::uintptr_t B,
         std::uintptr_t C, std::uintptr_t Dw, std::uintptr_t z, std::uintptr_t bias, std::uintptr_t du,
         std::uintptr_t ddelta, std::uintptr_t dz, std::uintptr_t dA, std::uintptr_t dB, std::uintptr_t dC,
         std::uintptr_t dD, std::uintptr_t dbias, std::uintptr_t chunk_states, int64_t chunk_state_floats,
         int batch, int Dch, int L, int N, int groups, bool B_var, bool C_var, int dtype, bool softplus,
         std::uintptr_t stream) {
  selective_scan_cuda_backward(
      as_ptr<const void>(dout), as_ptr<const void>(u), as_ptr<const void>(delta), as_ptr<const float>(A),
      as_ptr<const void>(B), as_ptr<const void>(C), as_ptr<const float>(Dw), as_ptr<const void>(z),
      as_ptr<const float>(bias), as_ptr<void>(du), as_ptr<void>(ddelta), as_ptr<void>(dz), as_ptr<float>(dA),
      as_ptr<float>(dB), as_ptr<float>(dC), as_ptr<float>(dD), as_ptr<float>(dbias), as_ptr<float>(chunk_states),
      chunk_state_floats, batch, Dch, L, N, groups, B_var, C_var, dtype, softplus, as_ptr<CUstream_st>(stream));
}

}  // namespace

void bind_selective_scan_cuda(py::module_& m) {
  m.attr("SELECTIVE_SCAN_MAX_STATE") = selective_scan_cuda_max_state();
  m.attr("SELECTIVE_SCAN_CHUNK") = selective_scan_cuda_chunk();
  m.def("selective_scan_fwd", &fwd, py::call_guard<py::gil_scoped_release>(), py::arg("u"), py::arg("delta"),
        py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D_skip"), py::arg("z"), py::arg("delta_bias"),
        py::arg("out"), py::arg("last_state"), py::arg("batch"), py::arg("dim"), py::arg("seqlen"),
        py::arg("dstate"), py::arg("groups"), py::arg("B_variable"), py::arg("C_variable"), py::arg("dtype"),
        py::arg("delta_softplus"), py::arg("stream"),
        "Selective-scan forward on device pointers: out (io dtype) and last_state (fp32)");
  m.def("selective_scan_bwd", &bwd, py::call_guard<py::gil_scoped_release>(), py::arg("dout"), py::arg("u"),
        py::arg("delta"), py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D_skip"), py::arg("z"),
        py::arg("delta_bias"), py::arg("du"), py::arg("ddelta"), py::arg("dz"), py::arg("dA"), py::arg("dB"),
        py::arg("dC"), py::arg("dD"), py::arg("ddelta_bias"), py::arg("chunk_states"),
        py::arg("chunk_state_floats"), py::arg("batch"), py::arg("dim"), py::arg("seqlen"), py::arg("dstate"),
        py::arg("groups"), py::arg("B_variable"), py::arg("C_variable"), py::arg("dtype"),
        py::arg("delta_softplus"), py::arg("stream"),
        "Selective-scan backward (recomputes the forward); dA, dB, dC, dD, ddelta_bias are fp32 buffers that must "
        "be zero on entry; chunk_states holds batch*dim*ceil(seqlen/SELECTIVE_SCAN_CHUNK)*dstate floats");
}
