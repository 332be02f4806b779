// Fused SS2D scan on CUDA: cross-scan -> four selective scans -> cross-merge, forward and backward. No torch:
// raw device pointers, sizes and a stream.
//
// Forward (ss2d_fwd_kernel; design notes in docs/gpu.md): one CTA per (segment of kSeg = 64 steps of a
// direction's scan order, tile of 16 channels, direction, batch item), so a 64x64 map with 128 channels is
// 2,048 CTAs at batch 1. The segment's u, dt, B and C are staged once in shared memory with coalesced 16-byte
// loads; each thread scans 4 steps of one channel over all states from a zero state, computing the one exp per
// (step, channel, state) and keeping C*prod(a) in registers; the 16 threads of a channel are folded in shared
// memory; the state entering the segment comes from the earlier segments through a decoupled look-back
// (aggregates and inclusive states in a global workspace, CTAs ordered by an atomic ticket so that a CTA only
// ever waits for CTAs that have started); a register-only fix-up then gives y, added into an fp32
// accumulator with one atomic per (pixel, channel, direction). The four additions per output make the last
// bits of y depend on their order.
//
// Backward (ss2d_bwd_kernel; mirrored step for step by the emulation in tests/kernels/test_ss2d_cuda.py):
//   * A block owns one batch item and a tile of DT channels (DT a power of two <= 32) for all four
//     directions, which it processes one after the other, so the cross-merge of du needs no atomics: per-pixel
//     sums live in a block-private fp32 accumulator acc[L][DT] (shared memory, or a global workspace slice
//     when L is too long for shared memory) and are written once at the end.
//   * Thread tid handles channel j = tid % DT and the chunks c = r, r + R, ... (r = tid / DT, R = NTH / DT) of
//     kChunk consecutive steps of the direction's scan order; the state h[0..N) is in registers. Per
//     direction: chunk-local scans from h = 0 -> chunk end state and S[c] = sum of dt over the chunk; a
//     reverse chunk-local scan of g = dL/dh giving the carry each chunk passes to its left neighbour; two
//     prefix combines over chunks (start[c+1] = exp(A*S[c]) * start[c] + end[c], a lane-segmented scan:
//     G lanes per (channel, state) pair each fold a segment of chunks, then a shuffle scan over lanes),
//     forward for h and reverse for the carries; then per chunk: recompute h over the chunk's kChunk steps
//     in registers and walk it backwards accumulating the gradients. du is merged in acc; dB and dC (shared
//     by all channels) are summed over the block's DT channels through shared memory, then added with one
//     atomic per (pixel, direction, state) and channel group; dA, dD, ddelta_bias by warp reduction + atomics.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#include "common/cuda_helpers.cuh"
#include "ss2d/ss2d.h"

namespace {

constexpr int kThreads = 256;  // threads per block (backward)
constexpr int kChunk = 4;      // steps per chunk (backward)
constexpr int kMaxState = 16;  // largest supported d_state (states are kept in registers)
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct Params {  // backward
  const void* u;
  const void* delta;
  const float* A;
  const void* B;
  const void* C;
  const float* Dw;    // (4, D) or null
  const float* bias;  // (4, D) or null
  const void* dy;     // backward input
  int dy_f32;
  void* du;
  void* ddelta;
  float* dA;
  float* dB;  // fp32 (b, H, W, 4, N), zero-initialised
  float* dC;
  float* dD;
  float* dbias;
  float* workspace;  // null: use shared memory
  int H, W, D, N, softplus;
  int dt_tile, nchunks;
};

using dhkd_cuda::dispatch_dtype;
using dhkd_cuda::from_f32;
using dhkd_cuda::to_f32;

// Pixel (row-major index) visited at step t of direction k.
__device__ __forceinline__ int pixel_of(int t, int k, int H, int W, int L) {
  if (k >= 2) t = L - 1 - t;
  return (k & 1) ? (t % H) * W + t / H : t;
}

// softplus (identity above 20) with three MUFU operations: log1p(e) = log(w) * e / (w - 1) with w = 1 + e is
// accurate where 1 + e rounds (Goldberg's trick), and e itself where w == 1.
__device__ __forceinline__ float softplus_dt(float z, int softplus) {
  if (!softplus || z > 20.f) return z;
  const float e = __expf(z), w = 1.f + e;
  return w == 1.f ? e : __logf(w) * __fdividef(e, w - 1.f);
}

// Floats of block-private scratch: acc[L][DT], cs[NC][DT][N], cS[NC][DT]; backward adds cg[NC][DT][N],
// the dB/dC reduction buffer red[kThreads][2N+1] and per-thread dA sums dAs[kThreads][kMaxState+1].
__host__ __device__ inline size_t block_floats(bool bwd, int L, int DT, int N, int NC) {
  size_t f = (size_t)L * DT + (size_t)NC * DT * N + (size_t)NC * DT;
  if (bwd) f += (size_t)NC * DT * N + (size_t)kThreads * (2 * N + 1) + (size_t)kThreads * (kMaxState + 1);
  return f;
}

// Backward helpers and kernel.

// Exclusive prefix over chunks of the recurrence s_{e+1} = exp2(a2 * S[c(e)]) * s_e + val[c(e)], s_0 = 0,
// for each of the DT*N (channel, state) pairs of direction k; c(e) = e, or NC-1-e when reverse. Replaces
// val[c] by the state entering chunk c. Must be called by all threads of the block.
__device__ void combine_chunks(float* val, const float* S, const float* A, int k, int d0, int D, int N,
                               int DT, int NC, bool reverse) {
  const int pairs = DT * N;
  int G = 1;
  while (G < 32 && G * 2 * pairs <= kThreads) G *= 2;
  const int groups = kThreads / G;
  const int gid = threadIdx.x / G, lane = threadIdx.x % G;
  const int seg = (NC + G - 1) / G;
  const int e0 = min(lane * seg, NC), e1 = min(e0 + seg, NC);
  for (int q0 = 0; q0 < pairs; q0 += groups) {  // uniform trip count: the shuffles see whole warps
    const int q = q0 + gid;
    const bool active = q < pairs;
    const int j = active ? q / N : 0, n = active ? q % N : 0;
    const float a2 = (active && d0 + j < D) ? A[((size_t)k * D + d0 + j) * N + n] * kLog2e : 0.f;
    float ga = 1.f, gb = 0.f;
    if (active) {
      for (int e = e0; e < e1; ++e) {
        const int c = reverse ? NC - 1 - e : e;
        const float da = exp2f(a2 * S[c * DT + j]);
        gb = da * gb + val[((size_t)c * DT + j) * N + n];
        ga *= da;
      }
    }
    for (int off = 1; off < G; off <<= 1) {  // inclusive scan of (ga, gb) over the G lanes
      const float pa = __shfl_up_sync(0xffffffffu, ga, off, G);
      const float pb = __shfl_up_sync(0xffffffffu, gb, off, G);
      if (lane >= off) {
        gb = ga * pb + gb;
        ga = ga * pa;
      }
    }
    float h = __shfl_up_sync(0xffffffffu, gb, 1, G);
    if (lane == 0) h = 0.f;
    if (active) {
      for (int e = e0; e < e1; ++e) {
        const int c = reverse ? NC - 1 - e : e;
        const size_t idx = ((size_t)c * DT + j) * N + n;
        const float v = val[idx];
        val[idx] = h;
        h = exp2f(a2 * S[c * DT + j]) * h + v;
      }
    }
  }
}

// Step 1 (shared by both kernels): chunk-local scans from h = 0 of direction k -> cs (end states), cS (dt sums).
template <typename T>
__device__ void local_scans(const Params& p, const T* u, const T* delta, const T* Bm, const float* A2,
                            float bias, int k, int dc, bool live, int j, int r, int R, int DT, int NC,
                            float* cs, float* cS) {
  const int L = p.H * p.W, D = p.D, N = p.N;
  for (int c = r; c < NC; c += R) {
    float h[kMaxState];
#pragma unroll
    for (int n = 0; n < kMaxState; ++n) h[n] = 0.f;
    float S = 0.f;
    const int t1 = min(c * kChunk + kChunk, L);
    for (int t = c * kChunk; t < t1; ++t) {
      const size_t px = pixel_of(t, k, p.H, p.W, L);
      const float dt = softplus_dt(to_f32(delta[(px * 4 + k) * D + dc]) + bias, p.softplus);
      const float du = dt * to_f32(u[px * D + dc]);
      const T* Bp = Bm + (px * 4 + k) * N;
#pragma unroll
      for (int n = 0; n < kMaxState; ++n)
        if (n < N) h[n] = exp2f(A2[n] * dt) * h[n] + du * to_f32(Bp[n]);
      S += dt;
    }
#pragma unroll
    for (int n = 0; n < kMaxState; ++n)
      if (n < N) cs[((size_t)c * DT + j) * N + n] = live ? h[n] : 0.f;
    cS[c * DT + j] = live ? S : 0.f;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) ss2d_bwd_kernel(Params p) {
  extern __shared__ float smem[];
  const int L = p.H * p.W, D = p.D, N = p.N, DT = p.dt_tile, NC = p.nchunks;
  const int d0 = blockIdx.x * DT;
  const int j = threadIdx.x % DT, r = threadIdx.x / DT, R = kThreads / DT;
  const int d = d0 + j;
  const bool live = d < D;
  const int dc = live ? d : D - 1;
  float* acc = p.workspace ? p.workspace + ((size_t)blockIdx.y * gridDim.x + blockIdx.x) *
                                               block_floats(true, L, DT, N, NC)
                           : smem;
  float* cs = acc + (size_t)L * DT;
  float* cS = cs + (size_t)NC * DT * N;
  float* cg = cS + (size_t)NC * DT;
  const int red_stride = 2 * N + 1;  // odd stride: lanes reading one column hit distinct banks
  float* red = cg + (size_t)NC * DT * N;
  float* my_red = red + (size_t)threadIdx.x * red_stride;
  float* my_dA = red + (size_t)kThreads * red_stride + (size_t)threadIdx.x * (kMaxState + 1);  // odd stride
  const float* grp_red = red + (size_t)(r * DT) * red_stride;
  const int lane = threadIdx.x & 31;
  const unsigned grp_mask = DT == 32 ? 0xffffffffu : ((1u << DT) - 1u) << (lane & ~(DT - 1));

  const size_t b = blockIdx.y;
  const T* u = static_cast<const T*>(p.u) + b * L * D;
  const T* delta = static_cast<const T*>(p.delta) + b * L * 4 * D;
  const T* Bm = static_cast<const T*>(p.B) + b * L * 4 * N;
  const T* Cm = static_cast<const T*>(p.C) + b * L * 4 * N;
  T* ddelta = static_cast<T*>(p.ddelta) + b * L * 4 * D;
  float* dBm = p.dB + b * L * 4 * N;
  float* dCm = p.dC + b * L * 4 * N;
  auto load_dy = [&](size_t px) -> float {
    const size_t o = (b * L + px) * D + dc;
    return p.dy_f32 ? static_cast<const float*>(p.dy)[o] : to_f32(static_cast<const T*>(p.dy)[o]);
  };

  for (int i = threadIdx.x; i < L * DT; i += kThreads) acc[i] = 0.f;
  for (int k = 0; k < 4; ++k) {
    float A2[kMaxState];
#pragma unroll
    for (int n = 0; n < kMaxState; ++n) A2[n] = n < N ? p.A[((size_t)k * D + dc) * N + n] * kLog2e : 0.f;
    const float bias = p.bias ? p.bias[k * D + dc] : 0.f;
    const float Dk = p.Dw ? p.Dw[k * D + dc] : 0.f;
    local_scans<T>(p, u, delta, Bm, A2, bias, k, dc, live, j, r, R, DT, NC, cs, cS);
    // Reverse chunk-local scans of g_t = C_t*dy_t + a_{t+1}*g_{t+1} from a zero carry; cg[c] = a_first*g_first.
    for (int c = r; c < NC; c += R) {
      float gc[kMaxState];
#pragma unroll
      for (int n = 0; n < kMaxState; ++n) gc[n] = 0.f;
      const int t1 = min(c * kChunk + kChunk, L);
      for (int t = t1 - 1; t >= c * kChunk; --t) {
        const size_t px = pixel_of(t, k, p.H, p.W, L);
        const float dt = softplus_dt(to_f32(delta[(px * 4 + k) * D + dc]) + bias, p.softplus);
        const float dyv = load_dy(px);
        const T* Cp = Cm + (px * 4 + k) * N;
#pragma unroll
        for (int n = 0; n < kMaxState; ++n)
          if (n < N) gc[n] = exp2f(A2[n] * dt) * (to_f32(Cp[n]) * dyv + gc[n]);
      }
#pragma unroll
      for (int n = 0; n < kMaxState; ++n)
        if (n < N) cg[((size_t)c * DT + j) * N + n] = live ? gc[n] : 0.f;
    }
    __syncthreads();
    combine_chunks(cs, cS, p.A, k, d0, D, N, DT, NC, false);  // cs[c]: h entering chunk c
    combine_chunks(cg, cS, p.A, k, d0, D, N, DT, NC, true);   // cg[c]: a*g carried into chunk c's last step
    __syncthreads();

#pragma unroll
    for (int n = 0; n < kMaxState; ++n) my_dA[n] = 0.f;  // in shared memory: registers are the limit here
    float dD_acc = 0.f, dbias_acc = 0.f;
    for (int c = r; c < NC; c += R) {
      const int t0 = c * kChunk, len = min(kChunk, L - t0);
      // hs[i]: state before step i of the chunk. The state entering the chunk (i = 0) is read from cs where
      // it is used and the state after the last step is rebuilt there, which keeps the kernel within 255
      // registers without spills.
      const float* h_enter = cs + ((size_t)c * DT + j) * N;
      float hs[kChunk][kMaxState];
#pragma unroll
      for (int i = 0; i + 1 < kChunk; ++i) {
#pragma unroll
        for (int n = 0; n < kMaxState; ++n) hs[i + 1][n] = 0.f;
        if (i < len) {
          const size_t px = pixel_of(t0 + i, k, p.H, p.W, L);
          const float dt = softplus_dt(to_f32(delta[(px * 4 + k) * D + dc]) + bias, p.softplus);
          const float du = dt * to_f32(u[px * D + dc]);
          const T* Bp = Bm + (px * 4 + k) * N;
#pragma unroll
          for (int n = 0; n < kMaxState; ++n)
            if (n < N) hs[i + 1][n] = exp2f(A2[n] * dt) * (i == 0 ? h_enter[n] : hs[i][n]) + du * to_f32(Bp[n]);
        }
      }
      float gc[kMaxState];
#pragma unroll
      for (int n = 0; n < kMaxState; ++n) gc[n] = n < N ? cg[((size_t)c * DT + j) * N + n] : 0.f;
#pragma unroll
      for (int i = kChunk - 1; i >= 0; --i) {
        if (i < len) {
          const size_t px = pixel_of(t0 + i, k, p.H, p.W, L);
          // dt and u are reloaded rather than kept from the walk above (registers)
          const float z = to_f32(delta[(px * 4 + k) * D + dc]) + bias;
          const float dt = softplus_dt(z, p.softplus), uu = to_f32(u[px * D + dc]);
          const float dyv = live ? load_dy(px) : 0.f;  // dead lanes contribute nothing
          const T* Bp = Bm + (px * 4 + k) * N;
          const T* Cp = Cm + (px * 4 + k) * N;
          float du_sum = 0.f, ddt = 0.f;
#pragma unroll
          for (int n = 0; n < kMaxState; ++n) {
            if (n < N) {
              const float Bn = to_f32(Bp[n]), Cn = to_f32(Cp[n]);
              const float a = exp2f(A2[n] * dt);
              const float g = Cn * dyv + gc[n];
              const float ah = a * (i == 0 ? h_enter[n] : hs[i][n]);
              my_red[n] = g * dt * uu;         // dB
              my_red[N + n] = dyv * (ah + dt * uu * Bn);  // dC: the state after step i
              du_sum += g * Bn;
              ddt += g * (A2[n] * kLn2 * ah + uu * Bn);
              my_dA[n] += g * dt * ah;
              gc[n] = a * g;
            }
          }
          __syncwarp(grp_mask);
          float* dBp = dBm + (px * 4 + k) * N;
          float* dCp = dCm + (px * 4 + k) * N;
          for (int v = j; v < 2 * N; v += DT) {  // sum over the group's DT channels, one atomic per value
            float s = 0.f;
            for (int jj = 0; jj < DT; ++jj) s += grp_red[jj * red_stride + v];
            atomicAdd(v < N ? dBp + v : dCp + (v - N), s);
          }
          __syncwarp(grp_mask);
          if (live) {
            const float dz = (p.softplus && z <= 20.f) ? ddt / (1.f + __expf(-z)) : ddt;
            ddelta[(px * 4 + k) * D + dc] = from_f32<T>(dz);
            acc[px * DT + j] += dt * du_sum + Dk * dyv;
            dD_acc += dyv * uu;
            dbias_acc += dz;
          }
        }
      }
    }
    // dA, dD, ddelta_bias: sum over the lanes of the warp sharing channel j, then one atomic per lane < DT.
    for (int off = 16; off >= DT; off >>= 1) {
      dD_acc += __shfl_xor_sync(0xffffffffu, dD_acc, off);
      dbias_acc += __shfl_xor_sync(0xffffffffu, dbias_acc, off);
    }
#pragma unroll
    for (int n = 0; n < kMaxState; ++n) {
      float v = my_dA[n];
      for (int off = 16; off >= DT; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
      if (lane < DT && live && n < N) atomicAdd(p.dA + ((size_t)k * D + d) * N + n, v);
    }
    if (lane < DT && live) {
      atomicAdd(p.dD + k * D + d, dD_acc);
      atomicAdd(p.dbias + k * D + d, dbias_acc);
    }
    __syncthreads();
  }
  for (int i = threadIdx.x; i < L * DT; i += kThreads) {
    const int dd = d0 + i % DT;
    if (dd < D) static_cast<T*>(p.du)[(b * L + i / DT) * D + dd] = from_f32<T>(acc[i]);
  }
}

// ------------------------------------------------------------------------------------------------------------
// Forward: one CTA per (step segment, channel tile, direction, batch item), decoupled look-back across segments.
// ------------------------------------------------------------------------------------------------------------

constexpr int kTile = 16;                   // channels per CTA
constexpr int kRows = 16;                   // threads per channel; thread (r, j) owns kItems consecutive steps
constexpr int kItems = 4;                   // steps per thread
constexpr int kSeg = kRows * kItems;        // steps per CTA (one segment of the direction's scan order)
constexpr int kFwdThreads = kTile * kRows;  // 256: tid = r * kTile + j
constexpr int kStride = 20;                 // row stride of the staged tiles: rows t and t + kItems are 16 banks apart
constexpr int kPairStride = kMaxState + 1;  // padded (thread, state) scratch: a warp's 32 threads hit 32 banks
constexpr int kStageFloats = 4 * kSeg * kStride;                         // u, dt, B, C tiles
constexpr int kPairFloats = 2 * kFwdThreads * kPairStride;               // P and H of every (thread, state)
constexpr int kFwdSmemFloats = (kStageFloats > kPairFloats ? kStageFloats : kPairFloats) + kTile * kPairStride;
constexpr int kFwdSmemBytes = (kFwdSmemFloats + kSeg + 2) * 4;  // + px_s[kSeg], ticket and flag (ints)
static_assert(kTile == kMaxState, "the staging helper copies rows of 16 values for both tiles");
static_assert(kFwdThreads == kTile * kMaxState, "one thread per (channel, state) pair in the look-back");
static_assert(kFwdSmemBytes <= 48 * 1024, "dynamic shared memory without an opt-in");

// Segment status in the look-back: 0 not yet published, 1 aggregate published, 2 inclusive prefix published.
constexpr int kAggregate = 1;
constexpr int kInclusive = 2;

struct FwdParams {
  const void* __restrict__ u;
  const void* __restrict__ delta;
  const float* __restrict__ A;
  const void* __restrict__ B;
  const void* __restrict__ C;
  const float* __restrict__ Dw;    // (4, D) or null
  const float* __restrict__ bias;  // (4, D) or null
  float* __restrict__ yacc;        // fp32 (b, L, D), zero on entry: the four directions are added into it
  int* __restrict__ status;        // [0]: CTA ticket counter; [1 + chain * nseg + s]: segment status; zero on entry
  float2* __restrict__ agg;        // (chain, seg, kTile * kMaxState): segment aggregate (P, H) per (channel, state)
  float* __restrict__ incl;        // (chain, seg, kTile * kMaxState): state leaving the segment
  int H, W, D, N, softplus;
  int ntiles, nseg, chains;  // chain = (batch item * 4 + direction) * ntiles + channel tile
  int vec_io, vec_bc;        // 16-byte vector loads allowed for u/delta rows, B/C rows
};

__device__ __forceinline__ int ld_acquire(const int* p) {
#ifdef __CUDA_ARCH__
  int v;
  asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
#else  // host builds of this source (the CPU emulation in tests/kernels/test_ss2d_cuda.py)
  return __atomic_load_n(p, __ATOMIC_ACQUIRE);
#endif
}

__device__ __forceinline__ void st_release(int* p, int v) {
#ifdef __CUDA_ARCH__
  asm volatile("st.release.gpu.global.s32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
#else
  __atomic_store_n(p, v, __ATOMIC_RELEASE);
#endif
}

// Makes this CTA's global writes visible, then sets the segment's status (called by all threads).
__device__ __forceinline__ void publish(int* flag, int v) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) st_release(flag, v);
}

// Copies a kSeg x 16 tile into shared memory as fp32: row t (t < nrows) starts at src + row_off(t); columns
// at or beyond ncols and rows at or beyond nrows are zero. With vec, 16-byte loads (rows 16-byte aligned and
// ncols a multiple of the elements per load); consecutive threads read consecutive bytes of a row.
template <typename T, typename RowOff>
__device__ __forceinline__ void stage_tile(float* __restrict__ dst, const T* __restrict__ src, RowOff row_off,
                                           int nrows, int ncols, bool vec) {
  constexpr int kPer = 16 / sizeof(T);  // elements per 16-byte load
  constexpr int kPerRow = 16 / kPer;    // loads per row of 16 elements
  if (vec) {
    for (int c = threadIdx.x; c < kSeg * kPerRow; c += kFwdThreads) {
      const int t = c / kPerRow, col = (c % kPerRow) * kPer;
      float* out = dst + t * kStride + col;
      if (t < nrows && col < ncols) {
        const uint4 raw = *reinterpret_cast<const uint4*>(src + row_off(t) + col);
        const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int i = 0; i < kPer; ++i) out[i] = to_f32(e[i]);
      } else {
#pragma unroll
        for (int i = 0; i < kPer; ++i) out[i] = 0.f;
      }
    }
  } else {
    for (int c = threadIdx.x; c < kSeg * 16; c += kFwdThreads) {
      const int t = c / 16, col = c % 16;
      dst[t * kStride + col] = (t < nrows && col < ncols) ? to_f32(src[row_off(t) + col]) : 0.f;
    }
  }
}

// Forward. CTA = (segment s of kSeg steps in direction k's scan order, tile of kTile channels, k, batch item),
// taken in ticket order (segment-major) so that every CTA it waits for has started: no deadlock whatever the
// hardware's scheduling order. Steps, mirrored by emulate_forward in tests/kernels/test_ss2d_cuda.py:
//   1. stage u, dt = softplus(delta + bias), B, C of the segment in shared memory (coalesced, vectorised);
//   2. thread (r, j) scans its kItems steps of channel j from a zero state: a = exp2(A*log2e*dt) (the only
//      exp per (t, d, n)), h = a*h + dt*u*B, running products P of a, ylocal = C.h + D*u, and keeps
//      Q[i][n] = C[i][n] * P[i][n] in registers;
//   3. thread (j, n) folds the kRows threads' (P, h) of its pair in order: exclusive prefixes stay in shared
//      memory, the total is the segment's aggregate;
//   4. decoupled look-back over earlier segments of the same (batch, direction, tile) gives h_in, the state
//      entering the segment; the CTA publishes its inclusive state P_seg*h_in + H_seg;
//   5. fix-up: thread (r, j) enters its steps with h0 = Hex + Pex*h_in and y[i] = ylocal[i] + sum_n Q[i][n]*h0[n];
//      y is added into the fp32 accumulator (four directions per pixel, one fp32 atomic each).
template <typename T>
__global__ void __launch_bounds__(kFwdThreads, 2) ss2d_fwd_kernel(const FwdParams p) {
  extern __shared__ float smem[];  // kFwdSmemBytes, 16-byte aligned
  int* px_s = reinterpret_cast<int*>(smem + kFwdSmemFloats);  // pixel of each step (integer divisions once)
  int& ticket_s = px_s[kSeg];
  int& flag_s = px_s[kSeg + 1];
  float* u_s = smem;
  float* dt_s = u_s + kSeg * kStride;
  float* B_s = dt_s + kSeg * kStride;
  float* C_s = B_s + kSeg * kStride;
  float* Pa = smem;  // reuses the staging area after step 2
  float* Ha = Pa + kFwdThreads * kPairStride;
  float* hin_s = smem + (kStageFloats > kPairFloats ? kStageFloats : kPairFloats);

  const int tid = threadIdx.x;
  if (tid == 0) ticket_s = atomicAdd(p.status, 1);
  __syncthreads();
  const int ticket = ticket_s;
  const int s = ticket / p.chains, chain = ticket % p.chains;
  const int tile = chain % p.ntiles, bk = chain / p.ntiles;
  const int k = bk & 3;
  const size_t b = bk >> 2;
  const int H = p.H, W = p.W, L = H * W, D = p.D, N = p.N;
  const int d0 = tile * kTile, t0 = s * kSeg;
  const int nrows = min(kSeg, L - t0), ncols = min(kTile, D - d0);

  // 1. staging
  if (tid < kSeg) px_s[tid] = tid < nrows ? pixel_of(t0 + tid, k, H, W, L) : 0;
  __syncthreads();
  const T* u = static_cast<const T*>(p.u) + b * L * D + d0;
  const T* delta = static_cast<const T*>(p.delta) + b * L * 4 * D + k * D + d0;
  const T* Bm = static_cast<const T*>(p.B) + b * L * 4 * N + k * N;
  const T* Cm = static_cast<const T*>(p.C) + b * L * 4 * N + k * N;
  const bool vec_io = p.vec_io && ncols == kTile;
  stage_tile<T>(u_s, u, [&](int t) { return (size_t)px_s[t] * D; }, nrows, ncols, vec_io);
  stage_tile<T>(dt_s, delta, [&](int t) { return (size_t)px_s[t] * 4 * D; }, nrows, ncols, vec_io);
  stage_tile<T>(B_s, Bm, [&](int t) { return (size_t)px_s[t] * 4 * N; }, nrows, N, p.vec_bc);
  stage_tile<T>(C_s, Cm, [&](int t) { return (size_t)px_s[t] * 4 * N; }, nrows, N, p.vec_bc);
  __syncthreads();
  for (int c = tid; c < kSeg * kTile; c += kFwdThreads) {  // delta -> dt; padding rows/columns get dt = 0
    const int t = c / kTile, col = c % kTile;
    float* z = dt_s + t * kStride + col;
    const float bias = (p.bias && col < ncols) ? p.bias[k * D + d0 + col] : 0.f;
    *z = (t < nrows && col < ncols) ? softplus_dt(*z + bias, p.softplus) : 0.f;
  }
  __syncthreads();

  // 2. local scans of kItems steps from a zero state
  const int j = tid % kTile, r = tid / kTile;
  const bool live = j < ncols;
  const int dc = d0 + (live ? j : 0);
  float A2[kMaxState];
#pragma unroll
  for (int n = 0; n < kMaxState; ++n) A2[n] = n < N ? p.A[((size_t)k * D + dc) * N + n] * kLog2e : 0.f;
  const float Dk = p.Dw ? p.Dw[k * D + dc] : 0.f;
  float h[kMaxState], P[kMaxState], Q[kItems][kMaxState], ylocal[kItems];
#pragma unroll
  for (int n = 0; n < kMaxState; ++n) {
    h[n] = 0.f;
    P[n] = 1.f;
  }
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int t = r * kItems + i;
    const float dt = dt_s[t * kStride + j], uu = u_s[t * kStride + j];
    const float du = dt * uu;
    const float4* Bv = reinterpret_cast<const float4*>(B_s + t * kStride);
    const float4* Cv = reinterpret_cast<const float4*>(C_s + t * kStride);
    float y = Dk * uu;
#pragma unroll
    for (int q = 0; q < kMaxState / 4; ++q) {
      const float4 b4 = Bv[q], c4 = Cv[q];
      const float bq[4] = {b4.x, b4.y, b4.z, b4.w}, cq[4] = {c4.x, c4.y, c4.z, c4.w};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int n = 4 * q + e;
        const float a = exp2f(A2[n] * dt);
        h[n] = fmaf(a, h[n], du * bq[e]);
        P[n] *= a;
        y = fmaf(cq[e], h[n], y);
        Q[i][n] = cq[e] * P[n];
      }
    }
    ylocal[i] = y;
  }
  __syncthreads();  // the staged tiles are dead: Pa/Ha reuse their space

  // 3. fold the kRows threads of each (channel, state) pair
#pragma unroll
  for (int n = 0; n < kMaxState; ++n) {
    Pa[tid * kPairStride + n] = P[n];
    Ha[tid * kPairStride + n] = h[n];
  }
  __syncthreads();
  const int pj = tid % kTile, pn = tid / kTile;  // this thread's pair in steps 3-4
  float segP = 1.f, segH = 0.f;
  for (int rr = 0; rr < kRows; ++rr) {
    const int idx = (rr * kTile + pj) * kPairStride + pn;
    const float Pr = Pa[idx], Hr = Ha[idx];
    Pa[idx] = segP;  // exclusive prefix: rows before rr
    Ha[idx] = segH;
    segH = fmaf(Pr, segH, Hr);
    segP *= Pr;
  }

  // 4. decoupled look-back
  const size_t seg_base = ((size_t)chain * p.nseg + s) * kFwdThreads;
  int* flags = p.status + 1 + (size_t)chain * p.nseg;
  float hin = 0.f;
  if (s == 0) {
    p.incl[seg_base + tid] = segH;
    publish(flags, kInclusive);
  } else {
    p.agg[seg_base + tid] = make_float2(segP, segH);
    publish(flags + s, kAggregate);
    float accP = 1.f, accH = 0.f;  // composition of the segments after js, up to s - 1
    int js = s - 1;
    while (true) {
      if (tid == 0) {
        int f;
        while ((f = ld_acquire(flags + js)) == 0) {
        }
        flag_s = f;
      }
      __syncthreads();
      const size_t base = ((size_t)chain * p.nseg + js) * kFwdThreads + tid;
      if (flag_s == kInclusive) {
        hin = fmaf(accP, __ldcg(p.incl + base), accH);
        break;
      }
      const float2 g = __ldcg(p.agg + base);
      accH = fmaf(accP, g.y, accH);
      accP *= g.x;
      --js;  // js >= 0: segment 0 always publishes its inclusive state
      __syncthreads();  // flag_s is rewritten by the next round
    }
    p.incl[seg_base + tid] = fmaf(segP, hin, segH);
    publish(flags + s, kInclusive);
  }
  hin_s[pj * kPairStride + pn] = hin;
  __syncthreads();

  // 5. fix-up and cross-merge
  float h0[kMaxState];
#pragma unroll
  for (int n = 0; n < kMaxState; ++n) {
    const int idx = tid * kPairStride + n;
    h0[n] = fmaf(Pa[idx], hin_s[j * kPairStride + n], Ha[idx]);
  }
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    float y = ylocal[i];
#pragma unroll
    for (int n = 0; n < kMaxState; ++n) y = fmaf(Q[i][n], h0[n], y);
    const int t = r * kItems + i;
    if (live && t < nrows) atomicAdd(p.yacc + (b * L + px_s[t]) * D + d0 + j, y);
  }
}

// y = yacc in the output dtype (fp16/bf16 outputs; fp32 outputs are accumulated in place).
template <typename T>
__global__ void __launch_bounds__(kThreads) convert_kernel(const float* __restrict__ src, T* __restrict__ dst,
                                                           size_t n) {
  for (size_t i = blockIdx.x * (size_t)kThreads + threadIdx.x; i < n; i += (size_t)gridDim.x * kThreads)
    dst[i] = from_f32<T>(src[i]);
}

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("ss2d CUDA ") + what + ": " + cudaGetErrorString(err));
}

void check_sizes(int batch, int H, int W, int D, int N) {
  if (batch < 1 || H < 1 || W < 1 || D < 1) throw std::invalid_argument("ss2d: empty input");
  if (N < 1 || N > kMaxState)
    throw std::invalid_argument("ss2d CUDA: d_state N=" + std::to_string(N) + " is outside the supported 1.." +
                                std::to_string(kMaxState));
  if (batch > 65535) throw std::invalid_argument("ss2d CUDA: batch above 65535 is not supported");
  if ((long long)H * W > (1LL << 26)) throw std::invalid_argument("ss2d CUDA: H*W above 2^26 is not supported");
}

// Forward launch plan and the layout of its global workspace (in 4-byte words): status ints, aggregates,
// inclusive states, then the fp32 accumulator of y for fp16/bf16 outputs.
struct FwdPlan {
  int ntiles, nseg, chains;
  long long ctas;
  size_t status_words, agg_words, incl_words, acc_words;
  size_t total() const { return status_words + agg_words + incl_words + acc_words; }
};

FwdPlan make_fwd_plan(int batch, int H, int W, int D, int N) {
  check_sizes(batch, H, W, D, N);
  const long long L = (long long)H * W;
  FwdPlan pl{};
  pl.ntiles = (D + kTile - 1) / kTile;
  pl.nseg = (int)((L + kSeg - 1) / kSeg);
  pl.chains = batch * 4 * pl.ntiles;
  pl.ctas = (long long)pl.chains * pl.nseg;
  if (pl.ctas > (1LL << 31) - 1) throw std::invalid_argument("ss2d CUDA: input too large for one launch");
  pl.status_words = ((size_t)1 + pl.ctas + 3) / 4 * 4;  // keeps the float2 aggregates 16-byte aligned
  pl.agg_words = (size_t)pl.ctas * kFwdThreads * 2;
  pl.incl_words = (size_t)pl.ctas * kFwdThreads;
  pl.acc_words = (size_t)batch * L * D;
  return pl;
}

// Backward launch plan (block-private scratch in shared memory or a global workspace).
struct Plan {
  int dt_tile, nchunks, grid_x;
  size_t floats;      // per block
  bool use_workspace;  // scratch in global memory instead of shared memory
  int smem_max;        // the device's opt-in shared memory per block, bytes
};

Plan make_plan(bool bwd, int batch, int H, int W, int D, int N) {
  check_sizes(batch, H, W, D, N);
  int dev = 0, nsm = 0, smem_max = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, dev), "device attribute");
  check_cuda(cudaDeviceGetAttribute(&smem_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "device attribute");
  const int L = H * W;
  Plan pl{};
  pl.nchunks = (L + kChunk - 1) / kChunk;
  int DT = 32;
  while (DT > 1 && DT / 2 >= D) DT /= 2;  // no tile wider than the channels
  while (DT > 1 && (long long)batch * ((D + DT - 1) / DT) < nsm) DT /= 2;  // enough blocks for the SMs
  while (DT > 1 && block_floats(bwd, L, DT, N, pl.nchunks) * sizeof(float) > (size_t)smem_max) DT /= 2;
  pl.dt_tile = DT;
  pl.grid_x = (D + DT - 1) / DT;
  pl.floats = block_floats(bwd, L, DT, N, pl.nchunks);
  pl.use_workspace = pl.floats * sizeof(float) > (size_t)smem_max;
  pl.smem_max = smem_max;
  return pl;
}

template <typename K>
void launch(K kernel, const Plan& pl, int batch, const Params& prm, cudaStream_t stream) {
  const size_t smem = pl.use_workspace ? 0 : pl.floats * sizeof(float);
  if (smem > 48 * 1024) dhkd_cuda::allow_max_smem(reinterpret_cast<const void*>(kernel), pl.smem_max, "ss2d");
  kernel<<<dim3(pl.grid_x, batch), kThreads, smem, stream>>>(prm);
  check_cuda(cudaGetLastError(), "kernel launch");
}

void check_workspace(const Plan& pl, int batch, const float* ws, int64_t ws_floats) {
  if (!pl.use_workspace) return;
  const size_t need = pl.floats * (size_t)pl.grid_x * batch;
  if (ws == nullptr || ws_floats < (int64_t)need)
    throw std::invalid_argument("ss2d CUDA: the workspace must hold " + std::to_string(need) + " floats");
}

bool aligned16(const void* ptr) { return (reinterpret_cast<std::uintptr_t>(ptr) & 15u) == 0; }

}  // namespace

int ss2d_cuda_max_state() { return kMaxState; }

int64_t ss2d_cuda_workspace_floats(bool backward, int batch, int H, int W, int D, int N) {
  if (!backward) return (int64_t)make_fwd_plan(batch, H, W, D, N).total();
  const Plan pl = make_plan(backward, batch, H, W, D, N);
  return pl.use_workspace ? (int64_t)(pl.floats * (size_t)pl.grid_x * batch) : 0;
}

void ss2d_cuda_forward(const void* u, const void* delta, const float* A, const void* B, const void* C,
                       const float* Dw, const float* bias, void* y, float* workspace, int64_t workspace_floats,
                       int batch, int H, int W, int D, int N, int dtype, bool out_f32, bool softplus,
                       cudaStream_t stream) {
  const FwdPlan pl = make_fwd_plan(batch, H, W, D, N);
  if (workspace == nullptr || workspace_floats < (int64_t)pl.total())
    throw std::invalid_argument("ss2d CUDA: the forward workspace must hold " + std::to_string(pl.total()) +
                                " floats");
  const bool direct = out_f32 || dtype == 0;  // accumulate straight into an fp32 y
  FwdParams prm{};
  prm.u = u; prm.delta = delta; prm.A = A; prm.B = B; prm.C = C; prm.Dw = Dw; prm.bias = bias;
  prm.status = reinterpret_cast<int*>(workspace);
  prm.agg = reinterpret_cast<float2*>(workspace + pl.status_words);
  prm.incl = workspace + pl.status_words + pl.agg_words;
  prm.yacc = direct ? static_cast<float*>(y) : prm.incl + pl.incl_words;
  prm.H = H; prm.W = W; prm.D = D; prm.N = N; prm.softplus = softplus;
  prm.ntiles = pl.ntiles; prm.nseg = pl.nseg; prm.chains = pl.chains;
  dispatch_dtype(dtype, "ss2d CUDA", [&](auto t) {
    using T = decltype(t);
    const size_t row = sizeof(T) * (size_t)D, brow = sizeof(T) * (size_t)N;
    prm.vec_io = row % 16 == 0 && aligned16(u) && aligned16(delta);
    prm.vec_bc = brow % 16 == 0 && aligned16(B) && aligned16(C);
    check_cuda(cudaMemsetAsync(workspace, 0, pl.status_words * sizeof(float), stream), "workspace reset");
    check_cuda(cudaMemsetAsync(prm.yacc, 0, pl.acc_words * sizeof(float), stream), "accumulator reset");
    ss2d_fwd_kernel<T><<<(unsigned)pl.ctas, kFwdThreads, kFwdSmemBytes, stream>>>(prm);
    check_cuda(cudaGetLastError(), "forward launch");
    if (!direct) {
      const unsigned blocks = (unsigned)std::min<size_t>((pl.acc_words + kThreads - 1) / kThreads, 4096);
      convert_kernel<T><<<blocks, kThreads, 0, stream>>>(prm.yacc, static_cast<T*>(y), pl.acc_words);
      check_cuda(cudaGetLastError(), "output conversion launch");
    }
  });
}

void ss2d_cuda_backward(const void* dy, bool dy_f32, const void* u, const void* delta, const float* A,
                        const void* B, const void* C, const float* Dw, const float* bias, void* du, void* ddelta,
                        float* dA, float* dB, float* dC, float* dD, float* dbias, float* workspace,
                        int64_t workspace_floats, int batch, int H, int W, int D, int N, int dtype, bool softplus,
                        cudaStream_t stream) {
  const Plan pl = make_plan(true, batch, H, W, D, N);
  check_workspace(pl, batch, workspace, workspace_floats);
  Params prm{};
  prm.u = u; prm.delta = delta; prm.A = A; prm.B = B; prm.C = C; prm.Dw = Dw; prm.bias = bias;
  prm.dy = dy; prm.dy_f32 = dy_f32 || dtype == 0;
  prm.du = du; prm.ddelta = ddelta; prm.dA = dA; prm.dB = dB; prm.dC = dC; prm.dD = dD; prm.dbias = dbias;
  prm.workspace = pl.use_workspace ? workspace : nullptr;
  prm.H = H; prm.W = W; prm.D = D; prm.N = N; prm.softplus = softplus;
  prm.dt_tile = pl.dt_tile; prm.nchunks = pl.nchunks;
  dispatch_dtype(dtype, "ss2d CUDA", [&](auto t) { launch(ss2d_bwd_kernel<decltype(t)>, pl, batch, prm, stream); });
}
