// attention.cc — CPU grouped-query attention with attention-probability dropout: self-attention
// (causal, or bidirectional with key padding) on Megatron's fused QKV layout, and T5's
// cross-attention (separate q and kv tensors, key padding only). The reference the CUDA
// (flash-style) kernels are tested against, so it follows the same recompute scheme: forward
// saves only lse; backward recomputes the probabilities row by row. No [T,T] buffer: per call,
// a host scratch of a few T- and HS-sized vectors.
//
// Layouts (AttentionLayout: row strides and column offsets of q, k, v):
//   self:  qkv[B,T,W], W = G*(NH/G + 2)*HS; group g's slice of a row is
//          [q heads g*NH/G .. (g+1)*NH/G - 1 | k | v], each HS wide.
//   cross: q[B,TQ,NH*HS] (heads concatenated), kv[B,TK,G*2*HS] with group g's slice [k | v].
// out[B,TQ,NH*HS].
//
// One implementation serves every entry point: a query chunk (rows [row, row + rows) of
// q_src[B,TQ,W] at global positions [position, position + rows)) against the keys and values
// of kv[B,T,W] (attention_chunk_*, context parallelism); attention_forward/backward are the
// chunk q_src = kv = qkv, {row 0, rows T, position 0}; cross-attention is the chunk
// {0, TQ, 0} of q against all TK keys of kv, unmasked.
//
// Per (b, h, chunk row i at global position t = position + i), with keys j <= t (causal; every
// key when AttentionShape::causal is false), and j < key_lengths[b] when given (padding),
// scale = 1/sqrt(HS), keep_ij from dropout_uniform(key, ((b*NH + h)*TQ' + t)*T + j) > p (global
// b, h, NH as in AttentionShape; T is kv's length, TQ' the query length: T for self-attention,
// TQ for cross-attention):
//   s_ij = scale q_i.k_j,  lse_i = log sum_j exp(s_ij),  P_ij = exp(s_ij - lse_i)
//   Pd_ij = P_ij keep_ij / (1 - p),  out_i = sum_j Pd_ij v_j
// Backward (dout -> dq assigned, dk/dv of keys [0, position + rows) assigned):
//   dv_j += Pd_ij dout_i,  dP_ij = keep_ij / (1 - p) (dout_i.v_j),  D_i = sum_j P_ij dP_ij
//   dS_ij = P_ij (dP_ij - D_i),  dq_i = scale sum_j dS_ij k_j,  dk_j += scale dS_ij q_i
// D_i equals dout_i.out_i; it is recomputed from the row in double here rather than read from
// the saved (possibly rounded) `out`, which keeps fp32 gradients closer to fp64.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "shardlm/base/error.h"
#include "shardlm/ops/cpu/cpu_ops.h"
#include "shardlm/ops/cpu/detail/float_dispatch.h"
#include "shardlm/ops/cpu/detail/parallel_ranges.h"

namespace shardlm::ops::cpu {

namespace {

// Where one call keeps q, k and v (row strides and column offsets), the query chunk, and which
// keys each query sees.
struct AttentionLayout {
  int64_t B, TQ, T, NH, G, HS, heads_per_group;  // TQ: q_src rows, T: kv rows (global)
  int64_t q_row, kv_row;  // row strides of q_src / dq and of kv / dkv
  // Columns: query head h at (h / heads_per_group) * q_group_cols + (h % heads_per_group) * HS,
  // its group's k at g * kv_group_cols + k_col0 and v right after k.
  int64_t q_group_cols, kv_group_cols, k_col0;
  int64_t dropout_NH, head_offset;  // global head count / first head (AttentionShape)
  int64_t dropout_queries;          // query length in the dropout position (T self, TQ cross)
  AttentionChunk chunk;
  int64_t n_keys;  // keys taking part: [0, n_keys)
  bool causal;
  const int32_t* key_lengths;  // [B] or null
  int64_t keys() const { return n_keys; }
  // One past the last key query position i of sequence b attends to.
  int64_t key_end(int64_t b, int64_t i) const {
    const int64_t end = causal ? i + 1 : keys();
    return key_lengths ? std::min<int64_t>(end, key_lengths[b]) : end;
  }
  // Dropout position of (b, h, global query position t, key 0).
  uint64_t dropout_row(int64_t b, int64_t h, int64_t t) const {
    return static_cast<uint64_t>(((b * dropout_NH + head_offset + h) * dropout_queries + t) * T);
  }
  int64_t q_offset(int64_t h) const {
    return (h / heads_per_group) * q_group_cols + (h % heads_per_group) * HS;
  }
  int64_t k_offset_of_group(int64_t g) const { return g * kv_group_cols + k_col0; }
  int64_t k_offset(int64_t h) const { return k_offset_of_group(h / heads_per_group); }
  int64_t v_offset(int64_t h) const { return k_offset(h) + HS; }
};

// The fields every layout shares: sizes, heads, mask and dropout numbering. `key_count` names
// kv's length in the error for a key length out of range.
AttentionLayout make_common_layout(const Tensor& q_src, const Tensor& kv,
                                   const AttentionShape& shape, const char* what,
                                   const char* key_count) {
  AttentionLayout l{};
  l.B = kv.size(0);
  l.TQ = q_src.size(1);
  l.T = kv.size(1);
  l.q_row = q_src.size(2);
  l.kv_row = kv.size(2);
  l.NH = shape.num_heads;
  l.dropout_NH = shape.global_num_heads();
  l.head_offset = shape.head_offset;
  l.G = shape.num_query_groups;
  l.HS = shape.head_dim;
  l.heads_per_group = l.NH / l.G;
  l.causal = shape.causal;
  l.key_lengths = nullptr;
  if (shape.key_lengths.defined()) {
    l.key_lengths = shape.key_lengths.data<int32_t>();
    for (int64_t b = 0; b < l.B; ++b)
      if (l.key_lengths[b] < 1 || l.key_lengths[b] > l.T)
        throw Error(ErrorKind::kInvalidArgument,
                    std::string(what) + ": key_lengths[" + std::to_string(b) + "] = " +
                        std::to_string(l.key_lengths[b]) + " must be in [1, " + key_count +
                        " = " + std::to_string(l.T) +
                        "] (a sequence has at least one real token)");
  }
  return l;
}

// Self-attention on the fused-QKV layout: q_src [B,TQ,W] and kv [B,T,W], one query chunk.
AttentionLayout make_layout(const Tensor& q_src, const Tensor& kv, const AttentionShape& shape,
                            const AttentionChunk& chunk) {
  AttentionLayout l = make_common_layout(q_src, kv, shape, "attention", "T");
  l.q_group_cols = l.kv_group_cols = (l.heads_per_group + 2) * l.HS;
  l.k_col0 = l.heads_per_group * l.HS;
  l.dropout_queries = l.T;
  l.chunk = chunk;
  l.n_keys = chunk.position + chunk.rows;
  return l;
}

// Cross-attention: q [B,TQ,NH*HS], kv [B,TK,G*2*HS]; every query row against all TK keys.
AttentionLayout make_cross_layout(const Tensor& q, const Tensor& kv, const AttentionShape& shape,
                                  const char* op) {
  AttentionLayout l = make_common_layout(q, kv, shape, op, "TK");
  l.q_group_cols = l.heads_per_group * l.HS;
  l.kv_group_cols = 2 * l.HS;
  l.k_col0 = 0;
  l.dropout_queries = l.TQ;
  l.chunk = {0, l.TQ, 0};
  l.n_keys = l.T;
  return l;
}

// The whole sequence as one chunk (attention_forward / attention_backward).
AttentionChunk whole_sequence(const Tensor& qkv) { return {0, qkv.size(1), 0}; }

template <typename T>
double dot(const T* a, const T* b, int64_t n) {
  double s = 0;
  for (int64_t d = 0; d < n; ++d) s += static_cast<double>(a[d]) * static_cast<double>(b[d]);
  return s;
}

template <typename T>
void attention_forward_impl(T* out, T* lse, const T* q_src, const T* kv, const AttentionLayout& l,
                            double p, const DropoutKey& key) {
  const int64_t HS = l.HS;
  const double scale = 1.0 / std::sqrt(static_cast<double>(HS));
  const double keep_scale = 1.0 / (1.0 - p);
  // Sequences are independent (each writes only its own rows): one range of them per thread.
  detail::parallel_ranges(l.B, 1, [&](int64_t b0, int64_t b1) {
    DropoutUniformReader uniform(key);
    std::vector<double> s(l.keys());  // scores of one query row
    std::vector<double> acc(HS);      // output row of one head
    for (int64_t b = b0; b < b1; ++b) {
      const T* qbase = q_src + b * l.TQ * l.q_row;
      const T* base = kv + b * l.T * l.kv_row;
      for (int64_t h = 0; h < l.NH; ++h) {
        const int64_t qo = l.q_offset(h), ko = l.k_offset(h), vo = l.v_offset(h);
        for (int64_t c = 0; c < l.chunk.rows; ++c) {
          const int64_t qi = l.chunk.row + c, i = l.chunk.position + c;  // q_src row, position
          const T* q = qbase + qi * l.q_row + qo;
          const int64_t key_end = l.key_end(b, i);
          double m = -std::numeric_limits<double>::infinity();
          for (int64_t j = 0; j < key_end; ++j) {
            s[j] = scale * dot(q, base + j * l.kv_row + ko, HS);
            m = std::max(m, s[j]);
          }
          double sum = 0;
          for (int64_t j = 0; j < key_end; ++j) sum += std::exp(s[j] - m);
          const double L = m + std::log(sum);
          std::fill(acc.begin(), acc.end(), 0.0);
          const uint64_t pos0 = l.dropout_row(b, h, i);
          for (int64_t j = 0; j < key_end; ++j) {
            double pr = std::exp(s[j] - L);
            if (p > 0) {
              if (uniform(pos0 + static_cast<uint64_t>(j)) <= p) continue;
              pr *= keep_scale;
            }
            const T* v = base + j * l.kv_row + vo;
            for (int64_t d = 0; d < HS; ++d) acc[d] += pr * static_cast<double>(v[d]);
          }
          T* o = out + ((b * l.TQ + qi) * l.NH + h) * HS;
          for (int64_t d = 0; d < HS; ++d) o[d] = static_cast<T>(acc[d]);
          lse[(b * l.NH + h) * l.TQ + qi] = static_cast<T>(L);
        }
      }
    }
  });
}

// dq and dkv may be one tensor (the whole-sequence op): q columns and k/v columns are disjoint.
template <typename T>
void attention_backward_impl(T* dq_out, T* dkv, const T* dout, const T* q_src, const T* kv,
                             const T* lse, const AttentionLayout& l, double p,
                             const DropoutKey& key) {
  const int64_t HS = l.HS;
  const double scale = 1.0 / std::sqrt(static_cast<double>(HS));
  const double keep_scale = 1.0 / (1.0 - p);
  // Per sequence: heads of a group accumulate into the same k/v rows, so threads split the
  // batch (never the heads) and each sequence keeps its summation order.
  detail::parallel_ranges(l.B, 1, [&](int64_t b0, int64_t b1) {
    DropoutUniformReader uniform(key);
    std::vector<double> P(l.keys()), dP(l.keys()), dq(HS);
    for (int64_t b = b0; b < b1; ++b) {
      const T* qbase = q_src + b * l.TQ * l.q_row;
      const T* base = kv + b * l.T * l.kv_row;
      T* dqbase = dq_out + b * l.TQ * l.q_row;
      T* dbase = dkv + b * l.T * l.kv_row;
      // Only the k/v columns of the keys taking part are this chunk's to assign (keys past the
      // padding keep these zeros).
      for (int64_t j = 0; j < l.keys(); ++j)
        for (int64_t g = 0; g < l.G; ++g) {
          T* kv_cols = dbase + j * l.kv_row + l.k_offset_of_group(g);
          std::fill(kv_cols, kv_cols + 2 * HS, T(0));
        }
      for (int64_t h = 0; h < l.NH; ++h) {
        const int64_t qo = l.q_offset(h), ko = l.k_offset(h), vo = l.v_offset(h);
        for (int64_t c = 0; c < l.chunk.rows; ++c) {
          const int64_t qi = l.chunk.row + c, i = l.chunk.position + c;  // q_src row, position
          const T* q = qbase + qi * l.q_row + qo;
          const T* dy = dout + ((b * l.TQ + qi) * l.NH + h) * HS;
          const double L = lse[(b * l.NH + h) * l.TQ + qi];
          const uint64_t pos0 = l.dropout_row(b, h, i);
          const int64_t key_end = l.key_end(b, i);
          double D = 0;
          for (int64_t j = 0; j < key_end; ++j) {
            const T* k = base + j * l.kv_row + ko;
            const T* v = base + j * l.kv_row + vo;
            P[j] = std::exp(scale * dot(q, k, HS) - L);
            double keep = 1.0;
            if (p > 0)
              keep = uniform(pos0 + static_cast<uint64_t>(j)) <= p ? 0.0 : keep_scale;
            dP[j] = keep * dot(dy, v, HS);
            D += P[j] * dP[j];
            if (keep != 0.0) {
              const double pd = P[j] * keep;
              T* dv = dbase + j * l.kv_row + vo;
              for (int64_t d = 0; d < HS; ++d) {
                const double grown = static_cast<double>(dv[d]) + pd * static_cast<double>(dy[d]);
                dv[d] = static_cast<T>(grown);
              }
            }
          }
          std::fill(dq.begin(), dq.end(), 0.0);
          for (int64_t j = 0; j < key_end; ++j) {
            const double ds = scale * P[j] * (dP[j] - D);
            const T* k = base + j * l.kv_row + ko;
            T* dk = dbase + j * l.kv_row + ko;
            for (int64_t d = 0; d < HS; ++d) {
              dq[d] += ds * static_cast<double>(k[d]);
              dk[d] = static_cast<T>(static_cast<double>(dk[d]) + ds * static_cast<double>(q[d]));
            }
          }
          T* dqo = dqbase + qi * l.q_row + qo;
          for (int64_t d = 0; d < HS; ++d) dqo[d] = static_cast<T>(dq[d]);
        }
      }
    }
  });
}

// The entry points' dtype dispatch (fp32 / fp64) around the implementations above.
void run_forward(Tensor out, Tensor lse, const Tensor& q_src, const Tensor& kv,
                 const AttentionLayout& l, double p, const DropoutKey& key, const char* op) {
  detail::dispatch_float(kv.dtype(), op, [&](auto zero) {
    using T = decltype(zero);
    attention_forward_impl<T>(out.data<T>(), lse.data<T>(), q_src.data<T>(), kv.data<T>(), l, p,
                              key);
  });
}

void run_backward(Tensor dq, Tensor dkv, const Tensor& dout, const Tensor& q_src,
                  const Tensor& kv, const Tensor& lse, const AttentionLayout& l, double p,
                  const DropoutKey& key, const char* op) {
  detail::dispatch_float(kv.dtype(), op, [&](auto zero) {
    using T = decltype(zero);
    attention_backward_impl<T>(dq.data<T>(), dkv.data<T>(), dout.data<T>(), q_src.data<T>(),
                               kv.data<T>(), lse.data<T>(), l, p, key);
  });
}

}  // namespace

void attention_forward(DeviceContext& ctx, Tensor out, Tensor lse, const Tensor& qkv,
                       const AttentionShape& shape, double dropout_p, const DropoutKey& key) {
  cpu::attention_chunk_forward(ctx, out, lse, qkv, qkv, shape, whole_sequence(qkv), dropout_p,
                               key);
}

// Every column of dqkv is a q, k or v column of some row, so the whole tensor is assigned.
void attention_backward(DeviceContext& ctx, Tensor dqkv, const Tensor& dout, const Tensor& qkv,
                        const Tensor& out, const Tensor& lse, const AttentionShape& shape,
                        double dropout_p, const DropoutKey& key) {
  cpu::attention_chunk_backward(ctx, dqkv, dqkv, dout, qkv, qkv, out, lse, shape,
                                whole_sequence(qkv), dropout_p, key);
}

void attention_chunk_forward(DeviceContext&, Tensor out, Tensor lse, const Tensor& q_src,
                             const Tensor& kv, const AttentionShape& shape,
                             const AttentionChunk& chunk, double dropout_p, const DropoutKey& key) {
  run_forward(out, lse, q_src, kv, make_layout(q_src, kv, shape, chunk), dropout_p, key,
              "attention_chunk_forward");
}

void attention_chunk_backward(DeviceContext&, Tensor dq, Tensor dkv, const Tensor& dout,
                              const Tensor& q_src, const Tensor& kv,
                              const Tensor& /*out: D_i is recomputed, see banner*/,
                              const Tensor& lse, const AttentionShape& shape,
                              const AttentionChunk& chunk, double dropout_p,
                              const DropoutKey& key) {
  run_backward(dq, dkv, dout, q_src, kv, lse, make_layout(q_src, kv, shape, chunk), dropout_p,
               key, "attention_chunk_backward");
}

void cross_attention_forward(DeviceContext&, Tensor out, Tensor lse, const Tensor& q,
                             const Tensor& kv, const AttentionShape& shape, double dropout_p,
                             const DropoutKey& key) {
  constexpr const char* op = "cross_attention_forward";
  run_forward(out, lse, q, kv, make_cross_layout(q, kv, shape, op), dropout_p, key, op);
}

void cross_attention_backward(DeviceContext&, Tensor dq, Tensor dkv, const Tensor& dout,
                              const Tensor& q, const Tensor& kv,
                              const Tensor& /*out: D_i is recomputed, see banner*/,
                              const Tensor& lse, const AttentionShape& shape, double dropout_p,
                              const DropoutKey& key) {
  constexpr const char* op = "cross_attention_backward";
  run_backward(dq, dkv, dout, q, kv, lse, make_cross_layout(q, kv, shape, op), dropout_p, key,
               op);
}

}  // namespace shardlm::ops::cpu
