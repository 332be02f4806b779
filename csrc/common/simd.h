// Function attributes of the CPU kernels' hot loops.
#pragma once

// DHKD_CLONES: compile a function for AVX-512, AVX2+FMA and baseline x86-64, the version picked at load time
// (ifunc). Defining it empty (-DDHKD_CLONES=) builds one version for the -march given, e.g. to test AVX2.
#if defined(DHKD_CLONES)
#elif defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define DHKD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DHKD_CLONES
#endif

// DHKD_SIMD: the clones, without trapping math so that GCC may vectorise selects and comparisons.
#define DHKD_SIMD DHKD_CLONES __attribute__((optimize("no-trapping-math")))

// Small vector helpers that must inline into their (cloned) caller.
#define DHKD_INLINE static inline __attribute__((always_inline))
