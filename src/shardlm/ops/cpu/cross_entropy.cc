// cross_entropy.cc — CPU per-row softmax cross-entropy over the (padded) vocabulary, forward
// (saving lse per row) and backward (dlogits assigned).
//
//   lse_n = m + log sum_v exp(logits[n,v] - m),  m = max_v logits[n,v]   (max-subtracted)
//   losses[n] = lse_n - logits[n, t_n]
//   dlogits[n,v] = dlosses[n] * (exp(logits[n,v] - lse_n) - [v == t_n])
//
// Targets are data, so their range [0, V) is checked here (kInvalidArgument naming the id).
// Rows are independent: they are spread over the hardware threads (the vocabulary-wide exp is
// most of a small CPU model's step).
#include <algorithm>
#include <cmath>
#include <string>

#include "shardlm/ops/cpu/cpu_ops.h"
#include "shardlm/ops/cpu/detail/float_dispatch.h"
#include "shardlm/ops/cpu/detail/parallel_ranges.h"

namespace shardlm::ops::cpu {

namespace {

void check_targets(const char* op, const Tensor& targets, int64_t V) {
  const int32_t* t = targets.data<int32_t>();
  for (int64_t n = 0; n < targets.numel(); ++n) {
    if (t[n] < 0 || t[n] >= V) {
      throw Error(ErrorKind::kInvalidArgument,
                  std::string(op) + ": target id " + std::to_string(t[n]) + " at row " +
                      std::to_string(n) + " is outside the vocabulary [0, " + std::to_string(V) +
                      "); targets must be token ids below V = " + std::to_string(V) +
                      " (use the loss mask, not an ignore index, to skip rows)");
    }
  }
}

// Rows per thread at least: ~64k exp() calls, so tiny calls stay on the calling thread.
int64_t min_rows_per_thread(int64_t V) { return std::max<int64_t>(1, (int64_t{1} << 16) / V); }

template <typename T>
void cross_entropy_forward_impl(T* losses, T* lse, const T* logits, const int32_t* targets,
                                int64_t N, int64_t V) {
  detail::parallel_ranges(N, min_rows_per_thread(V), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const T* x = logits + n * V;
      double m = x[0];
      for (int64_t v = 1; v < V; ++v) m = std::max(m, static_cast<double>(x[v]));
      double sum = 0;
      for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(x[v]) - m);
      const double L = m + std::log(sum);
      lse[n] = static_cast<T>(L);
      losses[n] = static_cast<T>(L - static_cast<double>(x[targets[n]]));
    }
  });
}

template <typename T>
void cross_entropy_backward_impl(T* dlogits, const T* dlosses, const T* logits,
                                 const int32_t* targets, const T* lse, int64_t N, int64_t V) {
  detail::parallel_ranges(N, min_rows_per_thread(V), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const T* x = logits + n * V;
      T* dx = dlogits + n * V;
      const double dl = dlosses[n];
      const double L = lse[n];
      for (int64_t v = 0; v < V; ++v) {
        const double prob = std::exp(static_cast<double>(x[v]) - L);
        dx[v] = static_cast<T>(dl * (prob - (v == targets[n] ? 1.0 : 0.0)));
      }
    }
  });
}

}  // namespace

void cross_entropy_forward(DeviceContext&, Tensor losses, Tensor lse, const Tensor& logits,
                           const Tensor& targets) {
  detail::dispatch_float(logits.dtype(), "cross_entropy_forward", [&](auto zero) {
    using T = decltype(zero);
    const int64_t V = logits.size(-1);
    check_targets("cross_entropy_forward", targets, V);
    cross_entropy_forward_impl<T>(losses.data<T>(), lse.data<T>(), logits.data<T>(),
                                  targets.data<int32_t>(), logits.numel() / V, V);
  });
}

void cross_entropy_backward(DeviceContext&, Tensor dlogits, const Tensor& dlosses,
                            const Tensor& logits, const Tensor& targets, const Tensor& lse) {
  detail::dispatch_float(logits.dtype(), "cross_entropy_backward", [&](auto zero) {
    using T = decltype(zero);
    const int64_t V = logits.size(-1);
    check_targets("cross_entropy_backward", targets, V);
    cross_entropy_backward_impl<T>(dlogits.data<T>(), dlosses.data<T>(), logits.data<T>(),
                                   targets.data<int32_t>(), lse.data<T>(), logits.numel() / V, V);
  });
}

}  // namespace shardlm::ops::cpu
