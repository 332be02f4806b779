// Portable 16-lane fp32 vector helpers for the SS2D CPU kernels: GCC/Clang vector extensions (lowered to
// AVX-512, AVX2, SSE or NEON by the compiler), polynomial exp2 / softplus / sigmoid, and loads/stores of
// fp32/fp16/bf16 storage. No intrinsics, so the header compiles on any target.
#pragma once
#pragma GCC diagnostic ignored "-Wpsabi"  // vector arguments only cross always_inline helpers
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <vector>

#include "common/dtype.h"
#include "common/simd.h"

namespace dhkd {
namespace ss2d_simd {

constexpr int VL = 16;  // fp32 lanes per vector
typedef float vf __attribute__((vector_size(VL * 4)));
typedef int32_t vi __attribute__((vector_size(VL * 4)));
typedef uint32_t vu __attribute__((vector_size(VL * 4)));
typedef uint16_t vh __attribute__((vector_size(VL * 2)));
typedef float vf8 __attribute__((vector_size(32)));
typedef float vf4 __attribute__((vector_size(16)));

// Heap buffers of vectors, 64-byte aligned whatever the target the including code is compiled for (the
// default-target std::allocator may only align to 16 bytes while AVX-512 clones use aligned moves).
template <class T>
struct Aligned64 {
  using value_type = T;
  Aligned64() = default;
  template <class U>
  Aligned64(const Aligned64<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <class U>
  bool operator==(const Aligned64<U>&) const { return true; }
  template <class U>
  bool operator!=(const Aligned64<U>&) const { return false; }
};
using vbuf = std::vector<vf, Aligned64<vf>>;

constexpr float kLog2e = 1.4426950408889634f;

DHKD_INLINE vf splat(float s) { return vf{} + s; }
DHKD_INLINE vf as_vf(vu bits) { vf f; std::memcpy(&f, &bits, sizeof f); return f; }

// 2^x with rel. error ~1e-7: round-to-nearest split x = n + f, |f| <= 1/2, degree-7 Taylor polynomial of
// 2^f in Horner form, 2^n built in the exponent bits. x is clamped to [-126, 127] (2^-126 ~ 1e-38 stands
// in for smaller results); NaN propagates through the polynomial.
DHKD_INLINE vf exp2v(vf x) {
  x = x < -126.0f ? splat(-126.0f) : x;
  x = x > 127.0f ? splat(127.0f) : x;
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  vf r = (x + magic) - magic;
  vf f = x - r;
  vf p = splat(1.525273380405984e-05f);
  p = p * f + 1.5403530393381606e-04f;
  p = p * f + 1.3333558146428443e-03f;
  p = p * f + 9.618129107628477e-03f;
  p = p * f + 5.550410866482158e-02f;
  p = p * f + 2.402265069591007e-01f;
  p = p * f + 6.931471805599453e-01f;
  p = p * f + 1.0f;
  vi n = __builtin_convertvector(r, vi);
  vu bits = (vu)((n + 127) << 23);
  return p * as_vf(bits);
}

// log1p(w) for w in [0, 1]: 2·atanh(s) with s = w / (2 + w) <= 1/3, odd series to s^17 (rel. err < 1e-9
// before rounding). No cancellation for tiny w.
DHKD_INLINE vf log1p_unit(vf w) {
  vf s = w / (w + 2.0f);
  vf s2 = s * s;
  vf q = splat(1.0f / 17.0f);
  q = q * s2 + 1.0f / 15.0f;
  q = q * s2 + 1.0f / 13.0f;
  q = q * s2 + 1.0f / 11.0f;
  q = q * s2 + 1.0f / 9.0f;
  q = q * s2 + 1.0f / 7.0f;
  q = q * s2 + 1.0f / 5.0f;
  q = q * s2 + 1.0f / 3.0f;
  q = q * s2 + 1.0f;
  return (s + s) * q;
}

// softplus(z) = max(z, 0) + log1p(exp(-|z|)), identity above 20 (as torch.nn.functional.softplus).
// Also returns w = exp(-|z|) for the derivative.
DHKD_INLINE vf softplus_v(vf z, vf& w) {
  vf az = z < 0.0f ? -z : z;
  w = exp2v(az * -kLog2e);
  vf pos = z > 0.0f ? z : splat(0.0f);
  vf sp = pos + log1p_unit(w);
  return z > 20.0f ? z : sp;
}

// d softplus / dz = sigmoid(z) (1 above the threshold 20), from w = exp(-|z|).
DHKD_INLINE vf softplus_grad_v(vf z, vf w) {
  vf inv = 1.0f / (w + 1.0f);
  vf sig = z >= 0.0f ? inv : w * inv;
  return z > 20.0f ? splat(1.0f) : sig;
}

DHKD_INLINE float hsum(vf v) {
  vf8 a, b;
  std::memcpy(&a, &v, 32);
  std::memcpy(&b, reinterpret_cast<const char*>(&v) + 32, 32);
  a += b;
  vf4 c, d;
  std::memcpy(&c, &a, 16);
  std::memcpy(&d, reinterpret_cast<const char*>(&a) + 16, 16);
  c += d;
  return (c[0] + c[2]) + (c[1] + c[3]);
}

#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define SS2D_HAVE_SHUFFLE 1
#endif
#endif

// out[n] += sum of the lanes of x[n], n < count. Groups of 16 rows use a transposing tree (15 adds and 30
// two-source shuffles instead of 16 separate horizontal sums).
DHKD_INLINE void add_row_sums(const vf* x, int64_t count, float* out) {
  int64_t n = 0;
#ifdef SS2D_HAVE_SHUFFLE
  static_assert(VL == 16, "the tree reduction is written for 16 lanes");
  for (; n + VL <= count; n += VL) {
    const vf* r = x + n;
    vf y[8], z[4], w[2];
    for (int i = 0; i < 8; ++i)  // lanes 0-7: row 2i, 8-15: row 2i+1 (8 partial sums each)
      y[i] = __builtin_shufflevector(r[2 * i], r[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
             __builtin_shufflevector(r[2 * i], r[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    for (int i = 0; i < 4; ++i)  // 4 lanes per row, rows 4i..4i+3
      z[i] = __builtin_shufflevector(y[2 * i], y[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
             __builtin_shufflevector(y[2 * i], y[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    for (int i = 0; i < 2; ++i)  // 2 lanes per row, rows 8i..8i+7
      w[i] = __builtin_shufflevector(z[2 * i], z[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
             __builtin_shufflevector(z[2 * i], z[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
    vf sums = __builtin_shufflevector(w[0], w[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
              __builtin_shufflevector(w[0], w[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    vf old;
    std::memcpy(&old, out + n, sizeof old);
    old += sums;
    std::memcpy(out + n, &old, sizeof old);
  }
#endif
  for (; n < count; ++n) out[n] += hsum(x[n]);
}

DHKD_INLINE vf bf16_to_vf(vh h) { return as_vf(__builtin_convertvector(h, vu) << 16); }

// IEEE half -> float without branches: shift exponent+mantissa into place and rescale the exponent bias
// by 2^112 (exact, also for subnormals); inf/NaN get the all-ones exponent; the sign is OR-ed back.
DHKD_INLINE vf f16_to_vf(vh h) {
  vu w = __builtin_convertvector(h, vu);
  vu sign = (w & 0x8000u) << 16;
  vu em = w & 0x7fffu;
  vf mag = as_vf(em << 13) * 5.192296858534828e+33f;  // 2^112
  vu bits;
  std::memcpy(&bits, &mag, sizeof bits);
  bits = em >= 0x7c00u ? ((em << 13) | 0x7f800000u) : bits;
  return as_vf(bits | sign);
}

// Load `cnt` (1..VL) consecutive elements of a dtype-`dt` buffer from element `off`; missing lanes are 0.
DHKD_INLINE vf loadv(const void* base, int64_t off, int cnt, int dt) {
  if (cnt == VL) {
    if (dt == kF32) {
      vf v;
      std::memcpy(&v, static_cast<const float*>(base) + off, sizeof v);
      return v;
    }
    vh h;
    std::memcpy(&h, static_cast<const uint16_t*>(base) + off, sizeof h);
    return dt == kBF16 ? bf16_to_vf(h) : f16_to_vf(h);
  }
  float tmp[VL] = {};
  for (int i = 0; i < cnt; ++i) tmp[i] = load_as_f32(base, off + i, dt);
  vf v;
  std::memcpy(&v, tmp, sizeof v);
  return v;
}

// Store the first `cnt` lanes of v to a dtype-`dt` buffer from element `off`.
DHKD_INLINE void storev(void* base, int64_t off, int cnt, int dt, vf v) {
  if (dt == kF32 && cnt == VL) {
    std::memcpy(static_cast<float*>(base) + off, &v, sizeof v);
    return;
  }
  for (int i = 0; i < cnt; ++i) store_from_f32(base, off + i, dt, v[i]);
}

// fp32 accumulator row: dst[0:cnt] (+)= v.
DHKD_INLINE void accumulate(float* dst, int cnt, vf v, bool first) {
  if (cnt == VL) {
    if (!first) {
      vf old;
      std::memcpy(&old, dst, sizeof old);
      v += old;
    }
    std::memcpy(dst, &v, sizeof v);
    return;
  }
  for (int i = 0; i < cnt; ++i) dst[i] = first ? v[i] : dst[i] + v[i];
}

// Steps per recomputed chunk of the backward kernels: keeps the chunk's decays + states (2·T·N·nv vectors)
// within ~256 kB of L2.
inline int64_t chunk_steps(int64_t L, int64_t N, int nv) {
  const int64_t per_step = 2 * N * nv * static_cast<int64_t>(sizeof(vf));
  return std::max<int64_t>(4, std::min<int64_t>(L, (256 * 1024) / per_step));
}

}  // namespace ss2d_simd
}  // namespace dhkd
