// The OpenMP thread team of the CPU kernels.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>
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

// Runs work items 0 .. items - 1 over a team of `team` OpenMP threads (shared out statically), each thread
// accumulating into its own zeroed row of ends[K - 1] floats, then sums the rows with reduce_partials (same
// `ends` and `store`). make_worker(row) is called once per thread with that thread's row and returns the callable
// run on each of its items (it may own per-thread scratch). Deterministic for a given team size.
template <int K, class MakeWorker, class Store>
void run_with_partials(int team, int64_t items, const int64_t (&ends)[K], MakeWorker&& make_worker, Store&& store) {
  const int64_t per_thread = ends[K - 1];
  std::vector<float> partial(team * per_thread, 0.0f);
#pragma omp parallel num_threads(team)
  {
    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    auto work = make_worker(partial.data() + tid * per_thread);
#pragma omp for schedule(static)
    for (int64_t k = 0; k < items; ++k) work(k);
    reduce_partials(partial.data(), team, per_thread, ends, store);  // after the loop's barrier
  }
}

}  // namespace dhkd
