// Tests of cross_entropy_forward / cross_entropy_backward against a naive fp64 log-softmax,
// finite differences, numerical stability with large logits, fp32 vs fp64, dlogits assignment
// and target / shape validation.
#include <gtest/gtest.h>

#include <cmath>

#include "shardlm/ops/ops.h"
#include "tests/testing/op_checks.h"
#include "tests/testing/tensors.h"

namespace shardlm {
namespace {

using testing::convert;
using testing::dot;
using testing::random_ints;
using testing::random_tensor;
using testing::rel_error;
using testing::to_vector;

constexpr int64_t N = 21, V = 37;

// Direct log(sum(exp)) without max subtraction: fine for the small logits it is used on.
void reference(const Tensor& logits, const Tensor& targets, std::vector<double>* losses,
               std::vector<double>* lse) {
  const std::vector<double> x = to_vector(logits), t = to_vector(targets);
  losses->assign(N, 0.0);
  lse->assign(N, 0.0);
  for (int64_t n = 0; n < N; ++n) {
    double sum = 0;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(x[n * V + v]);
    (*lse)[n] = std::log(sum);
    (*losses)[n] = (*lse)[n] - x[n * V + static_cast<int64_t>(t[n])];
  }
}

TEST(CrossEntropy, ForwardMatchesReference) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor logits = random_tensor(DType::kF64, {3, 7, V}, 1, 2.0);  // leading dims [B, T]
  OwnedTensor targets = random_ints({3, 7}, V, 2);
  OwnedTensor losses = random_tensor(DType::kF64, {3, 7}, 3),
              lse = random_tensor(DType::kF64, {N}, 4);
  ops::cross_entropy_forward(ctx, losses, lse, logits, targets);
  std::vector<double> ref_losses, ref_lse;
  reference(logits, targets, &ref_losses, &ref_lse);
  EXPECT_LT(rel_error(to_vector(losses), ref_losses), 1e-14);
  EXPECT_LT(rel_error(to_vector(lse), ref_lse), 1e-14);
}

TEST(CrossEntropy, BackwardMatchesFiniteDifferences) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor logits = random_tensor(DType::kF64, {N, V}, 5, 2.0);
  OwnedTensor targets = random_ints({N}, V, 6);
  OwnedTensor dlosses = random_tensor(DType::kF64, {N}, 7);
  OwnedTensor losses = OwnedTensor::zeros(DType::kF64, {N}),
              lse = OwnedTensor::zeros(DType::kF64, {N});
  auto loss = [&] {
    ops::cross_entropy_forward(ctx, losses, lse, logits, targets);
    return dot(losses, dlosses);
  };
  loss();
  OwnedTensor dlogits = random_tensor(DType::kF64, {N, V}, 8, 1e3);  // garbage: assigned
  ops::cross_entropy_backward(ctx, dlogits, dlosses, logits, targets, lse);
  testing::expect_gradient("dlogits", logits.view(), loss, dlogits);
}

TEST(CrossEntropy, StableForLargeLogits) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor logits = random_tensor(DType::kF64, {N, V}, 9, 2.0);
  OwnedTensor targets = random_ints({N}, V, 10);
  std::vector<double> shifted = to_vector(logits);
  for (double& v : shifted) v += 1000.0;  // exp(1000) overflows without max subtraction
  for (DType d : {DType::kF64, DType::kF32}) {
    OwnedTensor big = testing::from_vector(d, {N, V}, shifted);
    OwnedTensor small = convert(logits, d);
    OwnedTensor l_big = OwnedTensor::zeros(d, {N}), l_small = OwnedTensor::zeros(d, {N});
    OwnedTensor lse = OwnedTensor::zeros(d, {N});
    ops::cross_entropy_forward(ctx, l_small, lse, small, targets);
    ops::cross_entropy_forward(ctx, l_big, lse, big, targets);
    DeviceContext c2 = DeviceContext::cpu();
    EXPECT_TRUE(ops::all_finite(c2, l_big));
    EXPECT_TRUE(ops::all_finite(c2, lse));
    // Loss is shift invariant; fp32 loses ~1e-4 absolute in storing x + 1000 itself.
    EXPECT_LT(rel_error(to_vector(l_big), to_vector(l_small)), d == DType::kF64 ? 1e-11 : 1e-4);
    OwnedTensor dl = OwnedTensor::zeros(d, {N, V});
    ops::fill(c2, l_small, 1.0);
    ops::cross_entropy_backward(ctx, dl, l_small, big, targets, lse);
    EXPECT_TRUE(ops::all_finite(c2, dl));
  }
}

TEST(CrossEntropy, Fp32MatchesFp64) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor targets = random_ints({N}, V, 11);
  std::vector<double> res[2][3];
  for (int k = 0; k < 2; ++k) {
    const DType d = k == 0 ? DType::kF64 : DType::kF32;
    OwnedTensor logits = convert(random_tensor(DType::kF64, {N, V}, 12, 3.0), d);
    OwnedTensor dlosses = convert(random_tensor(DType::kF64, {N}, 13), d);
    OwnedTensor losses = OwnedTensor::zeros(d, {N}), lse = OwnedTensor::zeros(d, {N});
    OwnedTensor dlogits = OwnedTensor::zeros(d, {N, V});
    ops::cross_entropy_forward(ctx, losses, lse, logits, targets);
    ops::cross_entropy_backward(ctx, dlogits, dlosses, logits, targets, lse);
    res[k][0] = to_vector(losses);
    res[k][1] = to_vector(lse);
    res[k][2] = to_vector(dlogits);
  }
  for (int i = 0; i < 3; ++i) EXPECT_LT(rel_error(res[1][i], res[0][i]), 1e-5) << i;
}

TEST(CrossEntropy, BadTargetsAndShapes) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor logits = random_tensor(DType::kF32, {N, V}, 14);
  OwnedTensor losses = OwnedTensor::zeros(DType::kF32, {N}),
              lse = OwnedTensor::zeros(DType::kF32, {N});
  OwnedTensor targets = random_ints({N}, V, 15);
  for (int32_t bad : {static_cast<int32_t>(V), -1, 1000}) {
    targets.view().data<int32_t>()[4] = bad;
    EXPECT_SHARDLM_ERROR(ops::cross_entropy_forward(ctx, losses, lse, logits, targets),
                         ErrorKind::kInvalidArgument, "target id " + std::to_string(bad));
    EXPECT_SHARDLM_ERROR(ops::cross_entropy_backward(ctx, logits, losses, logits, targets, lse),
                         ErrorKind::kInvalidArgument, "V = 37");
  }
  OwnedTensor short_targets = random_ints({N - 1}, V, 16);
  EXPECT_SHARDLM_ERROR(ops::cross_entropy_forward(ctx, losses, lse, logits, short_targets),
                       ErrorKind::kInvalidArgument, "targets has shape [20]");
  OwnedTensor float_targets = random_tensor(DType::kF32, {N}, 17);
  EXPECT_SHARDLM_ERROR(ops::cross_entropy_forward(ctx, losses, lse, logits, float_targets),
                       ErrorKind::kInvalidArgument, "int32");
  OwnedTensor lse_bad = OwnedTensor::zeros(DType::kF32, {N + 1});
  EXPECT_SHARDLM_ERROR(ops::cross_entropy_forward(ctx, losses, lse_bad, logits, short_targets),
                       ErrorKind::kInvalidArgument, "cross_entropy_forward");
}

}  // namespace
}  // namespace shardlm
