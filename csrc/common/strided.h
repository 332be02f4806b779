// Raw pointers and element strides as they arrive from Python (data_ptr() ints, stride() tuples), shared by
// the CPU kernels and the CUDA bindings. No torch and no CUDA headers.
#pragma once
#include <array>
#include <cstdint>

namespace dhkd {

// Element strides of a (batch, channel, row, column) tensor.
using Strides = std::array<long long, 4>;

// A tensor's data_ptr() as passed from Python, as a typed pointer.
template <class T>
T* as_ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

// Element offset of (b, c, y, x).
inline int64_t offset(const Strides& s, int64_t b, int64_t c, int64_t y, int64_t x) {
  return b * s[0] + c * s[1] + y * s[2] + x * s[3];
}

// Dense channels-last (NHWC) storage: channels are the contiguous innermost axis.
inline bool is_nhwc(const Strides& s, int64_t C, int64_t H, int64_t W) {
  return s[1] == 1 && s[3] == C && s[2] == W * C && s[0] == H * W * C;
}

}  // namespace dhkd
