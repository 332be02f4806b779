// pybind11 bindings of the FCCM CUDA launchers (csrc/fccm/fccm_cuda.cu). Compiled by the host compiler: no
// CUDA headers; device pointers and the stream arrive as Python ints, strides as 4-tuples.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>

#include "fccm/fccm.h"

namespace py = pybind11;

namespace {

using dhkd::as_ptr;
using dhkd::Strides;
using U = std::uintptr_t;

}  // namespace

void bind_fccm_cuda(py::module_& m) {
  m.def("fccm_blocks", &fccm_cuda_blocks, "bias-gradient partial blocks per plane of an H x W backward launch");
  m.def(
      "fccm_pool_relu_fwd",
      [](U z, U bias, U out, int dtype, int B, int C, int H, int W, Strides zs, Strides os, U stream) {
        fccm_cuda_pool_relu_fwd(as_ptr<const void>(z), as_ptr<const float>(bias), as_ptr<void>(out), dtype, B, C, H, W,
                                zs.data(), os.data(), as_ptr<CUstream_st>(stream));
      },
      py::call_guard<py::gil_scoped_release>(), "out = relu(maxpool2x2(z + bias)) (strided, fp32 bias)");
  m.def(
      "fccm_pool_relu_bwd",
      [](U dout, U z, U bias, U dz, U part, int dtype, int B, int C, int H, int W, Strides ds, Strides zs, Strides dzs,
         U stream) {
        fccm_cuda_pool_relu_bwd(as_ptr<const void>(dout), as_ptr<const void>(z), as_ptr<const float>(bias),
                                as_ptr<void>(dz), as_ptr<float>(part), dtype, B, C, H, W, ds.data(), zs.data(),
                                dzs.data(), as_ptr<CUstream_st>(stream));
      },
      py::call_guard<py::gil_scoped_release>(), "dz and per-block bias-gradient partials of pool_relu");
  m.def(
      "fccm_bias_gelu_fwd",
      [](U h, U bias, U out, int dtype, int B, int C, int H, int W, Strides hs, Strides os, U stream) {
        fccm_cuda_bias_gelu_fwd(as_ptr<const void>(h), as_ptr<const float>(bias), as_ptr<void>(out), dtype, B, C, H, W,
                                hs.data(), os.data(), as_ptr<CUstream_st>(stream));
      },
      py::call_guard<py::gil_scoped_release>(), "out = gelu(h + bias), exact erf (strided, fp32 bias)");
  m.def(
      "fccm_bias_gelu_bwd",
      [](U dout, U h, U bias, U dh, U part, int dtype, int B, int C, int H, int W, Strides ds, Strides hs, Strides dhs,
         U stream) {
        fccm_cuda_bias_gelu_bwd(as_ptr<const void>(dout), as_ptr<const void>(h), as_ptr<const float>(bias),
                                as_ptr<void>(dh), as_ptr<float>(part), dtype, B, C, H, W, ds.data(), hs.data(),
                                dhs.data(), as_ptr<CUstream_st>(stream));
      },
      py::call_guard<py::gil_scoped_release>(), "dh and per-block bias-gradient partials of bias_gelu");
}
