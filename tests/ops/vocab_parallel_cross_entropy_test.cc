// Tests of the vocab-parallel cross-entropy steps (max, partials, loss, backward): the logits are
// cut into uneven vocabulary shards, the all-reduces are done by hand (max, then sums), and the
// composition is checked against a naive fp64 log-softmax, the single-rank op, central finite
// differences per shard, fp32 vs fp64, and argument validation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "shardlm/ops/ops.h"
#include "tests/testing/op_checks.h"
#include "tests/testing/tensors.h"

namespace shardlm {
namespace {

using testing::random_ints;
using testing::random_tensor;
using testing::rel_error;
using testing::to_vector;

constexpr int64_t N = 13, V = 37;
const std::vector<int64_t> kShardStarts = {0, 10, 25, V};  // uneven on purpose

struct Shards {
  std::vector<OwnedTensor> logits;  // [N, VL_k]
  Shards(const Tensor& full, DType dtype) {
    const std::vector<double> x = to_vector(full);
    for (size_t k = 0; k + 1 < kShardStarts.size(); ++k) {
      const int64_t s = kShardStarts[k], VL = kShardStarts[k + 1] - s;
      std::vector<double> part(N * VL);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t v = 0; v < VL; ++v) part[n * VL + v] = x[n * V + s + v];
      logits.push_back(testing::from_vector(dtype, {N, VL}, part));
    }
  }
};

// Runs the forward steps over all shards with hand-made all-reduces; returns losses, lse.
void sharded_forward(Shards& sh, const Tensor& targets, DType dtype, OwnedTensor& losses,
                     OwnedTensor& lse) {
  DeviceContext ctx = DeviceContext::cpu();
  const size_t K = sh.logits.size();
  std::vector<OwnedTensor> max(K), sum(K), tgt(K);
  std::vector<double> gmax(N, -INFINITY), gsum(N, 0.0), gtgt(N, 0.0);
  for (size_t k = 0; k < K; ++k) {
    max[k] = OwnedTensor::zeros(dtype, {N});
    ops::vocab_parallel_cross_entropy_max(ctx, max[k], sh.logits[k]);
    const auto m = to_vector(max[k]);
    for (int64_t n = 0; n < N; ++n) gmax[n] = std::max(gmax[n], m[n]);
  }
  const OwnedTensor row_max = testing::from_vector(dtype, {N}, gmax);
  for (size_t k = 0; k < K; ++k) {
    sum[k] = OwnedTensor::zeros(dtype, {N});
    tgt[k] = OwnedTensor::zeros(dtype, {N});
    ops::vocab_parallel_cross_entropy_partials(ctx, sum[k], tgt[k], sh.logits[k], targets,
                                               row_max, kShardStarts[k]);
    const auto s = to_vector(sum[k]), t = to_vector(tgt[k]);
    for (int64_t n = 0; n < N; ++n) {
      gsum[n] += s[n];
      gtgt[n] += t[n];
    }
  }
  const OwnedTensor sum_exp = testing::from_vector(dtype, {N}, gsum);
  const OwnedTensor target_logit = testing::from_vector(dtype, {N}, gtgt);
  losses = OwnedTensor::zeros(dtype, {N});
  lse = OwnedTensor::zeros(dtype, {N});
  ops::vocab_parallel_cross_entropy_loss(ctx, losses, lse, row_max, sum_exp, target_logit);
}

TEST(VocabParallelCrossEntropy, ShardsComposeToTheFullLoss) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor full = random_tensor(DType::kF64, {N, V}, 1, 3.0);
  OwnedTensor targets = random_ints({N}, V, 2);
  Shards sh(full, DType::kF64);
  OwnedTensor losses, lse;
  sharded_forward(sh, targets, DType::kF64, losses, lse);
  // Naive fp64 reference.
  const auto x = to_vector(full), t = to_vector(targets);
  std::vector<double> ref_loss(N), ref_lse(N);
  for (int64_t n = 0; n < N; ++n) {
    double s = 0;
    for (int64_t v = 0; v < V; ++v) s += std::exp(x[n * V + v]);
    ref_lse[n] = std::log(s);
    ref_loss[n] = ref_lse[n] - x[n * V + static_cast<int64_t>(t[n])];
  }
  EXPECT_LT(rel_error(to_vector(losses), ref_loss), 1e-13);
  EXPECT_LT(rel_error(to_vector(lse), ref_lse), 1e-13);
  // Backward per shard equals the slice of the single-rank backward.
  OwnedTensor dlosses = random_tensor(DType::kF64, {N}, 3);
  OwnedTensor full_dlogits = OwnedTensor::zeros(DType::kF64, {N, V});
  ops::cross_entropy_backward(ctx, full_dlogits, dlosses, full, targets, lse);
  const auto fd = to_vector(full_dlogits);
  for (size_t k = 0; k < sh.logits.size(); ++k) {
    const int64_t s = kShardStarts[k], VL = kShardStarts[k + 1] - s;
    OwnedTensor d = random_tensor(DType::kF64, {N, VL}, 4, 1e3);  // garbage: assigned
    ops::vocab_parallel_cross_entropy_backward(ctx, d, dlosses, sh.logits[k], targets, lse, s);
    std::vector<double> expect(N * VL);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t v = 0; v < VL; ++v) expect[n * VL + v] = fd[n * V + s + v];
    EXPECT_LT(rel_error(to_vector(d), expect), 1e-13) << "shard " << k;
  }
}

TEST(VocabParallelCrossEntropy, BackwardMatchesFiniteDifferencesPerShard) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor full = random_tensor(DType::kF64, {N, V}, 5, 2.0);
  OwnedTensor targets = random_ints({N}, V, 6);
  OwnedTensor dlosses = random_tensor(DType::kF64, {N}, 7);
  Shards sh(full, DType::kF64);
  OwnedTensor losses, lse;
  auto loss = [&] {
    sharded_forward(sh, targets, DType::kF64, losses, lse);
    return testing::dot(losses, dlosses);
  };
  loss();
  for (size_t k = 0; k < sh.logits.size(); ++k) {
    const int64_t s = kShardStarts[k], VL = kShardStarts[k + 1] - s;
    OwnedTensor d = OwnedTensor::zeros(DType::kF64, {N, VL});
    ops::vocab_parallel_cross_entropy_backward(ctx, d, dlosses, sh.logits[k], targets, lse, s);
    testing::expect_gradient("dlogits shard " + std::to_string(k), sh.logits[k].view(), loss, d);
  }
}

TEST(VocabParallelCrossEntropy, Fp32MatchesFp64) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor full = random_tensor(DType::kF64, {N, V}, 8, 3.0);
  OwnedTensor targets = random_ints({N}, V, 9);
  std::vector<double> res[2][3];
  for (int i = 0; i < 2; ++i) {
    const DType d = i == 0 ? DType::kF64 : DType::kF32;
    Shards sh(full, d);
    OwnedTensor losses, lse;
    sharded_forward(sh, targets, d, losses, lse);
    OwnedTensor dlosses = testing::convert(random_tensor(DType::kF64, {N}, 10), d);
    OwnedTensor dl = OwnedTensor::zeros(d, {N, kShardStarts[2] - kShardStarts[1]});
    ops::vocab_parallel_cross_entropy_backward(ctx, dl, dlosses, sh.logits[1], targets, lse,
                                               kShardStarts[1]);
    res[i][0] = to_vector(losses);
    res[i][1] = to_vector(lse);
    res[i][2] = to_vector(dl);
  }
  for (int j = 0; j < 3; ++j) EXPECT_LT(rel_error(res[1][j], res[0][j]), 1e-5) << j;
}

TEST(VocabParallelCrossEntropy, BadArguments) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor logits = random_tensor(DType::kF32, {N, 5}, 11);
  OwnedTensor targets = random_ints({N}, V, 12);
  OwnedTensor row_max = OwnedTensor::zeros(DType::kF32, {N});
  OwnedTensor a = OwnedTensor::zeros(DType::kF32, {N}), b = OwnedTensor::zeros(DType::kF32, {N});
  targets.view().data<int32_t>()[3] = -2;
  EXPECT_SHARDLM_ERROR(
      ops::vocab_parallel_cross_entropy_partials(ctx, a, b, logits, targets, row_max, 5),
      ErrorKind::kInvalidArgument, "target id -2 at row 3");
  OwnedTensor short_max = OwnedTensor::zeros(DType::kF32, {N - 1});
  EXPECT_SHARDLM_ERROR(ops::vocab_parallel_cross_entropy_max(ctx, short_max, logits),
                       ErrorKind::kInvalidArgument, "row_max");
  OwnedTensor f64 = OwnedTensor::zeros(DType::kF64, {N});
  EXPECT_SHARDLM_ERROR(ops::vocab_parallel_cross_entropy_max(ctx, f64, logits),
                       ErrorKind::kInvalidArgument, "logits' dtype fp32");
  EXPECT_SHARDLM_ERROR(
      ops::vocab_parallel_cross_entropy_partials(ctx, a, b, logits, targets, row_max, -1),
      ErrorKind::kInvalidArgument, "vocab_start must be >= 0");
}

}  // namespace
}  // namespace shardlm
