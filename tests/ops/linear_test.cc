// Tests of linear_forward / linear_backward (OpenBLAS GEMM, weight [OC, IC]) against naive fp64
// loops, finite differences, fp32-vs-fp64 agreement, the accumulation rule (dweight and dbias
// +=, din =) and shape validation.
#include <gtest/gtest.h>

#include <algorithm>
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

std::vector<double> reference(const Tensor& in, const Tensor& w, const Tensor* bias) {
  const int64_t OC = w.size(0), IC = w.size(1), N = in.numel() / IC;
  const std::vector<double> x = to_vector(in), wv = to_vector(w);
  const std::vector<double> b = bias ? to_vector(*bias) : std::vector<double>(OC, 0.0);
  std::vector<double> out(N * OC);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < OC; ++o) {
      double s = b[o];
      for (int64_t i = 0; i < IC; ++i) s += x[n * IC + i] * wv[o * IC + i];
      out[n * OC + o] = s;
    }
  return out;
}

// Error of `got` against the fp64 reference, per element, in units of the dot product's
// rounding bound IC * eps * (|b| + sum |x_i w_i|): a norm-relative check on a one-element output
// whose terms cancel would ask for more than any summation order can give.
double worst_in_dot_bounds(const std::vector<double>& got, const Tensor& in, const Tensor& w,
                           const Tensor* bias) {
  const int64_t OC = w.size(0), IC = w.size(1), N = in.numel() / IC;
  const std::vector<double> want = reference(in, w, bias);
  const std::vector<double> x = to_vector(in), wv = to_vector(w);
  const std::vector<double> b = bias ? to_vector(*bias) : std::vector<double>(OC, 0.0);
  double worst = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < OC; ++o) {
      double magnitude = std::abs(b[o]);
      for (int64_t i = 0; i < IC; ++i) magnitude += std::abs(x[n * IC + i] * wv[o * IC + i]);
      const double bound = static_cast<double>(IC + 1) * 0x1p-52 * magnitude;
      worst = std::max(worst, std::abs(got[n * OC + o] - want[n * OC + o]) / bound);
    }
  return worst;
}

struct LinearCase {
  std::vector<int64_t> in_shape;  // [..., IC]
  int64_t OC;
};

class LinearShapes : public ::testing::TestWithParam<LinearCase> {};

TEST_P(LinearShapes, ForwardMatchesReference) {
  DeviceContext ctx = DeviceContext::cpu();
  const Shape s(GetParam().in_shape);
  const int64_t IC = s[-1], OC = GetParam().OC, N = s.numel() / IC;
  OwnedTensor in = random_tensor(DType::kF64, s, 1), w = random_tensor(DType::kF64, {OC, IC}, 2);
  OwnedTensor b = random_tensor(DType::kF64, {OC}, 3);
  OwnedTensor out = random_tensor(DType::kF64, {N, OC}, 4, 1e3);  // garbage
  ops::linear_forward(ctx, out, in, w, b);
  EXPECT_LE(worst_in_dot_bounds(to_vector(out), in, w, &b.view()), 1.0);
  ops::linear_forward(ctx, out, in, w, Tensor());
  EXPECT_LE(worst_in_dot_bounds(to_vector(out), in, w, nullptr), 1.0);
}

TEST_P(LinearShapes, BackwardMatchesFiniteDifferences) {
  DeviceContext ctx = DeviceContext::cpu();
  const Shape s(GetParam().in_shape);
  const int64_t IC = s[-1], OC = GetParam().OC, N = s.numel() / IC;
  OwnedTensor in = random_tensor(DType::kF64, s, 5), w = random_tensor(DType::kF64, {OC, IC}, 6);
  OwnedTensor b = random_tensor(DType::kF64, {OC}, 7);
  OwnedTensor dout = random_tensor(DType::kF64, {N, OC}, 8);
  OwnedTensor out = OwnedTensor::zeros(DType::kF64, {N, OC});
  auto loss = [&] {
    ops::linear_forward(ctx, out, in, w, b);
    return dot(out, dout);
  };
  OwnedTensor din = random_tensor(DType::kF64, s, 9, 1e3);  // garbage: must be overwritten
  OwnedTensor dw = OwnedTensor::zeros(DType::kF64, {OC, IC}),
              db = OwnedTensor::zeros(DType::kF64, {OC});
  ops::linear_backward(ctx, din, dw, db, dout, in, w);
  testing::expect_gradient("din", in.view(), loss, din);
  testing::expect_gradient("dweight", w.view(), loss, dw);
  testing::expect_gradient("dbias", b.view(), loss, db);
}

INSTANTIATE_TEST_SUITE_P(Shapes, LinearShapes,
                         ::testing::Values(LinearCase{{2, 7, 13}, 11}, LinearCase{{5, 1}, 3},
                                           LinearCase{{1, 6}, 1}, LinearCase{{9, 4}, 17}));

TEST(Linear, ParameterGradientsAccumulateDinIsAssignedOrSkipped) {
  DeviceContext ctx = DeviceContext::cpu();
  const int64_t N = 7, IC = 13, OC = 5;
  OwnedTensor in = random_tensor(DType::kF64, {N, IC}, 10),
              w = random_tensor(DType::kF64, {OC, IC}, 11);
  OwnedTensor dout = random_tensor(DType::kF64, {N, OC}, 12);
  OwnedTensor din = OwnedTensor::zeros(DType::kF64, {N, IC});
  OwnedTensor dw = OwnedTensor::zeros(DType::kF64, {OC, IC}),
              db = OwnedTensor::zeros(DType::kF64, {OC});
  ops::linear_backward(ctx, din, dw, db, dout, in, w);
  const std::vector<double> din1 = to_vector(din), dw1 = to_vector(dw), db1 = to_vector(db);
  ops::linear_backward(ctx, din, dw, db, dout, in, w);
  std::vector<double> dw2 = dw1, db2 = db1;
  for (double& v : dw2) v *= 2;
  for (double& v : db2) v *= 2;
  EXPECT_LT(rel_error(to_vector(dw), dw2), 1e-15);
  EXPECT_LT(rel_error(to_vector(db), db2), 1e-15);
  EXPECT_EQ(to_vector(din), din1);

  // din / dbias undefined: skipped; dweight still accumulates.
  OwnedTensor dw3 = OwnedTensor::zeros(DType::kF64, {OC, IC});
  ops::linear_backward(ctx, Tensor(), dw3, Tensor(), dout, in, w);
  EXPECT_LT(rel_error(to_vector(dw3), dw1), 1e-15);
}

TEST(Linear, Fp32MatchesFp64) {
  DeviceContext ctx = DeviceContext::cpu();
  const int64_t N = 21, IC = 37, OC = 13;
  std::vector<double> results[2][4];
  for (int k = 0; k < 2; ++k) {
    const DType d = k == 0 ? DType::kF64 : DType::kF32;
    OwnedTensor in = convert(random_tensor(DType::kF64, {N, IC}, 13), d);
    OwnedTensor w = convert(random_tensor(DType::kF64, {OC, IC}, 14), d);
    OwnedTensor b = convert(random_tensor(DType::kF64, {OC}, 15), d);
    OwnedTensor dout = convert(random_tensor(DType::kF64, {N, OC}, 16), d);
    OwnedTensor out = OwnedTensor::zeros(d, {N, OC}), din = OwnedTensor::zeros(d, {N, IC});
    OwnedTensor dw = OwnedTensor::zeros(d, {OC, IC}), db = OwnedTensor::zeros(d, {OC});
    ops::linear_forward(ctx, out, in, w, b);
    ops::linear_backward(ctx, din, dw, db, dout, in, w);
    results[k][0] = to_vector(out);
    results[k][1] = to_vector(din);
    results[k][2] = to_vector(dw);
    results[k][3] = to_vector(db);
  }
  for (int i = 0; i < 4; ++i) EXPECT_LT(rel_error(results[1][i], results[0][i]), 1e-5) << i;
}

// linear_weight_grad: the weight gradient alone. In the activations' dtype it is
// linear_backward's dweight bit for bit (assigned from zero or accumulated); into fp64 from fp32
// activations it is that fp32 gradient converted and assigned or added: exactly what folding an
// fp32 gradient into an fp64 master gradient gives (gradient-accumulation fusion on the CPU).
TEST(Linear, WeightGradEqualsLinearBackwardsAndFoldsIntoAWiderGradient) {
  DeviceContext ctx = DeviceContext::cpu();
  const int64_t N = 9, IC = 11, OC = 6;
  for (DType d : {DType::kF32, DType::kF64}) {
    SCOPED_TRACE(dtype_name(d));
    OwnedTensor in = convert(random_tensor(DType::kF64, {N, IC}, 50), d);
    OwnedTensor w = convert(random_tensor(DType::kF64, {OC, IC}, 51), d);
    OwnedTensor dout = convert(random_tensor(DType::kF64, {N, OC}, 52), d);
    OwnedTensor stale = convert(random_tensor(DType::kF64, {OC, IC}, 53), d);
    OwnedTensor want = OwnedTensor::zeros(d, {OC, IC});
    ops::linear_backward(ctx, Tensor(), want, Tensor(), dout, in, w);
    OwnedTensor got = testing::clone(stale);
    ops::linear_weight_grad(ctx, got, dout, in, /*accumulate=*/false);
    EXPECT_EQ(to_vector(got), to_vector(want));
    ops::linear_backward(ctx, Tensor(), want, Tensor(), dout, in, w);  // now 2x
    ops::linear_weight_grad(ctx, got, dout, in, /*accumulate=*/true);
    EXPECT_EQ(to_vector(got), to_vector(want));
  }
  // fp32 activations into an fp64 gradient.
  OwnedTensor in = random_tensor(DType::kF32, {N, IC}, 54);
  OwnedTensor w = random_tensor(DType::kF32, {OC, IC}, 55);
  OwnedTensor dout = random_tensor(DType::kF32, {N, OC}, 56);
  OwnedTensor g32 = OwnedTensor::zeros(DType::kF32, {OC, IC});
  ops::linear_backward(ctx, Tensor(), g32, Tensor(), dout, in, w);
  const std::vector<double> g = to_vector(g32);
  OwnedTensor main = random_tensor(DType::kF64, {OC, IC}, 57);
  const std::vector<double> before = to_vector(main);
  ops::linear_weight_grad(ctx, main, dout, in, /*accumulate=*/true);
  std::vector<double> want = before;
  for (size_t i = 0; i < want.size(); ++i) want[i] += g[i];
  EXPECT_EQ(to_vector(main), want);
  ops::linear_weight_grad(ctx, main, dout, in, /*accumulate=*/false);
  EXPECT_EQ(to_vector(main), g);
  EXPECT_NE(g, std::vector<double>(g.size(), 0.0));  // not vacuous
}

TEST(Linear, WeightGradRejectsBadDtypesAndShapes) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor in = random_tensor(DType::kF64, {4, 13}, 1);
  OwnedTensor dout = random_tensor(DType::kF64, {4, 5}, 2);
  OwnedTensor dw32 = OwnedTensor::zeros(DType::kF32, {5, 13});  // narrower than the activations
  EXPECT_SHARDLM_ERROR(ops::linear_weight_grad(ctx, dw32, dout, in, false),
                       ErrorKind::kInvalidArgument, "wider master dtype");
  OwnedTensor dw_bad = OwnedTensor::zeros(DType::kF64, {5, 12});
  EXPECT_SHARDLM_ERROR(ops::linear_weight_grad(ctx, dw_bad, dout, in, false),
                       ErrorKind::kInvalidArgument, "does not end in IC = 12");
  OwnedTensor dout_bad = random_tensor(DType::kF64, {4, 6}, 3);
  OwnedTensor dw = OwnedTensor::zeros(DType::kF64, {5, 13});
  EXPECT_SHARDLM_ERROR(ops::linear_weight_grad(ctx, dw, dout_bad, in, false),
                       ErrorKind::kInvalidArgument, "dout has shape [4, 6]");
}

TEST(Linear, BadShapes) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor in = random_tensor(DType::kF32, {4, 13}, 1),
              w = random_tensor(DType::kF32, {5, 12}, 2);
  OwnedTensor w_ok = random_tensor(DType::kF32, {5, 13}, 3),
              out = OwnedTensor::zeros(DType::kF32, {4, 5});
  EXPECT_SHARDLM_ERROR(ops::linear_forward(ctx, out, in, w, Tensor()), ErrorKind::kInvalidArgument,
                       "linear_forward: weight must be [OC, IC] with IC = 13");
  OwnedTensor out_bad = OwnedTensor::zeros(DType::kF32, {3, 5});
  EXPECT_SHARDLM_ERROR(ops::linear_forward(ctx, out_bad, in, w_ok, Tensor()),
                       ErrorKind::kInvalidArgument, "out has shape [3, 5]");
  OwnedTensor bias_bad = OwnedTensor::zeros(DType::kF32, {4});
  EXPECT_SHARDLM_ERROR(ops::linear_forward(ctx, out, in, w_ok, bias_bad),
                       ErrorKind::kInvalidArgument, "bias");
  OwnedTensor dw_bad = OwnedTensor::zeros(DType::kF32, {13, 5});
  EXPECT_SHARDLM_ERROR(ops::linear_backward(ctx, in, dw_bad, Tensor(), out, in, w_ok),
                       ErrorKind::kInvalidArgument, "dweight has shape [13, 5]");
}

}  // namespace
}  // namespace shardlm
