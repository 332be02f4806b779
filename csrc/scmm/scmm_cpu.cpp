// SCMM modulation CPU kernels (C++17/OpenMP, no torch): the fused two-scale depth-wise branch and the
// fused gating epilogue, forward and backward.
//
// Two-scale branch on x (B, C, H, W) with half = C/2, oh = H/2, ow = W/2:
//   s[:, c<half]  = dw3x3(x[:, c], wa[c]) + ba[c]
//   s[:, c>=half] = nearest_up(dw3x3(adaptive_maxpool(x[:, c], oh, ow), wb[c-half]) + bb[c-half], H, W)
// One (batch, channel) plane per OpenMP work item; dense channels_last tensors instead take NHWC paths
// vectorised across channels (one work item per batch and group of 64 channels of one half, see below).
// The pooled and half-resolution maps live only in per-thread scratch. Tensors are addressed through
// (batch, channel, row, column) element strides, so NCHW, channels_last and strided views need no copy.
// Depth-wise weights are fp32 (C/2, 9); I/O dtype is fp32/fp16/bf16 with fp32 math. Weight/bias gradients come back per plane (B, C, 9) and (B, C) in
// fp32 for the caller to sum over the batch (deterministic, no atomics).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#include "common/dtype.h"
#include "common/simd.h"
#include "common/strided.h"
#include "scmm/scmm.h"

#pragma GCC diagnostic ignored "-Wpsabi"  // vector arguments only cross always_inline helpers

namespace dhkd {
namespace {

struct Geometry {
  int64_t B, C, H, W, half, oh, ow;
  std::vector<int> row_src, col_src;        // nearest upsample: full-res index -> half-res index
  std::vector<int> row_lo, row_hi, col_lo, col_hi;  // adaptive pool windows [lo, hi)
  std::vector<int> row_w0, row_w1, col_w0, col_w1;  // the windows holding full-res row y / column x: [w0, w1)
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
    windows_of(row_lo, row_hi, H, row_w0, row_w1);
    windows_of(col_lo, col_hi, W, col_w0, col_w1);
  }
  static void windows_of(const std::vector<int>& lo, const std::vector<int>& hi, int64_t n, std::vector<int>& w0,
                         std::vector<int>& w1) {
    w0.assign(n, static_cast<int>(lo.size()));
    w1.assign(n, 0);
    for (int i = 0; i < static_cast<int>(lo.size()); ++i)
      for (int v = lo[i]; v < hi[i]; ++v) w0[v] = std::min(w0[v], i), w1[v] = std::max(w1[v], i + 1);
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

// ---- dense channels-last (NHWC) paths ----------------------------------------------------------------
// One OpenMP work item per (batch, half, group of up to kGroup blocks of kLanes channels) over the whole
// plane. The channels of a block are the lanes of one fp32 vector (GCC vector extensions, lowered to
// AVX-512 / AVX2 / SSE by the clones); the loops run rows (or pixels) outside and blocks inside, so each
// pixel's group of channels is read as one contiguous run. Pixels are `ps` floats apart: C straight from an
// fp32 tensor, nb * kLanes in per-thread scratch for fp16/bf16 or a group ending in a partial block. Each
// channel's weight gradient is summed by one work item in a fixed order, so the partials are deterministic
// and independent of the thread count.

constexpr int kLanes = 16, kGroup = 4;
typedef float vf __attribute__((vector_size(kLanes * 4)));

DHKD_INLINE vf ldv(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
DHKD_INLINE void stv(float* p, vf v) { std::memcpy(p, &v, sizeof v); }

// Slides the zero-padded 3x3 input window of one block along a row in registers (three loads per
// column): for x = 0..W-1 calls f(x, v) with v[3 * r + j] = row r (0 above, present only if TOP; 1; 2 below,
// only if BOT) at column x + j - 1, zero outside the image.
template <bool TOP, bool BOT, class F>
DHKD_INLINE void slide_window(const float* r0, const float* r1, const float* r2, int64_t ps, int64_t W, F&& f) {
  const vf z = {};
  vf v[9] = {z, TOP ? ldv(r0) : z, z, z, ldv(r1), z, z, BOT ? ldv(r2) : z, z};
  for (int64_t x = 0; x < W; ++x) {
    const int64_t q = (x + 1) * ps;
    const bool next = x + 1 < W;
    v[2] = TOP && next ? ldv(r0 + q) : z;
    v[5] = next ? ldv(r1 + q) : z;
    v[8] = BOT && next ? ldv(r2 + q) : z;
    f(x, v);
    for (int r = 0; r < 3; ++r) v[3 * r] = v[3 * r + 1], v[3 * r + 1] = v[3 * r + 2];
  }
}

// One output row of one block of a zero-padded depth-wise 3x3 correlation: o[x] = bias + sum_k w[k] *
// r_{k/3}[x + k%3 - 1]: nine FMAs and one store per output vector.
template <bool TOP, bool BOT>
DHKD_INLINE void conv_row(const float* r0, const float* r1, const float* r2, int64_t ps, int64_t W, const vf (&w)[9],
                          vf bias, float* o, int64_t pso) {
  slide_window<TOP, BOT>(r0, r1, r2, ps, W, [&](int64_t x, const vf (&v)[9]) __attribute__((always_inline)) {
    vf acc = bias + w[3] * v[3] + w[4] * v[4] + w[5] * v[5];
    if (TOP) acc += w[0] * v[0] + w[1] * v[1] + w[2] * v[2];
    if (BOT) acc += w[6] * v[6] + w[7] * v[7] + w[8] * v[8];
    stv(o + x * pso, acc);
  });
}

// out (H x W pixels, pso apart) = bias + zero-padded depth-wise 3x3 correlation of in (H x W, ps apart) for
// nb blocks (block t at float offset t * kLanes of a pixel); wt: per block 9 tap vectors, bias: per block
// one vector.
DHKD_SIMD void conv_plane(const float* in, int64_t ps, int64_t H, int64_t W, int nb, const float* wt,
                          const float* bias, float* out, int64_t pso) {
  const int64_t rs = W * ps;
  for (int64_t y = 0; y < H; ++y)
    for (int t = 0; t < nb; ++t) {
      vf w[9];
      for (int k = 0; k < 9; ++k) w[k] = ldv(wt + (t * 9 + k) * kLanes);
      const vf b = ldv(bias + t * kLanes);
      const float* r1 = in + y * rs + t * kLanes;
      const float* r0 = y > 0 ? r1 - rs : r1;
      const float* r2 = y + 1 < H ? r1 + rs : r1;
      float* o = out + y * W * pso + t * kLanes;
      if (y > 0 && y + 1 < H) conv_row<true, true>(r0, r1, r2, ps, W, w, b, o, pso);
      else if (y > 0) conv_row<true, false>(r0, r1, r2, ps, W, w, b, o, pso);
      else if (y + 1 < H) conv_row<false, true>(r0, r1, r2, ps, W, w, b, o, pso);
      else conv_row<false, false>(r0, r1, r2, ps, W, w, b, o, pso);
    }
}

// acc[k] += sum_x g[x] * r_{k/3}[x + k%3 - 1] (zero-padded), acc[9] += sum_x g[x]: one row of one block
// of the depth-wise 3x3 weight/bias gradient.
template <bool TOP, bool BOT>
DHKD_INLINE void wgrad_row(const float* g, int64_t psg, const float* r0, const float* r1, const float* r2, int64_t ps,
                           int64_t W, vf (&acc)[10]) {
  slide_window<TOP, BOT>(r0, r1, r2, ps, W, [&](int64_t x, const vf (&v)[9]) __attribute__((always_inline)) {
    const vf gv = ldv(g + x * psg);
    for (int k = TOP ? 0 : 3; k < (BOT ? 9 : 6); ++k) acc[k] += gv * v[k];
    acc[9] += gv;
  });
}

// sums (per block 10 x kLanes, fp64) += per-lane gradient of conv_plane's nine taps and bias, with g the
// output gradient (H x W, psg apart) and in the input (H x W, ps apart). Rows are summed in fp32, the row
// sums in fp64.
DHKD_SIMD void wgrad_plane(const float* g, int64_t psg, const float* in, int64_t ps, int64_t H, int64_t W, int nb,
                           double* sums) {
  const int64_t rs = W * ps;
  for (int64_t y = 0; y < H; ++y)
    for (int t = 0; t < nb; ++t) {
      const float* r1 = in + y * rs + t * kLanes;
      const float* r0 = y > 0 ? r1 - rs : r1;
      const float* r2 = y + 1 < H ? r1 + rs : r1;
      const float* gr = g + y * W * psg + t * kLanes;
      vf acc[10] = {};
      if (y > 0 && y + 1 < H) wgrad_row<true, true>(gr, psg, r0, r1, r2, ps, W, acc);
      else if (y > 0) wgrad_row<true, false>(gr, psg, r0, r1, r2, ps, W, acc);
      else if (y + 1 < H) wgrad_row<false, true>(gr, psg, r0, r1, r2, ps, W, acc);
      else wgrad_row<false, false>(gr, psg, r0, r1, r2, ps, W, acc);
      double* st = sums + t * 10 * kLanes;
      for (int k = 0; k < 10; ++k)
        for (int l = 0; l < kLanes; ++l) st[k * kLanes + l] += acc[k][l];
    }
}

// Adaptive max pool of in (H x W pixels, ps apart) into pooled (oh x ow pixels of nb vectors, dense); with
// idx, also the per-lane argmax (flat y * W + x): the first maximum in scan order, or the last NaN, as PyTorch.
// Comparisons and selects are plain lane loops: GCC lowers vector-extension comparisons in target_clones
// functions for the baseline ISA (lane by lane), while its auto-vectoriser uses each clone's ISA.
DHKD_SIMD void pool_plane(const float* in, int64_t ps, const Geometry& g, int nb, float* pooled, int32_t* idx) {
  const int64_t n = nb * kLanes;
  for (int64_t i = 0; i < g.oh; ++i)
    for (int64_t j = 0; j < g.ow; ++j) {
      float* __restrict m = pooled + (i * g.ow + j) * n;
      int32_t* __restrict am = idx ? idx + (i * g.ow + j) * n : nullptr;
      for (int64_t l = 0; l < n; ++l) m[l] = -std::numeric_limits<float>::infinity();
      if (am) std::fill(am, am + n, static_cast<int32_t>(g.row_lo[i] * g.W + g.col_lo[j]));
      for (int y = g.row_lo[i]; y < g.row_hi[i]; ++y)
        for (int x = g.col_lo[j]; x < g.col_hi[j]; ++x) {
          const int32_t pos = static_cast<int32_t>(y * g.W + x);
          const float* __restrict v = in + pos * ps;
          if (am) {
            for (int64_t l = 0; l < n; ++l) {
              const bool take = v[l] > m[l] || v[l] != v[l];
              m[l] = take ? v[l] : m[l];
              am[l] = take ? pos : am[l];
            }
          } else {
            for (int64_t l = 0; l < n; ++l) m[l] = (v[l] > m[l] || v[l] != v[l]) ? v[l] : m[l];
          }
        }
    }
}

// Nearest upsample of small (oh x ow pixels of nb vectors, dense) to out (H x W pixels, pso apart).
DHKD_SIMD void upsample_plane(const float* small, const Geometry& g, int nb, float* out, int64_t pso) {
  const int64_t sp = nb * kLanes;
  for (int64_t y = 0; y < g.H; ++y) {
    const float* src = small + g.row_src[y] * g.ow * sp;
    float* o = out + y * g.W * pso;
    for (int64_t x = 0; x < g.W; ++x)
      for (int t = 0; t < nb; ++t) stv(o + x * pso + t * kLanes, ldv(src + g.col_src[x] * sp + t * kLanes));
  }
}

// Upsample backward: gsmall (oh x ow pixels of nb vectors, dense) = sum of g (H x W pixels, ps apart) over
// each cell's preimage, in scan order.
DHKD_SIMD void upsample_grad_plane(const float* g, int64_t ps, const Geometry& geo, int nb, float* gsmall) {
  const int64_t sp = nb * kLanes;
  std::memset(gsmall, 0, sizeof(float) * geo.oh * geo.ow * sp);
  for (int64_t y = 0; y < geo.H; ++y) {
    float* dst = gsmall + geo.row_src[y] * geo.ow * sp;
    const float* gr = g + y * geo.W * ps;
    for (int64_t x = 0; x < geo.W; ++x)
      for (int t = 0; t < nb; ++t) {
        float* d = dst + geo.col_src[x] * sp + t * kLanes;
        stv(d, ldv(d) + ldv(gr + x * ps + t * kLanes));
      }
  }
}

// Max-pool backward: out[y][x] = sum over the windows (i, j) holding pixel (y, x), in scan order, of
// dpool[i][j] where that window's argmax is (y, x) (out: H x W pixels, pso apart; dpool, idx as pooled).
DHKD_SIMD void unpool_plane(const int32_t* idx, const float* dpool, const Geometry& g, int nb, float* out,
                            int64_t pso) {
  const int64_t n = nb * kLanes;
  for (int64_t y = 0; y < g.H; ++y)
    for (int64_t x = 0; x < g.W; ++x) {
      const int32_t pos = static_cast<int32_t>(y * g.W + x);
      float* __restrict o = out + pos * pso;
      for (int64_t l = 0; l < n; ++l) o[l] = 0.f;
      for (int i = g.row_w0[y]; i < g.row_w1[y]; ++i)
        for (int j = g.col_w0[x]; j < g.col_w1[x]; ++j) {
          const int32_t* __restrict a = idx + (i * g.ow + j) * n;
          const float* __restrict d = dpool + (i * g.ow + j) * n;
          for (int64_t l = 0; l < n; ++l) o[l] += a[l] == pos ? d[l] : 0.f;
        }
    }
}

template <int DT>
DHKD_INLINE void gather_t(const void* src, int64_t off, int64_t npix, int64_t C, int cnt, int width, float* dst) {
  for (int64_t p = 0; p < npix; ++p) {
    float* d = dst + p * width;
    const int64_t o = off + p * C;
    for (int l = 0; l < cnt; ++l) d[l] = ld<DT>(src, o + l);
    for (int l = cnt; l < width; ++l) d[l] = 0.f;
  }
}

template <int DT>
DHKD_INLINE void scatter_t(void* dst, int64_t off, int64_t npix, int64_t C, int cnt, int width, const float* src) {
  for (int64_t p = 0; p < npix; ++p) {
    const float* s = src + p * width;
    const int64_t o = off + p * C;
    for (int l = 0; l < cnt; ++l) st<DT>(dst, o + l, s[l]);
  }
}

// Channels [off, off + cnt) of npix NHWC pixels (C apart, storage dtype dt) <-> dense fp32 pixels of
// `width` floats (lanes past cnt read as zero).
DHKD_SIMD void gather_lanes(const void* src, int dt, int64_t off, int64_t npix, int64_t C, int cnt, int width,
                            float* dst) {
  switch (dt) {
    case dhkd::kF16: return gather_t<dhkd::kF16>(src, off, npix, C, cnt, width, dst);
    case dhkd::kBF16: return gather_t<dhkd::kBF16>(src, off, npix, C, cnt, width, dst);
    default: return gather_t<dhkd::kF32>(src, off, npix, C, cnt, width, dst);
  }
}

DHKD_SIMD void scatter_lanes(void* dst, int dt, int64_t off, int64_t npix, int64_t C, int cnt, int width,
                             const float* src) {
  switch (dt) {
    case dhkd::kF16: return scatter_t<dhkd::kF16>(dst, off, npix, C, cnt, width, src);
    case dhkd::kBF16: return scatter_t<dhkd::kBF16>(dst, off, npix, C, cnt, width, src);
    default: return scatter_t<dhkd::kF32>(dst, off, npix, C, cnt, width, src);
  }
}

// Work item `it` of an NHWC pass: batch b, half (0: full scale, 1: half scale), channel cw within the
// half (c0 in the tensor), cnt channels in nb blocks; direct when fp32 without a partial block (no scratch).
struct Group {
  int64_t b, half, cw, c0;
  int cnt, nb;
  bool direct;
  static int64_t per_half(const Geometry& g) { return (g.half + kGroup * kLanes - 1) / (kGroup * kLanes); }
  static int64_t count(const Geometry& g) { return g.B * 2 * per_half(g); }
  Group(int64_t it, const Geometry& g, int dt) {
    const int64_t n = per_half(g), r = it % (2 * n);
    b = it / (2 * n);
    half = r / n;
    cw = (r % n) * kGroup * kLanes;
    c0 = half * g.half + cw;
    cnt = static_cast<int>(std::min<int64_t>(kGroup * kLanes, g.half - cw));
    nb = (cnt + kLanes - 1) / kLanes;
    direct = dt == dhkd::kF32 && cnt == nb * kLanes;
  }
};

// Per-block tap-major weight vectors of a group (wt: nb x 9 x kLanes; flip: the 180-degree rotated kernel)
// and bias vectors (nb x kLanes; zero without bias); lanes past cnt are zero.
void group_weights(const float* w, const float* bias, const Group& q, bool flip, float* wt, float* bt) {
  for (int t = 0; t < q.nb; ++t)
    for (int l = 0; l < kLanes; ++l) {
      const int64_t i = t * kLanes + l, c = q.cw + i;
      for (int k = 0; k < 9; ++k) wt[(t * 9 + k) * kLanes + l] = i < q.cnt ? w[c * 9 + (flip ? 8 - k : k)] : 0.f;
      bt[i] = i < q.cnt && bias ? bias[c] : 0.f;
    }
}

template <int DT>
void two_scale_fwd_nhwc(const void* x, void* s, const float* wa, const float* ba, const float* wb, const float* bb,
                        const Geometry& g) {
  const int64_t HW = g.H * g.W, items = Group::count(g), width = kGroup * kLanes;
#pragma omp parallel
  {
    const bool any_scratch = DT != dhkd::kF32 || g.half % kLanes;
    std::vector<float> in(any_scratch ? HW * width : 0), out(in.size());
    std::vector<float> pooled(g.oh * g.ow * width), small(pooled.size());
    float wt[kGroup * 9 * kLanes], bt[kGroup * kLanes];
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) {
      const Group q(it, g, DT);
      group_weights(q.half ? wb : wa, q.half ? bb : ba, q, false, wt, bt);
      const int64_t off = q.b * HW * g.C + q.c0, ps = q.direct ? g.C : q.nb * kLanes;
      const float* xi = q.direct ? static_cast<const float*>(x) + off : in.data();
      float* o = q.direct ? static_cast<float*>(s) + off : out.data();
      if (!q.direct) gather_lanes(x, DT, off, HW, g.C, q.cnt, q.nb * kLanes, in.data());
      if (q.half == 0) {
        conv_plane(xi, ps, g.H, g.W, q.nb, wt, bt, o, ps);
      } else {
        pool_plane(xi, ps, g, q.nb, pooled.data(), nullptr);
        conv_plane(pooled.data(), q.nb * kLanes, g.oh, g.ow, q.nb, wt, bt, small.data(), q.nb * kLanes);
        upsample_plane(small.data(), g, q.nb, o, ps);
      }
      if (!q.direct) scatter_lanes(s, DT, off, HW, g.C, q.cnt, q.nb * kLanes, out.data());
    }
  }
}

template <int DT>
void two_scale_bwd_nhwc(const void* ds, const void* x, void* dx, const float* wa, const float* wb, float* dw_part,
                        float* db_part, const Geometry& g) {
  const int64_t HW = g.H * g.W, items = Group::count(g), width = kGroup * kLanes;
#pragma omp parallel
  {
    const bool any_scratch = DT != dhkd::kF32 || g.half % kLanes;
    std::vector<float> gin(any_scratch ? HW * width : 0), xin(gin.size()), out(gin.size());
    const int64_t sm = g.oh * g.ow * width;
    std::vector<float> pooled(sm), gsmall(sm), dpool(sm);
    std::vector<int32_t> argmax(sm);
    float wt[kGroup * 9 * kLanes], zero[kGroup * kLanes];
    double sums[kGroup * 10 * kLanes];
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) {
      const Group q(it, g, DT);
      group_weights(q.half ? wb : wa, nullptr, q, true, wt, zero);
      const int64_t off = q.b * HW * g.C + q.c0, ps = q.direct ? g.C : q.nb * kLanes, sp = q.nb * kLanes;
      const float* gi = q.direct ? static_cast<const float*>(ds) + off : gin.data();
      const float* xi = q.direct ? static_cast<const float*>(x) + off : xin.data();
      float* o = q.direct ? static_cast<float*>(dx) + off : out.data();
      if (!q.direct) {
        gather_lanes(ds, DT, off, HW, g.C, q.cnt, sp, gin.data());
        gather_lanes(x, DT, off, HW, g.C, q.cnt, sp, xin.data());
      }
      std::fill(sums, sums + q.nb * 10 * kLanes, 0.0);
      if (q.half == 0) {
        conv_plane(gi, ps, g.H, g.W, q.nb, wt, zero, o, ps);  // input gradient: the flipped kernel
        wgrad_plane(gi, ps, xi, ps, g.H, g.W, q.nb, sums);
      } else {
        pool_plane(xi, ps, g, q.nb, pooled.data(), argmax.data());
        upsample_grad_plane(gi, ps, g, q.nb, gsmall.data());
        wgrad_plane(gsmall.data(), sp, pooled.data(), sp, g.oh, g.ow, q.nb, sums);
        conv_plane(gsmall.data(), sp, g.oh, g.ow, q.nb, wt, zero, dpool.data(), sp);
        unpool_plane(argmax.data(), dpool.data(), g, q.nb, o, ps);
      }
      if (!q.direct) scatter_lanes(dx, DT, off, HW, g.C, q.cnt, sp, out.data());
      for (int i = 0; i < q.cnt; ++i) {
        const int64_t p = q.b * g.C + q.c0 + i;
        const double* st = sums + (i / kLanes) * 10 * kLanes + i % kLanes;
        for (int k = 0; k < 9; ++k) dw_part[p * 9 + k] = static_cast<float>(st[k * kLanes]);
        db_part[p] = static_cast<float>(st[9 * kLanes]);
      }
    }
  }
}

template <int DT>
void two_scale_fwd(const void* x, void* s, const float* wa, const float* ba, const float* wb, const float* bb,
                   const Geometry& g, const Strides& xs, const Strides& ss) {
  if (is_nhwc(xs, g.C, g.H, g.W) && is_nhwc(ss, g.C, g.H, g.W)) return two_scale_fwd_nhwc<DT>(x, s, wa, ba, wb, bb, g);
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
  if (is_nhwc(dss, g.C, g.H, g.W) && is_nhwc(xs, g.C, g.H, g.W) && is_nhwc(dxs, g.C, g.H, g.W))
    return two_scale_bwd_nhwc<DT>(ds, x, dx, wa, wb, dw_part, db_part, g);
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

Geometry checked_geometry(int64_t B, int64_t C, int64_t H, int64_t W) {
  if (B < 1 || C < 2 || C % 2 || H < 2 || W < 2)
    throw std::invalid_argument("scmm: need B >= 1, even C >= 2, H >= 2, W >= 2");
  return Geometry(B, C, H, W);
}

}  // namespace

void scmm_cpu_two_scale_fwd(std::uintptr_t x, std::uintptr_t s, std::uintptr_t wa, std::uintptr_t ba,
                            std::uintptr_t wb, std::uintptr_t bb, int dtype, int64_t B, int64_t C, int64_t H,
                            int64_t W, const Strides& xs, const Strides& ss) {
  const Geometry g = checked_geometry(B, C, H, W);
  dispatch_dtype(dtype, "scmm", [&](auto D) {
    two_scale_fwd<decltype(D)::value>(as_ptr<const void>(x), as_ptr<void>(s), as_ptr<const float>(wa),
                                      as_ptr<const float>(ba), as_ptr<const float>(wb), as_ptr<const float>(bb), g,
                                      xs, ss);
  });
}

void scmm_cpu_two_scale_bwd(std::uintptr_t ds, std::uintptr_t x, std::uintptr_t dx, std::uintptr_t wa,
                            std::uintptr_t wb, std::uintptr_t dw_part, std::uintptr_t db_part, int dtype, int64_t B,
                            int64_t C, int64_t H, int64_t W, const Strides& dss, const Strides& xs,
                            const Strides& dxs) {
  const Geometry g = checked_geometry(B, C, H, W);
  dispatch_dtype(dtype, "scmm", [&](auto D) {
    two_scale_bwd<decltype(D)::value>(as_ptr<const void>(ds), as_ptr<const void>(x), as_ptr<void>(dx),
                                      as_ptr<const float>(wa), as_ptr<const float>(wb), as_ptr<float>(dw_part),
                                      as_ptr<float>(db_part), g, dss, xs, dxs);
  });
}

void scmm_cpu_gate_fwd(std::uintptr_t G, std::uintptr_t x, std::uintptr_t y, int dtype, int64_t n) {
  dispatch_dtype(dtype, "scmm", [&](auto D) {
    gate_fwd<decltype(D)::value>(as_ptr<const void>(G), as_ptr<const void>(x), as_ptr<void>(y), n);
  });
}

void scmm_cpu_gate_bwd(std::uintptr_t dy, std::uintptr_t G, std::uintptr_t x, std::uintptr_t dG, std::uintptr_t dx,
                       int dtype, int64_t n) {
  dispatch_dtype(dtype, "scmm", [&](auto D) {
    gate_bwd<decltype(D)::value>(as_ptr<const void>(dy), as_ptr<const void>(G), as_ptr<const void>(x),
                                 as_ptr<void>(dG), as_ptr<void>(dx), n);
  });
}

}  // namespace dhkd
