// FCCM CPU kernels (C++17/OpenMP, no torch): the memory-bound steps around the library convolutions.
//   pool_relu:  out = relu(maxpool2x2(z + bias[c]))     (after the bias-free k4 s2 conv)
//   bias_gelu:  out = gelu(h + bias[c]), exact erf       (after the bias-free 3x3 conv)
// Forward and backward. Dense channels-last (NHWC) tensors run pixel-major with the channels as the
// vectorised inner loop; anything else runs per (batch, channel) plane through (batch, channel, row,
// column) element strides (NCHW and views without copies). Biases fp32; I/O fp32/fp16/bf16 with fp32
// math. Bias gradients come back as fp32 partials (B, rows, C) for the caller to sum.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <cstring>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/simd.h"
#include "common/strided.h"
#include "fccm/fccm.h"

namespace dhkd {
namespace {

// Contiguous (H, W) planes: a whole plane is one run.
bool dense_planes(const Strides& s, int64_t H, int64_t W) { return s[3] == 1 && s[2] == W; }

// Max of the 2x2 window at (2i, 2j) of z + bias: first maximum in scan order, the last NaN wins
// (as PyTorch's max_pool2d). Returns the value; the window position (0..3) in *k.
template <int DT>
inline float window_max(const void* z, const Strides& zs, int64_t b, int64_t c, int64_t i, int64_t j, float bias,
                        int* k) {
  float m = -INFINITY;
  *k = 0;
  for (int t = 0; t < 4; ++t) {
    const float v = ld<DT>(z, offset(zs, b, c, 2 * i + t / 2, 2 * j + t % 2)) + bias;
    if (v > m || v != v) {
      m = v;
      *k = t;
    }
  }
  return m;
}

// out[c] = relu(max(r0[c], r1[c], r2[c], r3[c]) + bias[c]) over n channels: one output pixel of the NHWC
// forward, the four window pixels in scan order. max(v_t + b) = max(v_t) + b (rounding is monotonic);
// a NaN anywhere in the window gives NaN, as PyTorch's max_pool2d and relu.
DHKD_SIMD void pool4_relu_channels(const float* __restrict r0, const float* __restrict r1, const float* __restrict r2,
                                   const float* __restrict r3, const float* __restrict bias, float* __restrict out,
                                   int64_t n) {
  for (int64_t c = 0; c < n; ++c) {
    float m = r0[c];
    m = (r1[c] > m || r1[c] != r1[c]) ? r1[c] : m;
    m = (r2[c] > m || r2[c] != r2[c]) ? r2[c] : m;
    m = (r3[c] > m || r3[c] != r3[c]) ? r3[c] : m;
    m += bias[c];
    out[c] = (m > 0.f || m != m) ? m : 0.f;
  }
}

template <int DT>
void pool_relu_fwd(const void* z, const float* bias, void* out, int64_t B, int64_t C, int64_t H, int64_t W,
                   const Strides& zs, const Strides& os) {
  const int64_t oh = H / 2, ow = W / 2;
  if (is_nhwc(zs, C, H, W) && is_nhwc(os, C, oh, ow)) {  // channels innermost: one SIMD call per output pixel
    constexpr bool f32 = DT == dhkd::kF32;
#pragma omp parallel
    {
      std::vector<float> win(f32 ? 0 : 5 * C);  // fp16/bf16: the window's four pixels and the result in fp32
#pragma omp for schedule(static)
      for (int64_t it = 0; it < B * oh; ++it) {
        const int64_t b = it / oh, i = it % oh;
        for (int64_t j = 0; j < ow; ++j) {
          const int64_t o = offset(os, b, 0, i, j);
          int64_t src[4];
          for (int t = 0; t < 4; ++t) src[t] = offset(zs, b, 0, 2 * i + t / 2, 2 * j + t % 2);
          if constexpr (f32) {
            const float* zf = static_cast<const float*>(z);
            pool4_relu_channels(zf + src[0], zf + src[1], zf + src[2], zf + src[3], bias, static_cast<float*>(out) + o,
                                C);
          } else {
            for (int t = 0; t < 4; ++t)
              for (int64_t c = 0; c < C; ++c) win[t * C + c] = ld<DT>(z, src[t] + c);
            float* res = win.data() + 4 * C;
            pool4_relu_channels(win.data(), win.data() + C, win.data() + 2 * C, win.data() + 3 * C, bias, res, C);
            for (int64_t c = 0; c < C; ++c) st<DT>(out, o + c, res[c]);
          }
        }
      }
    }
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < B * C; ++p) {
    const int64_t b = p / C, c = p % C;
    for (int64_t i = 0; i < oh; ++i)
      for (int64_t j = 0; j < ow; ++j) {
        int k;
        const float m = window_max<DT>(z, zs, b, c, i, j, bias[c], &k);
        st<DT>(out, offset(os, b, c, i, j), (m > 0.f || m != m) ? m : 0.f);
      }
  }
}

// db_part is (B, max(H/2, 1), C) fp32, zero on entry: planes write [b, 0, c], NHWC rows write [b, i, c].
template <int DT>
void pool_relu_bwd(const void* dout, const void* z, const float* bias, void* dz, float* db_part, int64_t B,
                   int64_t C, int64_t H, int64_t W, const Strides& ds, const Strides& zs, const Strides& dzs) {
  const int64_t oh = H / 2, ow = W / 2, rows = oh > 0 ? oh : 1;
  if (is_nhwc(ds, C, oh, ow) && is_nhwc(zs, C, H, W) && is_nhwc(dzs, C, H, W)) {
#pragma omp parallel
    {
      std::vector<float> acc(C);
#pragma omp for schedule(static)
      for (int64_t it = 0; it < B * oh; ++it) {
        const int64_t b = it / oh, i = it % oh;
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int64_t j = 0; j < ow; ++j) {
          int64_t src[4], dst[4];
          for (int t = 0; t < 4; ++t) {
            src[t] = offset(zs, b, 0, 2 * i + t / 2, 2 * j + t % 2);
            dst[t] = offset(dzs, b, 0, 2 * i + t / 2, 2 * j + t % 2);
          }
          const int64_t o = offset(ds, b, 0, i, j);
          for (int64_t c = 0; c < C; ++c) {
            float m = -INFINITY;
            int k = 0;
            for (int t = 0; t < 4; ++t) {
              const float v = ld<DT>(z, src[t] + c) + bias[c];
              const bool take = v > m || v != v;
              m = take ? v : m;
              k = take ? t : k;
            }
            const float g = m > 0.f ? ld<DT>(dout, o + c) : 0.f;
            acc[c] += g;
            for (int t = 0; t < 4; ++t) st<DT>(dz, dst[t] + c, t == k ? g : 0.f);
          }
          if (j == ow - 1 && W > 2 * ow)  // the column floor-mode pooling never reads
            for (int64_t y = 2 * i; y < 2 * i + 2; ++y)
              for (int64_t c = 0; c < C; ++c) st<DT>(dz, offset(dzs, b, 0, y, W - 1) + c, 0.f);
        }
        if (i == oh - 1 && H > 2 * oh)  // the row floor-mode pooling never reads
          for (int64_t x = 0; x < W; ++x)
            for (int64_t c = 0; c < C; ++c) st<DT>(dz, offset(dzs, b, 0, H - 1, x) + c, 0.f);
        for (int64_t c = 0; c < C; ++c) db_part[it * C + c] = acc[c];
      }
    }
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < B * C; ++p) {
    const int64_t b = p / C, c = p % C;
    double acc = 0.0;
    for (int64_t y = 2 * oh; y < H; ++y)  // rows and columns the floor-mode pooling never reads
      for (int64_t x = 0; x < W; ++x) st<DT>(dz, offset(dzs, b, c, y, x), 0.f);
    for (int64_t y = 0; y < 2 * oh; ++y)
      for (int64_t x = 2 * ow; x < W; ++x) st<DT>(dz, offset(dzs, b, c, y, x), 0.f);
    for (int64_t i = 0; i < oh; ++i)
      for (int64_t j = 0; j < ow; ++j) {
        int k;
        const float m = window_max<DT>(z, zs, b, c, i, j, bias[c], &k);
        const float g = m > 0.f ? ld<DT>(dout, offset(ds, b, c, i, j)) : 0.f;
        acc += g;
        for (int t = 0; t < 4; ++t) st<DT>(dz, offset(dzs, b, c, 2 * i + t / 2, 2 * j + t % 2), t == k ? g : 0.f);
      }
    db_part[(b * rows) * C + c] = static_cast<float>(acc);
  }
}

// GELU on fp32 rows with loops the compiler vectorises (no libm calls):
//   erf(x) ~= x * P(x^2) / Q(x^2) on |x| <= 4 (a rational least-squares fit made for this file; max abs
//   error 3.5e-7 in fp32), +-1 beyond; exp(y) for y <= 0 by 2^k * e^r with a degree-6 Taylor polynomial
//   on |r| <= ln2/2 (relative error < 3e-7).

__attribute__((optimize("no-trapping-math"))) inline float erf_approx(float x) {
  x = x < -4.f ? -4.f : (x > 4.f ? 4.f : x);
  const float t = x * x;
  const float p = ((((2.0000668e-06f * t + 2.8602284e-04f) * t + 3.8950662e-03f) * t + 5.3133678e-02f) * t +
                   1.9365658e-01f) * t + 1.1283791e+00f;
  const float q = ((((3.7637485e-05f * t + 1.1908289e-03f) * t + 1.5226652e-02f) * t + 1.1541278e-01f) * t +
                   5.0495553e-01f) * t + 1.f;
  const float e = x * p / q;
  return e < -1.f ? -1.f : (e > 1.f ? 1.f : e);
}

__attribute__((optimize("no-trapping-math"))) inline float exp_nonpositive(float y) {
  y = y < -87.f ? -87.f : y;
  const float k = (y * 1.44269504f + 12582912.f) - 12582912.f;  // round to nearest via 1.5 * 2^23
  const float r = (y - k * 0.693145752f) - k * 1.42860677e-06f;
  const float p = 1.f + r * (1.f + r * (0.5f + r * (1.f / 6 + r * (1.f / 24 + r * (1.f / 120 + r * (1.f / 720))))));
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

constexpr float kInvSqrt2 = 0.70710678118654752f, kInvSqrt2Pi = 0.39894228040143268f;

// out[i] = gelu(v[i]) (v already holds h + bias)
DHKD_SIMD void gelu_row(const float* v, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = 0.5f * v[i] * (1.f + erf_approx(v[i] * kInvSqrt2));
}

// g[i] *= gelu'(v[i]) (v already holds h + bias).
DHKD_SIMD void gelu_grad_row(const float* v, float* g, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    g[i] *= 0.5f * (1.f + erf_approx(v[i] * kInvSqrt2)) + v[i] * kInvSqrt2Pi * exp_nonpositive(-0.5f * v[i] * v[i]);
}

template <int DT>
void load_run(const void* src, int64_t off, int64_t step, int64_t n, float* buf) {
  if (step == 1) {
    for (int64_t x = 0; x < n; ++x) buf[x] = ld<DT>(src, off + x);
  } else {
    for (int64_t x = 0; x < n; ++x) buf[x] = ld<DT>(src, off + x * step);
  }
}

template <int DT>
void store_run(void* dst, int64_t off, int64_t step, int64_t n, const float* buf) {
  if (step == 1) {
    for (int64_t x = 0; x < n; ++x) st<DT>(dst, off + x, buf[x]);
  } else {
    for (int64_t x = 0; x < n; ++x) st<DT>(dst, off + x * step, buf[x]);
  }
}

// Runs the bias/GELU kernels iterate over: planes (all pixels of one channel, bias constant) or, for
// NHWC storage, pixels (all channels of one pixel, bias per element).
struct Runs {
  bool by_pixel;
  int64_t count, len;
};

Runs plan_runs(bool all_nhwc, bool all_dense, int64_t B, int64_t C, int64_t H, int64_t W) {
  if (all_nhwc) return Runs{true, B * H * W, C};
  return Runs{false, all_dense ? B * C : B * C * H, all_dense ? H * W : W};
}

// Offset of run r and its element step in a tensor with strides s.
inline void run_at(const Runs& R, const Strides& s, int64_t r, int64_t C, int64_t H, int64_t W, int64_t* o,
                   int64_t* step) {
  if (R.by_pixel) {
    *o = r * C;  // NHWC dense
    *step = 1;
  } else if (R.len == H * W) {
    *o = (r / C) * s[0] + (r % C) * s[1];
    *step = 1;
  } else {
    const int64_t plane = r / H;
    *o = (plane / C) * s[0] + (plane % C) * s[1] + (r % H) * s[2];
    *step = s[3];
  }
}

template <int DT>
void bias_gelu_fwd(const void* h, const float* bias, void* out, int64_t B, int64_t C, int64_t H, int64_t W,
                   const Strides& hs, const Strides& os) {
  const Runs R = plan_runs(is_nhwc(hs, C, H, W) && is_nhwc(os, C, H, W),
                           dense_planes(hs, H, W) && dense_planes(os, H, W), B, C, H, W);
#pragma omp parallel
  {
    std::vector<float> v(R.len), o(R.len);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R.count; ++r) {
      int64_t ho, hstep, oo, ostep;
      run_at(R, hs, r, C, H, W, &ho, &hstep);
      run_at(R, os, r, C, H, W, &oo, &ostep);
      load_run<DT>(h, ho, hstep, R.len, v.data());
      if (R.by_pixel) {
        for (int64_t c = 0; c < C; ++c) v[c] += bias[c];
      } else {
        const float bc = bias[(R.len == H * W ? r : r / H) % C];
        for (int64_t i = 0; i < R.len; ++i) v[i] += bc;
      }
      gelu_row(v.data(), o.data(), R.len);
      store_run<DT>(out, oo, ostep, R.len, o.data());
    }
  }
}

// db_part is (B, H, C) fp32, zero on entry: planes write [b, 0, c], NHWC rows of pixels write [b, y, c].
template <int DT>
void bias_gelu_bwd(const void* dout, const void* h, const float* bias, void* dh, float* db_part, int64_t B,
                   int64_t C, int64_t H, int64_t W, const Strides& ds, const Strides& hs, const Strides& dhs) {
  const bool by_pixel = is_nhwc(ds, C, H, W) && is_nhwc(hs, C, H, W) && is_nhwc(dhs, C, H, W);
  const Runs R = plan_runs(by_pixel, dense_planes(ds, H, W) && dense_planes(hs, H, W) && dense_planes(dhs, H, W),
                           B, C, H, W);
  // Work items: one image row (NHWC: W runs of C channels) or one plane (all of its runs).
  const int64_t items = by_pixel ? B * H : B * C, runs_per_item = R.count / items;
#pragma omp parallel
  {
    std::vector<float> v(R.len), g(R.len);
    std::vector<double> acc(by_pixel ? C : 1);
#pragma omp for schedule(static)
    for (int64_t it = 0; it < items; ++it) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t k = 0; k < runs_per_item; ++k) {
        const int64_t r = it * runs_per_item + k;
        int64_t o_d, s_d, o_h, s_h, o_dh, s_dh;
        run_at(R, ds, r, C, H, W, &o_d, &s_d);
        run_at(R, hs, r, C, H, W, &o_h, &s_h);
        run_at(R, dhs, r, C, H, W, &o_dh, &s_dh);
        load_run<DT>(h, o_h, s_h, R.len, v.data());
        load_run<DT>(dout, o_d, s_d, R.len, g.data());
        if (by_pixel) {
          for (int64_t c = 0; c < C; ++c) v[c] += bias[c];
        } else {
          const float bc = bias[it % C];
          for (int64_t i = 0; i < R.len; ++i) v[i] += bc;
        }
        gelu_grad_row(v.data(), g.data(), R.len);
        store_run<DT>(dh, o_dh, s_dh, R.len, g.data());
        if (by_pixel) {
          for (int64_t c = 0; c < C; ++c) acc[c] += g[c];
        } else {
          float part[8] = {0, 0, 0, 0, 0, 0, 0, 0}, tail = 0.f;
          int64_t i = 0;
          for (; i + 8 <= R.len; i += 8)
            for (int q = 0; q < 8; ++q) part[q] += g[i + q];
          for (; i < R.len; ++i) tail += g[i];
          for (int q = 0; q < 8; ++q) tail += part[q];
          acc[0] += tail;
        }
      }
      if (by_pixel) {
        for (int64_t c = 0; c < C; ++c) db_part[it * C + c] = static_cast<float>(acc[c]);
      } else {
        db_part[((it / C) * H) * C + it % C] = static_cast<float>(acc[0]);
      }
    }
  }
}

void check_sizes(int64_t B, int64_t C, int64_t H, int64_t W, int64_t min_hw) {
  if (B < 1 || C < 1 || H < min_hw || W < min_hw)
    throw std::invalid_argument("fccm: need B, C >= 1 and H, W >= " + std::to_string(min_hw));
}

// Each epilogue's forward and backward kernels, by storage dtype code (kF32, kF16, kBF16).
using FwdKernel = void (*)(const void*, const float*, void*, int64_t, int64_t, int64_t, int64_t, const Strides&,
                           const Strides&);
using BwdKernel = void (*)(const void*, const void*, const float*, void*, float*, int64_t, int64_t, int64_t, int64_t,
                           const Strides&, const Strides&, const Strides&);
constexpr FwdKernel kPoolReluFwd[] = {pool_relu_fwd<kF32>, pool_relu_fwd<kF16>, pool_relu_fwd<kBF16>};
constexpr BwdKernel kPoolReluBwd[] = {pool_relu_bwd<kF32>, pool_relu_bwd<kF16>, pool_relu_bwd<kBF16>};
constexpr FwdKernel kBiasGeluFwd[] = {bias_gelu_fwd<kF32>, bias_gelu_fwd<kF16>, bias_gelu_fwd<kBF16>};
constexpr BwdKernel kBiasGeluBwd[] = {bias_gelu_bwd<kF32>, bias_gelu_bwd<kF16>, bias_gelu_bwd<kBF16>};

void run_fwd(const FwdKernel (&kernels)[3], int64_t min_hw, std::uintptr_t x, std::uintptr_t bias, std::uintptr_t out,
             int dtype, int64_t B, int64_t C, int64_t H, int64_t W, const Strides& xs, const Strides& os) {
  check_sizes(B, C, H, W, min_hw);
  dispatch_dtype(dtype, "fccm", [&](auto D) {
    kernels[decltype(D)::value](as_ptr<const void>(x), as_ptr<const float>(bias), as_ptr<void>(out), B, C, H, W, xs,
                                os);
  });
}

void run_bwd(const BwdKernel (&kernels)[3], int64_t min_hw, std::uintptr_t dout, std::uintptr_t x,
             std::uintptr_t bias, std::uintptr_t dx, std::uintptr_t db_part, int dtype, int64_t B, int64_t C,
             int64_t H, int64_t W, const Strides& ds, const Strides& xs, const Strides& dxs) {
  check_sizes(B, C, H, W, min_hw);
  dispatch_dtype(dtype, "fccm", [&](auto D) {
    kernels[decltype(D)::value](as_ptr<const void>(dout), as_ptr<const void>(x), as_ptr<const float>(bias),
                                as_ptr<void>(dx), as_ptr<float>(db_part), B, C, H, W, ds, xs, dxs);
  });
}

}  // namespace

void fccm_cpu_pool_relu_fwd(std::uintptr_t z, std::uintptr_t bias, std::uintptr_t out, int dtype, int64_t B,
                            int64_t C, int64_t H, int64_t W, const Strides& zs, const Strides& os) {
  run_fwd(kPoolReluFwd, 2, z, bias, out, dtype, B, C, H, W, zs, os);
}

void fccm_cpu_bias_gelu_fwd(std::uintptr_t h, std::uintptr_t bias, std::uintptr_t out, int dtype, int64_t B,
                            int64_t C, int64_t H, int64_t W, const Strides& hs, const Strides& os) {
  run_fwd(kBiasGeluFwd, 1, h, bias, out, dtype, B, C, H, W, hs, os);
}

void fccm_cpu_pool_relu_bwd(std::uintptr_t dout, std::uintptr_t z, std::uintptr_t bias, std::uintptr_t dz,
                            std::uintptr_t db_part, int dtype, int64_t B, int64_t C, int64_t H, int64_t W,
                            const Strides& ds, const Strides& zs, const Strides& dzs) {
  run_bwd(kPoolReluBwd, 2, dout, z, bias, dz, db_part, dtype, B, C, H, W, ds, zs, dzs);
}

void fccm_cpu_bias_gelu_bwd(std::uintptr_t dout, std::uintptr_t h, std::uintptr_t bias, std::uintptr_t dh,
                            std::uintptr_t db_part, int dtype, int64_t B, int64_t C, int64_t H, int64_t W,
                            const Strides& ds, const Strides& hs, const Strides& dhs) {
  run_bwd(kBiasGeluBwd, 1, dout, h, bias, dh, db_part, dtype, B, C, H, W, ds, hs, dhs);
}

}  // namespace dhkd
