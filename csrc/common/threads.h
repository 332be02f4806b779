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

// Called by every thread of a parallel region: sums element i of the team's `team` per-thread partial rows of
// `per_thread` floats (fixed order over threads, so deterministic for a team size), the elements shared out
// statically, and calls store(which, j, sum) with `which` the segment of i among the consecutive segments ending
// at ends[0] < ... < ends[K - 1] == per_thread and j its index in that segment.
template <int K, class Store>
void reduce_partials(const float* partial, int team, int64_t per_thread, const int64_t (&ends)[K], Store&& store) {
#pragma omp for schedule(static)
  for (int64_t i = 0; i < per_thread; ++i) {
    float acc = 0.0f;
    for (int t = 0; t < team; ++t) acc += partial[t * per_thread + i];
    int which = 0;
    while (i >= ends[which]) ++which;
    store(which, i - (which ? ends[which - 1] : 0), acc);
  }
}

}  // namespace dhkd
