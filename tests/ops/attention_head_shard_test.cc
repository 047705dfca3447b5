// Attention over a tensor-parallel shard of the heads (AttentionShape::head_offset /
// dropout_num_heads): with dropout on, the shard's out, lse and dqkv equal the corresponding
// heads / query groups of the full attention, so dropout masks do not depend on the split.
#include <gtest/gtest.h>

#include <vector>

#include "shardlm/ops/ops.h"
#include "tests/testing/op_checks.h"
#include "tests/testing/tensors.h"

namespace shardlm {
namespace {

using testing::random_tensor;
using testing::to_vector;

// Columns [c0, c1) of the last axis of a [rows, width] view, as a host tensor.
OwnedTensor columns(const Tensor& t, int64_t c0, int64_t c1) {
  const int64_t width = t.size(-1), rows = t.numel() / width;
  const std::vector<double> v = to_vector(t);
  std::vector<double> out;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = c0; c < c1; ++c) out.push_back(v[r * width + c]);
  return testing::from_vector(t.dtype(), {rows, c1 - c0}, out);
}

TEST(AttentionHeadShard, ShardEqualsTheHeadsOfTheFullAttentionWithDropout) {
  DeviceContext ctx = DeviceContext::cpu();
  const int64_t B = 2, T = 9, NH = 8, G = 4, HS = 4, R = NH / G, W = G * (R + 2) * HS;
  const DropoutKey key{77, 2, 1, 3, kDropoutAttentionProbs};
  const double p = 0.3;
  OwnedTensor qkv = random_tensor(DType::kF64, {B, T, W}, 1);
  OwnedTensor dout = random_tensor(DType::kF64, {B, T, NH * HS}, 2);
  OwnedTensor out = OwnedTensor::zeros(DType::kF64, {B, T, NH * HS});
  OwnedTensor lse = OwnedTensor::zeros(DType::kF64, {B, NH, T});
  OwnedTensor dqkv = OwnedTensor::zeros(DType::kF64, {B, T, W});
  ops::attention_forward(ctx, out, lse, qkv, {NH, G, HS}, p, key);
  ops::attention_backward(ctx, dqkv, dout, qkv, out, lse, {NH, G, HS}, p, key);
  for (int tp : {2, 4}) {
    for (int r = 0; r < tp; ++r) {
      SCOPED_TRACE("tp " + std::to_string(tp) + " rank " + std::to_string(r));
      const int64_t NL = NH / tp, GL = G / tp, WL = GL * (R + 2) * HS;
      ops::AttentionShape shape{NL, GL, HS};
      shape.head_offset = r * NL;
      shape.dropout_num_heads = NH;
      const OwnedTensor q = columns(qkv.view().reshape({B * T, W}), r * WL, (r + 1) * WL);
      const OwnedTensor dy = columns(dout.view().reshape({B * T, NH * HS}), r * NL * HS,
                                     (r + 1) * NL * HS);
      OwnedTensor o = OwnedTensor::zeros(DType::kF64, {B, T, NL * HS});
      OwnedTensor l = OwnedTensor::zeros(DType::kF64, {B, NL, T});
      OwnedTensor dq = OwnedTensor::zeros(DType::kF64, {B, T, WL});
      const Tensor q3 = q.view().reshape({B, T, WL});
      ops::attention_forward(ctx, o, l, q3, shape, p, key);
      ops::attention_backward(ctx, dq, dy.view().reshape({B, T, NL * HS}), q3, o, l, shape, p,
                              key);
      EXPECT_EQ(to_vector(o), to_vector(columns(out.view().reshape({B * T, NH * HS}),
                                                r * NL * HS, (r + 1) * NL * HS)));
      EXPECT_EQ(to_vector(l), to_vector(columns(lse.view().reshape({B, NH * T}), r * NL * T,
                                                (r + 1) * NL * T)));
      EXPECT_EQ(to_vector(dq), to_vector(columns(dqkv.view().reshape({B * T, W}), r * WL,
                                                 (r + 1) * WL)));
    }
  }
  // Without the offset the shard draws other masks (the test can fail).
  const OwnedTensor q = columns(qkv.view().reshape({B * T, W}), W / 2, W);
  OwnedTensor o = OwnedTensor::zeros(DType::kF64, {B, T, NH / 2 * HS});
  OwnedTensor l = OwnedTensor::zeros(DType::kF64, {B, NH / 2, T});
  ops::attention_forward(ctx, o, l, q.view().reshape({B, T, W / 2}), {NH / 2, G / 2, HS}, p, key);
  EXPECT_NE(to_vector(o), to_vector(columns(out.view().reshape({B * T, NH * HS}), NH / 2 * HS,
                                            NH * HS)));
}

TEST(AttentionHeadShard, RejectsHeadsOutsideTheModel) {
  DeviceContext ctx = DeviceContext::cpu();
  ops::AttentionShape shape{2, 2, 4};
  shape.head_offset = 3;
  shape.dropout_num_heads = 4;
  OwnedTensor qkv = random_tensor(DType::kF64, {1, 3, 2 * 3 * 4}, 3);
  OwnedTensor out = OwnedTensor::zeros(DType::kF64, {1, 3, 8});
  OwnedTensor lse = OwnedTensor::zeros(DType::kF64, {1, 2, 3});
  EXPECT_SHARDLM_ERROR(ops::attention_forward(ctx, out, lse, qkv, shape, 0.1, DropoutKey{}),
                       ErrorKind::kInvalidArgument, "[3, 5) must lie within dropout_num_heads = 4");
}

}  // namespace
}  // namespace shardlm
