// Host emulation of the CUDA runtime and device built-ins the selective-scan kernels use, so that
// csrc/selective_scan/selective_scan_cuda.cu runs on the CPU in tests (tests/kernels/test_selective_scan_cuda.py).
// Every CUDA thread of a block is an OS thread; __syncthreads/__syncwarp are barriers; a warp shuffle is a store
// to a per-warp exchange array between two warp barriers; blocks run one after the other and share one
// shared-memory buffer (filled with NaN before each block, so a read of a slot nobody wrote shows). This checks
// the kernels' indexing, shared-memory layout, synchronisation and launch plan, not their speed.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
typedef int cudaError_t;
constexpr cudaError_t cudaSuccess = 0;
typedef struct CUstream_st* cudaStream_t;
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount, cudaDevAttrMaxSharedMemoryPerBlockOptin };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };

inline int emu_num_sms = 4;                 // what the launch plans see as the device's SM count
inline int emu_smem_optin = 227 * 1024;     // ... and as its opt-in shared memory per block, bytes
inline float* emu_smem = nullptr;           // the harness's definition of the kernels' `smem`
inline std::size_t emu_smem_floats = 0;

inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {
  *v = a == cudaDevAttrMultiProcessorCount ? emu_num_sms : emu_smem_optin;
  return cudaSuccess;
}
inline cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute, int) { return cudaSuccess; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t) { return "no error"; }

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

struct EmuBlock {
  std::barrier<>* block;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<float> exchange;  // one slot per thread
};
inline thread_local EmuBlock* emu_block = nullptr;

inline void __syncthreads() { emu_block->block->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu_block->warps[threadIdx.x / 32]->arrive_and_wait(); }

// The value `v` of lane `src` of this thread's warp; every lane of the warp must call it.
inline float emu_shuffle(float v, int src) {
  const int lane = threadIdx.x % 32;
  emu_block->exchange[threadIdx.x] = v;
  __syncwarp();
  const float r = emu_block->exchange[threadIdx.x - lane + src];
  __syncwarp();
  return r;
}
inline float __shfl_sync(unsigned, float v, int src, int width = 32) {
  const int lane = threadIdx.x % 32;
  return emu_shuffle(v, (lane & ~(width - 1)) + (src % width));
}
inline float __shfl_up_sync(unsigned, float v, unsigned d, int width = 32) {
  const int lane = threadIdx.x % 32;
  return emu_shuffle(v, lane % width >= (int)d ? lane - (int)d : lane);
}
inline float __shfl_down_sync(unsigned, float v, unsigned d, int width = 32) {
  const int lane = threadIdx.x % 32;
  return emu_shuffle(v, lane % width + (int)d < width ? lane + (int)d : lane);
}
inline float __shfl_xor_sync(unsigned, float v, int mask, int = 32) {
  return emu_shuffle(v, (int)(threadIdx.x % 32) ^ mask);
}
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline float __expf(float v) { return std::exp(v); }
inline float __fdividef(float a, float b) { return a / b; }
inline int min(int a, int b) { return a < b ? a : b; }

// Stands for `kernel<<<grid, threads, smem_bytes, stream>>>(prm)` (the test rewrites launches into this call).
template <typename K, typename P>
void emu_launch(K kernel, dim3 grid, unsigned threads, std::size_t smem_bytes, cudaStream_t, const P& prm) {
  if (threads % 32 != 0) throw std::runtime_error("emulated launch: threads per block must be whole warps");
  if (smem_bytes > (std::size_t)emu_smem_optin || smem_bytes / sizeof(float) > emu_smem_floats)
    throw std::runtime_error("emulated launch: more shared memory than the device has");
  for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      std::barrier<> bar((std::ptrdiff_t)threads);
      EmuBlock blk{&bar, {}, std::vector<float>(threads)};
      for (unsigned w = 0; w < threads / 32; ++w) blk.warps.emplace_back(new std::barrier<>(32));
      for (std::size_t i = 0; i < smem_bytes / sizeof(float); ++i) emu_smem[i] = std::nanf("");
      std::vector<std::thread> pool;
      for (unsigned t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
          threadIdx = dim3(t);
          blockIdx = dim3(bx, by);
          blockDim = dim3(threads);
          gridDim = grid;
          emu_block = &blk;
          kernel(prm);
        });
      for (auto& th : pool) th.join();
    }
}
