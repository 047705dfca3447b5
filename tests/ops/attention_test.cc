// Tests of causal grouped-query attention (Megatron fused-QKV layout) with attention-
// probability dropout, against a materialised fp64 softmax(QK^T / sqrt(HS) + causal mask) V
// reference; backward against finite differences (with and without dropout), fp32 vs fp64,
// dqkv assignment and shape validation.
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
using testing::random_tensor;
using testing::rel_error;
using testing::to_vector;

struct AttnCase {
  int64_t B, T, NH, G, HS;
};

std::ostream& operator<<(std::ostream& os, const AttnCase& c) {
  return os << "B=" << c.B << " T=" << c.T << " NH=" << c.NH << " G=" << c.G << " HS=" << c.HS;
}

int64_t qkv_width(const AttnCase& c) { return c.G * (c.NH / c.G + 2) * c.HS; }

DropoutKey attn_key() { return DropoutKey{99, 3, 1, 4, kDropoutAttentionProbs}; }

// Materialised reference: unpack Q [B,NH,T,HS], K/V [B,G,T,HS] from the fused layout, build the
// full masked score matrix per (b, h), softmax it, drop, multiply by V.
void reference(const AttnCase& c, const std::vector<double>& qkv, double p,
               std::vector<double>* out, std::vector<double>* lse) {
  const int64_t B = c.B, T = c.T, NH = c.NH, G = c.G, HS = c.HS, hpg = NH / G;
  const int64_t R = qkv_width(c);
  auto at = [&](int64_t b, int64_t t, int64_t col) { return qkv[(b * T + t) * R + col]; };
  std::vector<double> Q(B * NH * T * HS), K(B * G * T * HS), V(B * G * T * HS);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t g = 0; g < G; ++g) {
        const int64_t group_col = g * (hpg + 2) * HS;
        for (int64_t hh = 0; hh < hpg; ++hh)
          for (int64_t d = 0; d < HS; ++d)
            Q[((b * NH + g * hpg + hh) * T + t) * HS + d] = at(b, t, group_col + hh * HS + d);
        for (int64_t d = 0; d < HS; ++d) {
          K[((b * G + g) * T + t) * HS + d] = at(b, t, group_col + hpg * HS + d);
          V[((b * G + g) * T + t) * HS + d] = at(b, t, group_col + (hpg + 1) * HS + d);
        }
      }
  out->assign(B * T * NH * HS, 0.0);
  lse->assign(B * NH * T, 0.0);
  std::vector<double> S(T * T);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < NH; ++h) {
      const int64_t g = h / hpg;
      for (int64_t i = 0; i < T; ++i)
        for (int64_t j = 0; j < T; ++j) {
          double s = 0;
          for (int64_t d = 0; d < HS; ++d)
            s += Q[((b * NH + h) * T + i) * HS + d] * K[((b * G + g) * T + j) * HS + d];
          S[i * T + j] = j <= i ? s / std::sqrt(static_cast<double>(HS))
                                : -std::numeric_limits<double>::infinity();
        }
      for (int64_t i = 0; i < T; ++i) {
        double m = -std::numeric_limits<double>::infinity(), sum = 0;
        for (int64_t j = 0; j < T; ++j) m = std::max(m, S[i * T + j]);
        for (int64_t j = 0; j < T; ++j) sum += std::exp(S[i * T + j] - m);
        (*lse)[(b * NH + h) * T + i] = m + std::log(sum);
        for (int64_t j = 0; j < T; ++j) {
          double prob = std::exp(S[i * T + j] - m) / sum;
          const uint64_t pos = static_cast<uint64_t>(((b * NH + h) * T + i) * T + j);
          if (p > 0) prob = dropout_uniform(attn_key(), pos) <= p ? 0.0 : prob / (1.0 - p);
          for (int64_t d = 0; d < HS; ++d)
            (*out)[((b * T + i) * NH + h) * HS + d] += prob * V[((b * G + g) * T + j) * HS + d];
        }
      }
    }
}

class AttentionCases : public ::testing::TestWithParam<AttnCase> {};

TEST_P(AttentionCases, ForwardMatchesMaterialisedReference) {
  DeviceContext ctx = DeviceContext::cpu();
  const AttnCase c = GetParam();
  const ops::AttentionShape shape{c.NH, c.G, c.HS};
  OwnedTensor qkv = random_tensor(DType::kF64, {c.B, c.T, qkv_width(c)}, 1, 1.5);
  for (double p : {0.0, 0.3}) {
    OwnedTensor out = random_tensor(DType::kF64, {c.B, c.T, c.NH * c.HS}, 2, 1e3);
    OwnedTensor lse = random_tensor(DType::kF64, {c.B, c.NH, c.T}, 3, 1e3);
    ops::attention_forward(ctx, out, lse, qkv, shape, p, attn_key());
    std::vector<double> ref_out, ref_lse;
    reference(c, to_vector(qkv), p, &ref_out, &ref_lse);
    EXPECT_LT(rel_error(to_vector(out), ref_out), 1e-13) << c << " p=" << p;
    EXPECT_LT(rel_error(to_vector(lse), ref_lse), 1e-13) << c << " p=" << p;
  }
}

TEST_P(AttentionCases, BackwardMatchesFiniteDifferences) {
  DeviceContext ctx = DeviceContext::cpu();
  const AttnCase c = GetParam();
  const ops::AttentionShape shape{c.NH, c.G, c.HS};
  const Shape qkv_shape{c.B, c.T, qkv_width(c)}, out_shape{c.B, c.T, c.NH * c.HS};
  OwnedTensor qkv = random_tensor(DType::kF64, qkv_shape, 4, 1.5);
  OwnedTensor dout = random_tensor(DType::kF64, out_shape, 5);
  OwnedTensor out = OwnedTensor::zeros(DType::kF64, out_shape);
  OwnedTensor lse = OwnedTensor::zeros(DType::kF64, {c.B, c.NH, c.T});
  for (double p : {0.0, 0.3}) {
    auto loss = [&] {
      ops::attention_forward(ctx, out, lse, qkv, shape, p, attn_key());
      return dot(out, dout);
    };
    loss();
    OwnedTensor dqkv = random_tensor(DType::kF64, qkv_shape, 6, 1e3);  // garbage: assigned
    ops::attention_backward(ctx, dqkv, dout, qkv, out, lse, shape, p, attn_key());
    SCOPED_TRACE(::testing::Message() << c << " p=" << p);
    testing::expect_gradient("dqkv", qkv.view(), loss, dqkv, 1e-7);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionCases,
                         ::testing::Values(AttnCase{2, 7, 6, 2, 5},  // GQA, 3 heads per group
                                           AttnCase{1, 7, 6, 3, 5},  // GQA, 2 heads per group
                                           AttnCase{2, 5, 6, 1, 5},  // multi-query
                                           AttnCase{1, 7, 6, 6, 5},  // multi-head
                                           AttnCase{2, 1, 4, 2, 3},  // T = 1
                                           AttnCase{1, 13, 4, 2, 3}));

TEST(Attention, Fp32MatchesFp64) {
  DeviceContext ctx = DeviceContext::cpu();
  const AttnCase c{2, 16, 6, 2, 8};
  const ops::AttentionShape shape{c.NH, c.G, c.HS};
  const Shape qkv_shape{c.B, c.T, qkv_width(c)}, out_shape{c.B, c.T, c.NH * c.HS};
  std::vector<double> res[2][3];
  for (int k = 0; k < 2; ++k) {
    const DType d = k == 0 ? DType::kF64 : DType::kF32;
    OwnedTensor qkv = convert(random_tensor(DType::kF64, qkv_shape, 7, 1.5), d);
    OwnedTensor dout = convert(random_tensor(DType::kF64, out_shape, 8), d);
    OwnedTensor out = OwnedTensor::zeros(d, out_shape),
                lse = OwnedTensor::zeros(d, {c.B, c.NH, c.T});
    OwnedTensor dqkv = OwnedTensor::zeros(d, qkv_shape);
    ops::attention_forward(ctx, out, lse, qkv, shape, 0.2, attn_key());
    ops::attention_backward(ctx, dqkv, dout, qkv, out, lse, shape, 0.2, attn_key());
    res[k][0] = to_vector(out);
    res[k][1] = to_vector(lse);
    res[k][2] = to_vector(dqkv);
  }
  for (int i = 0; i < 3; ++i) EXPECT_LT(rel_error(res[1][i], res[0][i]), 1e-5) << i;
}

TEST(Attention, BadShapes) {
  DeviceContext ctx = DeviceContext::cpu();
  const AttnCase c{2, 7, 6, 2, 5};
  OwnedTensor qkv = random_tensor(DType::kF32, {c.B, c.T, qkv_width(c)}, 9);
  OwnedTensor out = OwnedTensor::zeros(DType::kF32, {c.B, c.T, c.NH * c.HS});
  OwnedTensor lse = OwnedTensor::zeros(DType::kF32, {c.B, c.NH, c.T});
  const DropoutKey key = attn_key();
  EXPECT_SHARDLM_ERROR(
      ops::attention_forward(ctx, out, lse, qkv, ops::AttentionShape{6, 4, 5}, 0.0, key),
      ErrorKind::kInvalidArgument, "NH=6 G=4");
  EXPECT_SHARDLM_ERROR(
      ops::attention_forward(ctx, out, lse, qkv, ops::AttentionShape{6, 0, 5}, 0.0, key),
      ErrorKind::kInvalidArgument, "attention_forward");
  EXPECT_SHARDLM_ERROR(
      ops::attention_forward(ctx, out, lse, qkv, ops::AttentionShape{6, 3, 5}, 0.0, key),
      ErrorKind::kInvalidArgument, "[B, T, 60]");
  OwnedTensor lse_bad = OwnedTensor::zeros(DType::kF32, {c.B, c.T, c.NH});
  EXPECT_SHARDLM_ERROR(
      ops::attention_forward(ctx, out, lse_bad, qkv, ops::AttentionShape{6, 2, 5}, 0.0, key),
      ErrorKind::kInvalidArgument, "lse has shape [2, 7, 6]");
  OwnedTensor out_bad = OwnedTensor::zeros(DType::kF32, {c.B, c.T, 25});
  EXPECT_SHARDLM_ERROR(
      ops::attention_forward(ctx, out_bad, lse, qkv, ops::AttentionShape{6, 2, 5}, 0.0, key),
      ErrorKind::kInvalidArgument, "out has shape [2, 7, 25]");
  EXPECT_SHARDLM_ERROR(
      ops::attention_forward(ctx, out, lse, qkv, ops::AttentionShape{6, 2, 5}, 1.0, key),
      ErrorKind::kInvalidArgument, "dropout probability");
  EXPECT_SHARDLM_ERROR(
      ops::attention_backward(ctx, out, out, qkv, out, lse, ops::AttentionShape{6, 2, 5}, 0.0, key),
      ErrorKind::kInvalidArgument, "dqkv");
}

}  // namespace
}  // namespace shardlm
