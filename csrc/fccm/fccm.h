// FCCM fused epilogues: the launchers of the CPU kernels (fccm_cpu.cpp) and the CUDA kernels (fccm_cuda.cu).
//
// pool_relu: out = relu(maxpool2x2(z + bias[c])); bias_gelu: out = gelu(h + bias[c]) (exact erf). Tensors
// are (B, C, H, W) addressed through element strides (NCHW, channels_last or views), storage dtype by code
// (common/dtype.h), bias fp32 (C,). The backwards write dz/dh and fp32 bias-gradient partials, zero on
// entry, that the caller sums: (B, max(H/2, 1), C) for pool_relu and (B, H, C) for bias_gelu on the CPU,
// (B·C, blocks) on CUDA (fccm_cuda_blocks).
#pragma once
#include <cstdint>

#include "common/strided.h"

struct CUstream_st;

namespace dhkd {

void fccm_cpu_pool_relu_fwd(std::uintptr_t z, std::uintptr_t bias, std::uintptr_t out, int dtype, int64_t B,
                            int64_t C, int64_t H, int64_t W, const Strides& zs, const Strides& os);
void fccm_cpu_pool_relu_bwd(std::uintptr_t dout, std::uintptr_t z, std::uintptr_t bias, std::uintptr_t dz,
                            std::uintptr_t db_part, int dtype, int64_t B, int64_t C, int64_t H, int64_t W,
                            const Strides& ds, const Strides& zs, const Strides& dzs);
void fccm_cpu_bias_gelu_fwd(std::uintptr_t h, std::uintptr_t bias, std::uintptr_t out, int dtype, int64_t B,
                            int64_t C, int64_t H, int64_t W, const Strides& hs, const Strides& os);
void fccm_cpu_bias_gelu_bwd(std::uintptr_t dout, std::uintptr_t h, std::uintptr_t bias, std::uintptr_t dh,
                            std::uintptr_t db_part, int dtype, int64_t B, int64_t C, int64_t H, int64_t W,
                            const Strides& ds, const Strides& hs, const Strides& dhs);

}  // namespace dhkd

int fccm_cuda_blocks(int H, int W);
void fccm_cuda_pool_relu_fwd(const void* z, const float* bias, void* out, int dtype, int B, int C, int H, int W,
                             const long long* zs, const long long* os, CUstream_st* stream);
void fccm_cuda_pool_relu_bwd(const void* dout, const void* z, const float* bias, void* dz, float* part, int dtype,
                             int B, int C, int H, int W, const long long* ds, const long long* zs,
                             const long long* dzs, CUstream_st* stream);
void fccm_cuda_bias_gelu_fwd(const void* h, const float* bias, void* out, int dtype, int B, int C, int H, int W,
                             const long long* hs, const long long* os, CUstream_st* stream);
void fccm_cuda_bias_gelu_bwd(const void* dout, const void* h, const float* bias, void* dh, float* part, int dtype,
                             int B, int C, int H, int W, const long long* ds, const long long* hs,
                             const long long* dhs, CUstream_st* stream);
