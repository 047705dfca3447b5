// Tests of embedding_forward / embedding_backward against a naive fp64 lookup, finite
// differences, fp32-vs-fp64 agreement, the accumulation rule and token-id validation.
#include <gtest/gtest.h>

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

constexpr int64_t B = 3, T = 7, C = 13, V = 37, P = 9;

std::vector<double> reference(const Tensor& tokens, const Tensor& wte, const Tensor* wpe) {
  const std::vector<double> tok = to_vector(tokens), w = to_vector(wte);
  const std::vector<double> pe = wpe ? to_vector(*wpe) : std::vector<double>();
  std::vector<double> out(B * T * C);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < C; ++c)
        out[(b * T + t) * C + c] =
            w[static_cast<int64_t>(tok[b * T + t]) * C + c] + (wpe ? pe[t * C + c] : 0.0);
  return out;
}

TEST(Embedding, ForwardMatchesLookup) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor tokens = random_ints({B, T}, V, 1);
  OwnedTensor wte = random_tensor(DType::kF64, {V, C}, 2),
              wpe = random_tensor(DType::kF64, {P, C}, 3);
  OwnedTensor out = random_tensor(DType::kF64, {B, T, C}, 4);
  ops::embedding_forward(ctx, out, tokens, wte, wpe);
  EXPECT_EQ(rel_error(to_vector(out), reference(tokens, wte, &wpe.view())), 0.0);
  ops::embedding_forward(ctx, out, tokens, wte, Tensor());  // no position embedding
  EXPECT_EQ(rel_error(to_vector(out), reference(tokens, wte, nullptr)), 0.0);
}

TEST(Embedding, BackwardMatchesFiniteDifferences) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor tokens = random_ints({B, T}, V, 5);
  OwnedTensor wte = random_tensor(DType::kF64, {V, C}, 6),
              wpe = random_tensor(DType::kF64, {P, C}, 7);
  OwnedTensor dout = random_tensor(DType::kF64, {B, T, C}, 8);
  OwnedTensor out = OwnedTensor::zeros(DType::kF64, {B, T, C});
  auto loss = [&] {
    ops::embedding_forward(ctx, out, tokens, wte, wpe);
    return dot(out, dout);
  };
  OwnedTensor dwte = OwnedTensor::zeros(DType::kF64, {V, C}),
              dwpe = OwnedTensor::zeros(DType::kF64, {P, C});
  ops::embedding_backward(ctx, dwte, dwpe, dout, tokens);
  testing::expect_gradient("dwte", wte.view(), loss, dwte);
  testing::expect_gradient("dwpe", wpe.view(), loss, dwpe);
}

TEST(Embedding, GradientsAccumulateAndDwpeIsOptional) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor tokens = random_ints({B, T}, V, 9);
  OwnedTensor dout = random_tensor(DType::kF64, {B, T, C}, 10);
  OwnedTensor dwte = OwnedTensor::zeros(DType::kF64, {V, C}),
              dwpe = OwnedTensor::zeros(DType::kF64, {P, C});
  ops::embedding_backward(ctx, dwte, dwpe, dout, tokens);
  const std::vector<double> once_wte = to_vector(dwte), once_wpe = to_vector(dwpe);
  ops::embedding_backward(ctx, dwte, dwpe, dout, tokens);
  std::vector<double> twice_wte = once_wte, twice_wpe = once_wpe;
  for (double& v : twice_wte) v *= 2;
  for (double& v : twice_wpe) v *= 2;
  EXPECT_LT(rel_error(to_vector(dwte), twice_wte), 1e-15);
  EXPECT_LT(rel_error(to_vector(dwpe), twice_wpe), 1e-15);

  OwnedTensor dwte2 = OwnedTensor::zeros(DType::kF64, {V, C});
  ops::embedding_backward(ctx, dwte2, Tensor(), dout, tokens);
  EXPECT_EQ(to_vector(dwte2), once_wte);
}

TEST(Embedding, Fp32MatchesFp64) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor tokens = random_ints({B, T}, V, 11);
  OwnedTensor wte = random_tensor(DType::kF64, {V, C}, 12),
              wpe = random_tensor(DType::kF64, {P, C}, 13);
  OwnedTensor dout = random_tensor(DType::kF64, {B, T, C}, 14);
  OwnedTensor out64 = OwnedTensor::zeros(DType::kF64, {B, T, C});
  OwnedTensor out32 = OwnedTensor::zeros(DType::kF32, {B, T, C});
  OwnedTensor wte32 = convert(wte, DType::kF32), wpe32 = convert(wpe, DType::kF32);
  ops::embedding_forward(ctx, out64, tokens, wte, wpe);
  ops::embedding_forward(ctx, out32, tokens, wte32, wpe32);
  EXPECT_LT(rel_error(out32, convert(out64, DType::kF32)), 1e-6);

  OwnedTensor dwte64 = OwnedTensor::zeros(DType::kF64, {V, C}),
              dwpe64 = OwnedTensor::zeros(DType::kF64, {P, C});
  OwnedTensor dwte32 = OwnedTensor::zeros(DType::kF32, {V, C}),
              dwpe32 = OwnedTensor::zeros(DType::kF32, {P, C});
  ops::embedding_backward(ctx, dwte64, dwpe64, dout, tokens);
  ops::embedding_backward(ctx, dwte32, dwpe32, convert(dout, DType::kF32), tokens);
  EXPECT_LT(rel_error(to_vector(dwte32), to_vector(dwte64)), 1e-6);
  EXPECT_LT(rel_error(to_vector(dwpe32), to_vector(dwpe64)), 1e-6);
}

TEST(Embedding, BadInputs) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor wte = random_tensor(DType::kF64, {V, C}, 15),
              wpe = random_tensor(DType::kF64, {P, C}, 16);
  OwnedTensor out = OwnedTensor::zeros(DType::kF64, {B, T, C});
  OwnedTensor tokens = random_ints({B, T}, V, 17);
  for (int32_t bad : {static_cast<int32_t>(V), -1}) {
    tokens.view().data<int32_t>()[5] = bad;
    EXPECT_SHARDLM_ERROR(ops::embedding_forward(ctx, out, tokens, wte, wpe),
                         ErrorKind::kInvalidArgument, "token id " + std::to_string(bad));
    EXPECT_SHARDLM_ERROR(ops::embedding_backward(ctx, wte, wpe, out, tokens),
                         ErrorKind::kInvalidArgument, "[0, 37)");
  }
  tokens.view().data<int32_t>()[5] = 0;
  OwnedTensor short_wpe = random_tensor(DType::kF64, {T - 1, C}, 18);
  EXPECT_SHARDLM_ERROR(ops::embedding_forward(ctx, out, tokens, wte, short_wpe),
                       ErrorKind::kInvalidArgument, "P >= T");
  OwnedTensor bad_out = OwnedTensor::zeros(DType::kF64, {B, T, C + 1});
  EXPECT_SHARDLM_ERROR(ops::embedding_forward(ctx, bad_out, tokens, wte, wpe),
                       ErrorKind::kInvalidArgument, "[3, 7, 14]");
  OwnedTensor float_tokens = random_tensor(DType::kF32, {B, T}, 19);
  EXPECT_SHARDLM_ERROR(ops::embedding_forward(ctx, out, float_tokens, wte, wpe),
                       ErrorKind::kInvalidArgument, "int32");
}

}  // namespace
}  // namespace shardlm
