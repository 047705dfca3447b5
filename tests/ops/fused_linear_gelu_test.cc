// Tests of linear + GELU fusion (linear_gelu_forward) and GELU backward fused with the bias
// gradient (gelu_backward_bias_grad): bit-equality with the unfused op sequences (fp32, fp64,
// with and without bias), a naive float64 reference, finite differences of the whole
// gelu(in W^T + b) chain for in, weight and bias, dbias accumulation, in-place dpre, and
// validation errors.
#include <gtest/gtest.h>

#include <cmath>

#include "shardlm/ops/ops.h"
#include "tests/testing/op_checks.h"
#include "tests/testing/tensors.h"

namespace shardlm {
namespace {

using testing::clone;
using testing::dot;
using testing::random_tensor;
using testing::rel_error;
using testing::to_vector;

double gelu_ref(double x) {
  const double pi = 3.14159265358979323846;
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / pi) * (x + 0.044715 * x * x * x)));
}

TEST(LinearGelu, ForwardEqualsUnfusedLinearThenGelu) {
  DeviceContext ctx = DeviceContext::cpu();
  const int64_t N = 13, IC = 19, F = 21;
  for (DType dt : {DType::kF32, DType::kF64}) {
    for (bool with_bias : {true, false}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + (with_bias ? " bias" : " no bias"));
      const OwnedTensor in = random_tensor(dt, {N, IC}, 1), w = random_tensor(dt, {F, IC}, 2, 0.3);
      const OwnedTensor b = random_tensor(dt, {F}, 3);
      const Tensor bias = with_bias ? b.view() : Tensor();
      OwnedTensor pre_ref = random_tensor(dt, {N, F}, 4), out_ref = random_tensor(dt, {N, F}, 5);
      ops::linear_forward(ctx, pre_ref, in, w, bias);
      ops::gelu_forward(ctx, out_ref, pre_ref);
      OwnedTensor pre = random_tensor(dt, {N, F}, 6), out = random_tensor(dt, {N, F}, 7);
      ops::linear_gelu_forward(ctx, out, pre, in, w, bias);
      EXPECT_EQ(to_vector(pre), to_vector(pre_ref));
      EXPECT_EQ(to_vector(out), to_vector(out_ref));
    }
  }
}

TEST(LinearGelu, ForwardMatchesFloat64Formula) {
  DeviceContext ctx = DeviceContext::cpu();
  const int64_t N = 7, IC = 11, F = 9;
  const OwnedTensor in = random_tensor(DType::kF64, {N, IC}, 11),
                    w = random_tensor(DType::kF64, {F, IC}, 12, 0.5),
                    b = random_tensor(DType::kF64, {F}, 13);
  OwnedTensor pre = OwnedTensor::zeros(DType::kF64, {N, F});
  OwnedTensor out = OwnedTensor::zeros(DType::kF64, {N, F});
  ops::linear_gelu_forward(ctx, out, pre, in, w, b);
  const std::vector<double> x = to_vector(in), wv = to_vector(w), bv = to_vector(b);
  std::vector<double> pre_ref(N * F), out_ref(N * F);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t f = 0; f < F; ++f) {
      double s = bv[f];
      for (int64_t k = 0; k < IC; ++k) s += x[n * IC + k] * wv[f * IC + k];
      pre_ref[n * F + f] = s;
      out_ref[n * F + f] = gelu_ref(s);
    }
  EXPECT_LT(rel_error(to_vector(pre), pre_ref), 1e-14);
  EXPECT_LT(rel_error(to_vector(out), out_ref), 1e-14);
}

TEST(GeluBackwardBiasGrad, EqualsUnfusedGeluBackwardThenBiasGrad) {
  DeviceContext ctx = DeviceContext::cpu();
  const int64_t N = 17, IC = 5, F = 23;
  for (DType dt : {DType::kF32, DType::kF64}) {
    SCOPED_TRACE(dtype_name(dt));
    const OwnedTensor pre = random_tensor(dt, {N, F}, 21, 2.0);
    const OwnedTensor dout = random_tensor(dt, {N, F}, 22);
    const OwnedTensor db0 = random_tensor(dt, {F}, 23);
    // Unfused: gelu_backward, then linear_backward's bias reduction alone.
    const OwnedTensor in = random_tensor(dt, {N, IC}, 24), w = random_tensor(dt, {F, IC}, 25);
    OwnedTensor dpre_ref = random_tensor(dt, {N, F}, 26), db_ref = clone(db0);
    ops::gelu_backward(ctx, dpre_ref, dout, pre);
    ops::linear_backward(ctx, Tensor(), Tensor(), db_ref, dpre_ref, in, w);
    OwnedTensor dpre = random_tensor(dt, {N, F}, 27), db = clone(db0);
    ops::gelu_backward_bias_grad(ctx, dpre, db, dout, pre);
    EXPECT_EQ(to_vector(dpre), to_vector(dpre_ref));
    EXPECT_EQ(to_vector(db), to_vector(db_ref));
    // dbias undefined: just GELU's backward.
    OwnedTensor dpre2 = random_tensor(dt, {N, F}, 28);
    ops::gelu_backward_bias_grad(ctx, dpre2, Tensor(), dout, pre);
    EXPECT_EQ(to_vector(dpre2), to_vector(dpre_ref));
    // In place on dout.
    OwnedTensor g = clone(dout), db3 = clone(db0);
    ops::gelu_backward_bias_grad(ctx, g, db3, g, pre);
    EXPECT_EQ(to_vector(g), to_vector(dpre_ref));
    EXPECT_EQ(to_vector(db3), to_vector(db_ref));
  }
}

TEST(LinearGelu, ChainGradientsMatchFiniteDifferences) {
  DeviceContext ctx = DeviceContext::cpu();
  const int64_t N = 6, IC = 5, F = 7;
  OwnedTensor in = random_tensor(DType::kF64, {N, IC}, 31);
  OwnedTensor w = random_tensor(DType::kF64, {F, IC}, 32, 0.5);
  OwnedTensor b = random_tensor(DType::kF64, {F}, 33);
  const OwnedTensor dout = random_tensor(DType::kF64, {N, F}, 34);
  OwnedTensor pre = OwnedTensor::zeros(DType::kF64, {N, F});
  OwnedTensor out = OwnedTensor::zeros(DType::kF64, {N, F});
  auto loss = [&] {
    ops::linear_gelu_forward(ctx, out, pre, in, w, b);
    return dot(out, dout);
  };
  loss();
  const OwnedTensor db0 = random_tensor(DType::kF64, {F}, 35);
  OwnedTensor dpre = random_tensor(DType::kF64, {N, F}, 36, 1e3);  // garbage: assigned
  OwnedTensor db = clone(db0);
  OwnedTensor din = random_tensor(DType::kF64, {N, IC}, 37, 1e3);
  OwnedTensor dw = OwnedTensor::zeros(DType::kF64, {F, IC});
  ops::gelu_backward_bias_grad(ctx, dpre, db, dout, pre);
  ops::linear_backward(ctx, din, dw, Tensor(), dpre, in, w);
  // db accumulated onto db0: subtract the start to get this call's gradient.
  std::vector<double> dbv = to_vector(db);
  const std::vector<double> db0v = to_vector(db0);
  for (size_t i = 0; i < dbv.size(); ++i) dbv[i] -= db0v[i];
  const OwnedTensor db_grad = testing::from_vector(DType::kF64, {F}, dbv);
  testing::expect_gradient("din", in.view(), loss, din);
  testing::expect_gradient("dweight", w.view(), loss, dw);
  testing::expect_gradient("dbias", b.view(), loss, db_grad);
}

TEST(LinearGelu, RejectsBadArguments) {
  DeviceContext ctx = DeviceContext::cpu();
  const int64_t N = 4, IC = 3, F = 5;
  OwnedTensor in = random_tensor(DType::kF32, {N, IC}, 41);
  OwnedTensor w = random_tensor(DType::kF32, {F, IC}, 42);
  OwnedTensor b = random_tensor(DType::kF32, {F}, 43);
  OwnedTensor bad_b = random_tensor(DType::kF32, {F + 1}, 44);
  OwnedTensor out = random_tensor(DType::kF32, {N, F}, 45);
  OwnedTensor pre = random_tensor(DType::kF32, {N, F}, 46);
  OwnedTensor narrow = random_tensor(DType::kF32, {N, F - 1}, 47);
  EXPECT_SHARDLM_ERROR(ops::linear_gelu_forward(ctx, out, pre, in, w, bad_b),
                       ErrorKind::kInvalidArgument, "bias");
  EXPECT_SHARDLM_ERROR(ops::linear_gelu_forward(ctx, narrow, pre, in, w, b),
                       ErrorKind::kInvalidArgument, "out");
  EXPECT_SHARDLM_ERROR(ops::linear_gelu_forward(ctx, out, out, in, w, b),
                       ErrorKind::kInvalidArgument, "disjoint");
  EXPECT_SHARDLM_ERROR(ops::linear_gelu_forward(ctx, out, pre, in, narrow, b),
                       ErrorKind::kInvalidArgument, "weight");
  EXPECT_SHARDLM_ERROR(ops::gelu_backward_bias_grad(ctx, out, bad_b, pre, pre),
                       ErrorKind::kInvalidArgument, "dbias");
  EXPECT_SHARDLM_ERROR(ops::gelu_backward_bias_grad(ctx, narrow, b, out, pre),
                       ErrorKind::kInvalidArgument, "dpre");
}

}  // namespace
}  // namespace shardlm
