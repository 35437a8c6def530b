// Threading helpers of the masked-linear CPU kernels (masked_linear_cpu.cpp): one
// parallel region per product, each thread running whole BLAS calls on its own share.
#pragma once
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/Tensor.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>

#include <algorithm>
#include <initializer_list>
#include <vector>

namespace af {
namespace ml_threads {

// Whether the kernels' ATen ops must stay on the calling thread: a Python dispatch mode is
// active (FlopCounterMode, DebugMode, ...) or a tensor is a Python subclass. Their Python
// code would run on a worker thread and wait for the GIL, which the caller holds while it
// waits for the workers: a deadlock.
inline bool python_dispatch(std::initializer_list<const at::Tensor*> tensors) {
  if (c10::impl::TorchDispatchModeTLS::stack_len() > 0) return true;
  for (const at::Tensor* t : tensors) {
    if (t != nullptr && t->defined() && t->key_set().has(c10::DispatchKey::Python)) return true;
  }
  return false;
}

// Runs run(t) for t in [0, nt), one t per intra-op thread, with the caller's thread-local
// state (grad mode, dispatch keys: ATen ops run inside).
template <typename F>
void per_thread(int64_t nt, const F& run) {
  const at::ThreadLocalState state;
  at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
    const at::ThreadLocalStateGuard guard(state);
    for (int64_t t = t0; t < t1; ++t) run(t);
  });
}

// Runs body(lo, hi) on contiguous runs [lo, hi) of the items [0, cost.size()), one run per
// thread, of about equal cost. ``serial``: one run, on this thread (python_dispatch).
template <typename F>
void parallel_ranges(const std::vector<double>& cost, bool serial, const F& body) {
  const int64_t n = static_cast<int64_t>(cost.size());
  const int64_t nt = std::min<int64_t>(at::get_num_threads(), n);
  if (serial || nt <= 1 || at::in_parallel_region()) {
    if (n > 0) body(int64_t(0), n);
    return;
  }
  std::vector<double> area(n + 1, 0.0);
  for (int64_t k = 0; k < n; ++k) area[k + 1] = area[k] + cost[k];
  std::vector<int64_t> cut(nt + 1, n);
  cut[0] = 0;
  for (int64_t t = 1, k = 0; t < nt; ++t) {
    const double want = area[n] * static_cast<double>(t) / static_cast<double>(nt);
    while (k < n && area[k + 1] <= want) ++k;
    // the run ends before or after item k, whichever is nearer the even share
    cut[t] = std::max(cut[t - 1], (k < n && area[k + 1] - want < want - area[k]) ? k + 1 : k);
  }
  per_thread(nt, [&](int64_t t) {
    if (cut[t] < cut[t + 1]) body(cut[t], cut[t + 1]);
  });
}

// Runs body(k) for k in [0, cost.size()), cut into one contiguous run per thread of
// about equal cost: each item's matmuls then run on one thread, in one parallel region
// per call, instead of every small matmul split over the threads with a barrier each.
// ``serial``: all on this thread (python_dispatch).
template <typename F>
void parallel_runs(const std::vector<double>& cost, bool serial, const F& body) {
  parallel_ranges(cost, serial, [&](int64_t lo, int64_t hi) {
    for (int64_t k = lo; k < hi; ++k) body(k);
  });
}

}  // namespace ml_threads
}  // namespace af
