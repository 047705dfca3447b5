// Tests of the attention masks beyond causal (ops::AttentionShape::causal / key_lengths, BERT):
// bidirectional attention and key padding, against a materialised fp64 softmax(QK^T / sqrt(HS)
// + mask) V reference written independently of the op; backward against finite differences,
// with and without dropout; padding invariance (what lies past a sequence's length never
// reaches the valid keys' outputs); and the errors.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "shardlm/ops/ops.h"
#include "tests/testing/op_checks.h"
#include "tests/testing/tensors.h"

namespace shardlm {
namespace {

using testing::dot;
using testing::from_vector;
using testing::random_tensor;
using testing::rel_error;
using testing::to_vector;

struct MaskCase {
  int64_t B, T, NH, G, HS;
  bool causal;
  std::vector<int32_t> lengths;  // empty: no padding
};

std::ostream& operator<<(std::ostream& os, const MaskCase& c) {
  os << "B=" << c.B << " T=" << c.T << " NH=" << c.NH << " G=" << c.G << " HS=" << c.HS
     << (c.causal ? " causal" : " bidirectional") << " lengths=";
  for (int32_t l : c.lengths) os << l << ",";
  return os;
}

int64_t width(const MaskCase& c) { return c.G * (c.NH / c.G + 2) * c.HS; }
DropoutKey key() { return DropoutKey{7, 2, 5, 1, kDropoutAttentionProbs}; }

OwnedTensor lengths_tensor(const MaskCase& c) {
  if (c.lengths.empty()) return OwnedTensor();
  OwnedTensor t = OwnedTensor::empty(DType::kI32, {c.B});
  for (int64_t b = 0; b < c.B; ++b) t.view().data<int32_t>()[b] = c.lengths[b];
  return t;
}

ops::AttentionShape shape_of(const MaskCase& c, const OwnedTensor& lengths) {
  ops::AttentionShape s{c.NH, c.G, c.HS};
  s.causal = c.causal;
  if (lengths.view().defined()) s.key_lengths = lengths.view();
  return s;
}

// Key j takes part for query i of sequence b.
bool visible(const MaskCase& c, int64_t b, int64_t i, int64_t j) {
  if (c.causal && j > i) return false;
  return c.lengths.empty() || j < c.lengths[b];
}

// Straight from the definition: per (b, h, i), softmax over the visible keys, dropout at
// position ((b*NH + h)*T + i)*T + j, times V.
void reference(const MaskCase& c, const std::vector<double>& qkv, double p,
               std::vector<double>* out, std::vector<double>* lse) {
  const int64_t T = c.T, NH = c.NH, HS = c.HS, R = c.NH / c.G, W = width(c);
  auto q = [&](int64_t b, int64_t t, int64_t h, int64_t d) {
    return qkv[(b * T + t) * W + (h / R) * (R + 2) * HS + (h % R) * HS + d];
  };
  auto k = [&](int64_t b, int64_t t, int64_t h, int64_t d) {
    return qkv[(b * T + t) * W + (h / R) * (R + 2) * HS + R * HS + d];
  };
  auto v = [&](int64_t b, int64_t t, int64_t h, int64_t d) {
    return qkv[(b * T + t) * W + (h / R) * (R + 2) * HS + (R + 1) * HS + d];
  };
  out->assign(c.B * T * NH * HS, 0.0);
  lse->assign(c.B * NH * T, 0.0);
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < NH; ++h)
      for (int64_t i = 0; i < T; ++i) {
        std::vector<double> s(T, -std::numeric_limits<double>::infinity());
        double m = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < T; ++j) {
          if (!visible(c, b, i, j)) continue;
          double dotp = 0;
          for (int64_t d = 0; d < HS; ++d) dotp += q(b, i, h, d) * k(b, j, h, d);
          s[j] = dotp / std::sqrt(static_cast<double>(HS));
          m = std::max(m, s[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j < T; ++j) sum += std::exp(s[j] - m);
        (*lse)[(b * NH + h) * T + i] = m + std::log(sum);
        for (int64_t j = 0; j < T; ++j) {
          double prob = std::exp(s[j] - m) / sum;
          const uint64_t pos = static_cast<uint64_t>(((b * NH + h) * T + i) * T + j);
          if (p > 0) prob = dropout_uniform(key(), pos) <= p ? 0.0 : prob / (1.0 - p);
          for (int64_t d = 0; d < HS; ++d)
            (*out)[((b * T + i) * NH + h) * HS + d] += prob * v(b, j, h, d);
        }
      }
}

class AttentionMaskCases : public ::testing::TestWithParam<MaskCase> {};

TEST_P(AttentionMaskCases, ForwardMatchesMaterialisedReference) {
  DeviceContext ctx = DeviceContext::cpu();
  const MaskCase c = GetParam();
  const OwnedTensor lengths = lengths_tensor(c);
  OwnedTensor qkv = random_tensor(DType::kF64, {c.B, c.T, width(c)}, 11, 1.5);
  for (double p : {0.0, 0.25}) {
    OwnedTensor out = random_tensor(DType::kF64, {c.B, c.T, c.NH * c.HS}, 12, 1e3);
    OwnedTensor lse = random_tensor(DType::kF64, {c.B, c.NH, c.T}, 13, 1e3);
    ops::attention_forward(ctx, out, lse, qkv, shape_of(c, lengths), p, key());
    std::vector<double> ref_out, ref_lse;
    reference(c, to_vector(qkv), p, &ref_out, &ref_lse);
    EXPECT_LT(rel_error(to_vector(out), ref_out), 1e-13) << c << " p=" << p;
    EXPECT_LT(rel_error(to_vector(lse), ref_lse), 1e-13) << c << " p=" << p;
  }
}

TEST_P(AttentionMaskCases, BackwardMatchesFiniteDifferences) {
  DeviceContext ctx = DeviceContext::cpu();
  const MaskCase c = GetParam();
  const OwnedTensor lengths = lengths_tensor(c);
  const Shape qkv_shape{c.B, c.T, width(c)}, out_shape{c.B, c.T, c.NH * c.HS};
  OwnedTensor qkv = random_tensor(DType::kF64, qkv_shape, 14, 1.5);
  OwnedTensor dout = random_tensor(DType::kF64, out_shape, 15);
  OwnedTensor out = OwnedTensor::zeros(DType::kF64, out_shape);
  OwnedTensor lse = OwnedTensor::zeros(DType::kF64, {c.B, c.NH, c.T});
  for (double p : {0.0, 0.25}) {
    auto loss = [&] {
      ops::attention_forward(ctx, out, lse, qkv, shape_of(c, lengths), p, key());
      return dot(out, dout);
    };
    loss();
    OwnedTensor dqkv = random_tensor(DType::kF64, qkv_shape, 16, 1e3);  // garbage: assigned
    ops::attention_backward(ctx, dqkv, dout, qkv, out, lse, shape_of(c, lengths), p, key());
    SCOPED_TRACE(::testing::Message() << c << " p=" << p);
    testing::expect_gradient("dqkv", qkv.view(), loss, dqkv, 1e-7);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Masks, AttentionMaskCases,
    ::testing::Values(MaskCase{2, 7, 6, 2, 5, false, {}},         // bidirectional, GQA
                      MaskCase{2, 7, 6, 2, 5, false, {7, 3}},     // + padding
                      MaskCase{3, 6, 4, 4, 3, false, {1, 6, 4}},  // one real token only
                      MaskCase{2, 7, 6, 3, 5, true, {5, 7}},      // causal + padding
                      MaskCase{1, 9, 4, 1, 4, false, {6}}));      // multi-query

// Tokens past a sequence's length are no key of anything: changing them leaves the outputs of
// the valid rows unchanged (bit for bit), while bidirectional rows do see later valid keys.
TEST(AttentionMask, PaddingNeverReachesValidRows) {
  DeviceContext ctx = DeviceContext::cpu();
  const MaskCase c{2, 8, 4, 2, 4, false, {5, 8}};
  const OwnedTensor lengths = lengths_tensor(c);
  const Shape qkv_shape{c.B, c.T, width(c)}, out_shape{c.B, c.T, c.NH * c.HS};
  OwnedTensor qkv = random_tensor(DType::kF64, qkv_shape, 17, 1.5);
  auto run = [&](const Tensor& in) {
    OwnedTensor out = OwnedTensor::zeros(DType::kF64, out_shape);
    OwnedTensor lse = OwnedTensor::zeros(DType::kF64, {c.B, c.NH, c.T});
    ops::attention_forward(ctx, out, lse, in, shape_of(c, lengths), 0.0, key());
    return to_vector(out);
  };
  const std::vector<double> base = run(qkv);
  std::vector<double> changed = to_vector(qkv);
  const int64_t W = width(c), O = c.NH * c.HS;
  for (int64_t t = 5; t < c.T; ++t)  // sequence 0's padding
    for (int64_t w = 0; w < W; ++w) changed[t * W + w] += 3.0;
  const std::vector<double> after = run(from_vector(DType::kF64, qkv_shape, changed));
  for (int64_t t = 0; t < 5; ++t)
    for (int64_t o = 0; o < O; ++o) ASSERT_EQ(after[t * O + o], base[t * O + o]) << t;
  // Sequence 1 (no padding), changed at its last token: its first row moves (bidirectional).
  std::vector<double> last = to_vector(qkv);
  for (int64_t w = 0; w < W; ++w) last[(c.T + c.T - 1) * W + w] += 3.0;
  const std::vector<double> moved = run(from_vector(DType::kF64, qkv_shape, last));
  EXPECT_NE(moved[c.T * O], base[c.T * O]);
}

TEST(AttentionMask, BadArguments) {
  DeviceContext ctx = DeviceContext::cpu();
  const MaskCase c{2, 6, 4, 2, 4, false, {}};
  OwnedTensor qkv = random_tensor(DType::kF32, {c.B, c.T, width(c)}, 18);
  OwnedTensor out = OwnedTensor::zeros(DType::kF32, {c.B, c.T, c.NH * c.HS});
  OwnedTensor lse = OwnedTensor::zeros(DType::kF32, {c.B, c.NH, c.T});
  ops::AttentionShape shape{c.NH, c.G, c.HS};
  shape.causal = false;
  OwnedTensor three = OwnedTensor::zeros(DType::kI32, {3});
  shape.key_lengths = three.view();
  EXPECT_SHARDLM_ERROR(ops::attention_forward(ctx, out, lse, qkv, shape, 0.0, key()),
                       ErrorKind::kInvalidArgument, "key_lengths must be int32 [B] = [2]");
  OwnedTensor floats = OwnedTensor::zeros(DType::kF32, {2});
  shape.key_lengths = floats.view();
  EXPECT_SHARDLM_ERROR(ops::attention_forward(ctx, out, lse, qkv, shape, 0.0, key()),
                       ErrorKind::kInvalidArgument, "int32");
  const MaskCase zero{2, 6, 4, 2, 4, false, {6, 0}};
  const OwnedTensor zero_lengths = lengths_tensor(zero);
  EXPECT_SHARDLM_ERROR(
      ops::attention_forward(ctx, out, lse, qkv, shape_of(zero, zero_lengths), 0.0, key()),
      ErrorKind::kInvalidArgument, "key_lengths[1] = 0 must be in [1, T = 6]");
  const MaskCase long_case{2, 6, 4, 2, 4, false, {6, 7}};
  const OwnedTensor long_lengths = lengths_tensor(long_case);
  EXPECT_SHARDLM_ERROR(ops::attention_forward(ctx, out, lse, qkv,
                                              shape_of(long_case, long_lengths), 0.0, key()),
                       ErrorKind::kInvalidArgument, "key_lengths[1] = 7");
  // Context-parallel chunks stay causal and unpadded.
  ops::AttentionShape bidirectional{c.NH, c.G, c.HS};
  bidirectional.causal = false;
  EXPECT_SHARDLM_ERROR(ops::attention_chunk_forward(ctx, out, lse, qkv, qkv, bidirectional,
                                                    {0, c.T, 0}, 0.0, key()),
                       ErrorKind::kInvalidArgument, "context-parallel chunks are causal");
}

}  // namespace
}  // namespace shardlm
