// Host stand-in for cuda_bf16.h (see cuda_runtime.h here): bfloat16 storage and its conversions.
#pragma once
#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
  std::uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 h) {
  const std::uint32_t f = (std::uint32_t)h.bits << 16;
  float r;
  std::memcpy(&r, &f, 4);
  return r;
}

inline __nv_bfloat16 __float2bfloat16_rn(float v) {  // round to nearest even (NaN stays NaN)
  std::uint32_t f;
  std::memcpy(&f, &v, 4);
  if ((f & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{(std::uint16_t)((f >> 16) | 0x40)};
  f += 0x7fff + ((f >> 16) & 1);
  return __nv_bfloat16{(std::uint16_t)(f >> 16)};
}
