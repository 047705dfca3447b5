// GPU tests of the elementwise ops and reductions against the CPU backend, plus argument errors
// of the CUDA backend (wrong device, unsupported dtype, missing backend state).
#include <cmath>
#include <limits>

#include "tests/ops/gpu_test_common.h"

namespace shardlm {
namespace {

using testing::poisoned_device;
using testing::random_tensor;
using testing::round_to;
using testing::to_device;
using testing::to_host;
using testing::to_vector;

class ElementwiseGpuTest : public GpuOpTest {};
SHARDLM_GPU_DTYPES(ElementwiseGpuTest);

TEST_P(ElementwiseGpuTest, FillAddScaleMatchCpu) {
  for (int64_t n : {7, 1000003}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    const OwnedTensor a = round_to(random_tensor(DType::kF32, {n}, 1), dtype());
    const OwnedTensor b = round_to(random_tensor(DType::kF32, {n}, 2), dtype());
    const OwnedTensor a_dev = to_device(a, dtype()), b_dev = to_device(b, dtype());

    OwnedTensor out_dev = poisoned_device(dtype(), {n});
    ops::add(gpu(), out_dev, a_dev, b_dev);
    OwnedTensor ref = OwnedTensor::empty(DType::kF32, {n});
    ops::cpu::add(cpu_, ref, a, b);
    testing::expect_matches_reference("add", gpu(), out_dev, ref, dtype());

    OwnedTensor acc_dev = to_device(a, dtype());
    ops::add_inplace(gpu(), acc_dev, b_dev);
    testing::expect_matches_reference("add_inplace", gpu(), acc_dev, ref, dtype());

    ops::scale_inplace(gpu(), acc_dev, -0.37);
    ops::cpu::scale_inplace(cpu_, ref, -0.37);
    testing::expect_matches_reference("scale_inplace", gpu(), acc_dev, ref, dtype());

    ops::fill(gpu(), out_dev, 1.75);
    ops::cpu::fill(cpu_, ref, 1.75);
    testing::expect_matches_reference("fill", gpu(), out_dev, ref, dtype());
  }
}

TEST_P(ElementwiseGpuTest, CopyConvertsBetweenDTypesAndDevices) {
  const int64_t n = 4099;
  const OwnedTensor x = round_to(random_tensor(DType::kF32, {n}, 3), dtype());
  const OwnedTensor x_dev = to_device(x, dtype());
  for (DType dst : {DType::kF32, DType::kBF16, DType::kF16}) {
    OwnedTensor y_dev = poisoned_device(dst, {n});
    ops::copy(gpu(), y_dev, x_dev);
    testing::expect_matches_reference(std::string("copy to ") + dtype_name(dst), gpu(), y_dev,
                                      round_to(x, dst), dst);
  }
  // Device -> host and host -> device in one dtype go through cudaMemcpy.
  OwnedTensor back = OwnedTensor::empty(dtype(), {n});
  ops::cuda::copy(gpu(), back, x_dev);
  EXPECT_EQ(testing::rel_error(back, x), 0.0) << "device -> host copy changed values";
}

TEST_P(ElementwiseGpuTest, SumSquaresAndAllFinite) {
  const int64_t n = 777777;
  const OwnedTensor x = round_to(random_tensor(DType::kF32, {n}, 4), dtype());
  const OwnedTensor x_dev = to_device(x, dtype());
  const double want = ops::cpu::sum_squares(cpu_, x);
  const double got = ops::sum_squares(gpu(), x_dev);
  EXPECT_NEAR(got, want, 1e-9 * want) << "sum_squares accumulates in double on both sides";
  EXPECT_EQ(ops::sum_squares(gpu(), x_dev), got) << "sum_squares must be deterministic";
  EXPECT_TRUE(ops::all_finite(gpu(), x_dev));

  // Poke one inf / NaN into the middle.
  for (float bad : {std::numeric_limits<float>::infinity(), std::nanf("")}) {
    OwnedTensor y = testing::clone(x);
    y.view().data<float>()[n / 2 + 1] = bad;
    EXPECT_FALSE(ops::all_finite(gpu(), to_device(y, dtype()))) << "value " << bad;
  }
}

// ---- errors -------------------------------------------------------------------------------------
TEST(ElementwiseGpuErrors, BadArgumentsThrowClearErrors) {
  if (!testing::cuda_device_available()) GTEST_SKIP() << "no CUDA device visible";
  DeviceContext gpu = testing::make_cuda_context();
  const OwnedTensor host = random_tensor(DType::kF32, {16}, 5);
  const OwnedTensor dev = to_device(host, DType::kF32);
  OwnedTensor out_dev = poisoned_device(DType::kF32, {16});
  // A CPU tensor in a CUDA op.
  EXPECT_SHARDLM_ERROR(ops::add(gpu, out_dev, dev, host), ErrorKind::kInvalidArgument, "cpu");
  // fp64 is not a CUDA compute dtype.
  OwnedTensor f64 = to_device(random_tensor(DType::kF64, {16}, 6), DType::kF64);
  EXPECT_SHARDLM_ERROR(ops::cuda::scale_inplace(gpu, f64, 2.0), ErrorKind::kInvalidArgument,
                       "fp64");
  // A CUDA context without init_cuda_backend.
  DeviceContext bare(Device::cuda(0));
  EXPECT_SHARDLM_ERROR(ops::cuda::scale_inplace(bare, out_dev, 2.0), ErrorKind::kInvalidArgument,
                       "init_cuda_backend");
}

}  // namespace
}  // namespace shardlm
