// Fused SS2D scan on CUDA: cross-scan -> four selective scans -> cross-merge in one forward kernel, and the
// matching backward in one kernel. No torch: raw device pointers, sizes and a stream.
//
// Decomposition (mirrored step for step by the emulation in tests/kernels/test_ss2d_cuda.py):
//   * A block owns one batch item and a tile of DT channels (DT a power of two <= 32) for all four
//     directions, which it processes one after the other, so the cross-merge needs no atomics: per-pixel
//     sums live in a block-private fp32 accumulator acc[L][DT] (shared memory, or a global workspace slice
//     when L is too long for shared memory) and are written once at the end.
//   * Thread tid handles channel j = tid % DT (consecutive lanes = consecutive channels, so loads of u and
//     delta are coalesced in the channels-last layout) and the chunks c = r, r + R, ... (r = tid / DT,
//     R = NTH / DT) of kChunk consecutive steps of the direction's scan order; the state h[0..N) is in
//     registers. Each direction is done chunk-parallel:
//       1. chunk-local scan from h = 0 -> chunk end state hend[c] and S[c] = sum of dt over the chunk;
//       2. prefix combine over chunks: start[c+1] = exp(A*S[c]) * start[c] + hend[c] (a segmented scan:
//          G lanes per (channel, state) pair each fold a segment of chunks, then a shuffle scan over lanes);
//       3. rewalk each chunk from its true start state and add y to acc.
//   * Backward per direction: 1 as above; a reverse chunk-local scan of g = dL/dh giving the carry each
//     chunk passes to its left neighbour; two combines (forward for h, reverse for the carries); then per
//     chunk: recompute h over the chunk's kChunk steps in registers and walk it backwards accumulating the
//     gradients. Only chunk-boundary states are stored. du is merged in acc like y; dB and dC (shared by all
//     channels) are reduced over the block's DT channels through shared memory, then added with atomics
//     into fp32 buffers; dA, dD, ddelta_bias by warp reduction + atomics.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>

#include "common/cuda_helpers.cuh"

namespace {

constexpr int kThreads = 256;  // threads per block
constexpr int kChunk = 4;      // steps per chunk
constexpr int kMaxState = 16;  // largest supported d_state (states are kept in registers)
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct Params {
  const void* u;
  const void* delta;
  const float* A;
  const void* B;
  const void* C;
  const float* Dw;    // (4, D) or null
  const float* bias;  // (4, D) or null
  void* y;            // forward output
  int out_f32;
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

__device__ __forceinline__ float softplus_dt(float z, int softplus) {
  return (softplus && z <= 20.f) ? log1pf(__expf(z)) : z;
}

// Floats of block-private scratch: acc[L][DT], cs[NC][DT][N], cS[NC][DT]; backward adds cg[NC][DT][N] and
// the dB/dC reduction buffer red[kThreads][2N+1].
__host__ __device__ inline size_t block_floats(bool bwd, int L, int DT, int N, int NC) {
  size_t f = (size_t)L * DT + (size_t)NC * DT * N + (size_t)NC * DT;
  if (bwd) f += (size_t)NC * DT * N + (size_t)kThreads * (2 * N + 1);
  return f;
}

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
__global__ void __launch_bounds__(kThreads) ss2d_fwd_kernel(Params p) {
  extern __shared__ float smem[];
  const int L = p.H * p.W, D = p.D, N = p.N, DT = p.dt_tile, NC = p.nchunks;
  const int d0 = blockIdx.x * DT;
  const int j = threadIdx.x % DT, r = threadIdx.x / DT, R = kThreads / DT;
  const int d = d0 + j;
  const bool live = d < D;
  const int dc = live ? d : D - 1;
  float* acc = p.workspace ? p.workspace + ((size_t)blockIdx.y * gridDim.x + blockIdx.x) *
                                               block_floats(false, L, DT, N, NC)
                           : smem;
  float* cs = acc + (size_t)L * DT;
  float* cS = cs + (size_t)NC * DT * N;
  const size_t b = blockIdx.y;
  const T* u = static_cast<const T*>(p.u) + b * L * D;
  const T* delta = static_cast<const T*>(p.delta) + b * L * 4 * D;
  const T* Bm = static_cast<const T*>(p.B) + b * L * 4 * N;
  const T* Cm = static_cast<const T*>(p.C) + b * L * 4 * N;

  for (int i = threadIdx.x; i < L * DT; i += kThreads) acc[i] = 0.f;
  for (int k = 0; k < 4; ++k) {
    float A2[kMaxState];
#pragma unroll
    for (int n = 0; n < kMaxState; ++n) A2[n] = n < N ? p.A[((size_t)k * D + dc) * N + n] * kLog2e : 0.f;
    const float bias = p.bias ? p.bias[k * D + dc] : 0.f;
    const float Dk = p.Dw ? p.Dw[k * D + dc] : 0.f;
    local_scans<T>(p, u, delta, Bm, A2, bias, k, dc, live, j, r, R, DT, NC, cs, cS);
    __syncthreads();
    combine_chunks(cs, cS, p.A, k, d0, D, N, DT, NC, false);
    __syncthreads();
    for (int c = r; c < NC; c += R) {
      float h[kMaxState];
#pragma unroll
      for (int n = 0; n < kMaxState; ++n) h[n] = n < N ? cs[((size_t)c * DT + j) * N + n] : 0.f;
      const int t1 = min(c * kChunk + kChunk, L);
      for (int t = c * kChunk; t < t1; ++t) {
        const size_t px = pixel_of(t, k, p.H, p.W, L);
        const float dt = softplus_dt(to_f32(delta[(px * 4 + k) * D + dc]) + bias, p.softplus);
        const float uu = to_f32(u[px * D + dc]);
        const float du = dt * uu;
        const T* Bp = Bm + (px * 4 + k) * N;
        const T* Cp = Cm + (px * 4 + k) * N;
        float y = Dk * uu;
#pragma unroll
        for (int n = 0; n < kMaxState; ++n) {
          if (n < N) {
            h[n] = exp2f(A2[n] * dt) * h[n] + du * to_f32(Bp[n]);
            y += to_f32(Cp[n]) * h[n];
          }
        }
        if (live) acc[px * DT + j] += y;
      }
    }
    __syncthreads();
  }
  for (int i = threadIdx.x; i < L * DT; i += kThreads) {
    const int dd = d0 + i % DT;
    if (dd < D) {
      const size_t o = (b * L + i / DT) * D + dd;
      if (p.out_f32) static_cast<float*>(p.y)[o] = acc[i];
      else static_cast<T*>(p.y)[o] = from_f32<T>(acc[i]);
    }
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

    float dA_acc[kMaxState];
#pragma unroll
    for (int n = 0; n < kMaxState; ++n) dA_acc[n] = 0.f;
    float dD_acc = 0.f, dbias_acc = 0.f;
    for (int c = r; c < NC; c += R) {
      const int t0 = c * kChunk, len = min(kChunk, L - t0);
      float hs[kChunk + 1][kMaxState];  // hs[i]: state before step i of the chunk; hs[i+1]: after it
      float dts[kChunk], us[kChunk];
#pragma unroll
      for (int n = 0; n < kMaxState; ++n) hs[0][n] = n < N ? cs[((size_t)c * DT + j) * N + n] : 0.f;
#pragma unroll
      for (int i = 0; i < kChunk; ++i) {
        dts[i] = 0.f;
        us[i] = 0.f;
#pragma unroll
        for (int n = 0; n < kMaxState; ++n) hs[i + 1][n] = 0.f;
        if (i < len) {
          const size_t px = pixel_of(t0 + i, k, p.H, p.W, L);
          dts[i] = softplus_dt(to_f32(delta[(px * 4 + k) * D + dc]) + bias, p.softplus);
          us[i] = to_f32(u[px * D + dc]);
          const T* Bp = Bm + (px * 4 + k) * N;
#pragma unroll
          for (int n = 0; n < kMaxState; ++n)
            if (n < N) hs[i + 1][n] = exp2f(A2[n] * dts[i]) * hs[i][n] + dts[i] * us[i] * to_f32(Bp[n]);
        }
      }
      float gc[kMaxState];
#pragma unroll
      for (int n = 0; n < kMaxState; ++n) gc[n] = n < N ? cg[((size_t)c * DT + j) * N + n] : 0.f;
#pragma unroll
      for (int i = kChunk - 1; i >= 0; --i) {
        if (i < len) {
          const size_t px = pixel_of(t0 + i, k, p.H, p.W, L);
          const float dt = dts[i], uu = us[i];
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
              const float ah = a * hs[i][n];
              my_red[n] = g * dt * uu;         // dB
              my_red[N + n] = dyv * hs[i + 1][n];  // dC
              du_sum += g * Bn;
              ddt += g * (A2[n] * kLn2 * ah + uu * Bn);
              dA_acc[n] += g * dt * ah;
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
            const float z = to_f32(delta[(px * 4 + k) * D + dc]) + bias;
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
#pragma unroll
      for (int n = 0; n < kMaxState; ++n) dA_acc[n] += __shfl_xor_sync(0xffffffffu, dA_acc[n], off);
      dD_acc += __shfl_xor_sync(0xffffffffu, dD_acc, off);
      dbias_acc += __shfl_xor_sync(0xffffffffu, dbias_acc, off);
    }
    if (lane < DT && live) {
#pragma unroll
      for (int n = 0; n < kMaxState; ++n)
        if (n < N) atomicAdd(p.dA + ((size_t)k * D + d) * N + n, dA_acc[n]);
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

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("ss2d CUDA ") + what + ": " + cudaGetErrorString(err));
}

struct Plan {
  int dt_tile, nchunks, grid_x;
  size_t floats;      // per block
  bool use_workspace;  // scratch in global memory instead of shared memory
  int smem_max;        // the device's opt-in shared memory per block, bytes
};

Plan make_plan(bool bwd, int batch, int H, int W, int D, int N) {
  if (batch < 1 || H < 1 || W < 1 || D < 1) throw std::invalid_argument("ss2d: empty input");
  if (N < 1 || N > kMaxState)
    throw std::invalid_argument("ss2d CUDA: d_state N=" + std::to_string(N) + " is outside the supported 1.." +
                                std::to_string(kMaxState));
  if (batch > 65535) throw std::invalid_argument("ss2d CUDA: batch above 65535 is not supported");
  if ((long long)H * W > (1LL << 26)) throw std::invalid_argument("ss2d CUDA: H*W above 2^26 is not supported");
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

// Raises a kernel's dynamic shared memory cap to the device's opt-in maximum, once per (kernel, device), so
// later launches (possibly inside a CUDA graph capture) make no attribute calls.
void allow_max_smem(const void* kernel, int smem_max) {
  static std::mutex mu;
  static std::set<std::pair<const void*, int>> done;
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  std::lock_guard<std::mutex> lock(mu);
  if (done.count({kernel, dev})) return;
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_max),
             "cudaFuncSetAttribute");
  done.insert({kernel, dev});
}

template <typename K>
void launch(K kernel, const Plan& pl, int batch, const Params& prm, cudaStream_t stream) {
  const size_t smem = pl.use_workspace ? 0 : pl.floats * sizeof(float);
  if (smem > 48 * 1024) allow_max_smem(reinterpret_cast<const void*>(kernel), pl.smem_max);
  kernel<<<dim3(pl.grid_x, batch), kThreads, smem, stream>>>(prm);
  check_cuda(cudaGetLastError(), "kernel launch");
}

void check_workspace(const Plan& pl, int batch, const float* ws, int64_t ws_floats) {
  if (!pl.use_workspace) return;
  const size_t need = pl.floats * (size_t)pl.grid_x * batch;
  if (ws == nullptr || ws_floats < (int64_t)need)
    throw std::invalid_argument("ss2d CUDA: the workspace must hold " + std::to_string(need) + " floats");
}

}  // namespace

int ss2d_cuda_max_state() { return kMaxState; }

int64_t ss2d_cuda_workspace_floats(bool backward, int batch, int H, int W, int D, int N) {
  const Plan pl = make_plan(backward, batch, H, W, D, N);
  return pl.use_workspace ? (int64_t)(pl.floats * (size_t)pl.grid_x * batch) : 0;
}

void ss2d_cuda_forward(const void* u, const void* delta, const float* A, const void* B, const void* C,
                       const float* Dw, const float* bias, void* y, float* workspace, int64_t workspace_floats,
                       int batch, int H, int W, int D, int N, int dtype, bool out_f32, bool softplus,
                       cudaStream_t stream) {
  const Plan pl = make_plan(false, batch, H, W, D, N);
  check_workspace(pl, batch, workspace, workspace_floats);
  Params prm{};
  prm.u = u; prm.delta = delta; prm.A = A; prm.B = B; prm.C = C; prm.Dw = Dw; prm.bias = bias;
  prm.y = y; prm.out_f32 = out_f32 || dtype == 0;
  prm.workspace = pl.use_workspace ? workspace : nullptr;
  prm.H = H; prm.W = W; prm.D = D; prm.N = N; prm.softplus = softplus;
  prm.dt_tile = pl.dt_tile; prm.nchunks = pl.nchunks;
  dispatch_dtype(dtype, "ss2d CUDA", [&](auto t) { launch(ss2d_fwd_kernel<decltype(t)>, pl, batch, prm, stream); });
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
