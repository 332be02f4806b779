// SCMM modulation CPU kernels (C++17/OpenMP, no torch): the fused two-scale depth-wise branch and the
// fused gating epilogue, forward and backward.
//
// Two-scale branch on x (B, C, H, W) with half = C/2, oh = H/2, ow = W/2:
//   s[:, c<half]  = dw3x3(x[:, c], wa[c]) + ba[c]
//   s[:, c>=half] = nearest_up(dw3x3(adaptive_maxpool(x[:, c], oh, ow), wb[c-half]) + bb[c-half], H, W)
// One (batch, channel) plane per OpenMP work item (dense NHWC forward: one half-resolution row of all
// channels); the pooled and half-resolution maps live only in per-thread scratch. Tensors are addressed through (batch, channel, row, column) element strides, so
// NCHW, channels_last and strided views need no copy. Depth-wise weights are fp32 (C/2, 9); I/O dtype
// is fp32/fp16/bf16 with fp32 math. Weight/bias gradients come back per plane (B, C, 9) and (B, C) in
// fp32 for the caller to sum over the batch (deterministic, no atomics).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <vector>

#include "common/dtype.h"

namespace py = pybind11;


namespace {

using Strides = std::array<int64_t, 4>;

// Hot fp32 loops get AVX-512 and AVX2/FMA clones chosen at load time next to the baseline build.
#define DHKD_SIMD __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), \
                                   optimize("no-trapping-math")))

using dhkd::ld;
using dhkd::st;

struct Geometry {
  int64_t B, C, H, W, half, oh, ow;
  std::vector<int> row_src, col_src;        // nearest upsample: full-res index -> half-res index
  std::vector<int> row_lo, row_hi, col_lo, col_hi;  // adaptive pool windows [lo, hi)
  Geometry(int64_t B_, int64_t C_, int64_t H_, int64_t W_)
      : B(B_), C(C_), H(H_), W(W_), half(C_ / 2), oh(H_ / 2), ow(W_ / 2) {
    row_src.resize(H);
    col_src.resize(W);
    for (int64_t y = 0; y < H; ++y) row_src[y] = static_cast<int>(y * oh / H);
    for (int64_t x = 0; x < W; ++x) col_src[x] = static_cast<int>(x * ow / W);
    for (int64_t i = 0; i < oh; ++i) {
      row_lo.push_back(static_cast<int>(i * H / oh));
      row_hi.push_back(static_cast<int>(((i + 1) * H + oh - 1) / oh));
    }
    for (int64_t j = 0; j < ow; ++j) {
      col_lo.push_back(static_cast<int>(j * W / ow));
      col_hi.push_back(static_cast<int>(((j + 1) * W + ow - 1) / ow));
    }
  }
};

// Plane (b, c) of a strided tensor into a zero-bordered fp32 buffer of (H+2) x (W+2) (pad = 1),
// or into a dense H x W buffer when pad = 0.
template <int DT>
void load_plane(const void* src, const Strides& s, int64_t b, int64_t c, int64_t H, int64_t W, int pad,
                float* buf) {
  const int64_t pw = W + 2 * pad, base = b * s[0] + c * s[1];
  if (pad) {
    for (int64_t x = 0; x < pw; ++x) buf[x] = buf[(H + 1) * pw + x] = 0.f;
  }
  for (int64_t y = 0; y < H; ++y) {
    float* row = buf + (y + pad) * pw + pad;
    if (pad) row[-1] = row[W] = 0.f;
    const int64_t off = base + y * s[2];
    if (DT == dhkd::kF32 && s[3] == 1) {
      const float* in = static_cast<const float*>(src) + off;
      for (int64_t x = 0; x < W; ++x) row[x] = in[x];
    } else {
      for (int64_t x = 0; x < W; ++x) row[x] = ld<DT>(src, off + x * s[3]);
    }
  }
}

template <int DT>
void store_plane(void* dst, const Strides& s, int64_t b, int64_t c, int64_t H, int64_t W, const float* buf) {
  const int64_t base = b * s[0] + c * s[1];
  for (int64_t y = 0; y < H; ++y) {
    const float* row = buf + y * W;
    const int64_t off = base + y * s[2];
    if (DT == dhkd::kF32 && s[3] == 1) {
      float* out = static_cast<float*>(dst) + off;
      for (int64_t x = 0; x < W; ++x) out[x] = row[x];
    } else {
      for (int64_t x = 0; x < W; ++x) st<DT>(dst, off + x * s[3], row[x]);
    }
  }
}

// out (H x W, dense) = bias + 3x3 correlation of the zero-bordered input (H+2 x W+2) with w.
DHKD_SIMD void dw3x3(const float* in, int64_t H, int64_t W, const float* w, float bias, float* out) {
  const int64_t pw = W + 2;
  for (int64_t y = 0; y < H; ++y) {
    float* o = out + y * W;
    for (int64_t x = 0; x < W; ++x) o[x] = bias;
    for (int ky = 0; ky < 3; ++ky) {
      const float* r = in + (y + ky) * pw;
      const float w0 = w[ky * 3], w1 = w[ky * 3 + 1], w2 = w[ky * 3 + 2];
      for (int64_t x = 0; x < W; ++x) o[x] += w0 * r[x] + w1 * r[x + 1] + w2 * r[x + 2];
    }
  }
}

// Gradient of dw3x3 w.r.t. its input: out (H x W) = sum_k w[k] * g[y - ky + 1][x - kx + 1], with g given
// zero-bordered (H+2 x W+2).
DHKD_SIMD void dw3x3_input_grad(const float* g, int64_t H, int64_t W, const float* w, float* out) {
  const int64_t pw = W + 2;
  for (int64_t y = 0; y < H; ++y) {
    float* o = out + y * W;
    for (int64_t x = 0; x < W; ++x) o[x] = 0.f;
    for (int ky = 0; ky < 3; ++ky) {
      const float* r = g + (y + 2 - ky) * pw;
      const float w0 = w[ky * 3], w1 = w[ky * 3 + 1], w2 = w[ky * 3 + 2];
      for (int64_t x = 0; x < W; ++x) o[x] += w0 * r[x + 2] + w1 * r[x + 1] + w2 * r[x];
    }
  }
}

// Gradient of dw3x3 w.r.t. w and bias: dw[k] = sum g[y][x] * in[y + ky][x + kx] (in zero-bordered),
// db = sum g; row y of g starts at g + y * g_stride. Per-column partial sums in `cols` (10 x W floats)
// keep the inner loops element-wise (vectorisable); they are reduced once per plane.
DHKD_SIMD void dw3x3_weight_grad(const float* g, int64_t g_stride, const float* in, int64_t H, int64_t W, float* cols,
                                 float* dw, float* db) {
  const int64_t pw = W + 2;
  for (int64_t i = 0; i < 10 * W; ++i) cols[i] = 0.f;
  for (int64_t y = 0; y < H; ++y) {
    const float* gr = g + y * g_stride;
    for (int ky = 0; ky < 3; ++ky) {
      const float* r = in + (y + ky) * pw;
      float* c0 = cols + (ky * 3) * W;
      float* c1 = c0 + W;
      float* c2 = c1 + W;
      for (int64_t x = 0; x < W; ++x) {
        c0[x] += gr[x] * r[x];
        c1[x] += gr[x] * r[x + 1];
        c2[x] += gr[x] * r[x + 2];
      }
    }
    float* cb = cols + 9 * W;
    for (int64_t x = 0; x < W; ++x) cb[x] += gr[x];
  }
  for (int k = 0; k < 10; ++k) {
    double acc = 0.0;
    for (int64_t x = 0; x < W; ++x) acc += cols[k * W + x];
    if (k < 9) dw[k] = static_cast<float>(acc);
    else *db = static_cast<float>(acc);
  }
}

// Adaptive max pool of a dense H x W plane into the interior of a zero-bordered (oh+2) x (ow+2) buffer;
// argmax (flat index into the plane: the first maximum in scan order, or the last NaN, as PyTorch) when idx is not null.
void adaptive_maxpool(const float* plane, const Geometry& g, float* pooled, int32_t* idx) {
  const int64_t pw = g.ow + 2;
  for (int64_t x = 0; x < pw; ++x) pooled[x] = pooled[(g.oh + 1) * pw + x] = 0.f;
  const bool even = g.H == 2 * g.oh && g.W == 2 * g.ow;  // plain 2x2 windows
  for (int64_t i = 0; i < g.oh; ++i) {
    float* prow = pooled + (i + 1) * pw + 1;
    prow[-1] = prow[g.ow] = 0.f;
    if (even) {
      const float* r0 = plane + 2 * i * g.W;
      const float* r1 = r0 + g.W;
      for (int64_t j = 0; j < g.ow; ++j) {
        const float v[4] = {r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1]};
        float m = -std::numeric_limits<float>::infinity();
        int t = 0;
        for (int q = 0; q < 4; ++q)
          if (v[q] > m || v[q] != v[q]) {  // same rule as the general windows below
            m = v[q];
            t = q;
          }
        prow[j] = m;
        if (idx) idx[i * g.ow + j] = static_cast<int32_t>((2 * i + t / 2) * g.W + 2 * j + t % 2);
      }
      continue;
    }
    for (int64_t j = 0; j < g.ow; ++j) {
      float m = -std::numeric_limits<float>::infinity();
      int32_t am = static_cast<int32_t>(g.row_lo[i] * g.W + g.col_lo[j]);
      for (int y = g.row_lo[i]; y < g.row_hi[i]; ++y) {
        for (int x = g.col_lo[j]; x < g.col_hi[j]; ++x) {
          const float v = plane[y * g.W + x];
          if (v > m || v != v) {
            m = v;
            am = static_cast<int32_t>(y * g.W + x);
          }
        }
      }
      prow[j] = m;
      if (idx) idx[i * g.ow + j] = am;
    }
  }
}

// Dense channels-last (NHWC) storage: channels are the contiguous innermost axis.
bool nhwc(const Strides& s, int64_t C, int64_t H, int64_t W) {
  return s[1] == 1 && s[3] == C && s[2] == W * C && s[0] == H * W * C;
}

// out[c] = bias[c] + sum_k wt[k * n + c] * src[k][c] over n channels: one depth-wise 3x3 output pixel with
// the nine taps' channel vectors (a zero vector for taps in the padding) and transposed (9, n) weights.
DHKD_SIMD void dw9_channels(const float* const* src, const float* __restrict wt, const float* __restrict bias,
                            float* __restrict out, int64_t n) {
  const float *__restrict s0 = src[0], *__restrict s1 = src[1], *__restrict s2 = src[2], *__restrict s3 = src[3],
              *__restrict s4 = src[4], *__restrict s5 = src[5], *__restrict s6 = src[6], *__restrict s7 = src[7],
              *__restrict s8 = src[8];
  for (int64_t c = 0; c < n; ++c)
    out[c] = bias[c] + wt[c] * s0[c] + wt[n + c] * s1[c] + wt[2 * n + c] * s2[c] + wt[3 * n + c] * s3[c] +
             wt[4 * n + c] * s4[c] + wt[5 * n + c] * s5[c] + wt[6 * n + c] * s6[c] + wt[7 * n + c] * s7[c] +
             wt[8 * n + c] * s8[c];
}

// m[c] = max(m[c], v[c]) with PyTorch's NaN rule (a NaN wins).
DHKD_SIMD void max_channels(float* m, const float* v, int64_t n) {
  for (int64_t c = 0; c < n; ++c) m[c] = (v[c] > m[c] || v[c] != v[c]) ? v[c] : m[c];
}

// NHWC forward: one work item per (batch, half-resolution row i), covering the full-resolution rows whose
// nearest source row is i. Channels are the vectorised inner loop; the three pooled rows the half-scale
// conv needs live in per-thread scratch.
template <int DT>
void two_scale_fwd_nhwc(const void* x, void* s, const float* wa, const float* ba, const float* wb, const float* bb,
                        const Geometry& g) {
  const int64_t half = g.half, C = g.C;
  std::vector<float> wat(9 * half), wbt(9 * half);  // (tap, channel)
  for (int64_t c = 0; c < half; ++c)
    for (int k = 0; k < 9; ++k) {
      wat[k * half + c] = wa[c * 9 + k];
      wbt[k * half + c] = wb[c * 9 + k];
    }
  std::vector<int64_t> row_first(g.oh + 1, g.H);  // full-res rows of half-res row i: [row_first[i], row_first[i+1])
  for (int64_t y = g.H - 1; y >= 0; --y) row_first[g.row_src[y]] = y;
  const bool f32 = DT == dhkd::kF32;
#pragma omp parallel
  {
    std::vector<float> pooled(3 * g.ow * half), small(g.ow * half), acc(half), v(half), zeros(half, 0.f);
    std::vector<float> tapbuf(f32 ? 0 : 9 * half);
#pragma omp for schedule(static)
    for (int64_t it = 0; it < g.B * g.oh; ++it) {
      const int64_t b = it / g.oh, i = it % g.oh;
      const int64_t xb = b * g.H * g.W * C;
      // pooled rows i-1, i, i+1 (zero outside: the half-scale conv's padding)
      for (int r = 0; r < 3; ++r) {
        const int64_t pi = i + r - 1;
        float* prow = pooled.data() + r * g.ow * half;
        if (pi < 0 || pi >= g.oh) {
          std::fill(prow, prow + g.ow * half, 0.f);
          continue;
        }
        for (int64_t j = 0; j < g.ow; ++j) {
          float* m = prow + j * half;
          std::fill(m, m + half, -std::numeric_limits<float>::infinity());
          for (int yy = g.row_lo[pi]; yy < g.row_hi[pi]; ++yy)
            for (int xx = g.col_lo[j]; xx < g.col_hi[j]; ++xx) {
              const int64_t o = xb + (yy * g.W + xx) * C + half;
              if (f32) {
                max_channels(m, static_cast<const float*>(x) + o, half);
              } else {
                for (int64_t c = 0; c < half; ++c) v[c] = ld<DT>(x, o + c);
                max_channels(m, v.data(), half);
              }
            }
        }
      }
      for (int64_t j = 0; j < g.ow; ++j) {
        const float* taps[9];
        for (int k = 0; k < 9; ++k) {
          const int64_t pj = j + k % 3 - 1;
          taps[k] = (pj < 0 || pj >= g.ow) ? zeros.data() : pooled.data() + ((k / 3) * g.ow + pj) * half;
        }
        dw9_channels(taps, wbt.data(), bb, small.data() + j * half, half);
      }
      for (int64_t y = row_first[i]; y < row_first[i + 1]; ++y)
        for (int64_t xx = 0; xx < g.W; ++xx) {
          const float* taps[9];
          for (int k = 0; k < 9; ++k) {
            const int64_t sy = y + k / 3 - 1, sx = xx + k % 3 - 1;
            if (sy < 0 || sy >= g.H || sx < 0 || sx >= g.W) {
              taps[k] = zeros.data();
            } else if (f32) {
              taps[k] = static_cast<const float*>(x) + xb + (sy * g.W + sx) * C;
            } else {
              float* conv = tapbuf.data() + k * half;
              for (int64_t c = 0; c < half; ++c) conv[c] = ld<DT>(x, xb + (sy * g.W + sx) * C + c);
              taps[k] = conv;
            }
          }
          dw9_channels(taps, wat.data(), ba, acc.data(), half);
          const int64_t o = xb + (y * g.W + xx) * C;
          const float* sb = small.data() + g.col_src[xx] * half;
          for (int64_t c = 0; c < half; ++c) {
            st<DT>(s, o + c, acc[c]);
            st<DT>(s, o + half + c, sb[c]);
          }
        }
    }
  }
}

template <int DT>
void two_scale_fwd(const void* x, void* s, const float* wa, const float* ba, const float* wb, const float* bb,
                   const Geometry& g, const Strides& xs, const Strides& ss) {
  if (nhwc(xs, g.C, g.H, g.W) && nhwc(ss, g.C, g.H, g.W)) return two_scale_fwd_nhwc<DT>(x, s, wa, ba, wb, bb, g);
  const int64_t planes = g.B * g.C;
#pragma omp parallel
  {
    std::vector<float> in((g.H + 2) * (g.W + 2)), out(g.H * g.W);
    std::vector<float> pooled((g.oh + 2) * (g.ow + 2)), small(g.oh * g.ow);
#pragma omp for schedule(static)
    for (int64_t p = 0; p < planes; ++p) {
      const int64_t b = p / g.C, c = p % g.C;
      if (c < g.half) {
        load_plane<DT>(x, xs, b, c, g.H, g.W, 1, in.data());
        dw3x3(in.data(), g.H, g.W, wa + c * 9, ba[c], out.data());
      } else {
        const int64_t cb = c - g.half;
        load_plane<DT>(x, xs, b, c, g.H, g.W, 0, in.data());
        adaptive_maxpool(in.data(), g, pooled.data(), nullptr);
        dw3x3(pooled.data(), g.oh, g.ow, wb + cb * 9, bb[cb], small.data());
        for (int64_t y = 0; y < g.H; ++y) {
          const float* src = small.data() + g.row_src[y] * g.ow;
          float* o = out.data() + y * g.W;
          for (int64_t xx = 0; xx < g.W; ++xx) o[xx] = src[g.col_src[xx]];
        }
      }
      store_plane<DT>(s, ss, b, c, g.H, g.W, out.data());
    }
  }
}

template <int DT>
void two_scale_bwd(const void* ds, const void* x, void* dx, const float* wa, const float* wb, float* dw_part,
                   float* db_part, const Geometry& g, const Strides& dss, const Strides& xs, const Strides& dxs) {
  const int64_t planes = g.B * g.C;
#pragma omp parallel
  {
    std::vector<float> gpad((g.H + 2) * (g.W + 2)), xin((g.H + 2) * (g.W + 2)), out(g.H * g.W);
    std::vector<float> pooled((g.oh + 2) * (g.ow + 2)), gsmall((g.oh + 2) * (g.ow + 2)), dpool(g.oh * g.ow);
    std::vector<float> gdense(g.oh * g.ow);
    std::vector<int32_t> argmax(g.oh * g.ow);
    std::vector<float> cols(10 * g.W);
#pragma omp for schedule(static)
    for (int64_t p = 0; p < planes; ++p) {
      const int64_t b = p / g.C, c = p % g.C;
      if (c < g.half) {
        load_plane<DT>(ds, dss, b, c, g.H, g.W, 1, gpad.data());
        load_plane<DT>(x, xs, b, c, g.H, g.W, 1, xin.data());
        dw3x3_input_grad(gpad.data(), g.H, g.W, wa + c * 9, out.data());
        dw3x3_weight_grad(gpad.data() + g.W + 3, g.W + 2, xin.data(), g.H, g.W, cols.data(), dw_part + p * 9,
                          db_part + p);
      } else {
        const int64_t cb = c - g.half;
        load_plane<DT>(x, xs, b, c, g.H, g.W, 0, xin.data());
        adaptive_maxpool(xin.data(), g, pooled.data(), argmax.data());
        // upsample backward: sum the output gradient over each half-res cell's nearest-neighbour preimage
        std::fill(gdense.begin(), gdense.end(), 0.f);
        const int64_t base = b * dss[0] + c * dss[1];
        for (int64_t y = 0; y < g.H; ++y) {
          float* dst = gdense.data() + g.row_src[y] * g.ow;
          for (int64_t xx = 0; xx < g.W; ++xx) dst[g.col_src[xx]] += ld<DT>(ds, base + y * dss[2] + xx * dss[3]);
        }
        dw3x3_weight_grad(gdense.data(), g.ow, pooled.data(), g.oh, g.ow, cols.data(), dw_part + p * 9, db_part + p);
        const int64_t pw = g.ow + 2;
        std::fill(gsmall.begin(), gsmall.end(), 0.f);
        for (int64_t i = 0; i < g.oh; ++i)
          for (int64_t j = 0; j < g.ow; ++j) gsmall[(i + 1) * pw + j + 1] = gdense[i * g.ow + j];
        dw3x3_input_grad(gsmall.data(), g.oh, g.ow, wb + cb * 9, dpool.data());
        std::fill(out.begin(), out.end(), 0.f);
        for (int64_t k = 0; k < g.oh * g.ow; ++k) out[argmax[k]] += dpool[k];
      }
      store_plane<DT>(dx, dxs, b, c, g.H, g.W, out.data());
    }
  }
}

// Gating epilogue over n elements of identically laid out tensors, in chunks of kChunk: fp32 chunks run
// in place through the SIMD loops, fp16/bf16 chunks through fp32 scratch.
constexpr int64_t kChunk = 4096;

// y = relu(G) * x + x
DHKD_SIMD void gate_fwd_f32(const float* G, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = (G[i] > 0.f ? G[i] : 0.f) * x[i] + x[i];
}

// dG = dy * x * [G > 0]; dx = dy * (relu(G) + 1)
DHKD_SIMD void gate_bwd_f32(const float* dy, const float* G, const float* x, float* dG, float* dx, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const bool on = G[i] > 0.f;
    dG[i] = on ? dy[i] * x[i] : 0.f;
    dx[i] = dy[i] * ((on ? G[i] : 0.f) + 1.f);
  }
}

template <int DT>
void to_f32(const void* src, int64_t o, int64_t n, float* buf) {
  for (int64_t i = 0; i < n; ++i) buf[i] = ld<DT>(src, o + i);
}

template <int DT>
void from_f32(void* dst, int64_t o, int64_t n, const float* buf) {
  for (int64_t i = 0; i < n; ++i) st<DT>(dst, o + i, buf[i]);
}

template <int DT>
void gate_fwd(const void* G, const void* x, void* y, int64_t n) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel
  {
    std::vector<float> g(DT == dhkd::kF32 ? 0 : kChunk), xv(g.size()), yv(g.size());
#pragma omp for schedule(static)
    for (int64_t k = 0; k < chunks; ++k) {
      const int64_t o = k * kChunk, len = std::min(kChunk, n - o);
      if constexpr (DT == dhkd::kF32) {
        gate_fwd_f32(static_cast<const float*>(G) + o, static_cast<const float*>(x) + o, static_cast<float*>(y) + o,
                     len);
      } else {
        to_f32<DT>(G, o, len, g.data());
        to_f32<DT>(x, o, len, xv.data());
        gate_fwd_f32(g.data(), xv.data(), yv.data(), len);
        from_f32<DT>(y, o, len, yv.data());
      }
    }
  }
}

template <int DT>
void gate_bwd(const void* dy, const void* G, const void* x, void* dG, void* dx, int64_t n) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel
  {
    const size_t m = DT == dhkd::kF32 ? 0 : kChunk;
    std::vector<float> d(m), g(m), xv(m), dg(m), dxv(m);
#pragma omp for schedule(static)
    for (int64_t k = 0; k < chunks; ++k) {
      const int64_t o = k * kChunk, len = std::min(kChunk, n - o);
      if constexpr (DT == dhkd::kF32) {
        gate_bwd_f32(static_cast<const float*>(dy) + o, static_cast<const float*>(G) + o,
                     static_cast<const float*>(x) + o, static_cast<float*>(dG) + o, static_cast<float*>(dx) + o, len);
      } else {
        to_f32<DT>(dy, o, len, d.data());
        to_f32<DT>(G, o, len, g.data());
        to_f32<DT>(x, o, len, xv.data());
        gate_bwd_f32(d.data(), g.data(), xv.data(), dg.data(), dxv.data(), len);
        from_f32<DT>(dG, o, len, dg.data());
        from_f32<DT>(dx, o, len, dxv.data());
      }
    }
  }
}

template <typename F>
void dispatch(int dt, F&& f) {
  switch (dt) {
    case dhkd::kF32: f(std::integral_constant<int, dhkd::kF32>{}); break;
    case dhkd::kF16: f(std::integral_constant<int, dhkd::kF16>{}); break;
    case dhkd::kBF16: f(std::integral_constant<int, dhkd::kBF16>{}); break;
    default: throw std::invalid_argument("scmm: unknown dtype code " + std::to_string(dt));
  }
}

Geometry checked_geometry(int64_t B, int64_t C, int64_t H, int64_t W) {
  if (B < 1 || C < 2 || C % 2 || H < 2 || W < 2)
    throw std::invalid_argument("scmm: need B >= 1, even C >= 2, H >= 2, W >= 2");
  return Geometry(B, C, H, W);
}

template <typename T>
T* P(uintptr_t p) { return reinterpret_cast<T*>(p); }

}  // namespace

void bind_scmm_cpu(py::module_& m) {
  m.def(
      "scmm_two_scale_fwd",
      [](uintptr_t x, uintptr_t s, uintptr_t wa, uintptr_t ba, uintptr_t wb, uintptr_t bb, int dt, int64_t B,
         int64_t C, int64_t H, int64_t W, Strides xs, Strides ss) {
        const Geometry g = checked_geometry(B, C, H, W);
        dispatch(dt, [&](auto D) {
          two_scale_fwd<decltype(D)::value>(P<const void>(x), P<void>(s), P<const float>(wa), P<const float>(ba),
                                            P<const float>(wb), P<const float>(bb), g, xs, ss);
        });
      },
      py::call_guard<py::gil_scoped_release>(),
      "s = concat(dw3x3_a(x_a), up(dw3x3_b(adaptive_maxpool(x_b)))): one pass, strided I/O, fp32 weights (C/2, 9)");
  m.def(
      "scmm_two_scale_bwd",
      [](uintptr_t ds, uintptr_t x, uintptr_t dx, uintptr_t wa, uintptr_t wb, uintptr_t dw_part, uintptr_t db_part,
         int dt, int64_t B, int64_t C, int64_t H, int64_t W, Strides dss, Strides xs, Strides dxs) {
        const Geometry g = checked_geometry(B, C, H, W);
        dispatch(dt, [&](auto D) {
          two_scale_bwd<decltype(D)::value>(P<const void>(ds), P<const void>(x), P<void>(dx), P<const float>(wa),
                                            P<const float>(wb), P<float>(dw_part), P<float>(db_part), g, dss, xs,
                                            dxs);
        });
      },
      py::call_guard<py::gil_scoped_release>(),
      "dx and per-plane fp32 weight/bias gradient partials (B, C, 9), (B, C) of the two-scale branch");
  m.def(
      "scmm_gate_fwd",
      [](uintptr_t G, uintptr_t x, uintptr_t y, int dt, int64_t n) {
        dispatch(dt, [&](auto D) { gate_fwd<decltype(D)::value>(P<const void>(G), P<const void>(x), P<void>(y), n); });
      },
      py::call_guard<py::gil_scoped_release>(), "y = relu(G) * x + x (flat, same layout)");
  m.def(
      "scmm_gate_bwd",
      [](uintptr_t dy, uintptr_t G, uintptr_t x, uintptr_t dG, uintptr_t dx, int dt, int64_t n) {
        dispatch(dt, [&](auto D) {
          gate_bwd<decltype(D)::value>(P<const void>(dy), P<const void>(G), P<const void>(x), P<void>(dG),
                                       P<void>(dx), n);
        });
      },
      py::call_guard<py::gil_scoped_release>(), "dG = dy * x * [G > 0], dx = dy * (relu(G) + 1)");
}
