// Fused SS2D scan: the launchers of the CPU kernels (ss2d_cpu.cpp) and the CUDA kernels (ss2d_cuda.cu).
//
// Layouts (channels-last, contiguous): u (b, H, W, D); delta (b, H, W, 4, D); A (4, D, N) fp32; B, C
// (b, H, W, 4, N); Dw, delta_bias (4, D) fp32 or 0 (absent); y like u, in fp32 or u's dtype. Pointers are
// data_ptr() ints, storage dtypes codes of common/dtype.h; num_threads 0 means OpenMP's default.
#pragma once
#include <cstdint>

struct CUstream_st;

namespace dhkd {

void ss2d_fwd(std::uintptr_t u, std::uintptr_t delta, std::uintptr_t A, std::uintptr_t B, std::uintptr_t C,
              std::uintptr_t Dw, std::uintptr_t bias, std::uintptr_t y, int64_t bsz, int64_t H, int64_t W,
              int64_t Dc, int64_t N, int dt, int ydt, bool softplus, int nthreads);

// Writes du, ddelta (u's dtype), dA, dD, ddelta_bias (fp32) and dB, dC (u's dtype); dy may be fp32 or u's dtype.
void ss2d_bwd(std::uintptr_t dy, int dydt, std::uintptr_t u, std::uintptr_t delta, std::uintptr_t A,
              std::uintptr_t B, std::uintptr_t C, std::uintptr_t Dw, std::uintptr_t bias, std::uintptr_t du,
              std::uintptr_t ddelta, std::uintptr_t dA, std::uintptr_t dB, std::uintptr_t dC, std::uintptr_t dD,
              std::uintptr_t dbias, int64_t bsz, int64_t H, int64_t W, int64_t Dc, int64_t N, int dt,
              bool softplus, int nthreads);

// Bytes ss2d_bwd allocates for itself (besides its outputs) for these sizes and threads.
int64_t ss2d_bwd_workspace_bytes(int64_t bsz, int64_t H, int64_t W, int64_t Dc, int64_t N, int dt, int nthreads);

}  // namespace dhkd

// CUDA launchers (ss2d_cuda.cu); the stream is a cudaStream_t.
int ss2d_cuda_max_state();
int64_t ss2d_cuda_workspace_floats(bool backward, int batch, int H, int W, int D, int N);
void ss2d_cuda_forward(const void* u, const void* delta, const float* A, const void* B, const void* C,
                       const float* Dw, const float* bias, void* y, float* workspace,
                       int64_t workspace_floats, int batch, int H, int W, int D, int N, int dtype,
                       bool out_f32, bool softplus, CUstream_st* stream);
void ss2d_cuda_backward(const void* dy, bool dy_f32, const void* u, const void* delta, const float* A,
                        const void* B, const void* C, const float* Dw, const float* bias, void* du,
                        void* ddelta, float* dA, float* dB, float* dC, float* dD, float* dbias,
                        float* workspace, int64_t workspace_floats, int batch, int H, int W, int D, int N,
                        int dtype, bool softplus, CUstream_st* stream);
