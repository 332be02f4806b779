// Selective scan (Mamba S6): the launchers of the CPU kernels (selective_scan_cpu.cpp) and the CUDA
// kernels (selective_scan_cuda.cu).
//
// Layouts: u, delta, z, out (b, D, L) in the io dtype; A (D, N) fp32; B, C each variable (b, G, N, L) in the io
// dtype (var_B / var_C) or input-independent (D, N) fp32; Dw, delta_bias (D,) fp32 or 0 (absent); last_state
// (b, D, N) fp32. Pointers are data_ptr() ints, dtypes codes of common/dtype.h; num_threads 0 means OpenMP's
// default.
#pragma once
#include <cstdint>

struct CUstream_st;

namespace dhkd {

void selective_scan_fwd(std::uintptr_t u, std::uintptr_t delta, std::uintptr_t A, std::uintptr_t B,
                        std::uintptr_t C, std::uintptr_t Dw, std::uintptr_t z, std::uintptr_t bias,
                        std::uintptr_t out, std::uintptr_t last_state, int64_t bsz, int64_t D, int64_t L, int64_t N,
                        int64_t G, bool varB, bool varC, int dt, bool softplus, int nthreads);

// Writes du, ddelta, dz (io dtype), dA, dD, ddelta_bias (fp32) and dB, dC (the dtype of B, C).
void selective_scan_bwd(std::uintptr_t dout, int doutdt, std::uintptr_t u, std::uintptr_t delta, std::uintptr_t A,
                        std::uintptr_t B, std::uintptr_t C, std::uintptr_t Dw, std::uintptr_t z, std::uintptr_t bias,
                        std::uintptr_t du, std::uintptr_t ddelta, std::uintptr_t dA, std::uintptr_t dB,
                        std::uintptr_t dC, std::uintptr_t dD, std::uintptr_t dz, std::uintptr_t dbias, int64_t bsz,
                        int64_t D, int64_t L, int64_t N, int64_t G, bool varB, bool varC, int dt, bool softplus,
                        int nthreads);

// Bytes selective_scan_bwd allocates for itself (besides its outputs) for these sizes and threads.
int64_t selective_scan_bwd_workspace_bytes(int64_t bsz, int64_t D, int64_t L, int64_t N, int64_t G, bool varB,
                                           bool varC, bool has_z, int nthreads);

}  // namespace dhkd

// CUDA launchers (selective_scan_cuda.cu); the stream is a cudaStream_t.
int selective_scan_cuda_max_state();
int selective_scan_cuda_chunk();
void selective_scan_cuda_forward(const void* u, const void* delta, const float* A, const void* B,
                                 const void* C, const float* Dw, const void* z, const float* bias, void* out,
                                 float* last_state, int batch, int Dch, int L, int N, int groups, bool B_var,
                                 bool C_var, int dtype, bool softplus, CUstream_st* stream);
void selective_scan_cuda_backward(const void* dout, const void* u, const void* delta, const float* A,
                                  const void* B, const void* C, const float* Dw, const void* z,
                                  const float* bias, void* du, void* ddelta, void* dz, float* dA, float* dB,
                                  float* dC, float* dD, float* dbias, float* chunk_states,
                                  int64_t chunk_state_floats, int batch, int Dch, int L, int N, int groups,
                                  bool B_var, bool C_var, int dtype, bool softplus, CUstream_st* stream);
