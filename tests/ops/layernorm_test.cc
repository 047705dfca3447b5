// Tests of layernorm_forward / layernorm_backward against a naive fp64 LayerNorm, finite
// differences, fp32-vs-fp64 agreement, the accumulation rule and shape validation.
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

constexpr double kEps = 1e-5;

// Input with a non-zero mean per row, so mean subtraction matters.
OwnedTensor shifted_input(DType d, const Shape& s, uint64_t seed) {
  std::vector<double> v = to_vector(random_tensor(DType::kF64, s, seed));
  for (size_t i = 0; i < v.size(); ++i) v[i] = 2.0 * v[i] + 0.5 + 0.1 * static_cast<double>(i % 5);
  return testing::from_vector(d, s, v);
}

struct Ref {
  std::vector<double> out, mean, rstd;
};
Ref reference(const Tensor& in, const Tensor& w, const Tensor* bias, int64_t C) {
  const std::vector<double> x = to_vector(in), wv = to_vector(w);
  const std::vector<double> bv = bias ? to_vector(*bias) : std::vector<double>(C, 0.0);
  const int64_t N = in.numel() / C;
  Ref r{std::vector<double>(N * C), std::vector<double>(N), std::vector<double>(N)};
  for (int64_t n = 0; n < N; ++n) {
    double mu = 0, var = 0;
    for (int64_t c = 0; c < C; ++c) mu += x[n * C + c] / C;
    for (int64_t c = 0; c < C; ++c) var += (x[n * C + c] - mu) * (x[n * C + c] - mu) / C;
    const double rs = 1.0 / std::sqrt(var + kEps);
    for (int64_t c = 0; c < C; ++c) r.out[n * C + c] = (x[n * C + c] - mu) * rs * wv[c] + bv[c];
    r.mean[n] = mu;
    r.rstd[n] = rs;
  }
  return r;
}

class LayerNormShapes : public ::testing::TestWithParam<std::vector<int64_t>> {};

TEST_P(LayerNormShapes, ForwardMatchesReference) {
  DeviceContext ctx = DeviceContext::cpu();
  const Shape s(GetParam());
  const int64_t C = s[-1], N = s.numel() / C;
  OwnedTensor in = shifted_input(DType::kF64, s, 1);
  OwnedTensor w = random_tensor(DType::kF64, {C}, 2), b = random_tensor(DType::kF64, {C}, 3);
  OwnedTensor out = random_tensor(DType::kF64, s, 4);
  OwnedTensor mean = random_tensor(DType::kF64, {N}, 5), rstd = random_tensor(DType::kF64, {N}, 6);
  ops::layernorm_forward(ctx, out, mean, rstd, in, w, b, kEps);
  const Ref r = reference(in, w, &b.view(), C);
  EXPECT_LT(rel_error(to_vector(out), r.out), 1e-13);
  EXPECT_LT(rel_error(to_vector(mean), r.mean), 1e-13);
  EXPECT_LT(rel_error(to_vector(rstd), r.rstd), 1e-13);
  ops::layernorm_forward(ctx, out, mean, rstd, in, w, Tensor(), kEps);  // no bias
  EXPECT_LT(rel_error(to_vector(out), reference(in, w, nullptr, C).out), 1e-13);
}

TEST_P(LayerNormShapes, BackwardMatchesFiniteDifferences) {
  DeviceContext ctx = DeviceContext::cpu();
  const Shape s(GetParam());
  const int64_t C = s[-1], N = s.numel() / C;
  OwnedTensor in = shifted_input(DType::kF64, s, 7);
  OwnedTensor w = random_tensor(DType::kF64, {C}, 8), b = random_tensor(DType::kF64, {C}, 9);
  OwnedTensor dout = random_tensor(DType::kF64, s, 10);
  OwnedTensor out = OwnedTensor::zeros(DType::kF64, s);
  OwnedTensor mean = OwnedTensor::zeros(DType::kF64, {N}),
              rstd = OwnedTensor::zeros(DType::kF64, {N});
  auto loss = [&] {
    ops::layernorm_forward(ctx, out, mean, rstd, in, w, b, kEps);
    return dot(out, dout);
  };
  loss();
  OwnedTensor din = random_tensor(DType::kF64, s, 11, 1e3);  // garbage: must be overwritten
  OwnedTensor dw = OwnedTensor::zeros(DType::kF64, {C}), db = OwnedTensor::zeros(DType::kF64, {C});
  ops::layernorm_backward(ctx, din, dw, db, dout, in, w, mean, rstd);
  testing::expect_gradient("din", in.view(), loss, din, 1e-6);
  testing::expect_gradient("dweight", w.view(), loss, dw, 1e-6);
  testing::expect_gradient("dbias", b.view(), loss, db, 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Shapes, LayerNormShapes,
                         ::testing::Values(std::vector<int64_t>{2, 7, 13},
                                           std::vector<int64_t>{5, 3},
                                           std::vector<int64_t>{1, 32}));

TEST(LayerNorm, ParameterGradientsAccumulateDinIsAssigned) {
  DeviceContext ctx = DeviceContext::cpu();
  const int64_t N = 6, C = 13;
  OwnedTensor in = shifted_input(DType::kF64, {N, C}, 12);
  OwnedTensor w = random_tensor(DType::kF64, {C}, 13), b = random_tensor(DType::kF64, {C}, 14);
  OwnedTensor dout = random_tensor(DType::kF64, {N, C}, 15);
  OwnedTensor out = OwnedTensor::zeros(DType::kF64, {N, C});
  OwnedTensor mean = OwnedTensor::zeros(DType::kF64, {N}),
              rstd = OwnedTensor::zeros(DType::kF64, {N});
  ops::layernorm_forward(ctx, out, mean, rstd, in, w, b, kEps);
  OwnedTensor din = OwnedTensor::zeros(DType::kF64, {N, C});
  OwnedTensor dw = OwnedTensor::zeros(DType::kF64, {C}), db = OwnedTensor::zeros(DType::kF64, {C});
  ops::layernorm_backward(ctx, din, dw, db, dout, in, w, mean, rstd);
  const std::vector<double> din1 = to_vector(din), dw1 = to_vector(dw), db1 = to_vector(db);
  ops::layernorm_backward(ctx, din, dw, db, dout, in, w, mean, rstd);
  std::vector<double> dw2 = dw1, db2 = db1;
  for (double& v : dw2) v *= 2;
  for (double& v : db2) v *= 2;
  EXPECT_LT(rel_error(to_vector(dw), dw2), 1e-15);
  EXPECT_LT(rel_error(to_vector(db), db2), 1e-15);
  EXPECT_EQ(to_vector(din), din1);  // assigned, not accumulated
  // dbias may be undefined (LayerNorm without bias); dweight still accumulates the same.
  OwnedTensor dw3 = OwnedTensor::zeros(DType::kF64, {C});
  ops::layernorm_backward(ctx, din, dw3, Tensor(), dout, in, w, mean, rstd);
  EXPECT_LT(rel_error(to_vector(dw3), dw1), 1e-15);
}

TEST(LayerNorm, Fp32MatchesFp64) {
  DeviceContext ctx = DeviceContext::cpu();
  const Shape s{3, 7, 13};
  const int64_t C = 13, N = 21;
  OwnedTensor tensors[2][11];  // [fp64, fp32] x {in, w, b, dout, out, mean, rstd, din, dw, db}
  for (int k = 0; k < 2; ++k) {
    const DType d = k == 0 ? DType::kF64 : DType::kF32;
    OwnedTensor* t = tensors[k];
    t[0] = shifted_input(d, s, 16);
    t[1] = convert(random_tensor(DType::kF64, {C}, 17), d);
    t[2] = convert(random_tensor(DType::kF64, {C}, 18), d);
    t[3] = convert(random_tensor(DType::kF64, s, 19), d);
    t[4] = OwnedTensor::zeros(d, s);
    t[5] = OwnedTensor::zeros(d, {N});
    t[6] = OwnedTensor::zeros(d, {N});
    t[7] = OwnedTensor::zeros(d, s);
    t[8] = OwnedTensor::zeros(d, {C});
    t[9] = OwnedTensor::zeros(d, {C});
    ops::layernorm_forward(ctx, t[4], t[5], t[6], t[0], t[1], t[2], kEps);
    ops::layernorm_backward(ctx, t[7], t[8], t[9], t[3], t[0], t[1], t[5], t[6]);
  }
  for (int i = 4; i <= 9; ++i)
    EXPECT_LT(rel_error(to_vector(tensors[1][i]), to_vector(tensors[0][i])), 1e-5)
        << "tensor " << i;
}

TEST(LayerNorm, BadShapes) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor in = random_tensor(DType::kF32, {4, 13}, 1),
              out = random_tensor(DType::kF32, {4, 13}, 2);
  OwnedTensor w = random_tensor(DType::kF32, {13}, 3), w12 = random_tensor(DType::kF32, {12}, 4);
  OwnedTensor stat = OwnedTensor::zeros(DType::kF32, {4}),
              stat5 = OwnedTensor::zeros(DType::kF32, {5});
  EXPECT_SHARDLM_ERROR(ops::layernorm_forward(ctx, out, stat, stat, in, w12, w12, kEps),
                       ErrorKind::kInvalidArgument, "weight has shape [12]");
  EXPECT_SHARDLM_ERROR(ops::layernorm_forward(ctx, out, stat5, stat, in, w, w, kEps),
                       ErrorKind::kInvalidArgument, "mean has shape [5]");
  OwnedTensor out_bad = OwnedTensor::zeros(DType::kF32, {4, 12});
  EXPECT_SHARDLM_ERROR(ops::layernorm_forward(ctx, out_bad, stat, stat, in, w, w, kEps),
                       ErrorKind::kInvalidArgument, "layernorm_forward: out");
  OwnedTensor w64 = random_tensor(DType::kF64, {13}, 5);
  EXPECT_SHARDLM_ERROR(ops::layernorm_forward(ctx, out, stat, stat, in, w64, w, kEps),
                       ErrorKind::kInvalidArgument, "fp64");
  EXPECT_SHARDLM_ERROR(ops::layernorm_backward(ctx, out_bad, w, w, out, in, w, stat, stat),
                       ErrorKind::kInvalidArgument, "din");
}

}  // namespace
}  // namespace shardlm
