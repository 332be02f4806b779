// The OpenMP thread team of the CPU kernels.
#pragma once
#include <algorithm>
#include <cstdint>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace dhkd {

// Threads for `items` work items: `nthreads` (every OpenMP thread when <= 0), at least 1 and at most one per item.
inline int team_size(int nthreads, int64_t items) {
#ifdef _OPENMP
  if (nthreads <= 0) nthreads = omp_get_max_threads();
#endif
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nthreads, items)));
}

}  // namespace dhkd
