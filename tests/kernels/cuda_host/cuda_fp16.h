// Host stand-in for cuda_fp16.h (see cuda_runtime.h here): IEEE binary16 storage and its conversions.
#pragma once
#include <cstdint>
#include <cstring>

struct __half {
  std::uint16_t bits;
};

inline float __half2float(__half h) {
  const std::uint32_t sign = (h.bits & 0x8000u) << 16, exp = (h.bits >> 10) & 0x1f, man = h.bits & 0x3ff;
  std::uint32_t f;
  if (exp == 0 && man == 0) {
    f = sign;
  } else if (exp == 0) {  // subnormal: normalise
    int shift = 0;
    std::uint32_t m = man;
    while (!(m & 0x400)) {
      m <<= 1;
      ++shift;
    }
    f = sign | ((std::uint32_t)(113 - shift) << 23) | ((m & 0x3ff) << 13);
  } else if (exp == 31) {
    f = sign | 0x7f800000u | (man << 13);
  } else {
    f = sign | ((exp + 112) << 23) | (man << 13);
  }
  float r;
  std::memcpy(&r, &f, 4);
  return r;
}

// Round to nearest even; values below the normal range flush to zero (the tests' values are normal or zero).
inline __half __float2half_rn(float v) {
  std::uint32_t f;
  std::memcpy(&f, &v, 4);
  const std::uint32_t sign = (f >> 16) & 0x8000u, man = f & 0x7fffff;
  const int exp = (int)((f >> 23) & 0xff) - 127 + 15;
  if ((f & 0x7fffffffu) > 0x7f800000u) return __half{(std::uint16_t)(sign | 0x7e00)};  // NaN
  if (exp <= 0) return __half{(std::uint16_t)sign};
  if (exp >= 31) return __half{(std::uint16_t)(sign | 0x7c00)};
  std::uint32_t r = ((std::uint32_t)exp << 10) | (man >> 13);
  const std::uint32_t rest = man & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (r & 1))) ++r;  // may carry into the exponent: still correct
  return __half{(std::uint16_t)(sign | r)};
}
