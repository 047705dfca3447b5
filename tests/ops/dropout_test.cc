// Tests of dropout_forward / dropout_backward: the mask definition (dropout_uniform <= p drops),
// drop fraction, determinism and key sensitivity, shard independence through
// position_offset, forward/backward consistency, p == 0 exactness and p validation.
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

DropoutKey key_a() { return DropoutKey{1234, 7, 2, 3, kDropoutMlpOutput}; }

// 1 where kept, 0 where dropped, read off the op's output for an all-nonzero input.
std::vector<int> mask_of(const Tensor& out) {
  std::vector<int> m;
  for (double v : to_vector(out)) m.push_back(v != 0.0);
  return m;
}

TEST(Dropout, MatchesDefinition) {
  DeviceContext ctx = DeviceContext::cpu();
  const double p = 0.3;
  const uint64_t offset = 1000;
  OwnedTensor in = random_tensor(DType::kF64, {7, 13}, 1),
              out = random_tensor(DType::kF64, {7, 13}, 2);
  ops::dropout_forward(ctx, out, in, p, key_a(), offset);
  const std::vector<double> x = to_vector(in);
  std::vector<double> expect(x.size());
  for (size_t i = 0; i < x.size(); ++i)
    expect[i] = dropout_uniform(key_a(), offset + i) <= p ? 0.0 : x[i] / (1.0 - p);
  EXPECT_LT(rel_error(to_vector(out), expect), 1e-15);
}

TEST(Dropout, DropFractionIsP) {
  DeviceContext ctx = DeviceContext::cpu();
  const int64_t n = 200000;
  OwnedTensor in = random_tensor(DType::kF32, {n}, 3), out = OwnedTensor::zeros(DType::kF32, {n});
  for (double p : {0.1, 0.5, 0.9}) {
    ops::dropout_forward(ctx, out, in, p, key_a(), 0);
    const std::vector<int> m = mask_of(out);
    int64_t dropped = 0;
    for (int k : m) dropped += 1 - k;
    // Binomial std is at most sqrt(0.25 / n) ~ 0.0011; 0.006 is > 5 sigma.
    EXPECT_NEAR(static_cast<double>(dropped) / n, p, 0.006) << p;
  }
}

TEST(Dropout, DeterministicAndKeySensitive) {
  DeviceContext ctx = DeviceContext::cpu();
  const int64_t n = 4096;
  OwnedTensor in = random_tensor(DType::kF32, {n}, 4), out = OwnedTensor::zeros(DType::kF32, {n});
  ops::dropout_forward(ctx, out, in, 0.5, key_a(), 0);
  const std::vector<int> base = mask_of(out);
  ops::dropout_forward(ctx, out, in, 0.5, key_a(), 0);
  EXPECT_EQ(mask_of(out), base);

  std::vector<DropoutKey> others(5, key_a());
  others[0].seed += 1;
  others[1].step += 1;
  others[2].microbatch += 1;
  others[3].layer += 1;
  others[4].site = kDropoutAttentionOutput;
  for (size_t k = 0; k < others.size(); ++k) {
    ops::dropout_forward(ctx, out, in, 0.5, others[k], 0);
    const std::vector<int> m = mask_of(out);
    int64_t differ = 0;
    for (int64_t i = 0; i < n; ++i) differ += m[i] != base[i];
    EXPECT_GT(differ, n / 4) << "key field " << k << " does not change the mask";
  }
  ops::dropout_forward(ctx, out, in, 0.5, key_a(), 1);  // shifted positions
  int64_t differ = 0;
  const std::vector<int> shifted = mask_of(out);
  for (int64_t i = 0; i < n; ++i) differ += shifted[i] != base[i];
  EXPECT_GT(differ, n / 4);
}

TEST(Dropout, ShardsWithOffsetsEqualTheWhole) {
  DeviceContext ctx = DeviceContext::cpu();
  const int64_t rows = 8, cols = 37;
  OwnedTensor in = random_tensor(DType::kF64, {rows, cols}, 5);
  OwnedTensor whole = OwnedTensor::zeros(DType::kF64, {rows, cols});
  OwnedTensor parts = OwnedTensor::zeros(DType::kF64, {rows, cols});
  ops::dropout_forward(ctx, whole, in, 0.25, key_a(), 0);
  for (int64_t r0 : {0, 3, 5}) {
    const int64_t r1 = r0 == 0 ? 3 : (r0 == 3 ? 5 : rows);
    ops::dropout_forward(ctx, parts.view().slice(r0, r1), in.view().slice(r0, r1), 0.25, key_a(),
                         static_cast<uint64_t>(r0 * cols));
  }
  EXPECT_EQ(to_vector(parts), to_vector(whole));
}

TEST(Dropout, BackwardIsTheSameMaskAndMatchesFiniteDifferences) {
  DeviceContext ctx = DeviceContext::cpu();
  const double p = 0.4;
  OwnedTensor in = random_tensor(DType::kF64, {5, 11}, 6),
              dout = random_tensor(DType::kF64, {5, 11}, 7);
  OwnedTensor out = OwnedTensor::zeros(DType::kF64, {5, 11});
  auto loss = [&] {
    ops::dropout_forward(ctx, out, in, p, key_a(), 17);
    return dot(out, dout);
  };
  OwnedTensor din = random_tensor(DType::kF64, {5, 11}, 8, 1e3);  // garbage
  ops::dropout_backward(ctx, din, dout, p, key_a(), 17);
  testing::expect_gradient("din", in.view(), loss, din);
  OwnedTensor fwd_of_dout = OwnedTensor::zeros(DType::kF64, {5, 11});
  ops::dropout_forward(ctx, fwd_of_dout, dout, p, key_a(), 17);
  EXPECT_EQ(to_vector(din), to_vector(fwd_of_dout));
}

TEST(Dropout, ZeroProbabilityCopiesExactly) {
  DeviceContext ctx = DeviceContext::cpu();
  for (DType d : {DType::kF64, DType::kF32}) {
    OwnedTensor in = random_tensor(d, {3, 7}, 9), out = random_tensor(d, {3, 7}, 10);
    ops::dropout_forward(ctx, out, in, 0.0, key_a(), 0);
    EXPECT_EQ(to_vector(out), to_vector(in));
    ops::dropout_backward(ctx, out, in, 0.0, key_a(), 0);
    EXPECT_EQ(to_vector(out), to_vector(in));
  }
}

TEST(Dropout, Fp32MatchesFp64) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor in = random_tensor(DType::kF64, {37, 13}, 11);
  OwnedTensor out64 = OwnedTensor::zeros(DType::kF64, {37, 13}),
              out32 = OwnedTensor::zeros(DType::kF32, {37, 13});
  ops::dropout_forward(ctx, out64, in, 0.2, key_a(), 5);
  ops::dropout_forward(ctx, out32, convert(in, DType::kF32), 0.2, key_a(), 5);
  EXPECT_LT(rel_error(to_vector(out32), to_vector(out64)), 1e-7);
}

TEST(Dropout, BadProbabilityAndShapes) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor in = random_tensor(DType::kF32, {4, 5}, 12),
              out = OwnedTensor::zeros(DType::kF32, {4, 5});
  for (double p : {-0.1, 1.0, 1.5, std::numeric_limits<double>::quiet_NaN()}) {
    EXPECT_SHARDLM_ERROR(ops::dropout_forward(ctx, out, in, p, key_a(), 0),
                         ErrorKind::kInvalidArgument, "dropout probability must be in [0, 1)");
    EXPECT_SHARDLM_ERROR(ops::dropout_backward(ctx, out, in, p, key_a(), 0),
                         ErrorKind::kInvalidArgument, "dropout_backward");
  }
  OwnedTensor small = OwnedTensor::zeros(DType::kF32, {4, 4});
  EXPECT_SHARDLM_ERROR(ops::dropout_forward(ctx, small, in, 0.1, key_a(), 0),
                       ErrorKind::kInvalidArgument, "[4, 4]");
}

}  // namespace
}  // namespace shardlm
