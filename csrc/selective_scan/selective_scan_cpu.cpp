// Selective scan (Mamba S6) on the CPU, forward and recomputing backward, on raw buffers; no torch.
//
// Layouts: u, delta, z, out (b, D, L) in the io dtype; A (D, N) fp32; B, C each variable (b, G, N, L) in the
// io dtype, channel d using group d / (D / G), or input-independent (D, N) fp32; Dw, delta_bias (D,) fp32 or
// null; last_state (b, D, N) fp32.
//
// Work item = (batch, group, block of <= 64 channels of that group), split statically over OpenMP threads, so
// all channels of an item share one B/C row: the variable B_t/C_t values are scalars broadcast over 16-lane
// channel vectors, as in the SS2D kernel (csrc/ss2d), whose vector helpers this file uses. Time is walked in
// tiles: a tile of u/delta/z is transposed into (step, channel) vectors, scanned time-outer / channel-inner
// with the block's N states in a small L1 buffer, and the output tile transposed back.
// The backward never holds anything of size L·D·N: a forward pass stores the state every T steps, then the
// chunks are walked in reverse, each recomputing its states and decays into a T·N·block buffer and running
// the reverse recurrence. dA/dD/ddelta_bias and dB/dC are summed in per-thread fp32 partials, then reduced.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "common/dtype.h"
#include "common/simd.h"
#include "common/strided.h"
#include "common/threads.h"
#include "selective_scan/selective_scan.h"
#include "ss2d/ss2d_cpu_simd.h"

namespace dhkd {
namespace {

using namespace ss2d_simd;

constexpr int kMaxBlock = 64;  // channels per work item
constexpr int kTile = 64;      // forward time tile

struct Dims {
  int64_t bsz, D, L, N, G, Dg;
};

struct Inputs {
  const void *u, *delta, *z, *B, *C;  // B, C: io dtype if variable, else fp32 (D, N)
  const float *A, *Dw, *bias;
  int dt;
  bool softplus, varB, varC;
};

// One work item: batch b, group g, channels [c0, c0 + cb) (absolute channel indices).
struct Item {
  int64_t b, g, c0;
  int cb, nv;
};

// Per-channel constants of a block as vectors (layout [v][n] or [v]): A·log2(e), A, the constant B/C, D, bias.
struct BlockParams {
  vbuf A2, A, Bc, Cc, Dv, bias;
  void load(const Inputs& in, const Dims& s, const Item& it) {
    const int64_t N = s.N;
    A2.assign(it.nv * N, splat(0.0f));
    A.assign(it.nv * N, splat(0.0f));
    Bc.assign(in.varB ? 0 : it.nv * N, splat(0.0f));
    Cc.assign(in.varC ? 0 : it.nv * N, splat(0.0f));
    Dv.assign(it.nv, splat(0.0f));
    bias.assign(it.nv, splat(0.0f));
    for (int c = 0; c < it.cb; ++c) {
      const int v = c / VL, l = c % VL;
      const int64_t d = it.c0 + c;
      for (int64_t n = 0; n < N; ++n) {
        A[v * N + n][l] = in.A[d * N + n];
        A2[v * N + n][l] = in.A[d * N + n] * kLog2e;
        if (!in.varB) Bc[v * N + n][l] = static_cast<const float*>(in.B)[d * N + n];
        if (!in.varC) Cc[v * N + n][l] = static_cast<const float*>(in.C)[d * N + n];
      }
      if (in.Dw) Dv[v][l] = in.Dw[d];
      if (in.bias) bias[v][l] = in.bias[d];
    }
  }
};

// ---------------------------------------------------------------------------------------------------
// Tiles: (channel, step) rows of a (b, D, L) tensor <-> (step, channel-vector) buffers
// ---------------------------------------------------------------------------------------------------

#ifdef SS2D_HAVE_SHUFFLE
// Swap bit `S` of the row and column index of a 16×16 block held as 16 row vectors (rows i and i + S).
template <int S>
DHKD_INLINE void swap_bit(vf& lo, vf& hi) {
#define SSCAN_LO(j) (((j) & S) ? 16 + (j) - S : (j))
#define SSCAN_HI(j) (((j) & S) ? 16 + (j) : (j) + S)
  const vf a = __builtin_shufflevector(lo, hi, SSCAN_LO(0), SSCAN_LO(1), SSCAN_LO(2), SSCAN_LO(3), SSCAN_LO(4),
                                       SSCAN_LO(5), SSCAN_LO(6), SSCAN_LO(7), SSCAN_LO(8), SSCAN_LO(9), SSCAN_LO(10),
                                       SSCAN_LO(11), SSCAN_LO(12), SSCAN_LO(13), SSCAN_LO(14), SSCAN_LO(15));
  const vf b = __builtin_shufflevector(lo, hi, SSCAN_HI(0), SSCAN_HI(1), SSCAN_HI(2), SSCAN_HI(3), SSCAN_HI(4),
                                       SSCAN_HI(5), SSCAN_HI(6), SSCAN_HI(7), SSCAN_HI(8), SSCAN_HI(9), SSCAN_HI(10),
                                       SSCAN_HI(11), SSCAN_HI(12), SSCAN_HI(13), SSCAN_HI(14), SSCAN_HI(15));
#undef SSCAN_LO
#undef SSCAN_HI
  lo = a;
  hi = b;
}

template <int S>
DHKD_INLINE void swap_stage(vf* r) {
  for (int i = 0; i < VL; ++i)
    if (!(i & S)) swap_bit<S>(r[i], r[i + S]);
}

// In-register transpose of a 16×16 fp32 block (64 two-source shuffles).
DHKD_INLINE void transpose16(vf* r) {
  swap_stage<1>(r);
  swap_stage<2>(r);
  swap_stage<4>(r);
  swap_stage<8>(r);
}
#endif

// Moves a tile between a (b, D, L) tensor `mem` of dtype dt and a (step, channel-vector) buffer `tile`:
// tile[i * nv + v][l] <-> mem[row(c) + t0 + i] for channel c = v * VL + l < cb and step i < steps, where
// row(c) = (rowbase + c) * L. kStore: tile -> mem; else mem -> tile, with the lanes of channels >= cb set to 0.
// The direction is a template parameter, so each direction compiles to its own straight loop.
template <bool kStore>
DHKD_INLINE void move_tile(std::conditional_t<kStore, void*, const void*> mem, int dt, int64_t rowbase, int64_t L,
                           int64_t t0, int steps, int cb, int nv, std::conditional_t<kStore, const vf*, vf*> tile) {
  int64_t i0 = 0;
#ifdef SS2D_HAVE_SHUFFLE
  for (; i0 + VL <= steps; i0 += VL) {
    for (int v = 0; v < nv; ++v) {
      const int cnt = std::min(VL, cb - v * VL);
      vf r[VL];
      if constexpr (kStore) {
        for (int i = 0; i < VL; ++i) r[i] = tile[(i0 + i) * nv + v];
      } else {
        for (int l = 0; l < VL; ++l)
          r[l] = l < cnt ? loadv(mem, (rowbase + v * VL + l) * L + t0 + i0, VL, dt) : splat(0.0f);
      }
      transpose16(r);
      if constexpr (kStore) {
        for (int l = 0; l < cnt; ++l) storev(mem, (rowbase + v * VL + l) * L + t0 + i0, VL, dt, r[l]);
      } else {
        for (int i = 0; i < VL; ++i) tile[(i0 + i) * nv + v] = r[i];
      }
    }
  }
#endif
  if constexpr (!kStore) {
    for (int64_t i = i0; i < steps; ++i)
      for (int v = 0; v < nv; ++v) tile[i * nv + v] = splat(0.0f);
  }
  for (int c = 0; c < cb; ++c)
    for (int64_t i = i0; i < steps; ++i) {
      if constexpr (kStore)
        store_from_f32(mem, (rowbase + c) * L + t0 + i, dt, tile[i * nv + c / VL][c % VL]);
      else
        tile[i * nv + c / VL][c % VL] = load_as_f32(mem, (rowbase + c) * L + t0 + i, dt);
    }
}

DHKD_INLINE void load_tile(const void* src, int dt, int64_t rowbase, int64_t L, int64_t t0, int steps, int cb,
                           int nv, vf* dst) {
  move_tile<false>(src, dt, rowbase, L, t0, steps, cb, nv, dst);
}

DHKD_INLINE void store_tile(void* dst, int dt, int64_t rowbase, int64_t L, int64_t t0, int steps, int cb,
                            int nv, const vf* src) {
  move_tile<true>(dst, dt, rowbase, L, t0, steps, cb, nv, src);
}

// out[i * N + n] = row (b, g, n) of a variable B or C at steps t0 .. t0 + steps (fp32); 16×16 blocks are
// transposed in registers when N is a multiple of 16.
DHKD_INLINE void load_bc_tile(const void* src, int dt, int64_t bg, int64_t N, int64_t L, int64_t t0, int steps,
                              float* out) {
  int64_t i0 = 0;
#ifdef SS2D_HAVE_SHUFFLE
  if (N % VL == 0) {
    for (; i0 + VL <= steps; i0 += VL) {
      for (int64_t n0 = 0; n0 < N; n0 += VL) {
        vf r[VL];
        for (int l = 0; l < VL; ++l) r[l] = loadv(src, (bg * N + n0 + l) * L + t0 + i0, VL, dt);
        transpose16(r);
        for (int i = 0; i < VL; ++i) std::memcpy(out + (i0 + i) * N + n0, &r[i], sizeof(vf));
      }
    }
  }
#endif
  for (int64_t n = 0; n < N; ++n) {
    const int64_t base = (bg * N + n) * L + t0;
    for (int64_t i = i0; i < steps; ++i) out[i * N + n] = load_as_f32(src, base + i, dt);
  }
}

// dt = softplus(delta + bias) (or delta + bias) in place; grad (if non-null) = d dt / d delta.
DHKD_INLINE void dt_tile(vf* dtt, vf* grad, const vf* bias, bool softplus, int steps, int nv) {
  for (int i = 0; i < steps; ++i) {
    for (int v = 0; v < nv; ++v) {
      const vf z = dtt[i * nv + v] + bias[v];
      if (!softplus) {
        dtt[i * nv + v] = z;
        if (grad) grad[i * nv + v] = splat(1.0f);
        continue;
      }
      vf w;
      dtt[i * nv + v] = softplus_v(z, w);
      if (grad) grad[i * nv + v] = softplus_grad_v(z, w);
    }
  }
}

DHKD_INLINE vf sigmoid_v(vf z) { return 1.0f / (1.0f + exp2v(z * -kLog2e)); }

// One step's state update for vector v: h = exp(dt·A)·h + dt·u·B_t, returns <C_t, h> (if want_y).
struct StepBC {
  const float *bt, *ct;  // variable rows (N floats) of this step, or null
  const vf *Bc, *Cc;     // constant per-lane rows of this vector, or null
};

DHKD_INLINE vf b_at(const StepBC& s, int64_t n) { return s.bt ? splat(s.bt[n]) : s.Bc[n]; }
DHKD_INLINE vf c_at(const StepBC& s, int64_t n) { return s.ct ? splat(s.ct[n]) : s.Cc[n]; }

// ---------------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------------

struct FwdWork {
  BlockParams prm;
  vbuf h, ut, dtt, zt, yt;
  std::vector<float> bt, ct;
};

DHKD_CLONES void fwd_block(const Inputs& in, const Dims& s, const Item& it, void* out, float* last_state,
                            FwdWork& w) {
  const int64_t L = s.L, N = s.N;
  const int nv = it.nv;
  const int64_t bg = it.b * s.G + it.g, rowbase = it.b * s.D + it.c0;
  w.prm.load(in, s, it);
  w.h.assign(nv * N, splat(0.0f));
  for (vbuf* b : {&w.ut, &w.dtt, &w.yt}) b->resize(kTile * nv);
  if (in.z) w.zt.resize(kTile * nv);
  w.bt.resize(in.varB ? kTile * N : 0);
  w.ct.resize(in.varC ? kTile * N : 0);
  const vf *A2 = w.prm.A2.data(), *Dv = w.prm.Dv.data();
  vf* h = w.h.data();
  for (int64_t t0 = 0; t0 < L; t0 += kTile) {
    const int steps = static_cast<int>(std::min<int64_t>(kTile, L - t0));
    load_tile(in.u, in.dt, rowbase, L, t0, steps, it.cb, nv, w.ut.data());
    load_tile(in.delta, in.dt, rowbase, L, t0, steps, it.cb, nv, w.dtt.data());
    dt_tile(w.dtt.data(), nullptr, w.prm.bias.data(), in.softplus, steps, nv);
    if (in.z) load_tile(in.z, in.dt, rowbase, L, t0, steps, it.cb, nv, w.zt.data());
    if (in.varB) load_bc_tile(in.B, in.dt, bg, N, L, t0, steps, w.bt.data());
    if (in.varC) load_bc_tile(in.C, in.dt, bg, N, L, t0, steps, w.ct.data());
    for (int i = 0; i < steps; ++i) {
      for (int v = 0; v < nv; ++v) {
        const StepBC bc{in.varB ? w.bt.data() + i * N : nullptr, in.varC ? w.ct.data() + i * N : nullptr,
                        in.varB ? nullptr : w.prm.Bc.data() + v * N, in.varC ? nullptr : w.prm.Cc.data() + v * N};
        const vf dtv = w.dtt[i * nv + v], uv = w.ut[i * nv + v];
        const vf duv = dtv * uv;
        vf yv = Dv[v] * uv;
        vf* hv = h + v * N;
        const vf* av = A2 + v * N;
        for (int64_t n = 0; n < N; ++n) {
          const vf hn = exp2v(dtv * av[n]) * hv[n] + duv * b_at(bc, n);
          hv[n] = hn;
          yv += hn * c_at(bc, n);
        }
        if (in.z) {
          const vf zv = w.zt[i * nv + v];
          yv *= zv * sigmoid_v(zv);
        }
        w.yt[i * nv + v] = yv;
      }
    }
    store_tile(out, in.dt, rowbase, L, t0, steps, it.cb, nv, w.yt.data());
  }
  for (int c = 0; c < it.cb; ++c)
    for (int64_t n = 0; n < N; ++n) last_state[((it.b * s.D) + it.c0 + c) * N + n] = h[(c / VL) * N + n][c % VL];
}

// ---------------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------------

// Per-thread fp32 partials: dB, dC as (b, G, L, N) if variable else (D, N); dA (D, N); dD, ddelta_bias (D).
struct Partials {
  float *dB, *dC, *dA, *dD, *dbias;
};

struct Grads {
  const void* dout;
  int doutdt;
  void *du, *ddelta, *dz;  // io dtype (dz null without z)
};

struct BwdWork {
  BlockParams prm;
  vbuf ckpt, abuf, hbuf, ut, dtt, gr, zt, dot, ybuf, dut, ddt, dzt, carry, dA, dBc, dCc, dBv, dCv;
  std::vector<float> bt, ct;
};

// B_t/C_t of step i for channel vector v: variable rows of the chunk, or the block's constant rows.
DHKD_INLINE StepBC step_bc(const Inputs& in, const BwdWork& w, int64_t i, int v, int64_t N) {
  return StepBC{in.varB ? w.bt.data() + i * N : nullptr, in.varC ? w.ct.data() + i * N : nullptr,
                in.varB ? nullptr : w.prm.Bc.data() + v * N, in.varC ? nullptr : w.prm.Cc.data() + v * N};
}

// The chunk's tiles: u, dt, variable B; with `all` also d dt / d delta, variable C, z and dout.
DHKD_INLINE void load_chunk(const Inputs& in, const Grads& g, BwdWork& w, const Item& it, int64_t rowbase,
                            int64_t bg, int64_t N, int64_t L, int64_t t0, int steps, bool all) {
  const int nv = it.nv;
  load_tile(in.u, in.dt, rowbase, L, t0, steps, it.cb, nv, w.ut.data());
  load_tile(in.delta, in.dt, rowbase, L, t0, steps, it.cb, nv, w.dtt.data());
  dt_tile(w.dtt.data(), all ? w.gr.data() : nullptr, w.prm.bias.data(), in.softplus, steps, nv);
  if (in.varB) load_bc_tile(in.B, in.dt, bg, N, L, t0, steps, w.bt.data());
  if (!all) return;
  if (in.varC) load_bc_tile(in.C, in.dt, bg, N, L, t0, steps, w.ct.data());
  if (in.z) load_tile(in.z, in.dt, rowbase, L, t0, steps, it.cb, nv, w.zt.data());
  load_tile(g.dout, g.doutdt, rowbase, L, t0, steps, it.cb, nv, w.dot.data());
}

DHKD_CLONES void bwd_block(const Inputs& in, const Dims& s, const Item& it, const Grads& g, const Partials& p,
                            BwdWork& w) {
  const int64_t L = s.L, N = s.N;
  const int nv = it.nv;
  const int64_t SN = nv * N;
  const int64_t T = chunk_steps(L, N, nv), nc = (L + T - 1) / T;
  const int64_t bg = it.b * s.G + it.g, rowbase = it.b * s.D + it.c0;
  const bool has_z = in.z != nullptr;
  w.prm.load(in, s, it);
  w.ckpt.resize(nc * SN);
  for (vbuf* b : {&w.abuf, &w.hbuf}) b->resize(T * SN);
  for (vbuf* b : {&w.ut, &w.dtt, &w.gr, &w.dot, &w.dut, &w.ddt}) b->resize(T * nv);
  if (has_z)
    for (vbuf* b : {&w.zt, &w.ybuf, &w.dzt}) b->resize(T * nv);
  w.carry.assign(SN, splat(0.0f));
  w.dA.assign(SN, splat(0.0f));
  w.dBc.assign(in.varB ? 0 : SN, splat(0.0f));
  w.dCc.assign(in.varC ? 0 : SN, splat(0.0f));
  w.dBv.resize(N);
  w.dCv.resize(N);
  w.bt.resize(in.varB ? T * N : 0);
  w.ct.resize(in.varC ? T * N : 0);
  const vf *A2 = w.prm.A2.data(), *Ar = w.prm.A.data(), *Dv = w.prm.Dv.data();
  // Pass 1: states at the start of every chunk.
  vf* ck = w.ckpt.data();
  std::fill(ck, ck + SN, splat(0.0f));
  for (int64_t c = 0; c + 1 < nc; ++c) {
    vf* hv0 = ck + (c + 1) * SN;
    std::copy(ck + c * SN, ck + (c + 1) * SN, hv0);
    load_chunk(in, g, w, it, rowbase, bg, N, L, c * T, static_cast<int>(T), false);
    for (int64_t i = 0; i < T; ++i) {
      for (int v = 0; v < nv; ++v) {
        const StepBC bc = step_bc(in, w, i, v, N);
        const vf dtv = w.dtt[i * nv + v], duv = dtv * w.ut[i * nv + v];
        vf* hv = hv0 + v * N;
        const vf* av = A2 + v * N;
        for (int64_t n = 0; n < N; ++n) hv[n] = exp2v(dtv * av[n]) * hv[n] + duv * b_at(bc, n);
      }
    }
  }
  vf dDv[kMaxBlock / VL], dbv[kMaxBlock / VL];
  std::fill(dDv, dDv + nv, splat(0.0f));
  std::fill(dbv, dbv + nv, splat(0.0f));
  vf *carry = w.carry.data(), *dAv = w.dA.data(), *dBv = w.dBv.data(), *dCv = w.dCv.data();
  for (int64_t c = nc - 1; c >= 0; --c) {
    const int64_t t0 = c * T;
    const int steps = static_cast<int>(std::min(T, L - t0));
    const vf* h0 = ck + c * SN;
    load_chunk(in, g, w, it, rowbase, bg, N, L, t0, steps, true);
    // Pass 2: recompute the chunk's decays and states (and y, for the z gate's gradient).
    for (int64_t i = 0; i < steps; ++i) {
      const vf* hp = i ? w.hbuf.data() + (i - 1) * SN : h0;
      vf* hc = w.hbuf.data() + i * SN;
      vf* ac = w.abuf.data() + i * SN;
      for (int v = 0; v < nv; ++v) {
        const StepBC bc = step_bc(in, w, i, v, N);
        const vf dtv = w.dtt[i * nv + v], duv = dtv * w.ut[i * nv + v];
        const vf* av = A2 + v * N;
        vf yv = Dv[v] * w.ut[i * nv + v];
        for (int64_t n = 0; n < N; ++n) {
          const int64_t j = v * N + n;
          const vf a = exp2v(dtv * av[n]);
          ac[j] = a;
          hc[j] = a * hp[j] + duv * b_at(bc, n);
          if (has_z) yv += hc[j] * c_at(bc, n);
        }
        if (has_z) w.ybuf[i * nv + v] = yv;
      }
    }
    // Pass 3: reverse recurrence dh_t = C_t·dy_t + a_{t+1}·dh_{t+1} and the gradients.
    for (int64_t i = steps - 1; i >= 0; --i) {
      const vf* hp = i ? w.hbuf.data() + (i - 1) * SN : h0;
      const vf* hc = w.hbuf.data() + i * SN;
      const vf* ac = w.abuf.data() + i * SN;
      if (in.varB) std::fill(dBv, dBv + N, splat(0.0f));
      if (in.varC) std::fill(dCv, dCv + N, splat(0.0f));
      for (int v = 0; v < nv; ++v) {
        const StepBC bc = step_bc(in, w, i, v, N);
        const int64_t k = i * nv + v;
        vf dyv = w.dot[k];
        if (has_z) {  // out = y·silu(z): dy = dout·silu(z), dz = dout·y·silu'(z)
          const vf zv = w.zt[k], sg = sigmoid_v(zv);
          w.dzt[k] = dyv * w.ybuf[k] * (sg * (1.0f + zv * (1.0f - sg)));
          dyv *= zv * sg;
        }
        const vf uv = w.ut[k], dtv = w.dtt[k];
        const vf dtu = dtv * uv;
        vf ddt = splat(0.0f), q = splat(0.0f);
        for (int64_t n = 0; n < N; ++n) {
          const int64_t j = v * N + n;
          const vf bn = b_at(bc, n);
          const vf dh = carry[j] + dyv * c_at(bc, n);
          const vf dc = dyv * hc[j];
          if (in.varC) dCv[n] += dc; else w.dCc[j] += dc;
          const vf sdec = dh * (ac[j] * hp[j]);
          dAv[j] += sdec * dtv;
          ddt += sdec * Ar[j];
          q += dh * bn;
          const vf db = dh * dtu;
          if (in.varB) dBv[n] += db; else w.dBc[j] += db;
          carry[j] = ac[j] * dh;
        }
        ddt += q * uv;
        w.dut[k] = q * dtv + dyv * Dv[v];
        dDv[v] += dyv * uv;
        const vf dd = ddt * w.gr[k];
        dbv[v] += dd;
        w.ddt[k] = dd;
      }
      if (in.varB) add_row_sums(dBv, N, p.dB + (bg * L + t0 + i) * N);
      if (in.varC) add_row_sums(dCv, N, p.dC + (bg * L + t0 + i) * N);
    }
    store_tile(g.du, in.dt, rowbase, L, t0, steps, it.cb, nv, w.dut.data());
    store_tile(g.ddelta, in.dt, rowbase, L, t0, steps, it.cb, nv, w.ddt.data());
    if (has_z) store_tile(g.dz, in.dt, rowbase, L, t0, steps, it.cb, nv, w.dzt.data());
  }
  for (int c = 0; c < it.cb; ++c) {
    const int v = c / VL, l = c % VL;
    const int64_t d = it.c0 + c;
    for (int64_t n = 0; n < N; ++n) {
      p.dA[d * N + n] += dAv[v * N + n][l];
      if (!in.varB) p.dB[d * N + n] += w.dBc[v * N + n][l];
      if (!in.varC) p.dC[d * N + n] += w.dCc[v * N + n][l];
    }
    p.dD[d] += dDv[v][l];
    p.dbias[d] += dbv[v][l];
  }
}

// ---------------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------------

Dims check_dims(int64_t bsz, int64_t D, int64_t L, int64_t N, int64_t G, int dt) {
  if (bsz <= 0 || D <= 0 || L <= 0 || N <= 0 || G <= 0)
    throw std::invalid_argument("selective_scan: batch, D, L, N and G must be positive, got " +
                                std::to_string(bsz) + ", " + std::to_string(D) + ", " + std::to_string(L) + ", " +
                                std::to_string(N) + ", " + std::to_string(G));
  if (D % G)
    throw std::invalid_argument("selective_scan: G = " + std::to_string(G) + " does not divide D = " +
                                std::to_string(D));
  if (dt != kF32 && dt != kF16 && dt != kBF16)
    throw std::invalid_argument("selective_scan: unknown dtype code " + std::to_string(dt));
  return Dims{bsz, D, L, N, G, D / G};
}

void require(std::uintptr_t p, const char* name) {
  if (p == 0) throw std::invalid_argument(std::string("selective_scan: null pointer for ") + name);
}

// Threads get at least kMinWorkPerThread state updates (~50 µs) each, as in the SS2D kernel.
constexpr int64_t kMinWorkPerThread = int64_t(1) << 17;

// Channel block (within a group), blocks per group, number of work items and thread team of a call.
struct Launch {
  int64_t cb, nblk, items;
  int team;
  Item item(int64_t k, const Dims& s) const {
    const int64_t bg = k / nblk, c = (k % nblk) * cb;
    const int n = static_cast<int>(std::min(cb, s.Dg - c));
    return Item{bg / s.G, bg % s.G, (bg % s.G) * s.Dg + c, n, (n + VL - 1) / VL};
  }
};

Launch launch(const Dims& s, int nthreads) {
  const int64_t work = s.bsz * s.L * s.D * s.N;
  const int want = team_size(nthreads, std::max<int64_t>(1, work / kMinWorkPerThread));
  int64_t cb = kMaxBlock;  // the largest multiple of VL (<= kMaxBlock) that still yields one item per thread
  while (cb > VL && s.bsz * s.G * ((s.Dg + cb - 1) / cb) < want) cb /= 2;
  cb = std::min(cb, s.Dg);
  const int64_t nblk = (s.Dg + cb - 1) / cb, items = s.bsz * s.G * nblk;
  return Launch{cb, nblk, items, team_size(want, items)};
}

Inputs make_inputs(std::uintptr_t u, std::uintptr_t delta, std::uintptr_t A, std::uintptr_t B, std::uintptr_t C,
                   std::uintptr_t Dw, std::uintptr_t z, std::uintptr_t bias, int dt, bool softplus, bool varB,
                   bool varC) {
  for (auto [ptr, name] : {std::pair{u, "u"}, {delta, "delta"}, {A, "A"}, {B, "B"}, {C, "C"}}) require(ptr, name);
  return Inputs{as_ptr<const void>(u), as_ptr<const void>(delta), as_ptr<const void>(z), as_ptr<const void>(B),
                as_ptr<const void>(C), as_ptr<const float>(A), as_ptr<const float>(Dw), as_ptr<const float>(bias),
                dt, softplus, varB, varC};
}

// Floats of one thread's gradient partials (see Partials).
int64_t partial_floats(const Dims& s, bool varB, bool varC) {
  const int64_t var = s.bsz * s.G * s.L * s.N, fixed = s.D * s.N;
  return (varB ? var : fixed) + (varC ? var : fixed) + s.D * s.N + 2 * s.D;
}

}  // namespace

void selective_scan_fwd(std::uintptr_t u, std::uintptr_t delta, std::uintptr_t A, std::uintptr_t B,
                        std::uintptr_t C, std::uintptr_t Dw, std::uintptr_t z, std::uintptr_t bias,
                        std::uintptr_t out, std::uintptr_t last_state, int64_t bsz, int64_t D, int64_t L, int64_t N,
                        int64_t G, bool varB, bool varC, int dt, bool softplus, int nthreads) {
  const Dims s = check_dims(bsz, D, L, N, G, dt);
  const Inputs in = make_inputs(u, delta, A, B, C, Dw, z, bias, dt, softplus, varB, varC);
  require(out, "out");
  require(last_state, "last_state");
  const Launch lc = launch(s, nthreads);
  void* op = as_ptr<void>(out);
  float* ls = as_ptr<float>(last_state);
#pragma omp parallel num_threads(lc.team)
  {
    FwdWork w;
#pragma omp for schedule(static)
    for (int64_t k = 0; k < lc.items; ++k) fwd_block(in, s, lc.item(k, s), op, ls, w);
  }
}

void selective_scan_bwd(std::uintptr_t dout, int doutdt, std::uintptr_t u, std::uintptr_t delta, std::uintptr_t A,
                        std::uintptr_t B, std::uintptr_t C, std::uintptr_t Dw, std::uintptr_t z, std::uintptr_t bias,
                        std::uintptr_t du, std::uintptr_t ddelta, std::uintptr_t dA, std::uintptr_t dB,
                        std::uintptr_t dC, std::uintptr_t dD, std::uintptr_t dz, std::uintptr_t dbias, int64_t bsz,
                        int64_t D, int64_t L, int64_t N, int64_t G, bool varB, bool varC, int dt, bool softplus,
                        int nthreads) {
  const Dims s = check_dims(bsz, D, L, N, G, dt);
  if (doutdt != kF32 && doutdt != kF16 && doutdt != kBF16)
    throw std::invalid_argument("selective_scan_bwd: unknown dtype code for dout " + std::to_string(doutdt));
  const Inputs in = make_inputs(u, delta, A, B, C, Dw, z, bias, dt, softplus, varB, varC);
  for (auto [ptr, name] : {std::pair{dout, "dout"}, {du, "du"}, {ddelta, "ddelta"}, {dA, "dA"}, {dB, "dB"},
                           {dC, "dC"}, {dD, "dD"}, {dbias, "ddelta_bias"}})
    require(ptr, name);
  if (z) require(dz, "dz");
  const Launch lc = launch(s, nthreads);
  // Per-thread partials [dB | dC | dA | dD | ddelta_bias] (see Partials), reduced in one pass; variable dB/dC
  // partials are (b, G, L, N) and are written out as (b, G, N, L).
  const int64_t nB = varB ? s.bsz * G * L * N : D * N, nC = varC ? s.bsz * G * L * N : D * N;
  const int64_t ends[5] = {nB, nB + nC, nB + nC + D * N, nB + nC + D * N + D, partial_floats(s, varB, varC)};
  const Grads g{as_ptr<const void>(dout), doutdt, as_ptr<void>(du), as_ptr<void>(ddelta), as_ptr<void>(dz)};
  void* outs[5] = {as_ptr<void>(dB), as_ptr<void>(dC), as_ptr<void>(dA), as_ptr<void>(dD), as_ptr<void>(dbias)};
  const int odts[5] = {varB ? dt : kF32, varC ? dt : kF32, kF32, kF32, kF32};
  const bool transposed[5] = {varB, varC, false, false, false};
  run_with_partials(
      lc.team, lc.items, ends,
      [&](float* base) {
        const Partials p{base, base + ends[0], base + ends[1], base + ends[2], base + ends[3]};
        return [&, p, w = BwdWork()](int64_t k) mutable { bwd_block(in, s, lc.item(k, s), g, p, w); };
      },
      [&](int which, int64_t j, float acc) {
        if (transposed[which]) {  // j = (bg * L + t) * N + n  ->  (bg * N + n) * L + t
          const int64_t n = j % N, t = (j / N) % L, bgi = j / (N * L);
          j = (bgi * N + n) * L + t;
        }
        store_from_f32(outs[which], j, odts[which], acc);
      });
}

// Bytes the backward allocates besides its outputs: per-thread partials and BwdWork buffers.
int64_t selective_scan_bwd_workspace_bytes(int64_t bsz, int64_t D, int64_t L, int64_t N, int64_t G, bool varB,
                                           bool varC, bool has_z, int nthreads) {
  const Dims s = check_dims(bsz, D, L, N, G, kF32);
  const Launch lc = launch(s, nthreads);
  const int nv = static_cast<int>((lc.cb + VL - 1) / VL);
  const int64_t SN = nv * N, T = chunk_steps(L, N, nv), nc = (L + T - 1) / T;
  const int64_t vectors = (2 + !varB + !varC) * SN + 2 * nv     // BlockParams
                          + nc * SN + 2 * T * SN                  // checkpoints, chunk decays and states
                          + (6 + 3 * has_z) * T * nv              // chunk tiles
                          + (2 + !varB + !varC) * SN + 2 * N;     // carry, dA, constant dB/dC, dB/dC lanes
  const int64_t bc_rows = (varB + varC) * T * N * 4;
  return lc.team * (vectors * static_cast<int64_t>(sizeof(vf)) + bc_rows + partial_floats(s, varB, varC) * 4);
}

}  // namespace dhkd
