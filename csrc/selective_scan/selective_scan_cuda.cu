// Selective scan (Mamba S6) on CUDA: forward, and a backward that recomputes the forward. No torch: raw device
// pointers, sizes and a stream.
//
// Decomposition (mirrored step for step by the emulation in tests/kernels/test_selective_scan_cuda.py):
//   * A block owns one batch item and up to kMaxWarps channels of one B/C group, one warp per channel, so the
//     variable B and C rows of a chunk are staged in shared memory once per block and read by every warp.
//   * The sequence is walked in chunks of kChunk = 32 * kItems steps; lane l owns the kItems consecutive steps
//     l*kItems .. l*kItems+kItems-1 of the chunk. Per-chunk arrays live in shared memory in "lane-major" order
//     (step q at slot (q % kItems) * kRow + q / kItems), so loads from global memory are coalesced along L and
//     the lanes' reads of their own steps hit 32 distinct banks.
//   * Per chunk and state n: a_t = exp2(dt_t * A_n * log2 e) (the only exp of (t, d, n)), x_t = dt_t u_t B_nt;
//     each lane composes its steps' affine maps h -> a h + x, an inclusive warp shuffle scan composes the lanes',
//     and the carry (the state entering the chunk, held by lane n) starts the lane's exclusive prefix; the lane
//     then re-walks its steps from that state with the a_t, x_t kept in registers, y_t += C_nt h_t. The state
//     leaving the chunk comes from lane 31 and becomes lane n's carry for the next chunk.
//   * Backward, per chunk from the last to the first: the state entering the chunk comes from a pass of the
//     forward kernel that stores only the chunk-entry states ((L / kChunk) * N floats per channel); the chunk's
//     states are recomputed as above, then the adjoint g_t = dy_t C_nt + a_{t+1} g_{t+1} is scanned in reverse
//     the same way (shuffle-down suffix scan, carry a_{t0} g_{t0} held by lane n for the previous chunk).
//     dB and dC of variable B/C are summed over the block's channels with shared-memory atomics and added to
//     global memory with one atomic per (group, n, t) per block; dA and input-independent dB/dC by warp
//     reductions into lane n, then one atomic per (channel, n) per block.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "common/cuda_helpers.cuh"

namespace {

constexpr int kItems = 8;                 // consecutive steps per lane
constexpr int kChunk = 32 * kItems;       // steps per chunk
constexpr int kRow = 36;                  // slot row stride (kItems rows of 32 lanes + 4 pad: see slot())
constexpr int kSlots = kItems * kRow;     // floats of one per-chunk array in shared memory
constexpr int kMaxWarps = 8;              // channels per block
constexpr int kMaxThreads = 32 * kMaxWarps;
constexpr int kMaxState = 32;             // lane n holds the carries of state n
constexpr float kLog2e = 1.4426950408889634f;
constexpr unsigned kFull = 0xffffffffu;

using dhkd_cuda::dispatch_dtype;
using dhkd_cuda::from_f32;
using dhkd_cuda::to_f32;

struct Params {
  const void* u;
  const void* delta;
  const float* A;      // (Dch, N)
  const void* B;       // variable: (batch, G, N, L) io dtype; else (Dch, N) fp32
  const void* C;
  const float* Dw;     // (Dch,) or null
  const void* z;       // (batch, Dch, L) or null
  const float* bias;   // (Dch,) or null
  void* out;           // forward
  float* last_state;   // (batch, Dch, N)
  float* chunk_states; // (batch, Dch, nchunks, N): written by the states-only forward, read by the backward
  const void* dout;    // backward
  void* du;
  void* ddelta;
  void* dz;
  float* dA;     // (Dch, N), zero on entry
  float* dB;     // fp32, shape of B, zero on entry
  float* dC;
  float* dD;     // (Dch,), zero on entry
  float* dbias;  // (Dch,), zero on entry
  int Dch, L, N, groups, softplus;
  int warps, blocks_per_group, nchunks;
};

// Slot of chunk step q in the lane-major per-chunk arrays: row q % kItems, column q / kItems (the lane). A lane
// reading its step k (row k) and 32 consecutive steps being written (4 columns of 8 rows; row stride 36 = 4 mod
// 32 banks) both hit 32 distinct banks.
__device__ __forceinline__ int slot(int q) { return (q % kItems) * kRow + q / kItems; }

__device__ __forceinline__ float softplus_dt(float zr, int softplus) {
  return (softplus && zr <= 20.f) ? log1pf(__expf(zr)) : zr;
}

__device__ __forceinline__ float sigmoid(float v) { return 1.f / (1.f + __expf(-v)); }

// Where a block's warp sits: batch item b, group g, channel d (dead warps past the group's end shadow its last
// channel, so they run the same code but store nothing).
struct Place {
  long long b;
  int g, d, lane, warp;
  bool live;
};

__device__ __forceinline__ Place place(const Params& p) {
  Place w;
  w.lane = threadIdx.x & 31;
  w.warp = threadIdx.x >> 5;
  const int Dg = p.Dch / p.groups;
  w.g = blockIdx.x / p.blocks_per_group;
  const int j = (blockIdx.x % p.blocks_per_group) * p.warps + w.warp;
  w.live = j < Dg;
  w.d = w.g * Dg + (w.live ? j : Dg - 1);
  w.b = blockIdx.y;
  return w;
}

// All threads of the block: rows n = 0..N-1 of a variable B or C (this block's batch item and group), steps
// t0 .. t0+kChunk-1, into dst[n * kSlots + slot(q)] as fp32 (zero past L).
template <typename T>
__device__ void stage_rows(float* dst, const T* rows, int N, int L, int t0) {
  for (int i = threadIdx.x; i < N * kChunk; i += blockDim.x) {
    const int n = i / kChunk, q = i % kChunk, t = t0 + q;
    dst[n * kSlots + slot(q)] = t < L ? to_f32(rows[(long long)n * L + t]) : 0.f;
  }
}

// One warp: steps t0 .. t0+kChunk-1 of one channel's sequence into dst in lane-major order (zero past L).
template <typename T>
__device__ __forceinline__ void stage_seq(float* dst, const T* seq, int L, int t0, int lane) {
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const int q = j * 32 + lane, t = t0 + q;
    dst[slot(q)] = t < L ? to_f32(seq[t]) : 0.f;
  }
}

// One warp: the chunk's values src (lane-major) to a channel's sequence, coalesced, for t < L.
template <typename T>
__device__ __forceinline__ void store_seq(T* seq, const float* src, int L, int t0, int lane) {
  __syncwarp();
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const int q = j * 32 + lane, t = t0 + q;
    if (t < L) seq[t] = from_f32<T>(src[slot(q)]);
  }
}

// Inclusive warp scan of the affine maps h -> pa h + px in lane order (earlier lanes applied first).
__device__ __forceinline__ void scan_up(float& pa, float& px, int lane) {
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const float qa = __shfl_up_sync(kFull, pa, off), qx = __shfl_up_sync(kFull, px, off);
    if (lane >= off) {
      px = pa * qx + px;
      pa = pa * qa;
    }
  }
}

// Inclusive suffix warp scan of the maps g -> pp g + pq (later lanes applied first).
__device__ __forceinline__ void scan_down(float& pp, float& pq, int lane) {
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const float rp = __shfl_down_sync(kFull, pp, off), rq = __shfl_down_sync(kFull, pq, off);
    if (lane + off < 32) {
      pq = pp * rq + pq;
      pp = pp * rp;
    }
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
  return v;
}

// Shared memory of a block, in floats: B and C rows (if variable), their gradient sums (backward), and per warp
// the staged sequences (forward: u, delta, z; backward: u, delta, z, dout).
__host__ __device__ inline int smem_floats(bool bwd, int N, bool B_var, bool C_var, int warps) {
  const int rows = (B_var ? N : 0) + (C_var ? N : 0);
  return (bwd ? 2 : 1) * rows * kSlots + warps * (bwd ? 4 : 3) * kSlots;
}

// Forward. kStatesOnly: store the state entering each chunk into p.chunk_states instead of producing out.
// kBVar / kCVar: B / C variable (staged rows) or input-independent (one value per channel and state).
template <typename T, bool kStatesOnly, bool kBVar, bool kCVar>
__global__ void __launch_bounds__(kMaxThreads, 2) selective_scan_fwd_kernel(Params p) {
  extern __shared__ float smem[];
  const Place w = place(p);
  const int L = p.L, N = p.N, lane = w.lane;
  constexpr bool C_var = !kStatesOnly && kCVar;
  float* Bs = smem;
  float* Cs = Bs + (kBVar ? N * kSlots : 0);
  float* us = Cs + (C_var ? N * kSlots : 0) + w.warp * 3 * kSlots;
  float* ds = us + kSlots;
  float* zs = ds + kSlots;
  const long long seq0 = (w.b * p.Dch + w.d) * (long long)L;
  const T* u = static_cast<const T*>(p.u) + seq0;
  const T* delta = static_cast<const T*>(p.delta) + seq0;
  const T* z = p.z ? static_cast<const T*>(p.z) + seq0 : nullptr;
  const long long rows0 = (w.b * p.groups + w.g) * (long long)N * L;
  const float* Arow = p.A + (long long)w.d * N;
  const float bias = p.bias ? p.bias[w.d] : 0.f;
  const float Dd = p.Dw ? p.Dw[w.d] : 0.f;
  float* states = kStatesOnly ? p.chunk_states + (w.b * p.Dch + w.d) * (long long)p.nchunks * N : nullptr;

  float carry = 0.f;  // lane n: the state n entering the chunk
  for (int c = 0; c < p.nchunks; ++c) {
    const int t0 = c * kChunk;
    if (kStatesOnly && w.live && lane < N) states[(long long)c * N + lane] = carry;
    __syncthreads();  // the previous chunk's readers of the staged rows are done
    if (kBVar) stage_rows(Bs, static_cast<const T*>(p.B) + rows0, N, L, t0);
    if (C_var) stage_rows(Cs, static_cast<const T*>(p.C) + rows0, N, L, t0);
    stage_seq(us, u, L, t0, lane);
    stage_seq(ds, delta, L, t0, lane);
    if (!kStatesOnly && z) stage_seq(zs, z, L, t0, lane);
    __syncthreads();

    float dt[kItems], dtu[kItems], y[kItems];
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const float uu = us[k * kRow + lane];
      const bool valid = t0 + lane * kItems + k < L;
      dt[k] = valid ? softplus_dt(ds[k * kRow + lane] + bias, p.softplus) : 0.f;  // padding: a = 1, x = 0
      dtu[k] = dt[k] * uu;
      y[k] = Dd * uu;
    }
    for (int n = 0; n < N; ++n) {
      const float a2 = Arow[n] * kLog2e;
      const float Bn = kBVar ? 0.f : static_cast<const float*>(p.B)[(long long)w.d * N + n];
      float a[kItems], x[kItems];
      float pa = 1.f, px = 0.f;
#pragma unroll
      for (int k = 0; k < kItems; ++k) {
        a[k] = exp2f(dt[k] * a2);
        x[k] = dtu[k] * (kBVar ? Bs[n * kSlots + k * kRow + lane] : Bn);
        pa *= a[k];
        px = a[k] * px + x[k];
      }
      scan_up(pa, px, lane);
      const float h_in = __shfl_sync(kFull, carry, n);
      float h;
      if (kStatesOnly) {
        h = pa * h_in + px;  // the lane's inclusive prefix applied to the carry: only lane 31's is used
      } else {
        float ea = __shfl_up_sync(kFull, pa, 1), ex = __shfl_up_sync(kFull, px, 1);
        if (lane == 0) {
          ea = 1.f;
          ex = 0.f;
        }
        h = ea * h_in + ex;
        const float Cn = C_var ? 0.f : static_cast<const float*>(p.C)[(long long)w.d * N + n];
#pragma unroll
        for (int k = 0; k < kItems; ++k) {
          h = a[k] * h + x[k];
          y[k] += (C_var ? Cs[n * kSlots + k * kRow + lane] : Cn) * h;
        }
      }
      const float h_out = __shfl_sync(kFull, h, 31);
      if (lane == n) carry = h_out;
    }
    if (!kStatesOnly) {
#pragma unroll
      for (int k = 0; k < kItems; ++k) {
        float o = y[k];
        if (z) {
          const float zv = zs[k * kRow + lane];
          o *= zv * sigmoid(zv);
        }
        us[k * kRow + lane] = o;  // the lane's own slots: the staged u is no longer needed
      }
      if (w.live) store_seq(static_cast<T*>(p.out) + seq0, us, L, t0, lane);
    }
  }
  if (!kStatesOnly && w.live && lane < N) p.last_state[(w.b * p.Dch + w.d) * N + lane] = carry;
}

// Backward: reverse walk over the chunks; p.chunk_states from selective_scan_fwd_kernel<T, true, kBVar, false>.
template <typename T, bool kBVar, bool kCVar>
__global__ void __launch_bounds__(kMaxThreads, 2) selective_scan_bwd_kernel(Params p) {
  extern __shared__ float smem[];
  const Place w = place(p);
  const int L = p.L, N = p.N, lane = w.lane;
  const int rowsN = N * kSlots;
  float* Bs = smem;
  float* Cs = Bs + (kBVar ? rowsN : 0);
  float* dBs = Cs + (kCVar ? rowsN : 0);
  float* dCs = dBs + (kBVar ? rowsN : 0);
  float* us = dCs + (kCVar ? rowsN : 0) + w.warp * 4 * kSlots;
  float* ds = us + kSlots;
  float* zs = ds + kSlots;
  float* gs = zs + kSlots;  // dout
  const long long seq0 = (w.b * p.Dch + w.d) * (long long)L;
  const T* u = static_cast<const T*>(p.u) + seq0;
  const T* delta = static_cast<const T*>(p.delta) + seq0;
  const T* z = p.z ? static_cast<const T*>(p.z) + seq0 : nullptr;
  const T* dout = static_cast<const T*>(p.dout) + seq0;
  const long long rows0 = (w.b * p.groups + w.g) * (long long)N * L;
  const float* Arow = p.A + (long long)w.d * N;
  const float bias = p.bias ? p.bias[w.d] : 0.f;
  const float Dd = p.Dw ? p.Dw[w.d] : 0.f;
  const float* states = p.chunk_states + (w.b * p.Dch + w.d) * (long long)p.nchunks * N;

  float gcarry = 0.f;                       // lane n: a_{t+1} g_{t+1} entering the chunk's last step
  float dA_acc = 0.f, dB_acc = 0.f, dC_acc = 0.f;  // lane n: sums for state n (dB/dC: input-independent B/C)
  float dD_acc = 0.f, dbias_acc = 0.f;     // per lane, summed over the warp at the end
  for (int c = p.nchunks - 1; c >= 0; --c) {
    const int t0 = c * kChunk;
    __syncthreads();  // the previous chunk's readers of the staged rows and gradient sums are done
    if (kBVar) {
      stage_rows(Bs, static_cast<const T*>(p.B) + rows0, N, L, t0);
      for (int i = threadIdx.x; i < rowsN; i += blockDim.x) dBs[i] = 0.f;
    }
    if (kCVar) {
      stage_rows(Cs, static_cast<const T*>(p.C) + rows0, N, L, t0);
      for (int i = threadIdx.x; i < rowsN; i += blockDim.x) dCs[i] = 0.f;
    }
    stage_seq(us, u, L, t0, lane);
    stage_seq(ds, delta, L, t0, lane);
    stage_seq(gs, dout, L, t0, lane);
    if (z) stage_seq(zs, z, L, t0, lane);
    const float h_chunk = lane < N ? states[(long long)c * N + lane] : 0.f;
    __syncthreads();

    float dt[kItems], uu[kItems], dy[kItems], y[kItems], gB[kItems], gAh[kItems];
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int s = k * kRow + lane;
      const bool valid = t0 + lane * kItems + k < L;
      uu[k] = us[s];
      dt[k] = valid ? softplus_dt(ds[s] + bias, p.softplus) : 0.f;
      dy[k] = gs[s];
      if (z) {
        const float zv = zs[s];
        dy[k] *= zv * sigmoid(zv);
      }
      y[k] = Dd * uu[k];
      gB[k] = 0.f;
      gAh[k] = 0.f;
    }
    for (int n = 0; n < N; ++n) {
      const float An = Arow[n], a2 = An * kLog2e;
      const float Bn = kBVar ? 0.f : static_cast<const float*>(p.B)[(long long)w.d * N + n];
      const float Cn = kCVar ? 0.f : static_cast<const float*>(p.C)[(long long)w.d * N + n];
      const float* Brow = Bs + n * kSlots + lane;
      const float* Crow = Cs + n * kSlots + lane;
      float a[kItems], ah[kItems], h[kItems];
      // Forward over the chunk from its entry state.
      float pa = 1.f, px = 0.f;
#pragma unroll
      for (int k = 0; k < kItems; ++k) {
        a[k] = exp2f(dt[k] * a2);
        h[k] = dt[k] * uu[k] * (kBVar ? Brow[k * kRow] : Bn);  // x_t for now
        pa *= a[k];
        px = a[k] * px + h[k];
      }
      scan_up(pa, px, lane);
      float ea = __shfl_up_sync(kFull, pa, 1), ex = __shfl_up_sync(kFull, px, 1);
      if (lane == 0) {
        ea = 1.f;
        ex = 0.f;
      }
      float hv = ea * __shfl_sync(kFull, h_chunk, n) + ex;
#pragma unroll
      for (int k = 0; k < kItems; ++k) {
        ah[k] = a[k] * hv;
        hv = ah[k] + h[k];
        h[k] = hv;
        y[k] += (kCVar ? Crow[k * kRow] : Cn) * hv;
      }
      // Reverse adjoint scan: lane map g_in -> pp g_in + pq gives a_{first} g_{first} from the carry into its last step.
      float pp = 1.f, pq = 0.f;
#pragma unroll
      for (int k = kItems - 1; k >= 0; --k) {
        pq = a[k] * (dy[k] * (kCVar ? Crow[k * kRow] : Cn) + pq);
        pp = a[k] * pp;
      }
      scan_down(pp, pq, lane);
      float sp = __shfl_down_sync(kFull, pp, 1), sq = __shfl_down_sync(kFull, pq, 1);
      if (lane == 31) {
        sp = 1.f;
        sq = 0.f;
      }
      const float g_in = __shfl_sync(kFull, gcarry, n);
      float gnext = sp * g_in + sq;
      const float g_out = __shfl_sync(kFull, pp * g_in + pq, 0);
      if (lane == n) gcarry = g_out;
      float dA_part = 0.f, dB_part = 0.f, dC_part = 0.f;
#pragma unroll
      for (int k = kItems - 1; k >= 0; --k) {
        const float Bk = kBVar ? Brow[k * kRow] : Bn;
        const float Ck = kCVar ? Crow[k * kRow] : Cn;
        const float g = dy[k] * Ck + gnext;
        gnext = a[k] * g;
        gB[k] += g * Bk;
        gAh[k] += g * An * ah[k];
        dA_part += g * dt[k] * ah[k];
        const float dBv = g * dt[k] * uu[k], dCv = dy[k] * h[k];
        if (kBVar) {
          if (w.live) atomicAdd(dBs + n * kSlots + k * kRow + lane, dBv);
        } else {
          dB_part += dBv;
        }
        if (kCVar) {
          if (w.live) atomicAdd(dCs + n * kSlots + k * kRow + lane, dCv);
        } else {
          dC_part += dCv;
        }
      }
      dA_part = warp_sum(dA_part);
      if (!kBVar) dB_part = warp_sum(dB_part);
      if (!kCVar) dC_part = warp_sum(dC_part);
      if (lane == n) {
        dA_acc += dA_part;
        dB_acc += dB_part;
        dC_acc += dC_part;
      }
    }
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int s = k * kRow + lane;
      const bool valid = t0 + lane * kItems + k < L;
      const float zr = ds[s] + bias;
      float ddt = uu[k] * gB[k] + gAh[k];
      if (p.softplus && zr <= 20.f) ddt *= sigmoid(zr);
      if (!valid) ddt = 0.f;
      dD_acc += dy[k] * uu[k];
      dbias_acc += ddt;
      if (z) {
        const float zv = zs[s], sg = sigmoid(zv);
        zs[s] = gs[s] * y[k] * sg * (1.f + zv * (1.f - sg));  // d out / d z = y silu'(z)
      }
      us[s] = dt[k] * gB[k] + Dd * dy[k];
      ds[s] = ddt;
    }
    if (w.live) {
      store_seq(static_cast<T*>(p.du) + seq0, us, L, t0, lane);
      store_seq(static_cast<T*>(p.ddelta) + seq0, ds, L, t0, lane);
      if (z) store_seq(static_cast<T*>(p.dz) + seq0, zs, L, t0, lane);
    }
    if (kBVar || kCVar) {
      __syncthreads();  // every warp's shared-memory atomics for this chunk are in
      const int t_len = min(kChunk, L - t0);
      for (int i = threadIdx.x; i < N * kChunk; i += blockDim.x) {
        const int n = i / kChunk, q = i % kChunk;
        if (q >= t_len) continue;
        const long long o = rows0 + (long long)n * L + t0 + q;
        if (kBVar) atomicAdd(p.dB + o, dBs[n * kSlots + slot(q)]);
        if (kCVar) atomicAdd(p.dC + o, dCs[n * kSlots + slot(q)]);
      }
    }
  }
  dD_acc = warp_sum(dD_acc);
  dbias_acc = warp_sum(dbias_acc);
  if (!w.live) return;
  if (lane < N) {
    const long long o = (long long)w.d * N + lane;
    atomicAdd(p.dA + o, dA_acc);
    if (!kBVar) atomicAdd(p.dB + o, dB_acc);
    if (!kCVar) atomicAdd(p.dC + o, dC_acc);
  }
  if (lane == 0) {
    atomicAdd(p.dD + w.d, dD_acc);
    atomicAdd(p.dbias + w.d, dbias_acc);
  }
}

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("selective_scan CUDA ") + what + ": " + cudaGetErrorString(err));
}

int nchunks_of(int L) { return (L + kChunk - 1) / kChunk; }

// Launch geometry: channels (warps) per block, blocks per group, shared memory.
struct Plan {
  int warps, blocks_per_group, nchunks;
  size_t smem;
  int smem_max;
};

Plan make_plan(bool bwd, int batch, int Dch, int L, int N, int groups, bool B_var, bool C_var) {
  if (batch < 1 || Dch < 1 || L < 1) throw std::invalid_argument("selective_scan CUDA: empty input");
  if (N < 1 || N > kMaxState)
    throw std::invalid_argument("selective_scan CUDA: d_state N=" + std::to_string(N) +
                                " is outside the supported 1.." + std::to_string(kMaxState) +
                                "; use the 'triton' or 'reference' backend");
  if (groups < 1 || Dch % groups)
    throw std::invalid_argument("selective_scan CUDA: " + std::to_string(groups) + " groups do not divide " +
                                std::to_string(Dch) + " channels");
  if (batch > 65535) throw std::invalid_argument("selective_scan CUDA: batch above 65535 is not supported");
  int dev = 0, nsm = 0, smem_max = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, dev), "device attribute");
  check_cuda(cudaDeviceGetAttribute(&smem_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "device attribute");
  const int Dg = Dch / groups;
  Plan pl{};
  pl.nchunks = nchunks_of(L);
  pl.warps = kMaxWarps;
  while (pl.warps > 1 && pl.warps / 2 >= Dg) pl.warps /= 2;  // no block wider than the group
  // Smaller blocks while there would be fewer than two per SM (better balance at batch 1).
  while (pl.warps > 2 && (long long)batch * groups * ((Dg + pl.warps - 1) / pl.warps) < 2LL * nsm) pl.warps /= 2;
  pl.blocks_per_group = (Dg + pl.warps - 1) / pl.warps;
  if ((long long)groups * pl.blocks_per_group > 0x7fffffffLL)
    throw std::invalid_argument("selective_scan CUDA: too many channels");
  pl.smem = (size_t)smem_floats(bwd, N, B_var, C_var, pl.warps) * sizeof(float);
  pl.smem_max = smem_max;
  if (pl.smem > (size_t)smem_max)
    throw std::invalid_argument("selective_scan CUDA: d_state N=" + std::to_string(N) + " needs " +
                                std::to_string(pl.smem) + " bytes of shared memory per block, the device has " +
                                std::to_string(smem_max) + "; use the 'triton' or 'reference' backend");
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
void launch(K kernel, const Plan& pl, int batch, int groups, const Params& prm, cudaStream_t stream) {
  if (pl.smem > 48 * 1024) allow_max_smem(reinterpret_cast<const void*>(kernel), pl.smem_max);
  kernel<<<dim3(groups * pl.blocks_per_group, batch), 32 * pl.warps, pl.smem, stream>>>(prm);
  check_cuda(cudaGetLastError(), "kernel launch");
}

// Calls f(bool constants) with the B/C variability as compile-time flags of the kernels.
template <typename F>
void with_flags(bool B_var, bool C_var, F&& f) {
  using yes = std::true_type;
  using no = std::false_type;
  if (B_var && C_var) f(yes{}, yes{});
  else if (B_var) f(yes{}, no{});
  else if (C_var) f(no{}, yes{});
  else f(no{}, no{});
}

Params base_params(const void* u, const void* delta, const float* A, const void* B, const void* C,
                   const float* Dw, const void* z, const float* bias, int Dch, int L, int N, int groups,
                   bool softplus, const Plan& pl) {
  Params prm{};
  prm.u = u; prm.delta = delta; prm.A = A; prm.B = B; prm.C = C; prm.Dw = Dw; prm.z = z; prm.bias = bias;
  prm.Dch = Dch; prm.L = L; prm.N = N; prm.groups = groups;
  prm.softplus = softplus; prm.warps = pl.warps; prm.blocks_per_group = pl.blocks_per_group;
  prm.nchunks = pl.nchunks;
  return prm;
}

}  // namespace

int selective_scan_cuda_max_state() { return kMaxState; }

int selective_scan_cuda_chunk() { return kChunk; }

void selective_scan_cuda_forward(const void* u, const void* delta, const float* A, const void* B, const void* C,
                                 const float* Dw, const void* z, const float* bias, void* out, float* last_state,
                                 int batch, int Dch, int L, int N, int groups, bool B_var, bool C_var, int dtype,
                                 bool softplus, cudaStream_t stream) {
  const Plan pl = make_plan(false, batch, Dch, L, N, groups, B_var, C_var);
  Params prm = base_params(u, delta, A, B, C, Dw, z, bias, Dch, L, N, groups, softplus, pl);
  prm.out = out;
  prm.last_state = last_state;
  dispatch_dtype(dtype, "selective_scan CUDA", [&](auto t) {
    with_flags(B_var, C_var, [&](auto bv, auto cv) {
      launch(selective_scan_fwd_kernel<decltype(t), false, bv.value, cv.value>, pl, batch, groups, prm, stream);
    });
  });
}

void selective_scan_cuda_backward(const void* dout, const void* u, const void* delta, const float* A,
                                  const void* B, const void* C, const float* Dw, const void* z, const float* bias,
                                  void* du, void* ddelta, void* dz, float* dA, float* dB, float* dC, float* dD,
                                  float* dbias, float* chunk_states, int64_t chunk_state_floats, int batch,
                                  int Dch, int L, int N, int groups, bool B_var, bool C_var, int dtype,
                                  bool softplus, cudaStream_t stream) {
  const Plan fpl = make_plan(false, batch, Dch, L, N, groups, B_var, false);
  const Plan bpl = make_plan(true, batch, Dch, L, N, groups, B_var, C_var);
  const int64_t need = (int64_t)batch * Dch * bpl.nchunks * N;
  if (chunk_states == nullptr || chunk_state_floats < need)
    throw std::invalid_argument("selective_scan CUDA: the chunk-state buffer must hold " + std::to_string(need) +
                                " floats");
  Params prm = base_params(u, delta, A, B, C, Dw, z, bias, Dch, L, N, groups, softplus, fpl);
  prm.chunk_states = chunk_states;
  Params bprm = base_params(u, delta, A, B, C, Dw, z, bias, Dch, L, N, groups, softplus, bpl);
  bprm.chunk_states = chunk_states;
  bprm.dout = dout; bprm.du = du; bprm.ddelta = ddelta; bprm.dz = dz;
  bprm.dA = dA; bprm.dB = dB; bprm.dC = dC; bprm.dD = dD; bprm.dbias = dbias;
  dispatch_dtype(dtype, "selective_scan CUDA", [&](auto t) {
    with_flags(B_var, C_var, [&](auto bv, auto cv) {
      launch(selective_scan_fwd_kernel<decltype(t), true, bv.value, false>, fpl, batch, groups, prm, stream);
      launch(selective_scan_bwd_kernel<decltype(t), bv.value, cv.value>, bpl, batch, groups, bprm, stream);
    });
  });
}
