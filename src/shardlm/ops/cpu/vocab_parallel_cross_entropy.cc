// vocab_parallel_cross_entropy.cc — CPU cross-entropy over a vocabulary shard of the logits,
// in the steps Megatron's vocab_parallel_cross_entropy interleaves with TP all-reduces (ops.h):
//
//   max:      row_max[n] = max_v logits[n,v]
//   partials: sum_exp[n] = sum_v exp(logits[n,v] - row_max[n]),
//             target_logit[n] = logits[n, t_n - vocab_start] (0 when t_n is not in the shard)
//   loss:     lse[n] = row_max[n] + log(sum_exp[n]), losses[n] = lse[n] - target_logit[n]
//   backward: dlogits[n,v] = dlosses[n] * (exp(logits[n,v] - lse[n]) - [v + vocab_start == t_n])
//
// With one shard (vocab_start 0, VL = V) the steps compose to ops::cross_entropy_*.
#include <algorithm>
#include <cmath>
#include <string>

#include "shardlm/ops/cpu/cpu_ops.h"
#include "shardlm/ops/cpu/detail/float_dispatch.h"

namespace shardlm::ops::cpu {

namespace {

void check_non_negative_targets(const char* op, const Tensor& targets) {
  const int32_t* t = targets.data<int32_t>();
  for (int64_t n = 0; n < targets.numel(); ++n)
    if (t[n] < 0)
      throw Error(ErrorKind::kInvalidArgument,
                  std::string(op) + ": target id " + std::to_string(t[n]) + " at row " +
                      std::to_string(n) + " is negative; targets must be token ids in [0, V)");
}

}  // namespace

void vocab_parallel_cross_entropy_max(DeviceContext&, Tensor row_max, const Tensor& logits) {
  detail::dispatch_float(logits.dtype(), "vocab_parallel_cross_entropy_max", [&](auto zero) {
    using T = decltype(zero);
    const int64_t VL = logits.size(-1), N = logits.numel() / VL;
    const T* x = logits.data<T>();
    T* m = row_max.data<T>();
    for (int64_t n = 0; n < N; ++n) m[n] = *std::max_element(x + n * VL, x + (n + 1) * VL);
  });
}

void vocab_parallel_cross_entropy_partials(DeviceContext&, Tensor sum_exp, Tensor target_logit,
                                           const Tensor& logits, const Tensor& targets,
                                           const Tensor& row_max, int64_t vocab_start) {
  constexpr const char* op = "vocab_parallel_cross_entropy_partials";
  detail::dispatch_float(logits.dtype(), op, [&](auto zero) {
    using T = decltype(zero);
    check_non_negative_targets(op, targets);
    const int64_t VL = logits.size(-1), N = logits.numel() / VL;
    const T* x = logits.data<T>();
    const int32_t* t = targets.data<int32_t>();
    for (int64_t n = 0; n < N; ++n) {
      const T* row = x + n * VL;
      const double m = row_max.data<T>()[n];
      double s = 0;
      for (int64_t v = 0; v < VL; ++v) s += std::exp(static_cast<double>(row[v]) - m);
      sum_exp.data<T>()[n] = static_cast<T>(s);
      const int64_t local = static_cast<int64_t>(t[n]) - vocab_start;
      target_logit.data<T>()[n] = (local >= 0 && local < VL) ? row[local] : T(0);
    }
  });
}

void vocab_parallel_cross_entropy_loss(DeviceContext&, Tensor losses, Tensor lse,
                                       const Tensor& row_max, const Tensor& sum_exp,
                                       const Tensor& target_logit) {
  detail::dispatch_float(losses.dtype(), "vocab_parallel_cross_entropy_loss", [&](auto zero) {
    using T = decltype(zero);
    for (int64_t n = 0; n < losses.numel(); ++n) {
      const double L = static_cast<double>(row_max.data<T>()[n]) +
                       std::log(static_cast<double>(sum_exp.data<T>()[n]));
      lse.data<T>()[n] = static_cast<T>(L);
      losses.data<T>()[n] = static_cast<T>(L - static_cast<double>(target_logit.data<T>()[n]));
    }
  });
}

void vocab_parallel_cross_entropy_backward(DeviceContext&, Tensor dlogits, const Tensor& dlosses,
                                           const Tensor& logits, const Tensor& targets,
                                           const Tensor& lse, int64_t vocab_start) {
  constexpr const char* op = "vocab_parallel_cross_entropy_backward";
  detail::dispatch_float(logits.dtype(), op, [&](auto zero) {
    using T = decltype(zero);
    check_non_negative_targets(op, targets);
    const int64_t VL = logits.size(-1), N = logits.numel() / VL;
    const int32_t* t = targets.data<int32_t>();
    for (int64_t n = 0; n < N; ++n) {
      const T* x = logits.data<T>() + n * VL;
      T* dx = dlogits.data<T>() + n * VL;
      const double dl = dlosses.data<T>()[n], L = lse.data<T>()[n];
      const int64_t local = static_cast<int64_t>(t[n]) - vocab_start;
      for (int64_t v = 0; v < VL; ++v) {
        const double prob = std::exp(static_cast<double>(x[v]) - L);
        dx[v] = static_cast<T>(dl * (prob - (v == local ? 1.0 : 0.0)));
      }
    }
  });
}

}  // namespace shardlm::ops::cpu
