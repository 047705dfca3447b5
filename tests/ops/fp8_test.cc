// Tests of the CPU fp8 ops (ops.h): abs_max, the scale rule, quantisation (codes and their
// transpose) against tensor/fp8.h's encoder on fp32 products, the scaled GEMM against a float64
// reference over the decoded codes, and the validation messages.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <string>

#include "shardlm/base/error.h"
#include "shardlm/ops/ops.h"
#include "shardlm/tensor/fp8.h"
#include "tests/testing/op_checks.h"
#include "tests/testing/tensors.h"

namespace shardlm {
namespace {

using testing::random_tensor;
using testing::rel_error;
using testing::to_vector;

OwnedTensor factor(float v) {
  OwnedTensor t = OwnedTensor::empty(DType::kF32, {1});
  t.view().data<float>()[0] = v;
  return t;
}
float value(const Tensor& t, int64_t i = 0) { return t.data<float>()[i]; }

class Fp8OpsTest : public ::testing::Test {
 protected:
  DeviceContext ctx_{Device::cpu()};
};

TEST_F(Fp8OpsTest, AbsMaxSkipsNanAndKeepsInfinity) {
  for (DType dt : {DType::kF32, DType::kF64}) {
    OwnedTensor x = random_tensor(dt, {37, 11}, 3);
    OwnedTensor amax = factor(-1.0f);
    ops::abs_max(ctx_, amax, x);
    double want = 0.0;
    for (double v : to_vector(x)) want = std::max(want, std::fabs(v));
    EXPECT_EQ(value(amax), static_cast<float>(want));
    // A planted negative extreme, then a NaN (skipped), then an infinity.
    if (dt == DType::kF32) {
      x.view().data<float>()[100] = -250.5f;
      ops::abs_max(ctx_, amax, x);
      EXPECT_EQ(value(amax), 250.5f);
      x.view().data<float>()[7] = NAN;
      ops::abs_max(ctx_, amax, x);
      EXPECT_EQ(value(amax), 250.5f);
      x.view().data<float>()[9] = -INFINITY;
      ops::abs_max(ctx_, amax, x);
      EXPECT_TRUE(std::isinf(value(amax)));
    }
  }
}

TEST_F(Fp8OpsTest, ScaleMapsAmaxToTheLargestFiniteValue) {
  OwnedTensor amax = OwnedTensor::empty(DType::kF32, {6});
  const float a[6] = {448.0f, 3.5f, 0.0f, 1e-40f, INFINITY, 57344.0f};
  for (int i = 0; i < 6; ++i) amax.view().data<float>()[i] = a[i];
  OwnedTensor scale = OwnedTensor::empty(DType::kF32, {6}), inv = OwnedTensor::empty(DType::kF32, {6});
  ops::fp8_scale_from_amax(ctx_, scale, inv, amax, DType::kF8E4M3, 0);
  EXPECT_EQ(value(scale, 0), 1.0f);
  EXPECT_EQ(value(scale, 1), 448.0f / 3.5f);
  EXPECT_EQ(value(inv, 1), 1.0f / (448.0f / 3.5f));
  EXPECT_EQ(value(scale, 2), 1.0f);  // an all-zero tensor
  EXPECT_EQ(value(scale, 3), FLT_MAX);  // the quotient overflows
  EXPECT_EQ(value(scale, 4), 0.0f);  // infinite amax: NaN codes downstream
  EXPECT_TRUE(std::isinf(value(inv, 4)));
  ops::fp8_scale_from_amax(ctx_, scale, inv, amax, DType::kF8E5M2, 2);
  EXPECT_EQ(value(scale, 5), 0.25f);  // 57344 / 57344 / 2^2
  EXPECT_EQ(value(scale, 1), 57344.0f / 3.5f / 4.0f);
  EXPECT_EQ(value(inv, 5), 4.0f);
}

TEST_F(Fp8OpsTest, QuantizeRoundsTheFp32ProductAndTransposes) {
  for (DType fmt : {DType::kF8E4M3, DType::kF8E5M2}) {
    for (DType dt : {DType::kF32, DType::kF64}) {
      const int64_t N = 13, C = 21;
      OwnedTensor x = random_tensor(dt, {N, C}, 11, 2.0);
      // A scale that pushes the tails past the largest finite value (saturation is exercised).
      const float s = static_cast<float>(fp8_max(fmt) / 3.0);
      OwnedTensor scale = factor(s);
      OwnedTensor q = OwnedTensor::empty(fmt, {N, C}), qt = OwnedTensor::empty(fmt, {C, N});
      ops::fp8_quantize(ctx_, q, qt, x, scale);
      const std::vector<double> xv = to_vector(x);
      const uint8_t* qc = static_cast<const uint8_t*>(q.view().raw());
      const uint8_t* qtc = static_cast<const uint8_t*>(qt.view().raw());
      int saturated = 0;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = 0; c < C; ++c) {
          const double v = dt == DType::kF32
                               ? static_cast<double>(static_cast<float>(xv[n * C + c]) * s)
                               : xv[n * C + c] * static_cast<double>(s);
          const uint8_t want = fp8_encode(fmt, v);
          ASSERT_EQ(qc[n * C + c], want) << n << "," << c;
          ASSERT_EQ(qtc[c * N + n], want) << n << "," << c;
          saturated += std::fabs(v) >= fp8_max(fmt);
        }
      EXPECT_GT(saturated, 0);
      // q_t alone.
      OwnedTensor qt2 = OwnedTensor::empty(fmt, {C, N});
      ops::fp8_quantize(ctx_, Tensor(), qt2, x, scale);
      EXPECT_EQ(std::memcmp(qt2.view().raw(), qt.view().raw(), N * C), 0);
    }
  }
}

// out = sa·sb·(A @ B^T) + bias (+ out0), from the decoded codes, in float64.
std::vector<double> gemm_reference(const Tensor& a, float sa, const Tensor& b, float sb,
                                   const std::vector<double>* bias, const std::vector<double>* out0) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(0);
  const uint8_t* ac = static_cast<const uint8_t*>(a.raw());
  const uint8_t* bc = static_cast<const uint8_t*>(b.raw());
  std::vector<double> out(M * N);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0.0;
      for (int64_t k = 0; k < K; ++k)
        s += fp8_decode(a.dtype(), ac[m * K + k]) * fp8_decode(b.dtype(), bc[n * K + k]);
      out[m * N + n] = double(sa) * double(sb) * s + (bias ? (*bias)[n] : 0.0) +
                       (out0 ? (*out0)[m * N + n] : 0.0);
    }
  return out;
}

TEST_F(Fp8OpsTest, GemmMatchesTheDecodedReference) {
  const int64_t M = 19, N = 23, K = 40;
  struct Case { DType fa, fb; };
  for (const Case c : {Case{DType::kF8E4M3, DType::kF8E4M3}, Case{DType::kF8E5M2, DType::kF8E4M3},
                       Case{DType::kF8E4M3, DType::kF8E5M2}}) {
    OwnedTensor sa = factor(1.0f / 37.0f), sb = factor(0.03125f);
    OwnedTensor a = OwnedTensor::empty(c.fa, {M, K}), b = OwnedTensor::empty(c.fb, {N, K});
    ops::fp8_quantize(ctx_, a, Tensor(), random_tensor(DType::kF32, {M, K}, 21, 30.0), factor(1.0f));
    ops::fp8_quantize(ctx_, b, Tensor(), random_tensor(DType::kF32, {N, K}, 22, 30.0), factor(1.0f));
    for (DType dt : {DType::kF32, DType::kF64}) {
      OwnedTensor bias = random_tensor(dt, {N}, 23);
      OwnedTensor out0 = random_tensor(dt, {M, N}, 24);
      const std::vector<double> bv = to_vector(bias), o0 = to_vector(out0);
      const double tol = dt == DType::kF32 ? 1e-6 : 1e-13;
      OwnedTensor out = random_tensor(dt, {M, N}, 25);  // overwritten
      ops::fp8_gemm(ctx_, out, a, sa, b, sb, Tensor(), false);
      EXPECT_LT(rel_error(to_vector(out), gemm_reference(a, value(sa), b, value(sb), nullptr, nullptr)), tol);
      ops::fp8_gemm(ctx_, out, a, sa, b, sb, bias, false);
      EXPECT_LT(rel_error(to_vector(out), gemm_reference(a, value(sa), b, value(sb), &bv, nullptr)), tol);
      OwnedTensor acc = testing::clone(out0);
      ops::fp8_gemm(ctx_, acc, a, sa, b, sb, Tensor(), true);
      EXPECT_LT(rel_error(to_vector(acc), gemm_reference(a, value(sa), b, value(sb), nullptr, &o0)), tol);
    }
  }
}

TEST_F(Fp8OpsTest, BadArgumentsAreNamed) {
  OwnedTensor a5 = OwnedTensor::empty(DType::kF8E5M2, {16, 16});
  OwnedTensor a4 = OwnedTensor::empty(DType::kF8E4M3, {16, 16});
  OwnedTensor b4 = OwnedTensor::empty(DType::kF8E4M3, {16, 32});
  OwnedTensor out = OwnedTensor::empty(DType::kF32, {16, 16});
  OwnedTensor s = factor(1.0f);
  constexpr ErrorKind kBad = ErrorKind::kInvalidArgument;
  EXPECT_SHARDLM_ERROR(ops::fp8_gemm(ctx_, out, a5, s, a5, s, Tensor(), false), kBad,
                       "both fp8_e5m2");
  EXPECT_SHARDLM_ERROR(ops::fp8_gemm(ctx_, out, a4, s, b4, s, Tensor(), false), kBad,
                       "must share K");
  EXPECT_SHARDLM_ERROR(ops::fp8_gemm(ctx_, out, out, s, a4, s, Tensor(), false), kBad,
                       "must hold fp8 codes");
  OwnedTensor x = random_tensor(DType::kF32, {4, 8}, 1);
  OwnedTensor q_wrong = OwnedTensor::empty(DType::kF8E4M3, {4, 8});
  EXPECT_SHARDLM_ERROR(ops::fp8_quantize(ctx_, Tensor(), q_wrong, x, s), kBad, "q_t");
  EXPECT_SHARDLM_ERROR(ops::fp8_quantize(ctx_, q_wrong, Tensor(), x, x), kBad, "one fp32 factor");
  OwnedTensor amax = factor(1.0f);
  EXPECT_SHARDLM_ERROR(ops::fp8_scale_from_amax(ctx_, amax, amax, amax, DType::kBF16, 0), kBad,
                       "format");
}

}  // namespace
}  // namespace shardlm
