// Tests of the fused residual-add + dropout (dropout_add_forward / dropout_add_backward):
// bit-equality with the unfused dropout_forward + add (fp32 and fp64, several p, offsets),
// a float64 formula reference, p == 0 as a plain add, in-place use, sequence-sharded positions,
// finite-difference gradients for x (dx) and residual (identity: dout), and validation errors.
#include <gtest/gtest.h>

#include "shardlm/ops/ops.h"
#include "tests/testing/op_checks.h"
#include "tests/testing/tensors.h"

namespace shardlm {
namespace {

using testing::clone;
using testing::dot;
using testing::random_tensor;
using testing::rel_error;
using testing::to_vector;

DropoutKey key_b() { return DropoutKey{99, 3, 1, 5, kDropoutAttentionOutput}; }

TEST(DropoutAdd, EqualsUnfusedDropoutThenAddBitForBit) {
  DeviceContext ctx = DeviceContext::cpu();
  for (DType dt : {DType::kF32, DType::kF64}) {
    for (double p : {0.0, 0.1, 0.5, 0.9}) {
      for (uint64_t offset : {uint64_t{0}, uint64_t{3}, uint64_t{1001}}) {
        SCOPED_TRACE(std::string(dtype_name(dt)) + " p=" + std::to_string(p) +
                     " offset=" + std::to_string(offset));
        const OwnedTensor x = random_tensor(dt, {9, 37}, 11), res = random_tensor(dt, {9, 37}, 12);
        OwnedTensor dropped = random_tensor(dt, {9, 37}, 13);
        OwnedTensor unfused = random_tensor(dt, {9, 37}, 14);
        ops::dropout_forward(ctx, dropped, x, p, key_b(), offset);
        ops::add(ctx, unfused, res, dropped);
        OwnedTensor fused = random_tensor(dt, {9, 37}, 15);  // garbage: must be overwritten
        ops::dropout_add_forward(ctx, fused, x, res, p, key_b(), offset);
        EXPECT_EQ(to_vector(fused), to_vector(unfused));
      }
    }
  }
}

TEST(DropoutAdd, MatchesFloat64Formula) {
  DeviceContext ctx = DeviceContext::cpu();
  const double p = 0.3;
  const uint64_t offset = 77;
  const OwnedTensor x = random_tensor(DType::kF64, {6, 29}, 21),
                    res = random_tensor(DType::kF64, {6, 29}, 22);
  OwnedTensor out = random_tensor(DType::kF64, {6, 29}, 23);
  ops::dropout_add_forward(ctx, out, x, res, p, key_b(), offset);
  const std::vector<double> xv = to_vector(x), rv = to_vector(res);
  std::vector<double> expect(xv.size());
  int64_t dropped = 0;
  for (size_t i = 0; i < xv.size(); ++i) {
    const bool drop = dropout_uniform(key_b(), offset + i) <= p;
    dropped += drop;
    expect[i] = rv[i] + (drop ? 0.0 : xv[i] / (1.0 - p));
  }
  EXPECT_GT(dropped, 0);  // the mask does something at this size
  EXPECT_LT(rel_error(to_vector(out), expect), 1e-15);

  // fp32 agrees with the fp64 result to fp32 rounding.
  OwnedTensor out32 = OwnedTensor::zeros(DType::kF32, {6, 29});
  ops::dropout_add_forward(ctx, out32, testing::convert(x, DType::kF32),
                           testing::convert(res, DType::kF32), p, key_b(), offset);
  EXPECT_LT(rel_error(to_vector(out32), expect), 1e-6);
}

TEST(DropoutAdd, PZeroIsAPlainAdd) {
  DeviceContext ctx = DeviceContext::cpu();
  const OwnedTensor x = random_tensor(DType::kF32, {5, 17}, 31);
  const OwnedTensor res = random_tensor(DType::kF32, {5, 17}, 32);
  OwnedTensor out = random_tensor(DType::kF32, {5, 17}, 33);
  OwnedTensor sum = random_tensor(DType::kF32, {5, 17}, 34);
  ops::dropout_add_forward(ctx, out, x, res, 0.0, key_b(), 12345);
  ops::add(ctx, sum, x, res);
  EXPECT_EQ(to_vector(out), to_vector(sum));
  OwnedTensor dx = random_tensor(DType::kF32, {5, 17}, 35);
  ops::dropout_add_backward(ctx, dx, res, 0.0, key_b(), 12345);
  EXPECT_EQ(to_vector(dx), to_vector(res));
}

TEST(DropoutAdd, InPlaceOnResidualAndOnX) {
  DeviceContext ctx = DeviceContext::cpu();
  const double p = 0.25;
  const OwnedTensor x = random_tensor(DType::kF32, {4, 33}, 41);
  const OwnedTensor res = random_tensor(DType::kF32, {4, 33}, 42);
  OwnedTensor expect = OwnedTensor::zeros(DType::kF32, {4, 33});
  ops::dropout_add_forward(ctx, expect, x, res, p, key_b(), 5);
  OwnedTensor r = clone(res);  // residual stream updated in place: r = r + dropout(x)
  ops::dropout_add_forward(ctx, r, x, r, p, key_b(), 5);
  EXPECT_EQ(to_vector(r), to_vector(expect));
  OwnedTensor y = clone(x);  // branch buffer reused for the sum
  ops::dropout_add_forward(ctx, y, y, res, p, key_b(), 5);
  EXPECT_EQ(to_vector(y), to_vector(expect));
}

TEST(DropoutAdd, RowShardsWithOffsetsEqualTheWhole) {
  DeviceContext ctx = DeviceContext::cpu();
  const int64_t rows = 10, cols = 23;
  const OwnedTensor x = random_tensor(DType::kF64, {rows, cols}, 51),
                    res = random_tensor(DType::kF64, {rows, cols}, 52);
  OwnedTensor whole = OwnedTensor::zeros(DType::kF64, {rows, cols});
  OwnedTensor parts = OwnedTensor::zeros(DType::kF64, {rows, cols});
  ops::dropout_add_forward(ctx, whole, x, res, 0.4, key_b(), 0);
  const int64_t cuts[] = {0, 3, 7, rows};
  for (int k = 0; k < 3; ++k) {
    const int64_t r0 = cuts[k], r1 = cuts[k + 1];
    ops::dropout_add_forward(ctx, parts.view().slice(r0, r1), x.view().slice(r0, r1),
                             res.view().slice(r0, r1), 0.4, key_b(),
                             static_cast<uint64_t>(r0 * cols));
  }
  EXPECT_EQ(to_vector(parts), to_vector(whole));
}

TEST(DropoutAdd, BackwardMatchesFiniteDifferencesAndDropoutBackward) {
  DeviceContext ctx = DeviceContext::cpu();
  const double p = 0.35;
  const uint64_t offset = 9;
  OwnedTensor x = random_tensor(DType::kF64, {4, 13}, 61);
  OwnedTensor res = random_tensor(DType::kF64, {4, 13}, 62);
  const OwnedTensor dout = random_tensor(DType::kF64, {4, 13}, 63);
  OwnedTensor out = OwnedTensor::zeros(DType::kF64, {4, 13});
  auto loss = [&] {
    ops::dropout_add_forward(ctx, out, x, res, p, key_b(), offset);
    return dot(out, dout);
  };
  OwnedTensor dx = random_tensor(DType::kF64, {4, 13}, 64, 1e3);  // garbage: assigned
  ops::dropout_add_backward(ctx, dx, dout, p, key_b(), offset);
  testing::expect_gradient("dx", x.view(), loss, dx);
  testing::expect_gradient("dresidual (= dout)", res.view(), loss, dout);
  OwnedTensor via_dropout = OwnedTensor::zeros(DType::kF64, {4, 13});
  ops::dropout_backward(ctx, via_dropout, dout, p, key_b(), offset);
  EXPECT_EQ(to_vector(dx), to_vector(via_dropout));
}

TEST(DropoutAdd, RejectsBadArguments) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor a = random_tensor(DType::kF32, {4, 8}, 71);
  OwnedTensor b = random_tensor(DType::kF32, {4, 8}, 72);
  OwnedTensor c = random_tensor(DType::kF32, {4, 8}, 73);
  OwnedTensor small = random_tensor(DType::kF32, {4, 7}, 74);
  OwnedTensor f64 = random_tensor(DType::kF64, {4, 8}, 75);
  EXPECT_SHARDLM_ERROR(ops::dropout_add_forward(ctx, c, a, small, 0.1, key_b(), 0),
                       ErrorKind::kInvalidArgument, "dropout_add_forward");
  EXPECT_SHARDLM_ERROR(ops::dropout_add_forward(ctx, c, a, f64, 0.1, key_b(), 0),
                       ErrorKind::kInvalidArgument, "share one dtype");
  EXPECT_SHARDLM_ERROR(ops::dropout_add_forward(ctx, c, a, b, 1.0, key_b(), 0),
                       ErrorKind::kInvalidArgument, "dropout probability");
  EXPECT_SHARDLM_ERROR(ops::dropout_add_forward(ctx, c, a, b, -0.1, key_b(), 0),
                       ErrorKind::kInvalidArgument, "dropout probability");
  // out shifted by one row against x: partial overlap is refused.
  OwnedTensor big = random_tensor(DType::kF32, {5, 8}, 76);
  EXPECT_SHARDLM_ERROR(ops::dropout_add_forward(ctx, big.view().slice(1, 5), big.view().slice(0, 4),
                                                b, 0.1, key_b(), 0),
                       ErrorKind::kInvalidArgument, "overlaps");
  EXPECT_SHARDLM_ERROR(ops::dropout_add_backward(ctx, small, a, 0.1, key_b(), 0),
                       ErrorKind::kInvalidArgument, "dropout_add_backward");
}

}  // namespace
}  // namespace shardlm
