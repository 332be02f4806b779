// SCMM modulation CUDA kernels (no torch): the two-scale depth-wise branch and the gating epilogue,
// forward and backward. Same algorithm as the Triton backend (dhkd_kernels/scmm/triton.py):
//   forward: one thread per output pixel writes the concatenated map s; the half-resolution branch pools
//            and convolves on the fly (nothing intermediate is stored).
//   backward: upsample-gradient sums and the half-resolution depth-wise gradients in two small kernels,
//            then one full-resolution kernel that routes the pooled gradient to each window's recomputed
//            argmax (first max in scan order, last NaN, as PyTorch) and does the full-scale half.
// Weight/bias gradients are per-block partials (planes, blocks, 10) summed by the caller.
#include "common/cuda_helpers.cuh"
#include "scmm/scmm.h"

using namespace dhkd_cuda;

namespace {

struct Geo {
  int C, H, W, oh, ow, half;
};

template <typename T>
__device__ void window_max(const T* x, long long base, const Strides4& s, int i, int j, const Geo& g, float* m,
                           int* am) {
  const int r0 = i * g.H / g.oh, r1 = ((i + 1) * g.H + g.oh - 1) / g.oh;
  const int c0 = j * g.W / g.ow, c1 = ((j + 1) * g.W + g.ow - 1) / g.ow;
  float best = -INFINITY;
  int arg = r0 * g.W + c0;
  for (int r = r0; r < r1; ++r)
    for (int c = c0; c < c1; ++c) {
      const float v = to_f32(x[base + r * s.h + c * s.w]);
      if (v > best || isnan(v)) {
        best = v;
        arg = r * g.W + c;
      }
    }
  *m = best;
  *am = arg;
}

template <typename T>
__global__ void two_scale_fwd_kernel(const T* x, T* s, const float* wa, const float* ba, const float* wb,
                                     const float* bb, Geo g, Strides4 xs, Strides4 ss) {
  const int plane = blockIdx.y, b = plane / g.C, c = plane % g.C;
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= g.H * g.W) return;
  const int y = p / g.W, xx = p % g.W;
  const long long base = xs.at(b, c, 0, 0);
  float acc;
  if (c < g.half) {
    acc = ba[c];
    for (int k = 0; k < 9; ++k) {
      const int yy = y + k / 3 - 1, xc = xx + k % 3 - 1;
      if (yy >= 0 && yy < g.H && xc >= 0 && xc < g.W) acc += wa[c * 9 + k] * to_f32(x[base + yy * xs.h + xc * xs.w]);
    }
  } else {
    const int cb = c - g.half, i = y * g.oh / g.H, j = xx * g.ow / g.W;
    acc = bb[cb];
    for (int k = 0; k < 9; ++k) {
      const int pi = i + k / 3 - 1, pj = j + k % 3 - 1;
      if (pi < 0 || pi >= g.oh || pj < 0 || pj >= g.ow) continue;
      float m;
      int am;
      window_max(x, base, xs, pi, pj, g, &m, &am);
      acc += wb[cb * 9 + k] * m;
    }
  }
  s[ss.at(b, c, y, xx)] = from_f32<T>(acc);
}

// gsum[b*half + cb][i*ow + j] = sum of ds over the nearest-upsample preimage of half-res cell (i, j).
template <typename T>
__global__ void upsample_grad_kernel(const T* ds, float* gsum, Geo g, Strides4 dss) {
  const int plane = blockIdx.y, b = plane / g.half, c = plane % g.half + g.half;
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= g.oh * g.ow) return;
  const int i = p / g.ow, j = p % g.ow;
  const int y0 = (i * g.H + g.oh - 1) / g.oh, y1 = ((i + 1) * g.H + g.oh - 1) / g.oh;
  const int x0 = (j * g.W + g.ow - 1) / g.ow, x1 = ((j + 1) * g.W + g.ow - 1) / g.ow;
  float acc = 0.f;
  for (int y = y0; y < y1; ++y)
    for (int x = x0; x < x1; ++x) acc += to_f32(ds[dss.at(b, c, y, x)]);
  gsum[(long long)plane * g.oh * g.ow + p] = acc;
}

// dpool = depth-wise input gradient of gsum; per-block partials of dW_b (9 taps) and db_b.
template <typename T>
__global__ void pooled_grad_kernel(const T* x, const float* gsum, const float* wb, float* dpool, float* part,
                                   Geo g, Strides4 xs) {
  __shared__ float smem[kThreads / 32];
  const int plane = blockIdx.y, b = plane / g.half, cb = plane % g.half;
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  const bool live = p < g.oh * g.ow;
  const int i = live ? p / g.ow : 0, j = live ? p % g.ow : 0;
  const float* gp = gsum + (long long)plane * g.oh * g.ow;
  float m = 0.f, taps[9], dp = 0.f;
  if (live) {
    int am;
    window_max(x, xs.at(b, cb + g.half, 0, 0), xs, i, j, g, &m, &am);
  }
  for (int k = 0; k < 9; ++k) {
    const int gi = i - (k / 3 - 1), gj = j - (k % 3 - 1);
    const float gv = (live && gi >= 0 && gi < g.oh && gj >= 0 && gj < g.ow) ? gp[gi * g.ow + gj] : 0.f;
    dp += wb[cb * 9 + k] * gv;
    taps[k] = m * gv;
  }
  if (live) dpool[(long long)plane * g.oh * g.ow + p] = dp;
  float* out = part + ((long long)plane * gridDim.x + blockIdx.x) * 10;
  for (int k = 0; k < 9; ++k) {
    const float t = block_sum(taps[k], smem);
    if (threadIdx.x == 0) out[k] = t;
  }
  const float t = block_sum(live ? gp[p] : 0.f, smem);
  if (threadIdx.x == 0) out[9] = t;
}

template <typename T>
__global__ void two_scale_dx_kernel(const T* ds, const T* x, T* dx, const float* wa, const float* dpool,
                                    float* part, Geo g, Strides4 dss, Strides4 xs, Strides4 dxs) {
  __shared__ float smem[kThreads / 32];
  const int plane = blockIdx.y, b = plane / g.C, c = plane % g.C;
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  const bool live = p < g.H * g.W;
  const int y = live ? p / g.W : 0, xx = live ? p % g.W : 0;
  float acc = 0.f;
  if (c < g.half) {  // uniform per block: the whole block belongs to one plane
    const float gc = live ? to_f32(ds[dss.at(b, c, y, xx)]) : 0.f;
    float* out = part + ((long long)(b * g.half + c) * gridDim.x + blockIdx.x) * 10;
    for (int k = 0; k < 9; ++k) {
      const int dy = k / 3 - 1, dxo = k % 3 - 1;
      const int gy = y - dy, gx = xx - dxo, sy = y + dy, sx = xx + dxo;
      if (live && gy >= 0 && gy < g.H && gx >= 0 && gx < g.W) acc += wa[c * 9 + k] * to_f32(ds[dss.at(b, c, gy, gx)]);
      const float xv = (live && sy >= 0 && sy < g.H && sx >= 0 && sx < g.W) ? to_f32(x[xs.at(b, c, sy, sx)]) : 0.f;
      const float t = block_sum(gc * xv, smem);
      if (threadIdx.x == 0) out[k] = t;
    }
    const float t = block_sum(gc, smem);
    if (threadIdx.x == 0) out[9] = t;
  } else if (live) {
    const float* dp = dpool + (long long)(b * g.half + c - g.half) * g.oh * g.ow;
    const int i0 = y * g.oh / g.H, j0 = xx * g.ow / g.W, me = y * g.W + xx;
    for (int k = 0; k < 9; ++k) {
      const int i = i0 + k / 3 - 1, j = j0 + k % 3 - 1;
      if (i < 0 || i >= g.oh || j < 0 || j >= g.ow) continue;
      float m;
      int am;
      window_max(x, xs.at(b, c, 0, 0), xs, i, j, g, &m, &am);
      if (am == me) acc += dp[i * g.ow + j];
    }
  }
  if (live) dx[dxs.at(b, c, y, xx)] = from_f32<T>(acc);
}

template <typename T>
__global__ void gate_fwd_kernel(const T* G, const T* x, T* y, long long n) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    const float gv = to_f32(G[i]), xv = to_f32(x[i]);
    y[i] = from_f32<T>(fmaxf(gv, 0.f) * xv + xv);
  }
}

template <typename T>
__global__ void gate_bwd_kernel(const T* dy, const T* G, const T* x, T* dG, T* dx, long long n) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    const float d = to_f32(dy[i]), gv = to_f32(G[i]), xv = to_f32(x[i]);
    const bool on = gv > 0.f;
    dG[i] = from_f32<T>(on ? d * xv : 0.f);
    dx[i] = from_f32<T>(d * ((on ? gv : 0.f) + 1.f));
  }
}

Geo make_geo(int B, int C, int H, int W) {
  if (B < 1 || C < 2 || C % 2 || H < 2 || W < 2)
    throw std::invalid_argument("scmm CUDA: need B >= 1, even C >= 2, H >= 2, W >= 2");
  check_grid((long long)B * C, "scmm CUDA");
  return Geo{C, H, W, H / 2, W / 2, C / 2};
}

int blocks_for(long long n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

long long grid_stride_blocks(long long n) {
  const long long b = (n + kThreads - 1) / kThreads;
  return b < 65535 * 8 ? (b > 0 ? b : 1) : 65535 * 8;
}

}  // namespace

// Partial-sum block counts the caller allocates (planes, blocks, 10) for: full and half resolution.
int scmm_cuda_blocks_full(int H, int W) { return blocks_for((long long)H * W); }
int scmm_cuda_blocks_half(int H, int W) { return blocks_for((long long)(H / 2) * (W / 2)); }

void scmm_cuda_two_scale_fwd(const void* x, void* s, const float* wa, const float* ba, const float* wb,
                             const float* bb, int dtype, int B, int C, int H, int W, const long long* xs,
                             const long long* ss, cudaStream_t stream) {
  const Geo g = make_geo(B, C, H, W);
  const Strides4 X{xs[0], xs[1], xs[2], xs[3]}, S{ss[0], ss[1], ss[2], ss[3]};
  dispatch_dtype(dtype, "scmm CUDA", [&](auto t) {
    using T = decltype(t);
    two_scale_fwd_kernel<T><<<dim3(blocks_for((long long)H * W), B * C), kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<T*>(s), wa, ba, wb, bb, g, X, S);
  });
  check_launch("scmm CUDA two_scale_fwd");
}

void scmm_cuda_two_scale_bwd(const void* ds, const void* x, void* dx, const float* wa, const float* wb,
                             float* gsum, float* dpool, float* part_a, float* part_b, int dtype, int B, int C, int H,
                             int W, const long long* dss, const long long* xs, const long long* dxs,
                             cudaStream_t stream) {
  const Geo g = make_geo(B, C, H, W);
  const Strides4 DS{dss[0], dss[1], dss[2], dss[3]}, X{xs[0], xs[1], xs[2], xs[3]}, DX{dxs[0], dxs[1], dxs[2], dxs[3]};
  const dim3 half_grid(scmm_cuda_blocks_half(H, W), B * g.half), full_grid(scmm_cuda_blocks_full(H, W), B * C);
  dispatch_dtype(dtype, "scmm CUDA", [&](auto t) {
    using T = decltype(t);
    upsample_grad_kernel<T><<<half_grid, kThreads, 0, stream>>>(static_cast<const T*>(ds), gsum, g, DS);
    pooled_grad_kernel<T><<<half_grid, kThreads, 0, stream>>>(static_cast<const T*>(x), gsum, wb, dpool, part_b, g, X);
    two_scale_dx_kernel<T><<<full_grid, kThreads, 0, stream>>>(static_cast<const T*>(ds), static_cast<const T*>(x),
                                                               static_cast<T*>(dx), wa, dpool, part_a, g, DS, X, DX);
  });
  check_launch("scmm CUDA two_scale_bwd");
}

void scmm_cuda_gate_fwd(const void* G, const void* x, void* y, int dtype, long long n, cudaStream_t stream) {
  if (n < 1) return;
  dispatch_dtype(dtype, "scmm CUDA", [&](auto t) {
    using T = decltype(t);
    gate_fwd_kernel<T><<<static_cast<unsigned>(grid_stride_blocks(n)), kThreads, 0, stream>>>(
        static_cast<const T*>(G), static_cast<const T*>(x), static_cast<T*>(y), n);
  });
  check_launch("scmm CUDA gate_fwd");
}

void scmm_cuda_gate_bwd(const void* dy, const void* G, const void* x, void* dG, void* dx, int dtype, long long n,
                        cudaStream_t stream) {
  if (n < 1) return;
  dispatch_dtype(dtype, "scmm CUDA", [&](auto t) {
    using T = decltype(t);
    gate_bwd_kernel<T><<<static_cast<unsigned>(grid_stride_blocks(n)), kThreads, 0, stream>>>(
        static_cast<const T*>(dy), static_cast<const T*>(G), static_cast<const T*>(x), static_cast<T*>(dG),
        static_cast<T*>(dx), n);
  });
  check_launch("scmm CUDA gate_bwd");
}
