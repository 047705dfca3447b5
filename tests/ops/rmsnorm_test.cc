// Tests of rmsnorm_forward / rmsnorm_backward against a naive fp64 RMSNorm, finite differences,
// fp32-vs-fp64 agreement, the accumulation rule and shape validation.
#include <gtest/gtest.h>

#include <cmath>

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

constexpr double kEps = 1e-6;

std::vector<double> reference(const Tensor& in, const Tensor& w, std::vector<double>* rstd) {
  const std::vector<double> x = to_vector(in), wv = to_vector(w);
  const int64_t C = w.numel(), N = in.numel() / C;
  std::vector<double> out(N * C);
  rstd->assign(N, 0.0);
  for (int64_t n = 0; n < N; ++n) {
    double ms = 0;
    for (int64_t c = 0; c < C; ++c) ms += x[n * C + c] * x[n * C + c] / C;
    (*rstd)[n] = 1.0 / std::sqrt(ms + kEps);
    for (int64_t c = 0; c < C; ++c) out[n * C + c] = x[n * C + c] * (*rstd)[n] * wv[c];
  }
  return out;
}

class RmsNormShapes : public ::testing::TestWithParam<std::vector<int64_t>> {};

TEST_P(RmsNormShapes, ForwardMatchesReference) {
  DeviceContext ctx = DeviceContext::cpu();
  const Shape s(GetParam());
  const int64_t C = s[-1], N = s.numel() / C;
  OwnedTensor in = random_tensor(DType::kF64, s, 1, 3.0), w = random_tensor(DType::kF64, {C}, 2);
  OwnedTensor out = random_tensor(DType::kF64, s, 3), rstd = random_tensor(DType::kF64, {N}, 4);
  ops::rmsnorm_forward(ctx, out, rstd, in, w, kEps);
  std::vector<double> ref_rstd;
  EXPECT_LT(rel_error(to_vector(out), reference(in, w, &ref_rstd)), 1e-13);
  EXPECT_LT(rel_error(to_vector(rstd), ref_rstd), 1e-13);
}

TEST_P(RmsNormShapes, BackwardMatchesFiniteDifferences) {
  DeviceContext ctx = DeviceContext::cpu();
  const Shape s(GetParam());
  const int64_t C = s[-1], N = s.numel() / C;
  OwnedTensor in = random_tensor(DType::kF64, s, 5, 3.0), w = random_tensor(DType::kF64, {C}, 6);
  OwnedTensor dout = random_tensor(DType::kF64, s, 7);
  OwnedTensor out = OwnedTensor::zeros(DType::kF64, s), rstd = OwnedTensor::zeros(DType::kF64, {N});
  auto loss = [&] {
    ops::rmsnorm_forward(ctx, out, rstd, in, w, kEps);
    return dot(out, dout);
  };
  loss();
  OwnedTensor din = random_tensor(DType::kF64, s, 8, 1e3);  // garbage: must be overwritten
  OwnedTensor dw = OwnedTensor::zeros(DType::kF64, {C});
  ops::rmsnorm_backward(ctx, din, dw, dout, in, w, rstd);
  testing::expect_gradient("din", in.view(), loss, din, 1e-6);
  testing::expect_gradient("dweight", w.view(), loss, dw, 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Shapes, RmsNormShapes,
                         ::testing::Values(std::vector<int64_t>{2, 7, 13},
                                           std::vector<int64_t>{5, 1},
                                           std::vector<int64_t>{1, 32}));

TEST(RmsNorm, WeightGradientAccumulatesDinIsAssigned) {
  DeviceContext ctx = DeviceContext::cpu();
  const int64_t N = 6, C = 13;
  OwnedTensor in = random_tensor(DType::kF64, {N, C}, 9), w = random_tensor(DType::kF64, {C}, 10);
  OwnedTensor dout = random_tensor(DType::kF64, {N, C}, 11);
  OwnedTensor out = OwnedTensor::zeros(DType::kF64, {N, C}),
              rstd = OwnedTensor::zeros(DType::kF64, {N});
  ops::rmsnorm_forward(ctx, out, rstd, in, w, kEps);
  OwnedTensor din = OwnedTensor::zeros(DType::kF64, {N, C}),
              dw = OwnedTensor::zeros(DType::kF64, {C});
  ops::rmsnorm_backward(ctx, din, dw, dout, in, w, rstd);
  const std::vector<double> din1 = to_vector(din), dw1 = to_vector(dw);
  ops::rmsnorm_backward(ctx, din, dw, dout, in, w, rstd);
  std::vector<double> dw2 = dw1;
  for (double& v : dw2) v *= 2;
  EXPECT_LT(rel_error(to_vector(dw), dw2), 1e-15);
  EXPECT_EQ(to_vector(din), din1);
}

TEST(RmsNorm, Fp32MatchesFp64) {
  DeviceContext ctx = DeviceContext::cpu();
  const Shape s{3, 7, 13};
  const int64_t C = 13, N = 21;
  std::vector<double> results[2][4];  // out, rstd, din, dw
  for (int k = 0; k < 2; ++k) {
    const DType d = k == 0 ? DType::kF64 : DType::kF32;
    OwnedTensor in = convert(random_tensor(DType::kF64, s, 12, 2.0), d);
    OwnedTensor w = convert(random_tensor(DType::kF64, {C}, 13), d);
    OwnedTensor dout = convert(random_tensor(DType::kF64, s, 14), d);
    OwnedTensor out = OwnedTensor::zeros(d, s), rstd = OwnedTensor::zeros(d, {N});
    OwnedTensor din = OwnedTensor::zeros(d, s), dw = OwnedTensor::zeros(d, {C});
    ops::rmsnorm_forward(ctx, out, rstd, in, w, kEps);
    ops::rmsnorm_backward(ctx, din, dw, dout, in, w, rstd);
    results[k][0] = to_vector(out);
    results[k][1] = to_vector(rstd);
    results[k][2] = to_vector(din);
    results[k][3] = to_vector(dw);
  }
  for (int i = 0; i < 4; ++i) EXPECT_LT(rel_error(results[1][i], results[0][i]), 1e-5) << i;
}

TEST(RmsNorm, BadShapes) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor in = random_tensor(DType::kF32, {4, 13}, 1),
              out = random_tensor(DType::kF32, {4, 13}, 2);
  OwnedTensor w12 = random_tensor(DType::kF32, {12}, 3), w = random_tensor(DType::kF32, {13}, 4);
  OwnedTensor rstd = OwnedTensor::zeros(DType::kF32, {4}),
              rstd3 = OwnedTensor::zeros(DType::kF32, {3});
  EXPECT_SHARDLM_ERROR(ops::rmsnorm_forward(ctx, out, rstd, in, w12, kEps),
                       ErrorKind::kInvalidArgument, "rmsnorm_forward: weight has shape [12]");
  EXPECT_SHARDLM_ERROR(ops::rmsnorm_forward(ctx, out, rstd3, in, w, kEps),
                       ErrorKind::kInvalidArgument, "rstd has shape [3]");
  EXPECT_SHARDLM_ERROR(ops::rmsnorm_backward(ctx, out, w12, out, in, w, rstd),
                       ErrorKind::kInvalidArgument, "dweight");
}

}  // namespace
}  // namespace shardlm
