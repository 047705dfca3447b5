// Tests of cross-attention (ops::cross_attention_forward / _backward, T5's decoder attending to
// the encoder output): against a materialised fp64 softmax(Q K^T / sqrt(HS) + key padding) V
// reference written from the definition, for TQ != TK both ways, grouped and ungrouped heads and
// key lengths of 1, TK and in between; backward against finite differences (dkv rows past the
// key length exactly zero); dropout masks at ((b*NH + h)*TQ + i)*TK + j, deterministic per key;
// a tensor-parallel head shard equal to the full op's columns; and the errors.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "shardlm/ops/ops.h"
#include "tests/testing/op_checks.h"
#include "tests/testing/tensors.h"

namespace shardlm {
namespace {

using testing::convert;
using testing::dot;
using testing::from_vector;
using testing::random_tensor;
using testing::rel_error;
using testing::to_vector;

struct CrossCase {
  int64_t B, TQ, TK, NH, G, HS;
  std::vector<int32_t> lengths;  // key padding per sequence; empty: none
};

std::ostream& operator<<(std::ostream& os, const CrossCase& c) {
  os << "B=" << c.B << " TQ=" << c.TQ << " TK=" << c.TK << " NH=" << c.NH << " G=" << c.G
     << " HS=" << c.HS << " lengths=";
  for (int32_t l : c.lengths) os << l << ",";
  return os;
}

Shape q_shape(const CrossCase& c) { return {c.B, c.TQ, c.NH * c.HS}; }
Shape kv_shape(const CrossCase& c) { return {c.B, c.TK, c.G * 2 * c.HS}; }
Shape lse_shape(const CrossCase& c) { return {c.B, c.NH, c.TQ}; }
DropoutKey key() { return DropoutKey{31, 4, 2, 6, kDropoutAttentionProbs}; }

OwnedTensor lengths_tensor(const CrossCase& c) {
  if (c.lengths.empty()) return OwnedTensor();
  OwnedTensor t = OwnedTensor::empty(DType::kI32, {c.B});
  for (int64_t b = 0; b < c.B; ++b) t.view().data<int32_t>()[b] = c.lengths[b];
  return t;
}

ops::AttentionShape shape_of(const CrossCase& c, const OwnedTensor& lengths) {
  ops::AttentionShape s{c.NH, c.G, c.HS};
  s.causal = false;
  if (lengths.view().defined()) s.key_lengths = lengths.view();
  return s;
}

int64_t valid_keys(const CrossCase& c, int64_t b) {
  return c.lengths.empty() ? c.TK : c.lengths[b];
}

// Straight from the definition: per (b, h) the [TQ, TK] score matrix with the padded keys at
// -inf, its row softmax, dropout at ((b*NH_global + head_offset + h)*TQ + i)*TK + j, times V.
void reference(const CrossCase& c, const std::vector<double>& q, const std::vector<double>& kv,
               double p, std::vector<double>* out, std::vector<double>* lse,
               int64_t head_offset = 0, int64_t global_heads = 0) {
  const int64_t TQ = c.TQ, TK = c.TK, NH = c.NH, HS = c.HS, R = c.NH / c.G;
  const int64_t NHg = global_heads > 0 ? global_heads : NH, KW = c.G * 2 * HS;
  const double inf = std::numeric_limits<double>::infinity();
  out->assign(c.B * TQ * NH * HS, 0.0);
  lse->assign(c.B * NH * TQ, 0.0);
  std::vector<double> S(TQ * TK);
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < NH; ++h) {
      const int64_t k_col = (h / R) * 2 * HS, v_col = k_col + HS;
      for (int64_t i = 0; i < TQ; ++i)
        for (int64_t j = 0; j < TK; ++j) {
          double s = 0;
          for (int64_t d = 0; d < HS; ++d)
            s += q[(b * TQ + i) * NH * HS + h * HS + d] * kv[(b * TK + j) * KW + k_col + d];
          S[i * TK + j] = j < valid_keys(c, b) ? s / std::sqrt(static_cast<double>(HS)) : -inf;
        }
      for (int64_t i = 0; i < TQ; ++i) {
        double m = -inf, sum = 0;
        for (int64_t j = 0; j < TK; ++j) m = std::max(m, S[i * TK + j]);
        for (int64_t j = 0; j < TK; ++j) sum += std::exp(S[i * TK + j] - m);
        (*lse)[(b * NH + h) * TQ + i] = m + std::log(sum);
        for (int64_t j = 0; j < TK; ++j) {
          double prob = std::exp(S[i * TK + j] - m) / sum;
          const uint64_t pos =
              static_cast<uint64_t>(((b * NHg + head_offset + h) * TQ + i) * TK + j);
          if (p > 0) prob = dropout_uniform(key(), pos) <= p ? 0.0 : prob / (1.0 - p);
          for (int64_t d = 0; d < HS; ++d)
            (*out)[((b * TQ + i) * NH + h) * HS + d] += prob * kv[(b * TK + j) * KW + v_col + d];
        }
      }
    }
}

class CrossAttentionCases : public ::testing::TestWithParam<CrossCase> {};

TEST_P(CrossAttentionCases, ForwardMatchesMaterialisedReference) {
  DeviceContext ctx = DeviceContext::cpu();
  const CrossCase c = GetParam();
  const OwnedTensor lengths = lengths_tensor(c);
  const OwnedTensor q = random_tensor(DType::kF64, q_shape(c), 21, 1.5);
  const OwnedTensor kv = random_tensor(DType::kF64, kv_shape(c), 22, 1.5);
  for (double p : {0.0, 0.3}) {
    OwnedTensor out = random_tensor(DType::kF64, q_shape(c), 23, 1e3);  // garbage: assigned
    OwnedTensor lse = random_tensor(DType::kF64, lse_shape(c), 24, 1e3);
    ops::cross_attention_forward(ctx, out, lse, q, kv, shape_of(c, lengths), p, key());
    std::vector<double> ref_out, ref_lse;
    reference(c, to_vector(q), to_vector(kv), p, &ref_out, &ref_lse);
    EXPECT_LT(rel_error(to_vector(out), ref_out), 1e-13) << c << " p=" << p;
    EXPECT_LT(rel_error(to_vector(lse), ref_lse), 1e-13) << c << " p=" << p;
  }
}

TEST_P(CrossAttentionCases, BackwardMatchesFiniteDifferences) {
  DeviceContext ctx = DeviceContext::cpu();
  const CrossCase c = GetParam();
  const OwnedTensor lengths = lengths_tensor(c);
  const ops::AttentionShape shape = shape_of(c, lengths);
  OwnedTensor q = random_tensor(DType::kF64, q_shape(c), 25, 1.5);
  OwnedTensor kv = random_tensor(DType::kF64, kv_shape(c), 26, 1.5);
  const OwnedTensor dout = random_tensor(DType::kF64, q_shape(c), 27);  // R of sum(out * R)
  OwnedTensor out = OwnedTensor::zeros(DType::kF64, q_shape(c));
  OwnedTensor lse = OwnedTensor::zeros(DType::kF64, lse_shape(c));
  for (double p : {0.0, 0.3}) {
    SCOPED_TRACE(::testing::Message() << c << " p=" << p);
    auto loss = [&] {
      ops::cross_attention_forward(ctx, out, lse, q, kv, shape, p, key());
      return dot(out, dout);
    };
    loss();
    OwnedTensor dq = random_tensor(DType::kF64, q_shape(c), 28, 1e3);  // garbage: assigned
    OwnedTensor dkv = random_tensor(DType::kF64, kv_shape(c), 29, 1e3);
    ops::cross_attention_backward(ctx, dq, dkv, dout, q, kv, out, lse, shape, p, key());
    // With one key per sequence the softmax is constant: dq is exactly zero (and finite
    // differences would be vacuous).
    bool one_key = true;
    for (int64_t b = 0; b < c.B; ++b) one_key = one_key && valid_keys(c, b) == 1;
    if (one_key) {
      for (double v : to_vector(dq)) ASSERT_EQ(v, 0.0);
    } else {
      testing::expect_gradient("dq", q.view(), loss, dq, 1e-7);
    }
    testing::expect_gradient("dkv", kv.view(), loss, dkv, 1e-7);
    // Keys past a sequence's length get exactly zero gradients (assigned, not left stale).
    const std::vector<double> g = to_vector(dkv);
    const int64_t KW = c.G * 2 * c.HS;
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t j = valid_keys(c, b); j < c.TK; ++j)
        for (int64_t w = 0; w < KW; ++w)
          ASSERT_EQ(g[(b * c.TK + j) * KW + w], 0.0) << "b=" << b << " key " << j;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CrossAttentionCases,
    ::testing::Values(CrossCase{2, 5, 9, 6, 2, 4, {}},          // TQ < TK, GQA (3 per group)
                      CrossCase{2, 12, 7, 4, 4, 3, {}},         // TQ > TK, MHA
                      CrossCase{3, 5, 9, 6, 3, 4, {1, 9, 4}},   // lengths 1, TK, inside
                      CrossCase{2, 12, 7, 4, 1, 3, {7, 2}},     // multi-query, padding
                      CrossCase{1, 1, 6, 2, 2, 5, {3}},         // one query row
                      CrossCase{2, 4, 1, 2, 1, 4, {}}));        // one key

TEST(CrossAttention, Fp32MatchesFp64) {
  DeviceContext ctx = DeviceContext::cpu();
  const CrossCase c{2, 11, 6, 4, 2, 8, {6, 3}};
  const OwnedTensor lengths = lengths_tensor(c);
  std::vector<double> res[2][4];
  for (int k = 0; k < 2; ++k) {
    const DType d = k == 0 ? DType::kF64 : DType::kF32;
    const OwnedTensor q = convert(random_tensor(DType::kF64, q_shape(c), 30, 1.5), d);
    const OwnedTensor kv = convert(random_tensor(DType::kF64, kv_shape(c), 31, 1.5), d);
    const OwnedTensor dout = convert(random_tensor(DType::kF64, q_shape(c), 32), d);
    OwnedTensor out = OwnedTensor::zeros(d, q_shape(c)), lse = OwnedTensor::zeros(d, lse_shape(c));
    OwnedTensor dq = OwnedTensor::zeros(d, q_shape(c)), dkv = OwnedTensor::zeros(d, kv_shape(c));
    ops::cross_attention_forward(ctx, out, lse, q, kv, shape_of(c, lengths), 0.2, key());
    ops::cross_attention_backward(ctx, dq, dkv, dout, q, kv, out, lse, shape_of(c, lengths), 0.2,
                                  key());
    res[k][0] = to_vector(out);
    res[k][1] = to_vector(lse);
    res[k][2] = to_vector(dq);
    res[k][3] = to_vector(dkv);
  }
  for (int i = 0; i < 4; ++i) EXPECT_LT(rel_error(res[1][i], res[0][i]), 1e-5) << i;
}

// The op's mask is a pure function of the key: the same key draws the same mask (bit-identical
// outputs), another key another mask, and the output is the reference under the mask drawn
// from dropout_uniform at the documented positions (the forward cases above check that too).
TEST(CrossAttention, DropoutIsDeterministicPerKey) {
  DeviceContext ctx = DeviceContext::cpu();
  const CrossCase c{2, 6, 10, 4, 2, 4, {10, 5}};
  const OwnedTensor lengths = lengths_tensor(c);
  const OwnedTensor q = random_tensor(DType::kF64, q_shape(c), 33, 1.5);
  const OwnedTensor kv = random_tensor(DType::kF64, kv_shape(c), 34, 1.5);
  auto run = [&](const DropoutKey& k) {
    OwnedTensor out = OwnedTensor::zeros(DType::kF64, q_shape(c));
    OwnedTensor lse = OwnedTensor::zeros(DType::kF64, lse_shape(c));
    ops::cross_attention_forward(ctx, out, lse, q, kv, shape_of(c, lengths), 0.4, k);
    return to_vector(out);
  };
  const std::vector<double> first = run(key());
  EXPECT_EQ(run(key()), first);
  DropoutKey other = key();
  other.step += 1;
  EXPECT_NE(run(other), first);
  std::vector<double> ref_out, ref_lse;
  reference(c, to_vector(q), to_vector(kv), 0.4, &ref_out, &ref_lse);
  EXPECT_LT(rel_error(first, ref_out), 1e-13);
}

// Columns [c0, c1) of the last axis of a [rows, width] view, as a host tensor.
OwnedTensor columns(const Tensor& t, int64_t c0, int64_t c1) {
  const int64_t width = t.size(-1), rows = t.numel() / width;
  const std::vector<double> v = to_vector(t);
  std::vector<double> out;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = c0; c < c1; ++c) out.push_back(v[r * width + c]);
  return from_vector(t.dtype(), {rows, c1 - c0}, out);
}

// Tensor parallelism: a rank runs heads [r*NL, (r+1)*NL) with head_offset / dropout_num_heads and
// its q columns and kv groups; with dropout on, its out, lse, dq and dkv equal the full op's.
TEST(CrossAttention, HeadShardEqualsTheFullOpWithDropout) {
  DeviceContext ctx = DeviceContext::cpu();
  const CrossCase c{2, 5, 8, 8, 4, 4, {8, 6}};
  const int64_t B = c.B, TQ = c.TQ, NH = c.NH, G = c.G, HS = c.HS;
  const double p = 0.3;
  const OwnedTensor lengths = lengths_tensor(c);
  const OwnedTensor q = random_tensor(DType::kF64, q_shape(c), 35);
  const OwnedTensor kv = random_tensor(DType::kF64, kv_shape(c), 36);
  const OwnedTensor dout = random_tensor(DType::kF64, q_shape(c), 37);
  OwnedTensor out = OwnedTensor::zeros(DType::kF64, q_shape(c));
  OwnedTensor lse = OwnedTensor::zeros(DType::kF64, lse_shape(c));
  OwnedTensor dq = OwnedTensor::zeros(DType::kF64, q_shape(c));
  OwnedTensor dkv = OwnedTensor::zeros(DType::kF64, kv_shape(c));
  ops::cross_attention_forward(ctx, out, lse, q, kv, shape_of(c, lengths), p, key());
  ops::cross_attention_backward(ctx, dq, dkv, dout, q, kv, out, lse, shape_of(c, lengths), p,
                                key());
  const auto rows_of = [](const OwnedTensor& t) {
    const int64_t width = t.view().size(-1);
    return t.view().reshape({t.view().numel() / width, width});
  };
  for (int64_t tp : {2, 4}) {
    for (int64_t r = 0; r < tp; ++r) {
      SCOPED_TRACE("tp " + std::to_string(tp) + " rank " + std::to_string(r));
      const int64_t NL = NH / tp, GL = G / tp;
      CrossCase local = c;
      local.NH = NL;
      local.G = GL;
      ops::AttentionShape shape = shape_of(local, lengths);
      shape.head_offset = r * NL;
      shape.dropout_num_heads = NH;
      const OwnedTensor q_l = columns(rows_of(q), r * NL * HS, (r + 1) * NL * HS);
      const OwnedTensor kv_l = columns(rows_of(kv), r * GL * 2 * HS, (r + 1) * GL * 2 * HS);
      const OwnedTensor dy_l = columns(rows_of(dout), r * NL * HS, (r + 1) * NL * HS);
      const Tensor q3 = q_l.view().reshape(q_shape(local));
      const Tensor kv3 = kv_l.view().reshape(kv_shape(local));
      OwnedTensor o = OwnedTensor::zeros(DType::kF64, q_shape(local));
      OwnedTensor l = OwnedTensor::zeros(DType::kF64, lse_shape(local));
      OwnedTensor dq_l = OwnedTensor::zeros(DType::kF64, q_shape(local));
      OwnedTensor dkv_l = OwnedTensor::zeros(DType::kF64, kv_shape(local));
      ops::cross_attention_forward(ctx, o, l, q3, kv3, shape, p, key());
      ops::cross_attention_backward(ctx, dq_l, dkv_l, dy_l.view().reshape(q_shape(local)), q3,
                                    kv3, o, l, shape, p, key());
      EXPECT_EQ(to_vector(o), to_vector(columns(rows_of(out), r * NL * HS, (r + 1) * NL * HS)));
      EXPECT_EQ(to_vector(l), to_vector(columns(lse.view().reshape({B, NH * TQ}), r * NL * TQ,
                                                (r + 1) * NL * TQ)));
      EXPECT_EQ(to_vector(dq_l), to_vector(columns(rows_of(dq), r * NL * HS, (r + 1) * NL * HS)));
      EXPECT_EQ(to_vector(dkv_l), to_vector(columns(rows_of(dkv), r * GL * 2 * HS,
                                                    (r + 1) * GL * 2 * HS)));
    }
  }
  // The shard against the full reference too (global positions in the mask).
  std::vector<double> ref_out, ref_lse;
  reference(c, to_vector(q), to_vector(kv), p, &ref_out, &ref_lse);
  EXPECT_LT(rel_error(to_vector(out), ref_out), 1e-13);
}

TEST(CrossAttention, BadArguments) {
  DeviceContext ctx = DeviceContext::cpu();
  const CrossCase c{2, 5, 9, 6, 2, 4, {}};
  const OwnedTensor q = random_tensor(DType::kF32, q_shape(c), 38);
  const OwnedTensor kv = random_tensor(DType::kF32, kv_shape(c), 39);
  OwnedTensor out = OwnedTensor::zeros(DType::kF32, q_shape(c));
  OwnedTensor lse = OwnedTensor::zeros(DType::kF32, lse_shape(c));
  const OwnedTensor none;
  const ops::AttentionShape shape = shape_of(c, none);
  const auto fwd = [&](const Tensor& o, const Tensor& l, const Tensor& q_, const Tensor& kv_,
                       const ops::AttentionShape& s) {
    ops::cross_attention_forward(ctx, o, l, q_, kv_, s, 0.0, key());
  };
  const OwnedTensor q_bad = random_tensor(DType::kF32, {2, 5, 20}, 40);
  EXPECT_SHARDLM_ERROR(fwd(out, lse, q_bad, kv, shape), ErrorKind::kInvalidArgument,
                       "q must be [B, TQ, NH*HS] = [B, TQ, 24] for NH=6 G=2 HS=4, got [2, 5, 20]");
  const OwnedTensor kv_bad = random_tensor(DType::kF32, {2, 9, 24}, 41);
  EXPECT_SHARDLM_ERROR(fwd(out, lse, q, kv_bad, shape), ErrorKind::kInvalidArgument,
                       "kv must be [B, TK, G*2*HS] = [B, TK, 16]");
  const OwnedTensor kv_batch = random_tensor(DType::kF32, {3, 9, 16}, 42);
  EXPECT_SHARDLM_ERROR(fwd(out, lse, q, kv_batch, shape), ErrorKind::kInvalidArgument,
                       "same batch size B");
  OwnedTensor out_bad = OwnedTensor::zeros(DType::kF32, {2, 9, 24});
  EXPECT_SHARDLM_ERROR(fwd(out_bad, lse, q, kv, shape), ErrorKind::kInvalidArgument,
                       "out has shape [2, 9, 24], expected [2, 5, 24]");
  OwnedTensor lse_bad = OwnedTensor::zeros(DType::kF32, {2, 6, 9});
  EXPECT_SHARDLM_ERROR(fwd(out, lse_bad, q, kv, shape), ErrorKind::kInvalidArgument,
                       "lse has shape [2, 6, 9], expected [2, 6, 5]");
  EXPECT_SHARDLM_ERROR(fwd(out, lse, q, kv, ops::AttentionShape{6, 4, 4}),
                       ErrorKind::kInvalidArgument, "NH=6 G=4");
  ops::AttentionShape causal = shape;
  causal.causal = true;
  EXPECT_SHARDLM_ERROR(fwd(out, lse, q, kv, causal), ErrorKind::kInvalidArgument,
                       "cross-attention is unmasked except for key padding");
  OwnedTensor three = OwnedTensor::zeros(DType::kI32, {3});
  ops::AttentionShape bad_lengths = shape;
  bad_lengths.key_lengths = three.view();
  EXPECT_SHARDLM_ERROR(fwd(out, lse, q, kv, bad_lengths), ErrorKind::kInvalidArgument,
                       "key_lengths must be int32 [B] = [2], got int32 [3]");
  OwnedTensor floats = OwnedTensor::zeros(DType::kF32, {2});
  bad_lengths.key_lengths = floats.view();
  EXPECT_SHARDLM_ERROR(fwd(out, lse, q, kv, bad_lengths), ErrorKind::kInvalidArgument, "int32");
  for (const std::vector<int32_t>& lengths : {std::vector<int32_t>{9, 0}, {9, 10}}) {
    CrossCase bad = c;
    bad.lengths = lengths;
    const OwnedTensor t = lengths_tensor(bad);
    EXPECT_SHARDLM_ERROR(fwd(out, lse, q, kv, shape_of(bad, t)), ErrorKind::kInvalidArgument,
                         "key_lengths[1] = " + std::to_string(lengths[1]) +
                             " must be in [1, TK = 9]");
  }
  EXPECT_SHARDLM_ERROR(ops::cross_attention_forward(ctx, out, lse, q, kv, shape, 1.0, key()),
                       ErrorKind::kInvalidArgument, "dropout probability");
  // Backward: the gradients' shapes, and dq / dkv must not overlap.
  OwnedTensor dq = OwnedTensor::zeros(DType::kF32, q_shape(c));
  OwnedTensor dkv = OwnedTensor::zeros(DType::kF32, kv_shape(c));
  const auto bwd = [&](const Tensor& dq_, const Tensor& dkv_) {
    ops::cross_attention_backward(ctx, dq_, dkv_, out, q, kv, out, lse, shape, 0.0, key());
  };
  EXPECT_SHARDLM_ERROR(bwd(dq, dq), ErrorKind::kInvalidArgument,
                       "dkv has shape [2, 5, 24], expected [2, 9, 16]");
  EXPECT_SHARDLM_ERROR(bwd(dkv, dkv), ErrorKind::kInvalidArgument,
                       "dq has shape [2, 9, 16], expected [2, 5, 24]");
  // A dq view inside dkv's storage: the right shapes, overlapping memory.
  OwnedTensor both = OwnedTensor::zeros(DType::kF32, {2 * 9 * 16 + 2 * 5 * 24});
  const Tensor dkv_view = both.view().flat_view(0, kv_shape(c));
  const Tensor dq_view = both.view().flat_view(8, q_shape(c));
  EXPECT_SHARDLM_ERROR(bwd(dq_view, dkv_view), ErrorKind::kInvalidArgument, "dq overlaps dkv");
  OwnedTensor q64 = random_tensor(DType::kF64, q_shape(c), 43);
  EXPECT_SHARDLM_ERROR(fwd(out, lse, q64, kv, shape), ErrorKind::kInvalidArgument,
                       "kv is fp32 but q is fp64");
}

}  // namespace
}  // namespace shardlm
