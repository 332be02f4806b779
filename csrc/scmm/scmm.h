// SCMM fused parts: the launchers of the CPU kernels (scmm_cpu.cpp) and the CUDA kernels (scmm_cuda.cu).
//
// Two-scale branch on x (B, C, H, W), half = C/2: s[:, :half] = dw3x3(x[:, :half], wa) + ba and
// s[:, half:] = nearest_up(dw3x3(adaptive_maxpool(x[:, half:], H/2, W/2), wb) + bb). Gate epilogue on flat
// tensors of one layout: y = relu(G) * x + x. Tensors are addressed through element strides, storage dtype
// by code (common/dtype.h); depth-wise weights fp32 (C/2, 9), biases fp32 (C/2,). The two-scale backward
// writes dx and fp32 weight/bias-gradient partials the caller sums: per plane (B, C, 9) and (B, C) on the
// CPU, per block on CUDA (scmm_cuda_blocks_full / _half).
#pragma once
#include <cstdint>

#include "common/strided.h"

struct CUstream_st;

namespace dhkd {

void scmm_cpu_two_scale_fwd(std::uintptr_t x, std::uintptr_t s, std::uintptr_t wa, std::uintptr_t ba,
                            std::uintptr_t wb, std::uintptr_t bb, int dtype, int64_t B, int64_t C, int64_t H,
                            int64_t W, const Strides& xs, const Strides& ss);
void scmm_cpu_two_scale_bwd(std::uintptr_t ds, std::uintptr_t x, std::uintptr_t dx, std::uintptr_t wa,
                            std::uintptr_t wb, std::uintptr_t dw_part, std::uintptr_t db_part, int dtype, int64_t B,
                            int64_t C, int64_t H, int64_t W, const Strides& dss, const Strides& xs,
                            const Strides& dxs);
void scmm_cpu_gate_fwd(std::uintptr_t G, std::uintptr_t x, std::uintptr_t y, int dtype, int64_t n);
void scmm_cpu_gate_bwd(std::uintptr_t dy, std::uintptr_t G, std::uintptr_t x, std::uintptr_t dG, std::uintptr_t dx,
                       int dtype, int64_t n);

}  // namespace dhkd

int scmm_cuda_blocks_full(int H, int W);
int scmm_cuda_blocks_half(int H, int W);
void scmm_cuda_two_scale_fwd(const void* x, void* s, const float* wa, const float* ba, const float* wb,
                             const float* bb, int dtype, int B, int C, int H, int W, const long long* xs,
                             const long long* ss, CUstream_st* stream);
void scmm_cuda_two_scale_bwd(const void* ds, const void* x, void* dx, const float* wa, const float* wb, float* gsum,
                             float* dpool, float* part_a, float* part_b, int dtype, int B, int C, int H, int W,
                             const long long* dss, const long long* xs, const long long* dxs, CUstream_st* stream);
void scmm_cuda_gate_fwd(const void* G, const void* x, void* y, int dtype, long long n, CUstream_st* stream);
void scmm_cuda_gate_bwd(const void* dy, const void* G, const void* x, void* dG, void* dx, int dtype, long long n,
                        CUstream_st* stream);
