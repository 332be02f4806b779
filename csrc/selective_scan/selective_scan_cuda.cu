// Selective scan (Mamba S6) on CUDA: forward, and a backward that recomputes the forward. No torch: raw device
// pointers, sizes and a stream.
//
// Decomposition (mirrored step for step by the emulation in tests/kernels/test_selective_scan_cuda.py):
//   * A block owns one batch item and up to kMaxChannels channels of one B/C group, so the variable B and C rows
//     of a chunk are staged in shared memory once per block and read by every channel.
//   * The sequence is walked in chunks of kChunk = 256 steps. A channel has kLanes lanes (forward: 16, two
//     channels per warp; backward and its states-only forward: 32, a warp per channel); lane l owns the
//     kItems = kChunk / kLanes consecutive steps l*kItems .. of the chunk (16 in the forward, which amortises the
//     shuffle scan over more steps; 8 in the backward, which keeps more per step in registers). Per-chunk arrays
//     live in shared memory in "lane-major" order (Geo::slot), so loads from global memory are coalesced along L
//     and neither the staging writes nor the lanes' reads of their own steps have bank conflicts.
//   * Per chunk and state n: a_t = exp2(dt_t * A_n * log2 e) (the only exp of (t, d, n)), x_t = dt_t u_t B_nt;
//     each lane composes its steps' affine maps h -> a h + x, an inclusive shuffle scan over the channel's lanes
//     composes the lanes', and the carry (the state entering the chunk, held by lane n % kLanes) starts the lane's
//     exclusive prefix; the lane then re-walks its steps from that state with the a_t, x_t kept in registers,
//     y_t += C_nt h_t. The state leaving the chunk comes from the last lane and becomes the next chunk's carry.
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
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "common/cuda_helpers.cuh"
#include "selective_scan/selective_scan.h"

namespace {

constexpr int kChunk = 256;               // steps per chunk
constexpr int kMaxChannels = 8;           // channels per block
constexpr int kMaxThreads = 32 * kMaxChannels;
constexpr int kMaxState = 32;             // lane n % lanes holds the carries of state n
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
  int B_vec, C_vec;  // variable B / C rows can be staged 4 steps at a time (see stage_rows)
  int channels, blocks_per_group, nchunks;  // channels per block
};

// Lane geometry of a kernel: kLanes lanes per channel (32: a warp per channel; 16: two channels per warp), lane l
// owning the kItems = kChunk / kLanes consecutive steps l*kItems .. of the chunk. Per-chunk arrays in shared
// memory are "lane-major": step q at slot(q) = (q % kItems) * kRow + q / kItems. The row stride kRow makes a lane
// group reading its step k (row k) and 32 consecutive steps being written both hit distinct banks (36 = 4 mod 32
// for 8 rows of 32 lanes; 17, odd, for 16 rows of 16 lanes).
template <int kLanesT>
struct Geo {
  static constexpr int kLanes = kLanesT;
  static constexpr int kItems = kChunk / kLanes;
  static constexpr int kRow = kLanes == 32 ? 36 : 17;
  static constexpr int kSlots = kItems * kRow;  // floats of one per-chunk array
  __device__ static __forceinline__ int slot(int q) { return (q % kItems) * kRow + q / kItems; }
};
using Wide = Geo<32>;    // backward and the states-only forward: more registers per step
using Narrow = Geo<16>;  // forward: 16 steps per lane amortise the shuffle scans

// dt from delta + bias: softplus(z) = max(z, 0) + log1p(exp(-|z|)), z itself above 20 (as mamba_ssm). log1p(e)
// for e in (0, 1] is 2 atanh(s), s = e / (2 + e) <= 1/3, by its odd series to s^15 (truncation below 2e-9
// relative): as accurate in fp32 as log1pf(expf(z)) and about half its instructions.
__device__ __forceinline__ float softplus_dt(float zr, int softplus) {
  if (!softplus || zr > 20.f) return zr;
  const float e = __expf(-fabsf(zr));
  const float s = __fdividef(e, 2.f + e), w = s * s;
  float p = 1.f / 15.f;
  p = p * w + 1.f / 13.f;
  p = p * w + 1.f / 11.f;
  p = p * w + 1.f / 9.f;
  p = p * w + 1.f / 7.f;
  p = p * w + 1.f / 5.f;
  p = p * w + 1.f / 3.f;
  p = p * w + 1.f;
  return fmaxf(zr, 0.f) + 2.f * s * p;
}

__device__ __forceinline__ float sigmoid(float v) { return 1.f / (1.f + __expf(-v)); }

// Where a thread's channel sits: batch item b, group g, channel d, the channel's index ch in the block and the
// thread's lane in the channel. Dead channels past the group's end shadow its last channel, so they run the same
// code but store nothing.
struct Place {
  long long b;
  int g, d, ch, lane;
  bool live;
};

template <class G>
__device__ __forceinline__ Place place(const Params& p) {
  Place w;
  w.lane = threadIdx.x % G::kLanes;
  w.ch = threadIdx.x / G::kLanes;
  const int Dg = p.Dch / p.groups;
  w.g = blockIdx.x / p.blocks_per_group;
  const int j = (blockIdx.x % p.blocks_per_group) * p.channels + w.ch;
  w.live = j < Dg;
  w.d = w.g * Dg + (w.live ? j : Dg - 1);
  w.b = blockIdx.y;
  return w;
}

template <typename T, int kW>
struct alignas(kW * sizeof(T)) VecT {
  T v[kW];
};

// All threads of the block: rows n = 0..N-1 of a variable B or C (this block's batch item and group), steps
// t0 .. t0+kChunk-1, into dst[n * kSlots + slot(q)] as fp32 (zero past L), kW consecutive steps per load (kW > 1
// needs rows starting kW-element aligned and L a multiple of kW, so a group of kW is wholly before or past L).
// A thread keeps the same steps for every row, so their slots are computed once.
template <class G, int kW, typename T>
__device__ void stage_rows_by(float* dst, const T* rows, int N, int L, int t0) {
  constexpr int kGroups = kChunk / kW;
  const int per_row = min((int)blockDim.x, kGroups);  // threads covering one row
  const int row_step = blockDim.x / per_row;
  for (int grp = threadIdx.x % per_row; grp < kGroups; grp += per_row) {
    const int q = grp * kW, t = t0 + q;
    int o[kW];
#pragma unroll
    for (int s = 0; s < kW; ++s) o[s] = G::slot(q + s);
    for (int n = threadIdx.x / per_row; n < N; n += row_step) {
      float* d = dst + n * G::kSlots;
      if (t < L) {
        const VecT<T, kW> v = *reinterpret_cast<const VecT<T, kW>*>(rows + (long long)n * L + t);
#pragma unroll
        for (int s = 0; s < kW; ++s) d[o[s]] = to_f32(v.v[s]);
      } else {
#pragma unroll
        for (int s = 0; s < kW; ++s) d[o[s]] = 0.f;
      }
    }
  }
}

// stage_rows_by with 4 steps per load when `vec` (rows 4-element aligned, L a multiple of 4), else 1.
template <class G, typename T>
__device__ __forceinline__ void stage_rows(float* dst, const T* rows, int N, int L, int t0, bool vec) {
  if (vec) stage_rows_by<G, 4>(dst, rows, N, L, t0);
  else stage_rows_by<G, 1>(dst, rows, N, L, t0);
}

// The lanes of one channel: steps t0 .. t0+kChunk-1 of its sequence into dst, lane-major (zero past L).
template <class G, typename T>
__device__ __forceinline__ void stage_seq(float* dst, const T* seq, int L, int t0, int lane) {
#pragma unroll
  for (int j = 0; j < G::kItems; ++j) {
    const int q = j * G::kLanes + lane, t = t0 + q;
    dst[G::slot(q)] = t < L ? to_f32(seq[t]) : 0.f;
  }
}

// The lanes of one channel: the chunk's values src (lane-major) to its sequence for t < L if live. Every lane of
// the warp calls it (it synchronises the warp).
template <class G, typename T>
__device__ __forceinline__ void store_seq(T* seq, const float* src, int L, int t0, int lane, bool live) {
  __syncwarp();
  if (!live) return;
#pragma unroll
  for (int j = 0; j < G::kItems; ++j) {
    const int q = j * G::kLanes + lane, t = t0 + q;
    if (t < L) seq[t] = from_f32<T>(src[G::slot(q)]);
  }
}

// Inclusive scan over a channel's lanes of the affine maps h -> pa h + px in lane order (earlier lanes first).
template <class G>
__device__ __forceinline__ void scan_up(float& pa, float& px, int lane) {
#pragma unroll
  for (int off = 1; off < G::kLanes; off <<= 1) {
    const float qa = __shfl_up_sync(kFull, pa, off, G::kLanes), qx = __shfl_up_sync(kFull, px, off, G::kLanes);
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

// Shared memory of a block, in floats: B and C rows (if variable), their gradient sums (backward), and per
// channel the staged sequences (forward: u, delta, z; backward: u, delta, z, dout).
__host__ __device__ inline int smem_floats(bool bwd, int N, bool B_var, bool C_var, int channels, int slots) {
  const int rows = (B_var ? N : 0) + (C_var ? N : 0);
  return (bwd ? 2 : 1) * rows * slots + channels * (bwd ? 4 : 3) * slots;
}

// Forward with lane geometry G. kStatesOnly: store the state entering each chunk into p.chunk_states instead of
// producing out. kBVar / kCVar: B / C variable (staged rows) or input-independent (one value per channel, state).
template <typename T, class G, bool kStatesOnly, bool kBVar, bool kCVar>
__global__ void __launch_bounds__(kMaxThreads, 2) selective_scan_fwd_kernel(Params p) {
  constexpr int kItems = G::kItems, kLanes = G::kLanes, kRow = G::kRow, kSlots = G::kSlots;
  constexpr bool C_var = !kStatesOnly && kCVar;
  extern __shared__ float smem[];
  const Place w = place<G>(p);
  const int L = p.L, N = p.N, lane = w.lane;
  float* Bs = smem;
  float* Cs = Bs + (kBVar ? N * kSlots : 0);
  float* us = Cs + (C_var ? N * kSlots : 0) + w.ch * 3 * kSlots;
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
  const long long state0 = (w.b * p.Dch + w.d) * (long long)N;  // this channel's (batch, channel) state row

  // The state entering the chunk: lane l holds state l in carry0 and state l + kLanes in carry1.
  float carry0 = 0.f, carry1 = 0.f;
  for (int c = 0; c < p.nchunks; ++c) {
    const int t0 = c * kChunk;
    if (kStatesOnly && w.live) {
      float* states = p.chunk_states + state0 * p.nchunks + (long long)c * N;
      if (lane < N) states[lane] = carry0;
      if (lane + kLanes < N) states[lane + kLanes] = carry1;
    }
    __syncthreads();  // the previous chunk's readers of the staged rows are done
    if (kBVar) stage_rows<G>(Bs, static_cast<const T*>(p.B) + rows0, N, L, t0, p.B_vec);
    if (C_var) stage_rows<G>(Cs, static_cast<const T*>(p.C) + rows0, N, L, t0, p.C_vec);
    stage_seq<G>(us, u, L, t0, lane);
    stage_seq<G>(ds, delta, L, t0, lane);
    if (!kStatesOnly && z) stage_seq<G>(zs, z, L, t0, lane);
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
      scan_up<G>(pa, px, lane);
      const float h_in = __shfl_sync(kFull, n < kLanes ? carry0 : carry1, n % kLanes, kLanes);
      float h;
      if (kStatesOnly) {
        h = pa * h_in + px;  // the lane's inclusive prefix applied to the carry: only the last lane's is used
      } else {
        float ea = __shfl_up_sync(kFull, pa, 1, kLanes), ex = __shfl_up_sync(kFull, px, 1, kLanes);
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
      const float h_out = __shfl_sync(kFull, h, kLanes - 1, kLanes);
      if (lane == n % kLanes) {
        if (n < kLanes) carry0 = h_out;
        else carry1 = h_out;
      }
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
      store_seq<G>(static_cast<T*>(p.out) + seq0, us, L, t0, lane, w.live);
    }
  }
  if (!kStatesOnly && w.live) {
    if (lane < N) p.last_state[state0 + lane] = carry0;
    if (lane + kLanes < N) p.last_state[state0 + lane + kLanes] = carry1;
  }
}

// Backward (a warp per channel): reverse walk over the chunks; p.chunk_states from the states-only forward.
template <typename T, bool kBVar, bool kCVar>
__global__ void __launch_bounds__(kMaxThreads, 2) selective_scan_bwd_kernel(Params p) {
  using G = Wide;
  constexpr int kItems = G::kItems, kRow = G::kRow, kSlots = G::kSlots;
  extern __shared__ float smem[];
  const Place w = place<G>(p);
  const int L = p.L, N = p.N, lane = w.lane;
  const int rowsN = N * kSlots;
  float* Bs = smem;
  float* Cs = Bs + (kBVar ? rowsN : 0);
  float* dBs = Cs + (kCVar ? rowsN : 0);
  float* dCs = dBs + (kBVar ? rowsN : 0);
  float* us = dCs + (kCVar ? rowsN : 0) + w.ch * 4 * kSlots;
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
      stage_rows<G>(Bs, static_cast<const T*>(p.B) + rows0, N, L, t0, p.B_vec);
      for (int i = threadIdx.x; i < rowsN; i += blockDim.x) dBs[i] = 0.f;
    }
    if (kCVar) {
      stage_rows<G>(Cs, static_cast<const T*>(p.C) + rows0, N, L, t0, p.C_vec);
      for (int i = threadIdx.x; i < rowsN; i += blockDim.x) dCs[i] = 0.f;
    }
    stage_seq<G>(us, u, L, t0, lane);
    stage_seq<G>(ds, delta, L, t0, lane);
    stage_seq<G>(gs, dout, L, t0, lane);
    if (z) stage_seq<G>(zs, z, L, t0, lane);
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
      scan_up<G>(pa, px, lane);
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
      // Reverse adjoint scan: the lane map g_in -> pp g_in + pq gives a_first g_first from the carry into its last
      // step.
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
    store_seq<G>(static_cast<T*>(p.du) + seq0, us, L, t0, lane, w.live);
    store_seq<G>(static_cast<T*>(p.ddelta) + seq0, ds, L, t0, lane, w.live);
    if (z) store_seq<G>(static_cast<T*>(p.dz) + seq0, zs, L, t0, lane, w.live);
    if (kBVar || kCVar) {
      __syncthreads();  // every warp's shared-memory atomics for this chunk are in
      const int t_len = min(kChunk, L - t0);
      for (int i = threadIdx.x; i < N * kChunk; i += blockDim.x) {
        const int n = i / kChunk, q = i % kChunk;
        if (q >= t_len) continue;
        const long long o = rows0 + (long long)n * L + t0 + q;
        if (kBVar) atomicAdd(p.dB + o, dBs[n * kSlots + G::slot(q)]);
        if (kCVar) atomicAdd(p.dC + o, dCs[n * kSlots + G::slot(q)]);
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

// Launch geometry of a kernel: channels per block, lanes per channel, blocks per group, shared memory.
struct Plan {
  int channels, lanes, blocks_per_group, nchunks;
  size_t smem;
  int smem_max;
};

// The plan of a kernel with lane geometry G (bwd: the backward's shared memory). Kernels with different plans can
// share chunk states: they are indexed by (batch, channel, chunk) and every geometry uses chunks of kChunk steps.
template <class G>
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
  pl.lanes = G::kLanes;
  pl.channels = kMaxChannels;
  // No block wider than the group, but whole warps (the shuffles name all 32 lanes).
  while (pl.channels > 32 / G::kLanes && pl.channels / 2 >= Dg) pl.channels /= 2;
  // Fewer channels per block while there would be fewer than two blocks per SM (better balance at batch 1).
  while (pl.channels > 2 && (long long)batch * groups * ((Dg + pl.channels - 1) / pl.channels) < 2LL * nsm)
    pl.channels /= 2;
  auto smem_of = [&](int channels) {
    return (size_t)smem_floats(bwd, N, B_var, C_var, channels, G::kSlots) * sizeof(float);
  };
  // Fewer channels per block where the per-channel arrays would not fit (large N on a smaller-memory GPU).
  while (pl.channels > 32 / G::kLanes && smem_of(pl.channels) > (size_t)smem_max) pl.channels /= 2;
  pl.blocks_per_group = (Dg + pl.channels - 1) / pl.channels;
  if ((long long)groups * pl.blocks_per_group > 0x7fffffffLL)
    throw std::invalid_argument("selective_scan CUDA: too many channels");
  pl.smem = smem_of(pl.channels);
  pl.smem_max = smem_max;
  if (pl.smem > (size_t)smem_max)
    throw std::invalid_argument("selective_scan CUDA: d_state N=" + std::to_string(N) + " needs " +
                                std::to_string(pl.smem) + " bytes of shared memory per block, the device has " +
                                std::to_string(smem_max) + "; use the 'triton' or 'reference' backend");
  return pl;
}

template <typename K>
void launch(K kernel, const Plan& pl, int batch, int groups, const Params& prm, cudaStream_t stream) {
  if (pl.smem > 48 * 1024) dhkd_cuda::allow_max_smem(reinterpret_cast<const void*>(kernel), pl.smem_max, "selective_scan");
  kernel<<<dim3(groups * pl.blocks_per_group, batch), pl.channels * pl.lanes, pl.smem, stream>>>(prm);
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

// Whether the rows of a variable B/C (each L elements of `elem` bytes from `ptr`) start 4-element aligned.
bool rows_vectorisable(const void* ptr, int L, int elem) {
  return L % 4 == 0 && reinterpret_cast<std::uintptr_t>(ptr) % (4 * (std::uintptr_t)elem) == 0;
}

Params base_params(const void* u, const void* delta, const float* A, const void* B, const void* C,
                   const float* Dw, const void* z, const float* bias, int Dch, int L, int N, int groups,
                   bool softplus, int dtype, const Plan& pl) {
  Params prm{};
  const int elem = dtype == 0 ? 4 : 2;
  prm.B_vec = rows_vectorisable(B, L, elem);
  prm.C_vec = rows_vectorisable(C, L, elem);
  prm.u = u; prm.delta = delta; prm.A = A; prm.B = B; prm.C = C; prm.Dw = Dw; prm.z = z; prm.bias = bias;
  prm.Dch = Dch; prm.L = L; prm.N = N; prm.groups = groups;
  prm.softplus = softplus; prm.channels = pl.channels; prm.blocks_per_group = pl.blocks_per_group;
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
  const Plan pl = make_plan<Narrow>(false, batch, Dch, L, N, groups, B_var, C_var);
  Params prm = base_params(u, delta, A, B, C, Dw, z, bias, Dch, L, N, groups, softplus, dtype, pl);
  prm.out = out;
  prm.last_state = last_state;
  dispatch_dtype(dtype, "selective_scan CUDA", [&](auto t) {
    with_flags(B_var, C_var, [&](auto bv, auto cv) {
      launch(selective_scan_fwd_kernel<decltype(t), Narrow, false, bv.value, cv.value>, pl, batch, groups, prm,
             stream);
    });
  });
}

void selective_scan_cuda_backward(const void* dout, const void* u, const void* delta, const float* A,
                                  const void* B, const void* C, const float* Dw, const void* z, const float* bias,
                                  void* du, void* ddelta, void* dz, float* dA, float* dB, float* dC, float* dD,
                                  float* dbias, float* chunk_states, int64_t chunk_state_floats, int batch,
                                  int Dch, int L, int N, int groups, bool B_var, bool C_var, int dtype,
                                  bool softplus, cudaStream_t stream) {
  const Plan fpl = make_plan<Wide>(false, batch, Dch, L, N, groups, B_var, false);
  const Plan bpl = make_plan<Wide>(true, batch, Dch, L, N, groups, B_var, C_var);
  const int64_t need = (int64_t)batch * Dch * bpl.nchunks * N;
  if (chunk_states == nullptr || chunk_state_floats < need)
    throw std::invalid_argument("selective_scan CUDA: the chunk-state buffer must hold " + std::to_string(need) +
                                " floats");
  Params prm = base_params(u, delta, A, B, C, Dw, z, bias, Dch, L, N, groups, softplus, dtype, fpl);
  prm.chunk_states = chunk_states;
  Params bprm = base_params(u, delta, A, B, C, Dw, z, bias, Dch, L, N, groups, softplus, dtype, bpl);
  bprm.chunk_states = chunk_states;
  bprm.dout = dout; bprm.du = du; bprm.ddelta = ddelta; bprm.dz = dz;
  bprm.dA = dA; bprm.dB = dB; bprm.dC = dC; bprm.dD = dD; bprm.dbias = dbias;
  dispatch_dtype(dtype, "selective_scan CUDA", [&](auto t) {
    with_flags(B_var, C_var, [&](auto bv, auto cv) {
      launch(selective_scan_fwd_kernel<decltype(t), Wide, true, bv.value, false>, fpl, batch, groups, prm, stream);
      launch(selective_scan_bwd_kernel<decltype(t), bv.value, cv.value>, bpl, batch, groups, bprm, stream);
    });
  });
}
