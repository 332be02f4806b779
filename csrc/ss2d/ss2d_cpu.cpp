// Fused SS2D scan on the CPU (forward and backward), on raw channels-last buffers; no torch.
//
// Layouts: u (b, H, W, D); delta (b, H, W, 4, D); A (4, D, N) fp32; B, C (b, H, W, 4, N); Dw, delta_bias
// (4, D) fp32 or null; y like u. Direction k walks the map row-major (0), column-major (1) and their
// reverses (2, 3): the cross-scan is an index map on loads, the merge an in-place fp32 accumulation.
//
// Work item = (batch, block of <= 64 channels), split statically over OpenMP threads. Inside an item the
// loop is time-outer / channel-inner on 16-lane vectors, with the block's N states in a small L1 buffer.
// The backward never holds anything of size L·D·N: a forward pass stores the state every T steps, then the
// chunks are walked in reverse, each recomputing its states and decays into a T·N·block buffer and running
// the reverse recurrence. dB/dC/dA/dD/ddelta_bias are summed in per-thread fp32 partials, then reduced.
#include <algorithm>
#include <cstring>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/simd.h"
#include "common/strided.h"
#include "common/threads.h"
#include "ss2d/ss2d.h"
#include "ss2d/ss2d_cpu_simd.h"

namespace dhkd {
namespace {

using namespace ss2d_simd;

constexpr int kDirs = 4;
constexpr int kMaxBlock = 64;  // channels per work item

struct Dims {
  int64_t bsz, H, W, L, Dc, N;
};

// Pixel visited at step t of direction k, for all k: (4, L).
std::vector<int64_t> scan_orders(int64_t H, int64_t W) {
  const int64_t L = H * W;
  std::vector<int64_t> ord(kDirs * L);
  for (int k = 0; k < kDirs; ++k) {
    for (int64_t t = 0; t < L; ++t) {
      const int64_t s = k >= 2 ? L - 1 - t : t;
      ord[k * L + t] = (k & 1) ? (s % H) * W + s / H : s;
    }
  }
  return ord;
}

// Channel block: the largest multiple of VL (<= kMaxBlock) that still yields one item per thread.
int64_t block_size(int64_t bsz, int64_t Dc, int nthreads) {
  int64_t cb = kMaxBlock;
  while (cb > VL && bsz * ((Dc + cb - 1) / cb) < nthreads) cb /= 2;
  return cb;
}

// Per-direction constants of a channel block, as vectors: A·log2(e) and A (layout [v][n]), D, bias.
struct BlockParams {
  vbuf A2, A, Dv, bias;
  void load(const float* Ag, const float* Dg, const float* biasg, int k, int64_t Dc, int64_t N, int64_t c0,
            int cb) {
    const int nv = (cb + VL - 1) / VL;
    A2.assign(nv * N, splat(0.0f));
    A.assign(nv * N, splat(0.0f));
    Dv.assign(nv, splat(0.0f));
    bias.assign(nv, splat(0.0f));
    for (int c = 0; c < cb; ++c) {
      const int v = c / VL, l = c % VL;
      const int64_t d = k * Dc + c0 + c;
      for (int64_t n = 0; n < N; ++n) {
        A[v * N + n][l] = Ag[d * N + n];
        A2[v * N + n][l] = Ag[d * N + n] * kLog2e;
      }
      if (Dg) Dv[v][l] = Dg[d];
      if (biasg) bias[v][l] = biasg[d];
    }
  }
};

struct Inputs {
  const void *u, *delta, *B, *C;
  const float *A, *Dw, *bias;
  int dt;
  bool softplus;
};

// out[0:N] = fp32 values of B or C at element `off` (whole vectors converted at once, the tail per element).
DHKD_INLINE void load_bc(const void* base, int64_t off, int64_t N, int dt, float* out) {
  if (dt == kF32) {
    std::memcpy(out, static_cast<const float*>(base) + off, N * sizeof(float));
    return;
  }
  int64_t n = 0;
  for (; n + VL <= N; n += VL) {
    const vf v = loadv(base, off + n, VL, dt);
    std::memcpy(out + n, &v, sizeof v);
  }
  for (; n < N; ++n) out[n] = load_as_f32(base, off + n, dt);
}

// ---------------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------------

struct FwdWork {
  BlockParams prm;
  vbuf h, yacc;
  std::vector<float> bt, ct;
};

// y (dtype ydt) for channels [c0, c0 + cb) of batch b. If y is fp32 it accumulates in place, else in
// w.yacc (L × nv vectors) and is converted at the end.
DHKD_CLONES void fwd_block(const Inputs& in, const Dims& s, const int64_t* ord, void* y, int ydt, int64_t b,
                           int64_t c0, int cb, FwdWork& w) {
  const int64_t L = s.L, Dc = s.Dc, N = s.N;
  const int nv = (cb + VL - 1) / VL;
  const bool direct = ydt == kF32;
  if (!direct) w.yacc.resize(L * nv);
  w.h.resize(nv * N);
  w.bt.resize(N);
  w.ct.resize(N);
  float *bt = w.bt.data(), *ct = w.ct.data();
  for (int k = 0; k < kDirs; ++k) {
    w.prm.load(in.A, in.Dw, in.bias, k, Dc, N, c0, cb);
    const vf *A2 = w.prm.A2.data(), *Dv = w.prm.Dv.data(), *bias = w.prm.bias.data();
    vf* h = w.h.data();
    std::fill(w.h.begin(), w.h.end(), splat(0.0f));
    const int64_t* ordk = ord + k * L;
    for (int64_t t = 0; t < L; ++t) {
      const int64_t p = ordk[t], row = b * L + p, rk = row * kDirs + k;
      load_bc(in.B, rk * N, N, in.dt, bt);
      load_bc(in.C, rk * N, N, in.dt, ct);
      for (int v = 0; v < nv; ++v) {
        const int cnt = std::min(VL, cb - v * VL);
        const vf uv = loadv(in.u, row * Dc + c0 + v * VL, cnt, in.dt);
        vf dtv = loadv(in.delta, rk * Dc + c0 + v * VL, cnt, in.dt) + bias[v], wexp;
        if (in.softplus) dtv = softplus_v(dtv, wexp);
        const vf duv = dtv * uv;
        vf yv = Dv[v] * uv;
        vf* hv = h + v * N;
        const vf* av = A2 + v * N;
        for (int64_t n = 0; n < N; ++n) {
          const vf hn = exp2v(dtv * av[n]) * hv[n] + duv * bt[n];
          hv[n] = hn;
          yv += hn * ct[n];
        }
        if (direct) {
          accumulate(static_cast<float*>(y) + row * Dc + c0 + v * VL, cnt, yv, k == 0);
        } else {
          vf& acc = w.yacc[p * nv + v];
          acc = k == 0 ? yv : acc + yv;
        }
      }
    }
  }
  if (!direct) {
    for (int64_t p = 0; p < L; ++p)
      for (int v = 0; v < nv; ++v)
        storev(y, (b * L + p) * Dc + c0 + v * VL, std::min(VL, cb - v * VL), ydt, w.yacc[p * nv + v]);
  }
}

// ---------------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------------

struct Grads {
  const void* dy;
  int dydt;
  void *du, *ddelta;      // input dtype
  float *dB, *dC;         // per-thread fp32 partials, (b, L, 4, N) each
  float *dA, *dD, *dbias; // per-thread fp32 partials, (4, D, N) / (4, D)
};

struct BwdWork {
  BlockParams prm;
  vbuf ckpt, abuf, hbuf, dtbuf, gbuf, carry, dA, duacc, dBv, dCv;
  std::vector<float> bt, ct;
};

DHKD_CLONES void bwd_block(const Inputs& in, const Dims& s, const int64_t* ord, const Grads& g, int64_t b,
                           int64_t c0, int cb, BwdWork& w) {
  const int64_t L = s.L, Dc = s.Dc, N = s.N;
  const int nv = (cb + VL - 1) / VL;
  const int64_t SN = nv * N;  // state vectors of the block
  const int64_t T = chunk_steps(L, N, nv), nc = (L + T - 1) / T;
  const bool direct = in.dt == kF32;
  if (!direct) w.duacc.resize(L * nv);
  w.ckpt.resize(nc * SN);
  w.abuf.resize(T * SN);
  w.hbuf.resize(T * SN);
  w.dtbuf.resize(T * nv);
  w.gbuf.resize(T * nv);
  w.carry.resize(SN);
  w.dA.resize(SN);
  w.dBv.resize(N);
  w.dCv.resize(N);
  w.bt.resize(N);
  w.ct.resize(N);
  float *bt = w.bt.data(), *ct = w.ct.data();
  vf *dBv = w.dBv.data(), *dCv = w.dCv.data();
  for (int k = 0; k < kDirs; ++k) {
    w.prm.load(in.A, in.Dw, in.bias, k, Dc, N, c0, cb);
    const vf *A2 = w.prm.A2.data(), *Ar = w.prm.A.data(), *Dv = w.prm.Dv.data(), *bias = w.prm.bias.data();
    const int64_t* ordk = ord + k * L;
    auto dt_at = [&](int64_t rk, int v, int cnt, vf& grad) {
      vf z = loadv(in.delta, rk * Dc + c0 + v * VL, cnt, in.dt) + bias[v];
      if (!in.softplus) {
        grad = splat(1.0f);
        return z;
      }
      vf wexp;
      const vf sp = softplus_v(z, wexp);
      grad = softplus_grad_v(z, wexp);
      return sp;
    };
    // Pass 1: states at the start of every chunk.
    vf* ck = w.ckpt.data();
    std::fill(ck, ck + SN, splat(0.0f));
    for (int64_t c = 0; c + 1 < nc; ++c) {
      vf* hc = ck + c * SN;
      vf* hn_out = hc + SN;
      std::copy(hc, hc + SN, hn_out);
      for (int64_t t = c * T; t < (c + 1) * T; ++t) {
        const int64_t row = b * L + ordk[t], rk = row * kDirs + k;
        load_bc(in.B, rk * N, N, in.dt, bt);
        for (int v = 0; v < nv; ++v) {
          const int cnt = std::min(VL, cb - v * VL);
          vf gr;
          const vf dtv = dt_at(rk, v, cnt, gr);
          const vf duv = dtv * loadv(in.u, row * Dc + c0 + v * VL, cnt, in.dt);
          vf* hv = hn_out + v * N;
          const vf* av = A2 + v * N;
          for (int64_t n = 0; n < N; ++n) hv[n] = exp2v(dtv * av[n]) * hv[n] + duv * bt[n];
        }
      }
    }
    std::fill(w.carry.begin(), w.carry.end(), splat(0.0f));
    std::fill(w.dA.begin(), w.dA.end(), splat(0.0f));
    vf dDv[kMaxBlock / VL], dbv[kMaxBlock / VL];
    std::fill(dDv, dDv + nv, splat(0.0f));
    std::fill(dbv, dbv + nv, splat(0.0f));
    vf *carry = w.carry.data(), *dAv = w.dA.data();
    for (int64_t c = nc - 1; c >= 0; --c) {
      const int64_t t0 = c * T, steps = std::min(T, L - t0);
      const vf* h0 = ck + c * SN;
      // Pass 2: recompute the chunk's decays, states, dt and dsoftplus.
      for (int64_t i = 0; i < steps; ++i) {
        const int64_t row = b * L + ordk[t0 + i], rk = row * kDirs + k;
        load_bc(in.B, rk * N, N, in.dt, bt);
        const vf* hp = i ? w.hbuf.data() + (i - 1) * SN : h0;
        vf* hc = w.hbuf.data() + i * SN;
        vf* ac = w.abuf.data() + i * SN;
        for (int v = 0; v < nv; ++v) {
          const int cnt = std::min(VL, cb - v * VL);
          vf gr;
          const vf dtv = dt_at(rk, v, cnt, gr);
          w.dtbuf[i * nv + v] = dtv;
          w.gbuf[i * nv + v] = gr;
          const vf duv = dtv * loadv(in.u, row * Dc + c0 + v * VL, cnt, in.dt);
          const vf* av = A2 + v * N;
          for (int64_t n = 0; n < N; ++n) {
            const int64_t j = v * N + n;
            const vf a = exp2v(dtv * av[n]);
            ac[j] = a;
            hc[j] = a * hp[j] + duv * bt[n];
          }
        }
      }
      // Pass 3: reverse recurrence dh_t = C_t·dy_t + a_{t+1}·dh_{t+1} and the gradients.
      for (int64_t i = steps - 1; i >= 0; --i) {
        const int64_t p = ordk[t0 + i], row = b * L + p, rk = row * kDirs + k;
        load_bc(in.B, rk * N, N, in.dt, bt);
        load_bc(in.C, rk * N, N, in.dt, ct);
        const vf* hp = i ? w.hbuf.data() + (i - 1) * SN : h0;
        const vf* hc = w.hbuf.data() + i * SN;
        const vf* ac = w.abuf.data() + i * SN;
        std::fill(dBv, dBv + N, splat(0.0f));
        std::fill(dCv, dCv + N, splat(0.0f));
        for (int v = 0; v < nv; ++v) {
          const int cnt = std::min(VL, cb - v * VL);
          const int64_t off = row * Dc + c0 + v * VL;
          const vf dyv = loadv(g.dy, off, cnt, g.dydt);
          const vf uv = loadv(in.u, off, cnt, in.dt);
          const vf dtv = w.dtbuf[i * nv + v];
          const vf dtu = dtv * uv;
          vf ddt = splat(0.0f), q = splat(0.0f);
          for (int64_t n = 0; n < N; ++n) {
            const int64_t j = v * N + n;
            const vf dh = carry[j] + dyv * ct[n];
            dCv[n] += dyv * hc[j];
            const vf sdec = dh * (ac[j] * hp[j]);
            dAv[j] += sdec * dtv;
            ddt += sdec * Ar[j];
            q += dh * bt[n];
            dBv[n] += dh * dtu;
            carry[j] = ac[j] * dh;
          }
          ddt += q * uv;
          const vf duv = q * dtv + dyv * Dv[v];
          dDv[v] += dyv * uv;
          const vf dz = ddt * w.gbuf[i * nv + v];
          dbv[v] += dz;
          storev(g.ddelta, rk * Dc + c0 + v * VL, cnt, in.dt, dz);
          if (direct) {
            accumulate(static_cast<float*>(g.du) + off, cnt, duv, k == 0);
          } else {
            vf& acc = w.duacc[p * nv + v];
            acc = k == 0 ? duv : acc + duv;
          }
        }
        add_row_sums(dBv, N, g.dB + rk * N);
        add_row_sums(dCv, N, g.dC + rk * N);
      }
    }
    for (int c = 0; c < cb; ++c) {
      const int v = c / VL, l = c % VL;
      const int64_t d = k * Dc + c0 + c;
      for (int64_t n = 0; n < N; ++n) g.dA[d * N + n] += dAv[v * N + n][l];
      g.dD[d] += dDv[v][l];
      g.dbias[d] += dbv[v][l];
    }
  }
  if (!direct) {
    for (int64_t p = 0; p < L; ++p)
      for (int v = 0; v < nv; ++v)
        storev(g.du, (b * L + p) * Dc + c0 + v * VL, std::min(VL, cb - v * VL), in.dt, w.duacc[p * nv + v]);
  }
}

// ---------------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------------

Dims check_dims(int64_t bsz, int64_t H, int64_t W, int64_t Dc, int64_t N, int dt) {
  if (bsz <= 0 || H <= 0 || W <= 0 || Dc <= 0 || N <= 0)
    throw std::invalid_argument("ss2d: batch, H, W, D and N must be positive, got " + std::to_string(bsz) +
                                ", " + std::to_string(H) + ", " + std::to_string(W) + ", " +
                                std::to_string(Dc) + ", " + std::to_string(N));
  if (dt != kF32 && dt != kF16 && dt != kBF16)
    throw std::invalid_argument("ss2d: unknown dtype code " + std::to_string(dt));
  return Dims{bsz, H, W, H * W, Dc, N};
}

void require(std::uintptr_t p, const char* name) {
  if (p == 0) throw std::invalid_argument(std::string("ss2d: null pointer for ") + name);
}

// The inputs of a call, u, delta, A, B and C required (Dw, bias may be null).
Inputs make_inputs(std::uintptr_t u, std::uintptr_t delta, std::uintptr_t A, std::uintptr_t B, std::uintptr_t C,
                   std::uintptr_t Dw, std::uintptr_t bias, int dt, bool softplus) {
  for (auto [p, name] : {std::pair{u, "u"}, {delta, "delta"}, {A, "A"}, {B, "B"}, {C, "C"}}) require(p, name);
  return Inputs{as_ptr<const void>(u), as_ptr<const void>(delta), as_ptr<const void>(B), as_ptr<const void>(C),
                as_ptr<const float>(A), as_ptr<const float>(Dw), as_ptr<const float>(bias), dt, softplus};
}

// Channel block, number of work items and thread team of a call.
struct Launch {
  int64_t cb, nblk, items;
  int team;
};

// Threads get at least kMinWorkPerThread state updates (~50 µs) each: smaller calls run on fewer threads,
// which also spares them barrier waits on descheduled threads when the machine is oversubscribed.
constexpr int64_t kMinWorkPerThread = int64_t(1) << 17;

Launch launch(const Dims& s, int nthreads) {
  const int64_t work = kDirs * s.bsz * s.L * s.Dc * s.N;
  const int want = team_size(nthreads, std::max<int64_t>(1, work / kMinWorkPerThread));
  const int64_t cb = block_size(s.bsz, s.Dc, want);
  const int64_t nblk = (s.Dc + cb - 1) / cb;
  return Launch{cb, nblk, s.bsz * nblk, team_size(want, s.bsz * nblk)};
}

// fp32 gradient partials of one thread: dB, dC (b, L, 4, N), dA (4, D, N), dD and ddelta_bias (4, D).
int64_t bwd_partial_floats(const Dims& s) {
  return 2 * s.bsz * s.L * kDirs * s.N + kDirs * s.Dc * s.N + 2 * kDirs * s.Dc;
}

}  // namespace

// Bytes the backward allocates besides its outputs: scan orders, per-thread partials and BwdWork buffers.
int64_t ss2d_bwd_workspace_bytes(int64_t bsz, int64_t H, int64_t W, int64_t Dc, int64_t N, int dt,
                                 int nthreads) {
  const Dims s = check_dims(bsz, H, W, Dc, N, dt);
  const Launch lc = launch(s, nthreads);
  const int nv = static_cast<int>((lc.cb + VL - 1) / VL);
  const int64_t SN = nv * N, T = chunk_steps(s.L, N, nv), nc = (s.L + T - 1) / T;
  const int64_t vectors = (2 * SN + 2 * nv)                    // BlockParams
                          + nc * SN + 2 * T * SN + 2 * T * nv      // checkpoints, chunk buffers
                          + 2 * SN + 2 * N                         // adjoint carry, dA, dB/dC lanes
                          + (dt == kF32 ? 0 : s.L * nv);           // du accumulator
  const int64_t per_thread = vectors * static_cast<int64_t>(sizeof(vf)) + 2 * N * 4 + bwd_partial_floats(s) * 4;
  return kDirs * s.L * 8 + lc.team * per_thread;
}

void ss2d_fwd(std::uintptr_t u, std::uintptr_t delta, std::uintptr_t A, std::uintptr_t B, std::uintptr_t C,
              std::uintptr_t Dw, std::uintptr_t bias, std::uintptr_t y, int64_t bsz, int64_t H, int64_t W,
              int64_t Dc, int64_t N, int dt, int ydt, bool softplus, int nthreads) {
  const Dims s = check_dims(bsz, H, W, Dc, N, dt);
  if (ydt != kF32 && ydt != dt) throw std::invalid_argument("ss2d_fwd: y must be fp32 or the input dtype");
  const Inputs in = make_inputs(u, delta, A, B, C, Dw, bias, dt, softplus);
  require(y, "y");
  const std::vector<int64_t> ord = scan_orders(H, W);
  const Launch lc = launch(s, nthreads);
  const int64_t cb = lc.cb, nblk = lc.nblk, items = lc.items;
  void* yp = as_ptr<void>(y);
#pragma omp parallel num_threads(lc.team)
  {
    FwdWork w;
#pragma omp for schedule(static)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t b = it / nblk, c0 = (it % nblk) * cb;
      fwd_block(in, s, ord.data(), yp, ydt, b, c0, static_cast<int>(std::min(cb, Dc - c0)), w);
    }
  }
}

void ss2d_bwd(std::uintptr_t dy, int dydt, std::uintptr_t u, std::uintptr_t delta, std::uintptr_t A,
              std::uintptr_t B, std::uintptr_t C, std::uintptr_t Dw, std::uintptr_t bias, std::uintptr_t du,
              std::uintptr_t ddelta, std::uintptr_t dA, std::uintptr_t dB, std::uintptr_t dC,
              std::uintptr_t dD, std::uintptr_t dbias, int64_t bsz, int64_t H, int64_t W, int64_t Dc,
              int64_t N, int dt, bool softplus, int nthreads) {
  const Dims s = check_dims(bsz, H, W, Dc, N, dt);
  if (dydt != kF32 && dydt != kF16 && dydt != kBF16)
    throw std::invalid_argument("ss2d_bwd: unknown dtype code for dy " + std::to_string(dydt));
  const Inputs in = make_inputs(u, delta, A, B, C, Dw, bias, dt, softplus);
  for (auto [p, name] : {std::pair{dy, "dy"}, {du, "du"}, {ddelta, "ddelta"}, {dA, "dA"}, {dB, "dB"}, {dC, "dC"},
                         {dD, "dD"}, {dbias, "ddelta_bias"}})
    require(p, name);
  const std::vector<int64_t> ord = scan_orders(H, W);
  const Launch lc = launch(s, nthreads);
  const int64_t cb = lc.cb, nblk = lc.nblk, items = lc.items;
  // Per-thread partials [dB | dC | dA | dD | ddelta_bias] (see Grads), reduced in one pass.
  const int64_t nbc = bsz * s.L * kDirs * N, na = kDirs * Dc * N, nd = kDirs * Dc;
  const int64_t ends[5] = {nbc, 2 * nbc, 2 * nbc + na, 2 * nbc + na + nd, bwd_partial_floats(s)};
  void* outs[5] = {as_ptr<void>(dB), as_ptr<void>(dC), as_ptr<void>(dA), as_ptr<void>(dD), as_ptr<void>(dbias)};
  const int odts[5] = {dt, dt, kF32, kF32, kF32};
  run_with_partials(
      lc.team, items, ends,
      [&](float* base) {
        const Grads g{as_ptr<const void>(dy), dydt, as_ptr<void>(du), as_ptr<void>(ddelta), base,
                      base + ends[0], base + ends[1], base + ends[2], base + ends[3]};
        return [&, g, w = BwdWork()](int64_t it) mutable {
          const int64_t b = it / nblk, c0 = (it % nblk) * cb;
          bwd_block(in, s, ord.data(), g, b, c0, static_cast<int>(std::min(cb, Dc - c0)), w);
        };
      },
      [&](int which, int64_t j, float acc) { store_from_f32(outs[which], j, odts[which], acc); });
}

}  // namespace dhkd
