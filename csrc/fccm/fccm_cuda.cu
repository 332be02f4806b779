// FCCM CUDA kernels (no torch): the memory-bound steps around the library convolutions, same algorithm as
// the Triton backend (dhkd_kernels/fccm/triton.py).
//   pool_relu:  out = relu(maxpool2x2(z + bias[c]))  (argmax: first max in scan order, last NaN)
//   bias_gelu:  out = gelu(h + bias[c]), exact erf
// One thread per output (forward) or input (backward) pixel; bias gradients as per-block partials
// (planes, blocks) summed by the caller.
#include "common/cuda_helpers.cuh"
#include "fccm/fccm.h"

using namespace dhkd_cuda;

namespace {

template <typename T>
__device__ float window_max(const T* z, const Strides4& s, int b, int c, int i, int j, float bias, int* slot) {
  float m = -INFINITY;
  *slot = 0;
  for (int t = 0; t < 4; ++t) {
    const float v = to_f32(z[s.at(b, c, 2 * i + t / 2, 2 * j + t % 2)]) + bias;
    if (v > m || isnan(v)) {
      m = v;
      *slot = t;
    }
  }
  return m;
}

template <typename T>
__global__ void pool_relu_fwd_kernel(const T* z, const float* bias, T* out, int C, int oh, int ow, Strides4 zs,
                                     Strides4 os) {
  const int plane = blockIdx.y, b = plane / C, c = plane % C;
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= oh * ow) return;
  const int i = p / ow, j = p % ow;
  int slot;
  const float m = window_max(z, zs, b, c, i, j, bias[c], &slot);
  out[os.at(b, c, i, j)] = from_f32<T>((m > 0.f || isnan(m)) ? m : 0.f);
}

template <typename T>
__global__ void pool_relu_bwd_kernel(const T* dout, const T* z, const float* bias, T* dz, float* part, int C, int H,
                                     int W, Strides4 ds, Strides4 zs, Strides4 dzs) {
  __shared__ float smem[kThreads / 32];
  const int plane = blockIdx.y, b = plane / C, c = plane % C;
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  const bool live = p < H * W;
  const int y = live ? p / W : 0, x = live ? p % W : 0, i = y / 2, j = x / 2;
  float g = 0.f;
  if (live && i < H / 2 && j < W / 2) {
    int slot;
    const float m = window_max(z, zs, b, c, i, j, bias[c], &slot);
    if (m > 0.f && slot == (y % 2) * 2 + x % 2) g = to_f32(dout[ds.at(b, c, i, j)]);
  }
  if (live) dz[dzs.at(b, c, y, x)] = from_f32<T>(g);
  const float t = block_sum(g, smem);
  if (threadIdx.x == 0) part[(long long)plane * gridDim.x + blockIdx.x] = t;
}

__device__ __forceinline__ float gelu(float u) { return 0.5f * u * (1.f + erff(u * 0.70710678118654752f)); }

__device__ __forceinline__ float gelu_grad(float u) {
  return 0.5f * (1.f + erff(u * 0.70710678118654752f)) + u * 0.39894228040143268f * expf(-0.5f * u * u);
}

template <typename T>
__global__ void bias_gelu_fwd_kernel(const T* h, const float* bias, T* out, int C, int H, int W, Strides4 hs,
                                     Strides4 os) {
  const int plane = blockIdx.y, b = plane / C, c = plane % C;
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= H * W) return;
  const int y = p / W, x = p % W;
  out[os.at(b, c, y, x)] = from_f32<T>(gelu(to_f32(h[hs.at(b, c, y, x)]) + bias[c]));
}

template <typename T>
__global__ void bias_gelu_bwd_kernel(const T* dout, const T* h, const float* bias, T* dh, float* part, int C, int H,
                                     int W, Strides4 ds, Strides4 hs, Strides4 dhs) {
  __shared__ float smem[kThreads / 32];
  const int plane = blockIdx.y, b = plane / C, c = plane % C;
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  float g = 0.f;
  if (p < H * W) {
    const int y = p / W, x = p % W;
    g = to_f32(dout[ds.at(b, c, y, x)]) * gelu_grad(to_f32(h[hs.at(b, c, y, x)]) + bias[c]);
    dh[dhs.at(b, c, y, x)] = from_f32<T>(g);
  }
  const float t = block_sum(g, smem);
  if (threadIdx.x == 0) part[(long long)plane * gridDim.x + blockIdx.x] = t;
}

Strides4 S(const long long* s) { return Strides4{s[0], s[1], s[2], s[3]}; }

void check(int B, int C, int H, int W, int min_hw) {
  if (B < 1 || C < 1 || H < min_hw || W < min_hw)
    throw std::invalid_argument("fccm CUDA: need B, C >= 1 and H, W >= " + std::to_string(min_hw));
  check_grid((long long)B * C, "fccm CUDA");
}

}  // namespace

// Partial-sum blocks per plane the backward launchers write (the caller allocates planes x blocks floats).
int fccm_cuda_blocks(int H, int W) { return static_cast<int>(((long long)H * W + kThreads - 1) / kThreads); }

void fccm_cuda_pool_relu_fwd(const void* z, const float* bias, void* out, int dtype, int B, int C, int H, int W,
                             const long long* zs, const long long* os, cudaStream_t stream) {
  check(B, C, H, W, 2);
  const dim3 grid(fccm_cuda_blocks(H / 2, W / 2), B * C);
  dispatch_dtype(dtype, "fccm CUDA", [&](auto t) {
    using T = decltype(t);
    pool_relu_fwd_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(z), bias, static_cast<T*>(out), C,
                                                           H / 2, W / 2, S(zs), S(os));
  });
  check_launch("fccm CUDA pool_relu_fwd");
}

void fccm_cuda_pool_relu_bwd(const void* dout, const void* z, const float* bias, void* dz, float* part, int dtype,
                             int B, int C, int H, int W, const long long* ds, const long long* zs,
                             const long long* dzs, cudaStream_t stream) {
  check(B, C, H, W, 2);
  const dim3 grid(fccm_cuda_blocks(H, W), B * C);
  dispatch_dtype(dtype, "fccm CUDA", [&](auto t) {
    using T = decltype(t);
    pool_relu_bwd_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(dout), static_cast<const T*>(z),
                                                           bias, static_cast<T*>(dz), part, C, H, W, S(ds), S(zs),
                                                           S(dzs));
  });
  check_launch("fccm CUDA pool_relu_bwd");
}

void fccm_cuda_bias_gelu_fwd(const void* h, const float* bias, void* out, int dtype, int B, int C, int H, int W,
                             const long long* hs, const long long* os, cudaStream_t stream) {
  check(B, C, H, W, 1);
  const dim3 grid(fccm_cuda_blocks(H, W), B * C);
  dispatch_dtype(dtype, "fccm CUDA", [&](auto t) {
    using T = decltype(t);
    bias_gelu_fwd_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(h), bias, static_cast<T*>(out), C, H,
                                                           W, S(hs), S(os));
  });
  check_launch("fccm CUDA bias_gelu_fwd");
}

void fccm_cuda_bias_gelu_bwd(const void* dout, const void* h, const float* bias, void* dh, float* part, int dtype,
                             int B, int C, int H, int W, const long long* ds, const long long* hs,
                             const long long* dhs, cudaStream_t stream) {
  check(B, C, H, W, 1);
  const dim3 grid(fccm_cuda_blocks(H, W), B * C);
  dispatch_dtype(dtype, "fccm CUDA", [&](auto t) {
    using T = decltype(t);
    bias_gelu_bwd_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(dout), static_cast<const T*>(h),
                                                           bias, static_cast<T*>(dh), part, C, H, W, S(ds), S(hs),
                                                           S(dhs));
  });
  check_launch("fccm CUDA bias_gelu_bwd");
}
