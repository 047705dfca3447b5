// Tests of vocab_parallel_embedding_forward / _backward: uneven vocabulary shards sum to the
// single-rank lookup (rows of other shards are exact zeros), backward against central finite
// differences and accumulation (+=), fp32 vs fp64, the backward into a wider gradient
// (gradient-accumulation fusion) with repeated tokens inside and outside the shard, and
// argument validation.
#include <gtest/gtest.h>

#include <string>
#include <tuple>
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

constexpr int64_t B = 3, T = 5, C = 6, V = 23;
const std::vector<int64_t> kShardStarts = {0, 7, 16, V};

OwnedTensor rows_of(const Tensor& table, int64_t begin, int64_t end, DType dtype) {
  const auto x = to_vector(table);
  return testing::from_vector(dtype, {end - begin, C},
                              std::vector<double>(x.begin() + begin * C, x.begin() + end * C));
}

TEST(VocabParallelEmbedding, ShardsSumToTheFullLookup) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor wte = random_tensor(DType::kF64, {V, C}, 1);
  OwnedTensor tokens = random_ints({B, T}, V, 2);
  OwnedTensor full = OwnedTensor::zeros(DType::kF64, {B, T, C});
  ops::embedding_forward(ctx, full, tokens, wte, Tensor());
  std::vector<double> sum(B * T * C, 0.0);
  const auto tok = to_vector(tokens);
  for (size_t k = 0; k + 1 < kShardStarts.size(); ++k) {
    OwnedTensor shard = rows_of(wte, kShardStarts[k], kShardStarts[k + 1], DType::kF64);
    OwnedTensor out = random_tensor(DType::kF64, {B * T, C}, 3, 1e3);  // garbage: assigned
    ops::vocab_parallel_embedding_forward(ctx, out, tokens, shard, kShardStarts[k]);
    const auto o = to_vector(out);
    for (int64_t n = 0; n < B * T; ++n) {
      const bool mine = tok[n] >= kShardStarts[k] && tok[n] < kShardStarts[k + 1];
      for (int64_t c = 0; c < C; ++c) {
        if (!mine) {
          EXPECT_EQ(o[n * C + c], 0.0) << "shard " << k << " row " << n;
        }
        sum[n * C + c] += o[n * C + c];
      }
    }
  }
  EXPECT_EQ(sum, to_vector(full));
}

TEST(VocabParallelEmbedding, BackwardMatchesFiniteDifferencesAndAccumulates) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor wte = random_tensor(DType::kF64, {V, C}, 4);
  OwnedTensor tokens = random_ints({B, T}, V, 5);
  tokens.view().data<int32_t>()[1] = tokens.view().data<int32_t>()[7] = 9;  // a repeated id
  OwnedTensor dout = random_tensor(DType::kF64, {B, T, C}, 6);
  const int64_t s = kShardStarts[1], e = kShardStarts[2];
  OwnedTensor shard = rows_of(wte, s, e, DType::kF64);
  OwnedTensor out = OwnedTensor::zeros(DType::kF64, {B, T, C});
  auto loss = [&] {
    ops::vocab_parallel_embedding_forward(ctx, out, tokens, shard, s);
    return testing::dot(out, dout);
  };
  OwnedTensor prior = random_tensor(DType::kF64, {e - s, C}, 7);
  OwnedTensor dwte = testing::clone(prior);
  ops::vocab_parallel_embedding_backward(ctx, dwte, dout, tokens, s);
  std::vector<double> grad = to_vector(dwte);
  const auto p = to_vector(prior);
  for (size_t i = 0; i < grad.size(); ++i) grad[i] -= p[i];  // accumulated onto the prior
  OwnedTensor g = testing::from_vector(DType::kF64, {e - s, C}, grad);
  testing::expect_gradient("dwte shard", shard.view(), loss, g);
}

TEST(VocabParallelEmbedding, Fp32MatchesFp64) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor wte = random_tensor(DType::kF64, {V, C}, 8);
  OwnedTensor tokens = random_ints({B, T}, V, 9);
  OwnedTensor dout = random_tensor(DType::kF64, {B, T, C}, 10);
  std::vector<double> res[2][2];
  for (int i = 0; i < 2; ++i) {
    const DType d = i == 0 ? DType::kF64 : DType::kF32;
    OwnedTensor shard = rows_of(wte, kShardStarts[1], kShardStarts[2], d);
    OwnedTensor out = OwnedTensor::zeros(d, {B, T, C});
    OwnedTensor dw = OwnedTensor::zeros(d, shard.view().shape());
    ops::vocab_parallel_embedding_forward(ctx, out, tokens, shard, kShardStarts[1]);
    ops::vocab_parallel_embedding_backward(ctx, dw, testing::convert(dout, d), tokens,
                                           kShardStarts[1]);
    res[i][0] = to_vector(out);
    res[i][1] = to_vector(dw);
  }
  for (int j = 0; j < 2; ++j) EXPECT_LT(rel_error(res[1][j], res[0][j]), 1e-6) << j;
}

// The shard [7, 16) of V = 23, tokens from 6 ids (3 in the shard, 3 outside: 0, 5, 20), each
// repeated ~15 times; the backward into fp64 (fp32 dout) and fp32 (bf16 / fp16 dout) against
// prior + the fp64 sum of the shard's rows; the other ids change nothing.
TEST(VocabParallelEmbedding, BackwardIntoWiderGradientSumsRepeatedTokens) {
  DeviceContext ctx = DeviceContext::cpu();
  const int64_t s = kShardStarts[1], e = kShardStarts[2], VL = e - s;
  constexpr int32_t kIds[] = {0, 5, 7, 11, 15, 20};
  constexpr int64_t Bw = 6, Tw = 15;
  OwnedTensor tokens = random_ints({Bw, Tw}, 6, 13);
  int32_t* tok = tokens.view().data<int32_t>();
  for (int64_t i = 0; i < Bw * Tw; ++i) tok[i] = kIds[tok[i]];
  for (const auto& [grad_dtype, dout_dtype, tol] :
       {std::tuple{DType::kF64, DType::kF32, 1e-14}, std::tuple{DType::kF32, DType::kBF16, 1e-6},
        std::tuple{DType::kF32, DType::kF16, 1e-6}}) {
    SCOPED_TRACE(std::string(dtype_name(grad_dtype)) + " dwte, " + dtype_name(dout_dtype) +
                 " dout");
    const OwnedTensor dout = random_tensor(dout_dtype, {Bw * Tw, C}, 14);
    const OwnedTensor prior = random_tensor(grad_dtype, {VL, C}, 15);
    OwnedTensor dwte = testing::clone(prior);
    ops::vocab_parallel_embedding_backward(ctx, dwte, dout, tokens, s);
    std::vector<double> want = to_vector(prior);
    const std::vector<double> d = to_vector(dout);
    for (int64_t n = 0; n < Bw * Tw; ++n) {
      if (tok[n] < s || tok[n] >= e) continue;
      for (int64_t c = 0; c < C; ++c) want[(tok[n] - s) * C + c] += d[n * C + c];
    }
    EXPECT_LT(rel_error(to_vector(dwte), want), tol);
    const std::vector<double> got = to_vector(dwte), before = to_vector(prior);
    for (int64_t row : {1, 2, 3, 5, 6, 7})  // ids 7, 11, 15 are rows 0, 4, 8: the others kept
      for (int64_t c = 0; c < C; ++c) ASSERT_EQ(got[row * C + c], before[row * C + c]) << row;
  }
  OwnedTensor dwte32 = OwnedTensor::zeros(DType::kF32, {VL, C});
  EXPECT_SHARDLM_ERROR(ops::vocab_parallel_embedding_backward(
                           ctx, dwte32, random_tensor(DType::kF64, {Bw * Tw, C}, 16), tokens, s),
                       ErrorKind::kInvalidArgument, "dwte is fp32 for fp64 dout");
  OwnedTensor dwte64 = OwnedTensor::zeros(DType::kF64, {VL, C});
  EXPECT_SHARDLM_ERROR(ops::vocab_parallel_embedding_backward(
                           ctx, dwte64, random_tensor(DType::kF16, {Bw * Tw, C}, 17), tokens, s),
                       ErrorKind::kInvalidArgument, "wider master dtype");
}

TEST(VocabParallelEmbedding, BadArguments) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor shard = random_tensor(DType::kF32, {4, C}, 11);
  OwnedTensor tokens = random_ints({B, T}, V, 12);
  OwnedTensor out = OwnedTensor::zeros(DType::kF32, {B * T, C});
  tokens.view().data<int32_t>()[5] = -1;
  EXPECT_SHARDLM_ERROR(ops::vocab_parallel_embedding_forward(ctx, out, tokens, shard, 0),
                       ErrorKind::kInvalidArgument, "token id -1");
  tokens.view().data<int32_t>()[5] = 0;
  OwnedTensor wrong = OwnedTensor::zeros(DType::kF32, {B * T, C + 1});
  EXPECT_SHARDLM_ERROR(ops::vocab_parallel_embedding_forward(ctx, wrong, tokens, shard, 0),
                       ErrorKind::kInvalidArgument, "out");
  EXPECT_SHARDLM_ERROR(ops::vocab_parallel_embedding_forward(ctx, out, tokens, shard, -3),
                       ErrorKind::kInvalidArgument, "vocab_start must be >= 0");
  OwnedTensor f64 = OwnedTensor::zeros(DType::kF64, {B * T, C});
  EXPECT_SHARDLM_ERROR(ops::vocab_parallel_embedding_forward(ctx, f64, tokens, shard, 0),
                       ErrorKind::kInvalidArgument, "fp");
}

}  // namespace
}  // namespace shardlm
