// Tests of embedding_forward / embedding_backward against a naive fp64 lookup, finite
// differences, fp32-vs-fp64 agreement, the accumulation rule, token-id validation, and the
// backward into a wider gradient (gradient-accumulation fusion: fp64 dwte for fp32 dout, fp32
// for bf16 dout) against an fp64 sum with many repeated tokens.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <tuple>

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

// Tokens [B, T] drawn from only `distinct` ids spread over [0, V): most rows share a token.
OwnedTensor repeated_tokens(int64_t b, int64_t t, int64_t distinct, int64_t vocab, uint64_t seed) {
  OwnedTensor tok = random_ints({b, t}, static_cast<int32_t>(distinct), seed);
  int32_t* p = tok.view().data<int32_t>();
  for (int64_t i = 0; i < b * t; ++i) p[i] = static_cast<int32_t>((p[i] * 7 + 3) % vocab);
  return tok;
}

// prior + the fp64 sum of dout's rows by token (dout's values as stored).
std::vector<double> scatter_reference(const Tensor& prior, const Tensor& dout,
                                      const Tensor& tokens, int64_t cols) {
  std::vector<double> want = to_vector(prior);
  const std::vector<double> d = to_vector(dout), tok = to_vector(tokens);
  for (size_t n = 0; n < tok.size(); ++n)
    for (int64_t c = 0; c < cols; ++c)
      want[static_cast<size_t>(tok[n]) * cols + c] += d[n * cols + c];
  return want;
}

TEST(Embedding, BackwardIntoWiderGradientSumsRepeatedTokens) {
  DeviceContext ctx = DeviceContext::cpu();
  constexpr int64_t Bw = 4, Tw = 24;  // 96 rows over 5 tokens: ~19 rows per token
  const OwnedTensor tokens = repeated_tokens(Bw, Tw, 5, V, 20);
  for (const auto& [grad_dtype, dout_dtype, tol] :
       {std::tuple{DType::kF64, DType::kF32, 1e-14}, std::tuple{DType::kF32, DType::kBF16, 1e-6},
        std::tuple{DType::kF32, DType::kF16, 1e-6}}) {
    SCOPED_TRACE(std::string(dtype_name(grad_dtype)) + " dwte, " + dtype_name(dout_dtype) +
                 " dout");
    const OwnedTensor dout = random_tensor(dout_dtype, {Bw, Tw, C}, 21);
    const OwnedTensor prior = random_tensor(grad_dtype, {V, C}, 22);  // accumulates onto it
    OwnedTensor dwte = testing::clone(prior);
    ops::embedding_backward(ctx, dwte, Tensor(), dout, tokens);
    EXPECT_LT(rel_error(to_vector(dwte), scatter_reference(prior, dout, tokens, C)), tol);
    // Rows of ids no row holds are untouched.
    const std::vector<double> got = to_vector(dwte), before = to_vector(prior);
    const std::vector<double> tok = to_vector(tokens);
    for (int64_t v = 0; v < V; ++v)
      if (std::find(tok.begin(), tok.end(), static_cast<double>(v)) == tok.end())
        for (int64_t c = 0; c < C; ++c) ASSERT_EQ(got[v * C + c], before[v * C + c]) << v;
  }
  // fp64 dwte with fp32 dout: dwpe stays fp32, the same bits as an all-fp32 call.
  const OwnedTensor dout = random_tensor(DType::kF32, {Bw, Tw, C}, 23);
  OwnedTensor wide = OwnedTensor::zeros(DType::kF64, {V, C});
  OwnedTensor narrow = OwnedTensor::zeros(DType::kF32, {V, C});
  OwnedTensor dwpe_wide = random_tensor(DType::kF32, {Tw, C}, 24);
  OwnedTensor dwpe_narrow = testing::clone(dwpe_wide);
  ops::embedding_backward(ctx, wide, dwpe_wide, dout, tokens);
  ops::embedding_backward(ctx, narrow, dwpe_narrow, dout, tokens);
  EXPECT_EQ(to_vector(dwpe_wide), to_vector(dwpe_narrow));
  // The fp32 table accumulated ~19 fp32 roundings per row; the fp64 one none.
  const std::vector<double> exact = scatter_reference(OwnedTensor::zeros(DType::kF64, {V, C}),
                                                      dout, tokens, C);
  EXPECT_LT(rel_error(to_vector(wide), exact), 1e-14);
  EXPECT_LT(rel_error(to_vector(narrow), exact), 1e-6);
}

TEST(Embedding, BackwardRejectsOtherGradientDtypes) {
  DeviceContext ctx = DeviceContext::cpu();
  const OwnedTensor tokens = random_ints({B, T}, V, 25);
  const OwnedTensor dout32 = random_tensor(DType::kF32, {B, T, C}, 26);
  const OwnedTensor dout64 = random_tensor(DType::kF64, {B, T, C}, 27);
  OwnedTensor dwte32 = OwnedTensor::zeros(DType::kF32, {V, C});
  OwnedTensor dwte64 = OwnedTensor::zeros(DType::kF64, {V, C});
  OwnedTensor dwte16 = OwnedTensor::zeros(DType::kF16, {V, C});
  // Narrower than dout, or not the master dtype for it.
  EXPECT_SHARDLM_ERROR(ops::embedding_backward(ctx, dwte32, Tensor(), dout64, tokens),
                       ErrorKind::kInvalidArgument, "dwte is fp32 for fp64 dout");
  EXPECT_SHARDLM_ERROR(
      ops::embedding_backward(ctx, dwte64, Tensor(), convert(dout32, DType::kBF16), tokens),
      ErrorKind::kInvalidArgument, "wider master dtype (fp32 for bf16/fp16, fp64 for fp32)");
  EXPECT_SHARDLM_ERROR(
      ops::embedding_backward(ctx, dwte16, Tensor(), convert(dout32, DType::kBF16), tokens),
      ErrorKind::kInvalidArgument, "dwte is fp16 for bf16 dout");
  // dwpe is never widened.
  OwnedTensor dwpe64 = OwnedTensor::zeros(DType::kF64, {P, C});
  EXPECT_SHARDLM_ERROR(ops::embedding_backward(ctx, dwte64, dwpe64, dout32, tokens),
                       ErrorKind::kInvalidArgument, "dwpe is fp64 but dout is fp32");
  // The CPU cannot compute a bf16 dwpe; refused before dwte is touched.
  OwnedTensor dwpe16 = OwnedTensor::zeros(DType::kBF16, {P, C});
  EXPECT_SHARDLM_ERROR(
      ops::embedding_backward(ctx, dwte32, dwpe16, convert(dout32, DType::kBF16), tokens),
      ErrorKind::kUnsupported, "bf16");
  for (double v : to_vector(dwte32)) ASSERT_EQ(v, 0.0);
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
