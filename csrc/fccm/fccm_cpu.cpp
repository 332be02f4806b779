// FCCM CPU kernels (C++17/OpenMP, no torch): the memory-bound steps around the library convolutions.
//   pool_relu:  out = relu(maxpool2x2(z + bias[c]))     (after the bias-free k4 s2 conv)
//   bias_gelu:  out = gelu(h + bias[c]), exact erf       (after the bias-free 3x3 conv)
// Forward and backward; one (batch, channel) plane per OpenMP work item; tensors addressed through
// (batch, channel, row, column) element strides (NCHW, channels_last and views without copies); biases
// fp32; I/O fp32/fp16/bf16 with fp32 math. Bias gradients come back per plane (B, C) in fp32 for the
// caller to sum over the batch.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/dtype.h"

namespace py = pybind11;

namespace {

using Strides = std::array<int64_t, 4>;

template <int DT>
inline float ld(const void* p, int64_t i) {
  if constexpr (DT == dhkd::kF32) return static_cast<const float*>(p)[i];
  if constexpr (DT == dhkd::kF16) return dhkd::f16_to_f32(static_cast<const uint16_t*>(p)[i]);
  if constexpr (DT == dhkd::kBF16) return dhkd::bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
}

template <int DT>
inline void st(void* p, int64_t i, float v) {
  if constexpr (DT == dhkd::kF32) static_cast<float*>(p)[i] = v;
  if constexpr (DT == dhkd::kF16) static_cast<uint16_t*>(p)[i] = dhkd::f32_to_f16(v);
  if constexpr (DT == dhkd::kBF16) static_cast<uint16_t*>(p)[i] = dhkd::f32_to_bf16(v);
}

inline int64_t off(const Strides& s, int64_t b, int64_t c, int64_t y, int64_t x) {
  return b * s[0] + c * s[1] + y * s[2] + x * s[3];
}

// Max of the 2x2 window at (2i, 2j) of z + bias: first maximum in scan order, the last NaN wins
// (as PyTorch's max_pool2d). Returns the value; the window position (0..3) in *k.
template <int DT>
inline float window_max(const void* z, const Strides& zs, int64_t b, int64_t c, int64_t i, int64_t j, float bias,
                        int* k) {
  float m = -INFINITY;
  *k = 0;
  for (int t = 0; t < 4; ++t) {
    const float v = ld<DT>(z, off(zs, b, c, 2 * i + t / 2, 2 * j + t % 2)) + bias;
    if (v > m || std::isnan(v)) {
      m = v;
      *k = t;
    }
  }
  return m;
}

template <int DT>
void pool_relu_fwd(const void* z, const float* bias, void* out, int64_t B, int64_t C, int64_t H, int64_t W,
                   const Strides& zs, const Strides& os) {
  const int64_t oh = H / 2, ow = W / 2;
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < B * C; ++p) {
    const int64_t b = p / C, c = p % C;
    for (int64_t i = 0; i < oh; ++i)
      for (int64_t j = 0; j < ow; ++j) {
        int k;
        const float m = window_max<DT>(z, zs, b, c, i, j, bias[c], &k);
        st<DT>(out, off(os, b, c, i, j), (m > 0.f || std::isnan(m)) ? m : 0.f);
      }
  }
}

template <int DT>
void pool_relu_bwd(const void* dout, const void* z, const float* bias, void* dz, float* db_part, int64_t B,
                   int64_t C, int64_t H, int64_t W, const Strides& ds, const Strides& zs, const Strides& dzs) {
  const int64_t oh = H / 2, ow = W / 2;
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < B * C; ++p) {
    const int64_t b = p / C, c = p % C;
    double acc = 0.0;
    for (int64_t y = 2 * oh; y < H; ++y)  // rows and columns the floor-mode pooling never reads
      for (int64_t x = 0; x < W; ++x) st<DT>(dz, off(dzs, b, c, y, x), 0.f);
    for (int64_t y = 0; y < 2 * oh; ++y)
      for (int64_t x = 2 * ow; x < W; ++x) st<DT>(dz, off(dzs, b, c, y, x), 0.f);
    for (int64_t i = 0; i < oh; ++i)
      for (int64_t j = 0; j < ow; ++j) {
        int k;
        const float m = window_max<DT>(z, zs, b, c, i, j, bias[c], &k);
        const float g = m > 0.f ? ld<DT>(dout, off(ds, b, c, i, j)) : 0.f;
        acc += g;
        for (int t = 0; t < 4; ++t) st<DT>(dz, off(dzs, b, c, 2 * i + t / 2, 2 * j + t % 2), t == k ? g : 0.f);
      }
    db_part[p] = static_cast<float>(acc);
  }
}

constexpr float kInvSqrt2 = 0.70710678118654752f, kInvSqrt2Pi = 0.39894228040143268f;

template <int DT>
void bias_gelu_fwd(const void* h, const float* bias, void* out, int64_t B, int64_t C, int64_t H, int64_t W,
                   const Strides& hs, const Strides& os) {
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < B * C; ++p) {
    const int64_t b = p / C, c = p % C;
    for (int64_t y = 0; y < H; ++y)
      for (int64_t x = 0; x < W; ++x) {
        const float u = ld<DT>(h, off(hs, b, c, y, x)) + bias[c];
        st<DT>(out, off(os, b, c, y, x), 0.5f * u * (1.f + std::erf(u * kInvSqrt2)));
      }
  }
}

template <int DT>
void bias_gelu_bwd(const void* dout, const void* h, const float* bias, void* dh, float* db_part, int64_t B,
                   int64_t C, int64_t H, int64_t W, const Strides& ds, const Strides& hs, const Strides& dhs) {
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < B * C; ++p) {
    const int64_t b = p / C, c = p % C;
    double acc = 0.0;
    for (int64_t y = 0; y < H; ++y) {
      float row = 0.f;
      for (int64_t x = 0; x < W; ++x) {
        const float u = ld<DT>(h, off(hs, b, c, y, x)) + bias[c];
        const float d = 0.5f * (1.f + std::erf(u * kInvSqrt2)) + u * kInvSqrt2Pi * std::exp(-0.5f * u * u);
        const float g = ld<DT>(dout, off(ds, b, c, y, x)) * d;
        st<DT>(dh, off(dhs, b, c, y, x), g);
        row += g;
      }
      acc += row;
    }
    db_part[p] = static_cast<float>(acc);
  }
}

template <typename F>
void dispatch(int dt, F&& f) {
  switch (dt) {
    case dhkd::kF32: f(std::integral_constant<int, dhkd::kF32>{}); break;
    case dhkd::kF16: f(std::integral_constant<int, dhkd::kF16>{}); break;
    case dhkd::kBF16: f(std::integral_constant<int, dhkd::kBF16>{}); break;
    default: throw std::invalid_argument("fccm: unknown dtype code " + std::to_string(dt));
  }
}

void check_sizes(int64_t B, int64_t C, int64_t H, int64_t W, int64_t min_hw) {
  if (B < 1 || C < 1 || H < min_hw || W < min_hw)
    throw std::invalid_argument("fccm: need B, C >= 1 and H, W >= " + std::to_string(min_hw));
}

template <typename T>
T* P(uintptr_t p) { return reinterpret_cast<T*>(p); }

}  // namespace

void bind_fccm_cpu(py::module_& m) {
  m.def(
      "fccm_pool_relu_fwd",
      [](uintptr_t z, uintptr_t bias, uintptr_t out, int dt, int64_t B, int64_t C, int64_t H, int64_t W, Strides zs,
         Strides os) {
        check_sizes(B, C, H, W, 2);
        dispatch(dt, [&](auto D) {
          pool_relu_fwd<decltype(D)::value>(P<const void>(z), P<const float>(bias), P<void>(out), B, C, H, W, zs, os);
        });
      },
      py::call_guard<py::gil_scoped_release>(), "out = relu(maxpool2x2(z + bias)) (strided, fp32 bias)");
  m.def(
      "fccm_pool_relu_bwd",
      [](uintptr_t dout, uintptr_t z, uintptr_t bias, uintptr_t dz, uintptr_t db_part, int dt, int64_t B, int64_t C,
         int64_t H, int64_t W, Strides ds, Strides zs, Strides dzs) {
        check_sizes(B, C, H, W, 2);
        dispatch(dt, [&](auto D) {
          pool_relu_bwd<decltype(D)::value>(P<const void>(dout), P<const void>(z), P<const float>(bias), P<void>(dz),
                                            P<float>(db_part), B, C, H, W, ds, zs, dzs);
        });
      },
      py::call_guard<py::gil_scoped_release>(), "dz and per-plane bias gradient (B, C) of pool_relu");
  m.def(
      "fccm_bias_gelu_fwd",
      [](uintptr_t h, uintptr_t bias, uintptr_t out, int dt, int64_t B, int64_t C, int64_t H, int64_t W, Strides hs,
         Strides os) {
        check_sizes(B, C, H, W, 1);
        dispatch(dt, [&](auto D) {
          bias_gelu_fwd<decltype(D)::value>(P<const void>(h), P<const float>(bias), P<void>(out), B, C, H, W, hs, os);
        });
      },
      py::call_guard<py::gil_scoped_release>(), "out = gelu(h + bias), exact erf (strided, fp32 bias)");
  m.def(
      "fccm_bias_gelu_bwd",
      [](uintptr_t dout, uintptr_t h, uintptr_t bias, uintptr_t dh, uintptr_t db_part, int dt, int64_t B, int64_t C,
         int64_t H, int64_t W, Strides ds, Strides hs, Strides dhs) {
        check_sizes(B, C, H, W, 1);
        dispatch(dt, [&](auto D) {
          bias_gelu_bwd<decltype(D)::value>(P<const void>(dout), P<const void>(h), P<const float>(bias), P<void>(dh),
                                            P<float>(db_part), B, C, H, W, ds, hs, dhs);
        });
      },
      py::call_guard<py::gil_scoped_release>(), "dh and per-plane bias gradient (B, C) of bias_gelu");
}
