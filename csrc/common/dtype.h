// Storage dtypes shared by all kernels, and scalar fp16/bf16 <-> fp32 conversion for CPU code.
// Codes must match dhkd_kernels/_ext.py (DTYPE_CODES).
#pragma once
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace dhkd {

enum DType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

inline float bf16_to_f32(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {  // round to nearest even; NaN stays NaN
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

inline float f16_to_f32(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) { mant <<= 1; --exp; }
      bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t f32_to_f16(float f) {  // round to nearest even, overflow to inf
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  uint32_t sign = (bits >> 16) & 0x8000u;
  uint32_t absb = bits & 0x7fffffffu;
  if (absb > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (absb >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (absb < 0x38800000u) {  // subnormal or zero in fp16
    if (absb < 0x33000000u) return static_cast<uint16_t>(sign);
    uint32_t exp = absb >> 23, mant = (absb & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - exp;  // fp16 subnormal unit is 2^-24
    uint32_t rem = mant & ((1u << shift) - 1u), halfway = 1u << (shift - 1);
    uint32_t result = mant >> shift;
    if (rem > halfway || (rem == halfway && (result & 1u))) ++result;
    return static_cast<uint16_t>(sign | result);
  }
  uint32_t result = ((absb - 0x38000000u) >> 13);
  uint32_t rem = absb & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (result & 1u))) ++result;
  return static_cast<uint16_t>(sign | result);
}

// Load/store one element as fp32, the storage dtype a compile-time constant (hot loops).
template <int DT>
inline float ld(const void* p, int64_t i) {
  if constexpr (DT == kF32) return static_cast<const float*>(p)[i];
  if constexpr (DT == kF16) return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
  if constexpr (DT == kBF16) return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
}

template <int DT>
inline void st(void* p, int64_t i, float v) {
  if constexpr (DT == kF32) static_cast<float*>(p)[i] = v;
  if constexpr (DT == kF16) static_cast<uint16_t*>(p)[i] = f32_to_f16(v);
  if constexpr (DT == kBF16) static_cast<uint16_t*>(p)[i] = f32_to_bf16(v);
}

// Load/store one element of a tensor with storage dtype `dt` (a run-time value) as fp32.
inline float load_as_f32(const void* base, int64_t i, int dt) {
  switch (dt) {
    case kF16: return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case kBF16: return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
    default: return static_cast<const float*>(base)[i];
  }
}

inline void store_from_f32(void* base, int64_t i, int dt, float v) {
  switch (dt) {
    case kF16: static_cast<uint16_t*>(base)[i] = f32_to_f16(v); break;
    case kBF16: static_cast<uint16_t*>(base)[i] = f32_to_bf16(v); break;
    default: static_cast<float*>(base)[i] = v;
  }
}

// Calls f(std::integral_constant<int, DT>{}) for the runtime dtype code dt; `op` names the caller in the error
// for an unknown code. Kernels templated on DT get one instantiation per storage dtype.
template <typename F>
void dispatch_dtype(int dt, const char* op, F&& f) {
  switch (dt) {
    case kF32: f(std::integral_constant<int, kF32>{}); break;
    case kF16: f(std::integral_constant<int, kF16>{}); break;
    case kBF16: f(std::integral_constant<int, kBF16>{}); break;
    default: throw std::invalid_argument(std::string(op) + ": unknown dtype code " + std::to_string(dt));
  }
}

}  // namespace dhkd
