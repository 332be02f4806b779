// pybind11 bindings of the SCMM CUDA launchers (csrc/scmm/scmm_cuda.cu). Compiled by the host compiler: no
// CUDA headers; device pointers and the stream arrive as Python ints, strides as 4-tuples.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>

#include "scmm/scmm.h"

namespace py = pybind11;

using dhkd::as_ptr;
using dhkd::Strides;

void bind_scmm_cuda(py::module_& m) {
  m.def("scmm_blocks_full", &scmm_cuda_blocks_full, "partial-sum blocks per full-resolution plane");
  m.def("scmm_blocks_half", &scmm_cuda_blocks_half, "partial-sum blocks per half-resolution plane");
  m.def(
      "scmm_two_scale_fwd",
      [](std::uintptr_t x, std::uintptr_t s, std::uintptr_t wa, std::uintptr_t ba, std::uintptr_t wb,
         std::uintptr_t bb, int dtype, int B, int C, int H, int W, Strides xs, Strides ss, std::uintptr_t stream) {
        scmm_cuda_two_scale_fwd(as_ptr<const void>(x), as_ptr<void>(s), as_ptr<const float>(wa),
                                as_ptr<const float>(ba), as_ptr<const float>(wb), as_ptr<const float>(bb), dtype, B, C,
                                H, W, xs.data(), ss.data(), as_ptr<CUstream_st>(stream));
      },
      py::call_guard<py::gil_scoped_release>(), "two-scale depth-wise branch, one pass (strided I/O)");
  m.def(
      "scmm_two_scale_bwd",
      [](std::uintptr_t ds, std::uintptr_t x, std::uintptr_t dx, std::uintptr_t wa, std::uintptr_t wb,
         std::uintptr_t gsum, std::uintptr_t dpool, std::uintptr_t part_a, std::uintptr_t part_b, int dtype, int B,
         int C, int H, int W, Strides dss, Strides xs, Strides dxs, std::uintptr_t stream) {
        scmm_cuda_two_scale_bwd(as_ptr<const void>(ds), as_ptr<const void>(x), as_ptr<void>(dx),
                                as_ptr<const float>(wa), as_ptr<const float>(wb), as_ptr<float>(gsum),
                                as_ptr<float>(dpool), as_ptr<float>(part_a), as_ptr<float>(part_b), dtype, B, C, H, W,
                                dss.data(), xs.data(), dxs.data(), as_ptr<CUstream_st>(stream));
      },
      py::call_guard<py::gil_scoped_release>(),
      "dx and per-block weight/bias partials of the two-scale branch (fp32 scratch gsum, dpool: B*C/2*(H/2)*(W/2))");
  m.def(
      "scmm_gate_fwd",
      [](std::uintptr_t G, std::uintptr_t x, std::uintptr_t y, int dtype, long long n, std::uintptr_t stream) {
        scmm_cuda_gate_fwd(as_ptr<const void>(G), as_ptr<const void>(x), as_ptr<void>(y), dtype, n,
                           as_ptr<CUstream_st>(stream));
      },
      py::call_guard<py::gil_scoped_release>(), "y = relu(G) * x + x (flat, same layout)");
  m.def(
      "scmm_gate_bwd",
      [](std::uintptr_t dy, std::uintptr_t G, std::uintptr_t x, std::uintptr_t dG, std::uintptr_t dx, int dtype,
         long long n, std::uintptr_t stream) {
        scmm_cuda_gate_bwd(as_ptr<const void>(dy), as_ptr<const void>(G), as_ptr<const void>(x), as_ptr<void>(dG),
                           as_ptr<void>(dx), dtype, n, as_ptr<CUstream_st>(stream));
      },
      py::call_guard<py::gil_scoped_release>(), "dG = dy * x * [G > 0], dx = dy * (relu(G) + 1)");
}
