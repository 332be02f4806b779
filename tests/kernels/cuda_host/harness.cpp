// Builds csrc/selective_scan/selective_scan_cuda.cu for the CPU on the host emulation in this folder (see
// cuda_runtime.h) and exports its two launchers with C linkage for ctypes. The test writes kernel_host.cu: the
// kernel source with each `kernel<<<...>>>(prm)` launch rewritten as `emu_launch(kernel, ..., prm)`.
#include "kernel_host.cu"

namespace {
float smem[1 << 22];  // the kernels' `extern __shared__ float smem[]` (their anonymous namespace)

void use_smem() {
  emu_smem = smem;
  emu_smem_floats = sizeof(smem) / sizeof(float);
}
}  // namespace

extern "C" {
void emu_set_device(int sms, int smem_optin_bytes) {
  emu_num_sms = sms;
  emu_smem_optin = smem_optin_bytes;
}

void emu_forward(const void* u, const void* delta, const float* A, const void* B, const void* C, const float* Dw,
                 const void* z, const float* bias, void* out, float* last_state, int batch, int Dch, int L, int N,
                 int groups, int B_var, int C_var, int dtype, int softplus) {
  use_smem();
  selective_scan_cuda_forward(u, delta, A, B, C, Dw, z, bias, out, last_state, batch, Dch, L, N, groups, B_var,
                              C_var, dtype, softplus, nullptr);
}

void emu_backward(const void* dout, const void* u, const void* delta, const float* A, const void* B, const void* C,
                  const float* Dw, const void* z, const float* bias, void* du, void* ddelta, void* dz, float* dA,
                  float* dB, float* dC, float* dD, float* dbias, float* chunk_states, int64_t chunk_state_floats,
                  int batch, int Dch, int L, int N, int groups, int B_var, int C_var, int dtype, int softplus) {
  use_smem();
  selective_scan_cuda_backward(dout, u, delta, A, B, C, Dw, z, bias, du, ddelta, dz, dA, dB, dC, dD, dbias,
                               chunk_states, chunk_state_floats, batch, Dch, L, N, groups, B_var, C_var, dtype,
                               softplus, nullptr);
}
}
