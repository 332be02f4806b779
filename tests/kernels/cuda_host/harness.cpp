// Builds csrc/selective_scan/selective_scan_cuda.cu for the CPU on the host emulation in this folder (see
// cuda_runtime.h) and exports its two launchers with C linkage for ctypes; they return 0, or 1 with the
// exception's message in emu_error(). The test writes kernel_host.cu: the kernel source with each
// `kernel<<<...>>>(prm)` launch rewritten as `emu_launch(kernel, ..., prm)`.
#include <exception>
#include <string>

#include "kernel_host.cu"

namespace {
float smem[1 << 22];  // the kernels' `extern __shared__ float smem[]` (their anonymous namespace)

std::string last_error;

template <typename F>
int guarded(F&& f) {
  emu_smem = smem;
  emu_smem_floats = sizeof(smem) / sizeof(float);
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
    return 1;
  }
}
}  // namespace

extern "C" {
const char* emu_error() { return last_error.c_str(); }

void emu_set_device(int sms, int smem_optin_bytes) {
  emu_num_sms = sms;
  emu_smem_optin = smem_optin_bytes;
}

int emu_forward(const void* u, const void* delta, const float* A, const void* B, const void* C, const float* Dw,
                 const void* z, const float* bias, void* out, float* last_state, int batch, int Dch, int L, int N,
                 int groups, int B_var, int C_var, int dtype, int softplus) {
  return guarded([&] {
    selective_scan_cuda_forward(u, delta, A, B, C, Dw, z, bias, out, last_state, batch, Dch, L, N, groups, B_var,
                                C_var, dtype, softplus, nullptr);
  });
}

int emu_backward(const void* dout, const void* u, const void* delta, const float* A, const void* B, const void* C,
                  const float* Dw, const void* z, const float* bias, void* du, void* ddelta, void* dz, float* dA,
                  float* dB, float* dC, float* dD, float* dbias, float* chunk_states, int64_t chunk_state_floats,
                  int batch, int Dch, int L, int N, int groups, int B_var, int C_var, int dtype, int softplus) {
  return guarded([&] {
    selective_scan_cuda_backward(dout, u, delta, A, B, C, Dw, z, bias, du, ddelta, dz, dA, dB, dC, dD, dbias,
                                 chunk_states, chunk_state_floats, batch, Dch, L, N, groups, B_var, C_var, dtype,
                                 softplus, nullptr);
  });
}
}
