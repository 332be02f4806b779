// Small CUDA helpers of the kernels: fp16/bf16 <-> fp32, the dtype dispatch, 4-D strides, a block sum, checks.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>

namespace dhkd_cuda {

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Calls f(T{}) with T the storage type of dtype code `dtype` (csrc/common/dtype.h: fp32, fp16, bf16); `op`
// names the caller in the error for an unknown code.
template <typename F>
void dispatch_dtype(int dtype, const char* op, F&& f) {
  switch (dtype) {
    case 0: f(float{}); break;
    case 1: f(__half{}); break;
    case 2: f(__nv_bfloat16{}); break;
    default: throw std::invalid_argument(std::string(op) + ": unknown dtype code " + std::to_string(dtype));
  }
}

// Element strides of a (batch, channel, row, column) tensor.
struct Strides4 {
  long long b, c, h, w;
  __host__ __device__ long long at(long long bb, long long cc, long long y, long long x) const {
    return bb * b + cc * c + y * h + x * w;
  }
};

constexpr int kThreads = 256;

// Sum of v over the block (blockDim.x == kThreads); the result is valid in thread 0. Every thread calls it.
__device__ __forceinline__ float block_sum(float v, float* smem /* kThreads / 32 floats */) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  float s = 0.f;
  if (threadIdx.x == 0)
    for (int k = 0; k < kThreads / 32; ++k) s += smem[k];
  return s;
}

inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

// Raises a kernel's dynamic shared memory cap to the device's opt-in maximum, once per (kernel, device), so
// later launches (possibly inside a CUDA graph capture) make no attribute calls. A failing call throws
// "<op> CUDA <call>: <error>".
inline void allow_max_smem(const void* kernel, int smem_max, const char* op) {
  static std::mutex mu;
  static std::set<std::pair<const void*, int>> done;
  const auto check = [op](cudaError_t err, const char* what) {
    if (err != cudaSuccess)
      throw std::runtime_error(std::string(op) + " CUDA " + what + ": " + cudaGetErrorString(err));
  };
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  std::lock_guard<std::mutex> lock(mu);
  if (done.count({kernel, dev})) return;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_max), "cudaFuncSetAttribute");
  done.insert({kernel, dev});
}

inline void check_grid(long long planes, const char* what) {
  if (planes < 1 || planes > 65535)
    throw std::invalid_argument(std::string(what) + ": batch*channels must be in 1..65535, got " +
                                std::to_string(planes));
}

}  // namespace dhkd_cuda
