// moe.cc — CPU reference of the mixture-of-experts ops (ops.h, "mixture of experts"): the top-k
// router (plain and pre-softmax) forward and backward, the auxiliary-loss score sums and
// backward, and the row gathers of token dispatch / combine.
//
// Shapes and dtypes are validated by the dispatcher (ops/moe_ops.cc). Everything is computed in
// double and rounded once on store. The rows (logits, activations) are fp32 or fp64; the side
// tensors (probs, weights, scale, sums, dweights) fp32, or fp64 with fp64 rows, so each op is
// instantiated per (row, side) type pair. Index values are data: they are range-checked here
// (kInvalidArgument naming the index and where it is) before anything is written.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "shardlm/ops/cpu/cpu_ops.h"
#include "shardlm/ops/cpu/detail/float_dispatch.h"

namespace shardlm::ops::cpu {

namespace {

// f(R{}, S{}) with R the C++ float type of the rows' dtype and S that of the side tensor's.
template <typename F>
void dispatch_rows_side(DType rows, DType side, const char* op, F&& f) {
  detail::dispatch_float(
      rows, op, [&](auto r) { detail::dispatch_float(side, op, [&](auto s) { f(r, s); }); });
}

// An optional side tensor: its dtype, or fp32 (nothing is read) when undefined.
DType side_dtype(const Tensor& t) { return t.defined() ? t.dtype() : DType::kF32; }
template <typename S>
const S* data_or_null(const Tensor& t) {
  return t.defined() ? t.data<S>() : nullptr;
}

// Throws kInvalidArgument naming the first entry of ids (int32 [M] or [N, k]) outside
// [0, bound); `what` says what the ids index, for the message.
void check_ids(const char* op, const char* name, const Tensor& ids, int64_t bound,
               const std::string& what) {
  const int32_t* p = ids.data<int32_t>();
  const int64_t cols = ids.rank() == 2 ? ids.size(1) : 1;
  for (int64_t i = 0; i < ids.numel(); ++i) {
    if (p[i] >= 0 && p[i] < bound) continue;
    const std::string where = ids.rank() == 2
                                  ? std::to_string(i / cols) + ", " + std::to_string(i % cols)
                                  : std::to_string(i);
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + ": " + name + "[" + where + "] = " + std::to_string(p[i]) +
                    " is outside [0, " + std::to_string(bound) + "), " + what +
                    "; build it from this call's tensors");
  }
}

// f(T{}, S{}) for a gather from the rows of in, after checking that `ids` index them.
template <typename F>
void gather_from_rows(const char* op, const Tensor& in, DType side, const char* name,
                      const Tensor& ids, F&& f) {
  dispatch_rows_side(in.dtype(), side, op, [&](auto r, auto s) {
    check_ids(op, name, ids, in.size(0), "the rows of in " + in.shape().to_string());
    f(r, s);
  });
}

// The selection key of a logit: NaN ranks as -inf (ops.h).
double rank_key(double x) { return std::isnan(x) ? -std::numeric_limits<double>::infinity() : x; }

// A softmax of some logits: p(x) = exp(x - max) / sum.
struct Softmax {
  double max;
  double sum;
  double prob(double x) const { return std::exp(x - max) / sum; }
};
template <typename T>
Softmax softmax_of_row(const T* x, int64_t E) {
  double m = x[0];
  for (int64_t e = 1; e < E; ++e) m = std::max(m, static_cast<double>(x[e]));
  double sum = 0;
  for (int64_t e = 0; e < E; ++e) sum += std::exp(static_cast<double>(x[e]) - m);
  return {m, sum};
}

// ---- router ----------------------------------------------------------------------------------
template <typename T, typename S>
void router_forward_impl(S* probs, int32_t* indices, const T* logits, int64_t N, int64_t E,
                         int64_t k, bool pre_softmax) {
  std::vector<int64_t> order(E);
  for (int64_t n = 0; n < N; ++n) {
    const T* x = logits + n * E;
    std::iota(order.begin(), order.end(), int64_t{0});
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [x](int64_t a, int64_t b) {
      const double ka = rank_key(x[a]), kb = rank_key(x[b]);
      return ka > kb || (ka == kb && a < b);
    });
    Softmax sm{static_cast<double>(x[order[0]]), 0.0};  // top-k: over the selected, from the max
    if (pre_softmax) {
      sm = softmax_of_row(x, E);
    } else {
      for (int64_t i = 0; i < k; ++i) sm.sum += std::exp(static_cast<double>(x[order[i]]) - sm.max);
    }
    for (int64_t i = 0; i < k; ++i) {
      indices[n * k + i] = static_cast<int32_t>(order[i]);
      probs[n * k + i] = static_cast<S>(sm.prob(x[order[i]]));
    }
  }
}

// Per row: ds[e] = sum of dprobs over the entries listing e, count[e] their number; with p the
// softmax (of all E logits, or of the listed ones with multiplicity) and dot = sum_e ds[e] p[e]:
//   pre-softmax: dlogits[e] = p[e] (ds[e] - dot)
//   top-k:       dlogits[e] = p[e] (ds[e] - count[e] dot)   (0 for experts not listed)
template <typename T, typename S>
void router_backward_impl(T* dlogits, const S* dprobs, const T* logits, const int32_t* indices,
                          int64_t N, int64_t E, int64_t k, bool pre_softmax) {
  std::vector<double> ds(E), count(E);
  for (int64_t n = 0; n < N; ++n) {
    const T* x = logits + n * E;
    const int32_t* idx = indices + n * k;
    std::fill(ds.begin(), ds.end(), 0.0);
    std::fill(count.begin(), count.end(), 0.0);
    for (int64_t i = 0; i < k; ++i) {
      ds[idx[i]] += dprobs[n * k + i];
      count[idx[i]] += 1;
    }
    Softmax sm{-std::numeric_limits<double>::infinity(), 0.0};
    if (pre_softmax) {
      sm = softmax_of_row(x, E);
    } else {
      for (int64_t i = 0; i < k; ++i) sm.max = std::max(sm.max, static_cast<double>(x[idx[i]]));
      for (int64_t i = 0; i < k; ++i) sm.sum += std::exp(static_cast<double>(x[idx[i]]) - sm.max);
    }
    double dot = 0;
    for (int64_t e = 0; e < E; ++e)
      if (count[e] > 0) dot += ds[e] * sm.prob(x[e]);
    T* dx = dlogits + n * E;
    for (int64_t e = 0; e < E; ++e) {
      if (!pre_softmax && count[e] == 0) {
        dx[e] = T(0);
        continue;
      }
      const double p = sm.prob(x[e]);
      dx[e] = static_cast<T>(p * (ds[e] - (pre_softmax ? 1.0 : count[e]) * dot));
    }
  }
}

// ---- auxiliary load-balancing loss -----------------------------------------------------------
template <typename T, typename S>
void score_sums_impl(S* sums, const T* logits, int64_t N, int64_t E) {
  std::vector<double> acc(E, 0.0);
  for (int64_t n = 0; n < N; ++n) {
    const T* x = logits + n * E;
    const Softmax sm = softmax_of_row(x, E);
    for (int64_t e = 0; e < E; ++e) acc[e] += sm.prob(x[e]);
  }
  for (int64_t e = 0; e < E; ++e) sums[e] = static_cast<S>(acc[e]);
}

// dlogits[n, e] += p[e] (w[e] - sum_f w[f] p[f]), p = softmax(logits[n, :]).
template <typename T, typename S>
void aux_loss_backward_impl(T* dlogits, const T* logits, const S* weights, int64_t N, int64_t E) {
  std::vector<double> p(E);
  for (int64_t n = 0; n < N; ++n) {
    const T* x = logits + n * E;
    const Softmax sm = softmax_of_row(x, E);
    double dot = 0;
    for (int64_t e = 0; e < E; ++e) {
      p[e] = sm.prob(x[e]);
      dot += static_cast<double>(weights[e]) * p[e];
    }
    T* dx = dlogits + n * E;
    for (int64_t e = 0; e < E; ++e)
      dx[e] = static_cast<T>(static_cast<double>(dx[e]) +
                             p[e] * (static_cast<double>(weights[e]) - dot));
  }
}

// lse[n] = logsumexp(logits[n, :]); with dlogits, dlogits[n, e] += scale * 2 * lse[n] * p[e].
template <typename T, typename S>
void logsumexp_impl(S* lse, T* dlogits, const T* logits, double scale, int64_t N, int64_t E) {
  for (int64_t n = 0; n < N; ++n) {
    const T* x = logits + n * E;
    const Softmax sm = softmax_of_row(x, E);
    const double l = sm.max + std::log(sm.sum);
    if (lse != nullptr) lse[n] = static_cast<S>(l);
    if (dlogits == nullptr) continue;
    T* dx = dlogits + n * E;
    for (int64_t e = 0; e < E; ++e)
      dx[e] = static_cast<T>(static_cast<double>(dx[e]) + scale * 2.0 * l * sm.prob(x[e]));
  }
}

// ---- token dispatch / combine ----------------------------------------------------------------
template <typename T, typename S>
void gather_rows_impl(T* out, const T* in, const int32_t* index, const S* scale, int64_t M,
                      int64_t H) {
  for (int64_t m = 0; m < M; ++m) {
    const T* src = in + static_cast<int64_t>(index[m]) * H;
    T* dst = out + m * H;
    if (scale == nullptr) {
      std::copy(src, src + H, dst);
      continue;
    }
    const double s = scale[m];
    for (int64_t h = 0; h < H; ++h) dst[h] = static_cast<T>(static_cast<double>(src[h]) * s);
  }
}

template <typename T, typename S>
void gather_sum_rows_impl(T* out, const T* in, const int32_t* slots, const S* weights, int64_t N,
                          int64_t k, int64_t H) {
  std::vector<double> acc(H);
  for (int64_t n = 0; n < N; ++n) {
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int64_t i = 0; i < k; ++i) {
      const T* src = in + static_cast<int64_t>(slots[n * k + i]) * H;
      const double w = weights != nullptr ? static_cast<double>(weights[n * k + i]) : 1.0;
      for (int64_t h = 0; h < H; ++h) acc[h] += w * static_cast<double>(src[h]);
    }
    for (int64_t h = 0; h < H; ++h) out[n * H + h] = static_cast<T>(acc[h]);
  }
}

template <typename T, typename S>
void gathered_row_dot_impl(S* dweights, const T* dout, const T* in, const int32_t* slots, int64_t N,
                           int64_t k, int64_t H) {
  for (int64_t n = 0; n < N; ++n) {
    const T* d = dout + n * H;
    for (int64_t i = 0; i < k; ++i) {
      const T* src = in + static_cast<int64_t>(slots[n * k + i]) * H;
      double dot = 0;
      for (int64_t h = 0; h < H; ++h)
        dot += static_cast<double>(d[h]) * static_cast<double>(src[h]);
      dweights[n * k + i] = static_cast<S>(dot);
    }
  }
}

}  // namespace

void moe_topk_router_forward(DeviceContext&, Tensor probs, Tensor indices, const Tensor& logits,
                             int64_t k, bool pre_softmax) {
  dispatch_rows_side(logits.dtype(), probs.dtype(), "moe_topk_router_forward", [&](auto r, auto s) {
    using T = decltype(r);
    using S = decltype(s);
    router_forward_impl<T, S>(probs.data<S>(), indices.data<int32_t>(), logits.data<T>(),
                              logits.size(0), logits.size(1), k, pre_softmax);
  });
}

void moe_topk_router_backward(DeviceContext&, Tensor dlogits, const Tensor& dprobs,
                              const Tensor& logits, const Tensor& indices, bool pre_softmax) {
  constexpr const char* op = "moe_topk_router_backward";
  const int64_t E = logits.size(1);
  dispatch_rows_side(logits.dtype(), dprobs.dtype(), op, [&](auto r, auto s) {
    using T = decltype(r);
    using S = decltype(s);
    check_ids(op, "indices", indices, E, "the experts of logits " + logits.shape().to_string());
    router_backward_impl<T, S>(dlogits.data<T>(), dprobs.data<S>(), logits.data<T>(),
                               indices.data<int32_t>(), logits.size(0), E, indices.size(1),
                               pre_softmax);
  });
}

void moe_router_score_sums(DeviceContext&, Tensor sums, const Tensor& logits) {
  dispatch_rows_side(logits.dtype(), sums.dtype(), "moe_router_score_sums", [&](auto r, auto s) {
    using T = decltype(r);
    using S = decltype(s);
    score_sums_impl<T, S>(sums.data<S>(), logits.data<T>(), logits.size(0), logits.size(1));
  });
}

void moe_aux_loss_backward(DeviceContext&, Tensor dlogits, const Tensor& logits,
                           const Tensor& weights) {
  dispatch_rows_side(logits.dtype(), weights.dtype(), "moe_aux_loss_backward", [&](auto r, auto s) {
    using T = decltype(r);
    using S = decltype(s);
    aux_loss_backward_impl<T, S>(dlogits.data<T>(), logits.data<T>(), weights.data<S>(),
                                 logits.size(0), logits.size(1));
  });
}

void moe_router_logsumexp(DeviceContext&, Tensor lse, const Tensor& logits) {
  dispatch_rows_side(logits.dtype(), lse.dtype(), "moe_router_logsumexp", [&](auto r, auto s) {
    using T = decltype(r);
    using S = decltype(s);
    logsumexp_impl<T, S>(lse.data<S>(), nullptr, logits.data<T>(), 0.0, logits.size(0),
                         logits.size(1));
  });
}

void moe_z_loss_backward(DeviceContext&, Tensor dlogits, const Tensor& logits, double scale) {
  detail::dispatch_float(logits.dtype(), "moe_z_loss_backward", [&](auto r) {
    using T = decltype(r);
    logsumexp_impl<T, double>(nullptr, dlogits.data<T>(), logits.data<T>(), scale,
                              logits.size(0), logits.size(1));
  });
}

void gather_rows(DeviceContext&, Tensor out, const Tensor& in, const Tensor& index,
                 const Tensor& scale) {
  gather_from_rows("gather_rows", in, side_dtype(scale), "index", index, [&](auto r, auto s) {
    using T = decltype(r);
    using S = decltype(s);
    gather_rows_impl<T, S>(out.data<T>(), in.data<T>(), index.data<int32_t>(),
                           data_or_null<S>(scale), index.size(0), in.size(1));
  });
}

void gather_sum_rows(DeviceContext&, Tensor out, const Tensor& in, const Tensor& slots,
                     const Tensor& weights) {
  gather_from_rows("gather_sum_rows", in, side_dtype(weights), "slots", slots, [&](auto r, auto s) {
    using T = decltype(r);
    using S = decltype(s);
    gather_sum_rows_impl<T, S>(out.data<T>(), in.data<T>(), slots.data<int32_t>(),
                               data_or_null<S>(weights), slots.size(0), slots.size(1), in.size(1));
  });
}

void gathered_row_dot(DeviceContext&, Tensor dweights, const Tensor& dout, const Tensor& in,
                      const Tensor& slots) {
  gather_from_rows("gathered_row_dot", in, dweights.dtype(), "slots", slots, [&](auto r, auto s) {
    using T = decltype(r);
    using S = decltype(s);
    gathered_row_dot_impl<T, S>(dweights.data<S>(), dout.data<T>(), in.data<T>(),
                                slots.data<int32_t>(), slots.size(0), slots.size(1), in.size(1));
  });
}

}  // namespace shardlm::ops::cpu
