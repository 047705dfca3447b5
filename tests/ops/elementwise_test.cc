// Tests of the elementwise / utility ops and of the dispatcher's device and dtype rules.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "shardlm/ops/ops.h"
#include "tests/testing/op_checks.h"
#include "tests/testing/tensors.h"

namespace shardlm {
namespace {

using testing::convert;
using testing::random_tensor;
using testing::rel_error;
using testing::to_vector;

TEST(Elementwise, FillAllFloatStorageTypes) {
  DeviceContext ctx = DeviceContext::cpu();
  for (DType d : {DType::kF64, DType::kF32, DType::kBF16, DType::kF16}) {
    OwnedTensor t = random_tensor(d, {3, 7}, 1);
    ops::fill(ctx, t, -1.25);  // exactly representable in every format
    for (double v : to_vector(t)) EXPECT_EQ(v, -1.25) << dtype_name(d);
  }
}

TEST(Elementwise, CopySameDtypeIsExactAndConvertsBetweenFloats) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor src = random_tensor(DType::kF64, {5, 13}, 2);
  OwnedTensor same = OwnedTensor::zeros(DType::kF64, {65});  // same numel, other shape
  ops::copy(ctx, same, src);
  EXPECT_EQ(to_vector(same), to_vector(src));

  OwnedTensor f32 = OwnedTensor::zeros(DType::kF32, {5, 13});
  ops::copy(ctx, f32, src);
  const std::vector<double> s = to_vector(src), f = to_vector(f32);
  for (size_t i = 0; i < s.size(); ++i)
    EXPECT_EQ(f[i], static_cast<double>(static_cast<float>(s[i])));

  OwnedTensor bf16 = OwnedTensor::zeros(DType::kBF16, {5, 13});
  ops::copy(ctx, bf16, f32);
  const std::vector<double> b = to_vector(bf16);
  for (size_t i = 0; i < s.size(); ++i)
    EXPECT_EQ(b[i], bf16_bits_to_float(float_to_bf16_bits(static_cast<float>(f[i]))));

  OwnedTensor ints = testing::random_ints({4}, 100, 3);
  OwnedTensor ints2 = OwnedTensor::zeros(DType::kI32, {4});
  ops::copy(ctx, ints2, ints);
  EXPECT_EQ(to_vector(ints2), to_vector(ints));
  OwnedTensor f4 = OwnedTensor::zeros(DType::kF32, {4});
  EXPECT_SHARDLM_ERROR(ops::copy(ctx, f4, ints), ErrorKind::kUnsupported, "copy:");
  EXPECT_SHARDLM_ERROR(ops::copy(ctx, f32, f4), ErrorKind::kInvalidArgument, "copy:");
}

TEST(Elementwise, AddScaleAgainstLoops) {
  DeviceContext ctx = DeviceContext::cpu();
  for (DType d : {DType::kF64, DType::kF32}) {
    OwnedTensor a = random_tensor(d, {7, 13}, 4), b = random_tensor(d, {7, 13}, 5);
    OwnedTensor out = random_tensor(d, {7, 13}, 6);
    ops::add(ctx, out, a, b);
    const std::vector<double> va = to_vector(a), vb = to_vector(b);
    std::vector<double> expect(va.size());
    for (size_t i = 0; i < va.size(); ++i) expect[i] = va[i] + vb[i];
    EXPECT_LT(rel_error(to_vector(out), expect), d == DType::kF64 ? 1e-15 : 1e-7);

    ops::add_inplace(ctx, a, b);  // a = a + b
    EXPECT_LT(rel_error(to_vector(a), expect), d == DType::kF64 ? 1e-15 : 1e-7);

    ops::scale_inplace(ctx, a, -0.5);
    for (double& v : expect) v *= -0.5;
    EXPECT_LT(rel_error(to_vector(a), expect), d == DType::kF64 ? 1e-15 : 1e-7);
  }
}

TEST(Elementwise, SumSquaresAndAllFinite) {
  DeviceContext ctx = DeviceContext::cpu();
  for (DType d : {DType::kF64, DType::kF32}) {
    OwnedTensor x = random_tensor(d, {37, 13}, 7);
    double expect = 0;
    for (double v : to_vector(x)) expect += v * v;
    EXPECT_NEAR(ops::sum_squares(ctx, x), expect, 1e-12 * expect);
    EXPECT_TRUE(ops::all_finite(ctx, x));
    for (double bad :
         {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(),
          -std::numeric_limits<double>::infinity()}) {
      OwnedTensor y = testing::clone(x);
      Tensor last = y.view().reshape({y.view().numel()}).slice(200, 201);
      ops::fill(ctx, last, bad);
      EXPECT_FALSE(ops::all_finite(ctx, y)) << bad;
    }
  }
}

TEST(Dispatch, ShapeAndDtypeMismatchesAreInvalidArgument) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor a = random_tensor(DType::kF32, {3, 4}, 1), b = random_tensor(DType::kF32, {3, 5}, 2);
  OwnedTensor c = random_tensor(DType::kF64, {3, 4}, 3);
  EXPECT_SHARDLM_ERROR(ops::add(ctx, a, a, b), ErrorKind::kInvalidArgument, "[3, 5]");
  EXPECT_SHARDLM_ERROR(ops::add(ctx, a, a, c), ErrorKind::kInvalidArgument, "fp64");
  EXPECT_SHARDLM_ERROR(ops::add_inplace(ctx, a, Tensor()), ErrorKind::kInvalidArgument,
                       "x must be defined");
  OwnedTensor ints = testing::random_ints({3, 4}, 5, 1);
  EXPECT_SHARDLM_ERROR(ops::gelu_forward(ctx, a, ints), ErrorKind::kInvalidArgument, "int32");
}

TEST(Dispatch, LowPrecisionComputeIsUnsupportedOnCpu) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor x = OwnedTensor::zeros(DType::kBF16, {2, 3});
  OwnedTensor y = OwnedTensor::zeros(DType::kBF16, {2, 3});
  EXPECT_SHARDLM_ERROR(ops::gelu_forward(ctx, y, x), ErrorKind::kUnsupported, "bf16");
  EXPECT_SHARDLM_ERROR(ops::sum_squares(ctx, x), ErrorKind::kUnsupported, "sum_squares");
}

TEST(Dispatch, DeviceRules) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor host = random_tensor(DType::kF32, {2, 3}, 1);
  // A view that claims to live on a GPU; never dereferenced because validation fails first.
  Tensor fake_gpu(host.view().raw(), DType::kF32, {2, 3}, Device::cuda(0));
  EXPECT_SHARDLM_ERROR(ops::add(ctx, host, host, fake_gpu), ErrorKind::kInvalidArgument, "cuda:0");
#ifndef SHARDLM_WITH_CUDA
  DeviceContext gpu_ctx(Device::cuda(0));
  EXPECT_SHARDLM_ERROR(ops::gelu_forward(gpu_ctx, fake_gpu, fake_gpu), ErrorKind::kUnsupported,
                       "no CUDA backend");
#endif
}

}  // namespace
}  // namespace shardlm
