// Tests of GELU (tanh approximation) and SwiGLU forward/backward against naive fp64 formulas,
// finite differences, fp32-vs-fp64 agreement, din assignment and shape validation.
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

double gelu_ref(double x) {
  const double pi = 3.14159265358979323846;
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / pi) * (x + 0.044715 * std::pow(x, 3))));
}
double silu_ref(double x) { return x / (1.0 + std::exp(-x)); }

TEST(Gelu, ForwardMatchesFormula) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor in = random_tensor(DType::kF64, {7, 13}, 1, 3.0),
              out = random_tensor(DType::kF64, {7, 13}, 2);
  ops::gelu_forward(ctx, out, in);
  std::vector<double> expect = to_vector(in);
  for (double& v : expect) v = gelu_ref(v);
  EXPECT_LT(rel_error(to_vector(out), expect), 1e-14);
}

TEST(Gelu, BackwardMatchesFiniteDifferences) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor in = random_tensor(DType::kF64, {3, 7, 5}, 3, 2.0);
  OwnedTensor dout = random_tensor(DType::kF64, {3, 7, 5}, 4),
              out = OwnedTensor::zeros(DType::kF64, {3, 7, 5});
  auto loss = [&] {
    ops::gelu_forward(ctx, out, in);
    return dot(out, dout);
  };
  OwnedTensor din = random_tensor(DType::kF64, {3, 7, 5}, 5, 1e3);  // garbage
  ops::gelu_backward(ctx, din, dout, in);
  testing::expect_gradient("din", in.view(), loss, din);
}

TEST(Gelu, Fp32MatchesFp64) {
  DeviceContext ctx = DeviceContext::cpu();
  std::vector<double> res[2][2];
  for (int k = 0; k < 2; ++k) {
    const DType d = k == 0 ? DType::kF64 : DType::kF32;
    OwnedTensor in = convert(random_tensor(DType::kF64, {37, 13}, 6, 3.0), d);
    OwnedTensor dout = convert(random_tensor(DType::kF64, {37, 13}, 7), d);
    OwnedTensor out = OwnedTensor::zeros(d, {37, 13}), din = OwnedTensor::zeros(d, {37, 13});
    ops::gelu_forward(ctx, out, in);
    ops::gelu_backward(ctx, din, dout, in);
    res[k][0] = to_vector(out);
    res[k][1] = to_vector(din);
  }
  EXPECT_LT(rel_error(res[1][0], res[0][0]), 1e-6);
  EXPECT_LT(rel_error(res[1][1], res[0][1]), 1e-6);
}

TEST(SwiGlu, ForwardMatchesFormula) {
  DeviceContext ctx = DeviceContext::cpu();
  const int64_t N = 7, F = 13;
  OwnedTensor in = random_tensor(DType::kF64, {N, 2 * F}, 8, 2.0),
              out = random_tensor(DType::kF64, {N, F}, 9);
  ops::swiglu_forward(ctx, out, in);
  const std::vector<double> x = to_vector(in);
  std::vector<double> expect(N * F);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t f = 0; f < F; ++f)
      expect[n * F + f] = silu_ref(x[n * 2 * F + f]) * x[n * 2 * F + F + f];
  EXPECT_LT(rel_error(to_vector(out), expect), 1e-14);
}

TEST(SwiGlu, BackwardMatchesFiniteDifferences) {
  DeviceContext ctx = DeviceContext::cpu();
  const Shape in_shape{2, 5, 14}, out_shape{2, 5, 7};
  OwnedTensor in = random_tensor(DType::kF64, in_shape, 10, 2.0);
  OwnedTensor dout = random_tensor(DType::kF64, out_shape, 11),
              out = OwnedTensor::zeros(DType::kF64, out_shape);
  auto loss = [&] {
    ops::swiglu_forward(ctx, out, in);
    return dot(out, dout);
  };
  OwnedTensor din = random_tensor(DType::kF64, in_shape, 12, 1e3);  // garbage
  ops::swiglu_backward(ctx, din, dout, in);
  testing::expect_gradient("din", in.view(), loss, din);
}

TEST(SwiGlu, Fp32MatchesFp64) {
  DeviceContext ctx = DeviceContext::cpu();
  const int64_t N = 21, F = 11;
  std::vector<double> res[2][2];
  for (int k = 0; k < 2; ++k) {
    const DType d = k == 0 ? DType::kF64 : DType::kF32;
    OwnedTensor in = convert(random_tensor(DType::kF64, {N, 2 * F}, 13, 2.0), d);
    OwnedTensor dout = convert(random_tensor(DType::kF64, {N, F}, 14), d);
    OwnedTensor out = OwnedTensor::zeros(d, {N, F}), din = OwnedTensor::zeros(d, {N, 2 * F});
    ops::swiglu_forward(ctx, out, in);
    ops::swiglu_backward(ctx, din, dout, in);
    res[k][0] = to_vector(out);
    res[k][1] = to_vector(din);
  }
  EXPECT_LT(rel_error(res[1][0], res[0][0]), 1e-6);
  EXPECT_LT(rel_error(res[1][1], res[0][1]), 1e-6);
}

TEST(Tanh, ForwardMatchesFormulaAndBackwardFiniteDifferences) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor x = random_tensor(DType::kF64, {5, 7}, 31, 1.5);
  OwnedTensor y = OwnedTensor::zeros(DType::kF64, {5, 7});
  ops::tanh_forward(ctx, y, x);
  const std::vector<double> xs = to_vector(x), ys = to_vector(y);
  for (size_t i = 0; i < xs.size(); ++i) EXPECT_DOUBLE_EQ(ys[i], std::tanh(xs[i])) << i;
  OwnedTensor dy = random_tensor(DType::kF64, {5, 7}, 32);
  auto loss = [&] {
    ops::tanh_forward(ctx, y, x);
    return dot(y, dy);
  };
  OwnedTensor dx = random_tensor(DType::kF64, {5, 7}, 33, 1e3);  // garbage: assigned
  ops::tanh_backward(ctx, dx, dy, y);
  testing::expect_gradient("dx", x.view(), loss, dx, 1e-8);
  OwnedTensor bad = OwnedTensor::zeros(DType::kF64, {5, 6});
  EXPECT_SHARDLM_ERROR(ops::tanh_forward(ctx, bad, x), ErrorKind::kInvalidArgument, "tanh");
}

TEST(Activations, BadShapes) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor odd = random_tensor(DType::kF32, {4, 7}, 1),
              out = OwnedTensor::zeros(DType::kF32, {4, 3});
  EXPECT_SHARDLM_ERROR(ops::swiglu_forward(ctx, out, odd), ErrorKind::kInvalidArgument,
                       "swiglu_forward: in must be [N, 2F]");
  OwnedTensor in = random_tensor(DType::kF32, {4, 8}, 2);
  EXPECT_SHARDLM_ERROR(ops::swiglu_forward(ctx, out, in), ErrorKind::kInvalidArgument,
                       "out has shape [4, 3]");
  EXPECT_SHARDLM_ERROR(ops::gelu_forward(ctx, out, in), ErrorKind::kInvalidArgument,
                       "gelu_forward");
  OwnedTensor din_bad = OwnedTensor::zeros(DType::kF32, {4, 4});
  OwnedTensor dout = OwnedTensor::zeros(DType::kF32, {4, 4});
  EXPECT_SHARDLM_ERROR(ops::swiglu_backward(ctx, din_bad, dout, in), ErrorKind::kInvalidArgument,
                       "din");
}

}  // namespace
}  // namespace shardlm
