// attention.cc — CPU causal grouped-query self-attention on Megatron's fused QKV layout, with
// attention-probability dropout. The reference the CUDA (flash-style) kernels are tested
// against, so it follows the same recompute scheme: forward saves only lse[B,NH,T]; backward
// recomputes the probabilities row by row. No [T,T] buffer: per call, a host scratch of a few
// T- and HS-sized vectors.
//
// Layout: qkv[B,T,R], R = G*(NH/G + 2)*HS; group g's slice of a row is
// [q heads g*NH/G .. (g+1)*NH/G - 1 | k | v], each HS wide. out[B,T,NH*HS].
//
// Per (b, h, row i), with j <= i (causal), scale = 1/sqrt(HS), keep_ij from
// dropout_uniform(key, ((b*NH + h)*T + i)*T + j) > p:
//   s_ij = scale q_i.k_j,  lse_i = log sum_j exp(s_ij),  P_ij = exp(s_ij - lse_i)
//   Pd_ij = P_ij keep_ij / (1 - p),  out_i = sum_j Pd_ij v_j
// Backward (dout -> dqkv, assigned):
//   dv_j += Pd_ij dout_i,  dP_ij = keep_ij / (1 - p) (dout_i.v_j),  D_i = sum_j P_ij dP_ij
//   dS_ij = P_ij (dP_ij - D_i),  dq_i = scale sum_j dS_ij k_j,  dk_j += scale dS_ij q_i
// D_i equals dout_i.out_i; it is recomputed from the row in double here rather than read from
// the saved (possibly rounded) `out`, which keeps fp32 gradients closer to fp64.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "shardlm/ops/cpu/cpu_ops.h"
#include "shardlm/ops/cpu/detail/float_dispatch.h"
#include "shardlm/ops/cpu/detail/parallel_ranges.h"

namespace shardlm::ops::cpu {

namespace {

// Offsets inside one qkv row, and sizes, for one (query head, group) pair.
struct QkvLayout {
  int64_t B, T, NH, G, HS, heads_per_group, row;
  int64_t dropout_NH, head_offset;  // global head count / first head (AttentionShape)
  uint64_t dropout_row(int64_t b, int64_t h, int64_t i) const {
    return static_cast<uint64_t>(((b * dropout_NH + head_offset + h) * T + i) * T);
  }
  int64_t q_offset(int64_t h) const {
    const int64_t g = h / heads_per_group;
    return g * (heads_per_group + 2) * HS + (h % heads_per_group) * HS;
  }
  int64_t k_offset(int64_t h) const {
    const int64_t g = h / heads_per_group;
    return g * (heads_per_group + 2) * HS + heads_per_group * HS;
  }
  int64_t v_offset(int64_t h) const { return k_offset(h) + HS; }
};

QkvLayout make_layout(const Tensor& qkv, const AttentionShape& shape) {
  QkvLayout l{};
  l.B = qkv.size(0);
  l.T = qkv.size(1);
  l.row = qkv.size(2);
  l.NH = shape.num_heads;
  l.dropout_NH = shape.global_num_heads();
  l.head_offset = shape.head_offset;
  l.G = shape.num_query_groups;
  l.HS = shape.head_dim;
  l.heads_per_group = l.NH / l.G;
  return l;
}

template <typename T>
double dot(const T* a, const T* b, int64_t n) {
  double s = 0;
  for (int64_t d = 0; d < n; ++d) s += static_cast<double>(a[d]) * static_cast<double>(b[d]);
  return s;
}

template <typename T>
void attention_forward_impl(T* out, T* lse, const T* qkv, const QkvLayout& l, double p,
                            const DropoutKey& key) {
  const int64_t Tn = l.T, HS = l.HS;
  const double scale = 1.0 / std::sqrt(static_cast<double>(HS));
  const double keep_scale = 1.0 / (1.0 - p);
  // Sequences are independent (each writes only its own rows): one range of them per thread.
  detail::parallel_ranges(l.B, 1, [&](int64_t b0, int64_t b1) {
    DropoutUniformReader uniform(key);
    std::vector<double> s(Tn);    // scores of one query row
    std::vector<double> acc(HS);  // output row of one head
    for (int64_t b = b0; b < b1; ++b) {
      const T* base = qkv + b * Tn * l.row;
      for (int64_t h = 0; h < l.NH; ++h) {
        const int64_t qo = l.q_offset(h), ko = l.k_offset(h), vo = l.v_offset(h);
        for (int64_t i = 0; i < Tn; ++i) {
          const T* q = base + i * l.row + qo;
          double m = -std::numeric_limits<double>::infinity();
          for (int64_t j = 0; j <= i; ++j) {
            s[j] = scale * dot(q, base + j * l.row + ko, HS);
            m = std::max(m, s[j]);
          }
          double sum = 0;
          for (int64_t j = 0; j <= i; ++j) sum += std::exp(s[j] - m);
          const double L = m + std::log(sum);
          std::fill(acc.begin(), acc.end(), 0.0);
          const uint64_t pos0 = l.dropout_row(b, h, i);
          for (int64_t j = 0; j <= i; ++j) {
            double pr = std::exp(s[j] - L);
            if (p > 0) {
              if (uniform(pos0 + static_cast<uint64_t>(j)) <= p) continue;
              pr *= keep_scale;
            }
            const T* v = base + j * l.row + vo;
            for (int64_t d = 0; d < HS; ++d) acc[d] += pr * static_cast<double>(v[d]);
          }
          T* o = out + ((b * Tn + i) * l.NH + h) * HS;
          for (int64_t d = 0; d < HS; ++d) o[d] = static_cast<T>(acc[d]);
          lse[(b * l.NH + h) * Tn + i] = static_cast<T>(L);
        }
      }
    }
  });
}

template <typename T>
void attention_backward_impl(T* dqkv, const T* dout, const T* qkv, const T* lse, const QkvLayout& l,
                             double p, const DropoutKey& key) {
  const int64_t Tn = l.T, HS = l.HS;
  const double scale = 1.0 / std::sqrt(static_cast<double>(HS));
  const double keep_scale = 1.0 / (1.0 - p);
  std::fill(dqkv, dqkv + l.B * Tn * l.row, T(0));
  // Per sequence: heads of a group accumulate into the same k/v rows, so threads split the
  // batch (never the heads) and each sequence keeps its summation order.
  detail::parallel_ranges(l.B, 1, [&](int64_t b0, int64_t b1) {
    DropoutUniformReader uniform(key);
    std::vector<double> P(Tn), dP(Tn), dq(HS);
    for (int64_t b = b0; b < b1; ++b) {
      const T* base = qkv + b * Tn * l.row;
      T* dbase = dqkv + b * Tn * l.row;
      for (int64_t h = 0; h < l.NH; ++h) {
        const int64_t qo = l.q_offset(h), ko = l.k_offset(h), vo = l.v_offset(h);
        for (int64_t i = 0; i < Tn; ++i) {
          const T* q = base + i * l.row + qo;
          const T* dy = dout + ((b * Tn + i) * l.NH + h) * HS;
          const double L = lse[(b * l.NH + h) * Tn + i];
          const uint64_t pos0 = l.dropout_row(b, h, i);
          double D = 0;
          for (int64_t j = 0; j <= i; ++j) {
            const T* k = base + j * l.row + ko;
            const T* v = base + j * l.row + vo;
            P[j] = std::exp(scale * dot(q, k, HS) - L);
            double keep = 1.0;
            if (p > 0)
              keep = uniform(pos0 + static_cast<uint64_t>(j)) <= p ? 0.0 : keep_scale;
            dP[j] = keep * dot(dy, v, HS);
            D += P[j] * dP[j];
            if (keep != 0.0) {
              const double pd = P[j] * keep;
              T* dv = dbase + j * l.row + vo;
              for (int64_t d = 0; d < HS; ++d) {
                const double grown = static_cast<double>(dv[d]) + pd * static_cast<double>(dy[d]);
                dv[d] = static_cast<T>(grown);
              }
            }
          }
          std::fill(dq.begin(), dq.end(), 0.0);
          for (int64_t j = 0; j <= i; ++j) {
            const double ds = scale * P[j] * (dP[j] - D);
            const T* k = base + j * l.row + ko;
            T* dk = dbase + j * l.row + ko;
            for (int64_t d = 0; d < HS; ++d) {
              dq[d] += ds * static_cast<double>(k[d]);
              dk[d] = static_cast<T>(static_cast<double>(dk[d]) + ds * static_cast<double>(q[d]));
            }
          }
          T* dqo = dbase + i * l.row + qo;
          for (int64_t d = 0; d < HS; ++d) dqo[d] = static_cast<T>(dq[d]);
        }
      }
    }
  });
}

}  // namespace

void attention_forward(DeviceContext&, Tensor out, Tensor lse, const Tensor& qkv,
                       const AttentionShape& shape, double dropout_p, const DropoutKey& key) {
  detail::dispatch_float(qkv.dtype(), "attention_forward", [&](auto zero) {
    using T = decltype(zero);
    attention_forward_impl<T>(out.data<T>(), lse.data<T>(), qkv.data<T>(), make_layout(qkv, shape),
                              dropout_p, key);
  });
}

void attention_backward(DeviceContext&, Tensor dqkv, const Tensor& dout, const Tensor& qkv,
                        const Tensor& /*out: D_i is recomputed, see banner*/, const Tensor& lse,
                        const AttentionShape& shape, double dropout_p, const DropoutKey& key) {
  detail::dispatch_float(qkv.dtype(), "attention_backward", [&](auto zero) {
    using T = decltype(zero);
    attention_backward_impl<T>(dqkv.data<T>(), dout.data<T>(), qkv.data<T>(), lse.data<T>(),
                               make_layout(qkv, shape), dropout_p, key);
  });
}

}  // namespace shardlm::ops::cpu
