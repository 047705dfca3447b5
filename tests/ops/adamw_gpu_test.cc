// GPU test of the fused AdamW step (fp32 flat buffers) against the CPU backend over several
// steps, with an odd length and a misaligned sub-range (scalar path).
#include "tests/ops/gpu_test_common.h"

namespace shardlm {
namespace {

using testing::expect_matches_reference;
using testing::random_tensor;
using testing::to_device;

TEST(AdamWGpuTest, StepsMatchCpu) {
  if (!testing::cuda_device_available()) GTEST_SKIP() << "no CUDA device visible";
  DeviceContext gpu = testing::make_cuda_context();
  DeviceContext cpu = DeviceContext::cpu();
  const int64_t n = 100003;
  OwnedTensor p = random_tensor(DType::kF32, {n}, 71);
  OwnedTensor m = random_tensor(DType::kF32, {n}, 72, 0.01);
  OwnedTensor v = random_tensor(DType::kF32, {n}, 73, 0.01);
  for (int64_t i = 0; i < n; ++i) v.view().data<float>()[i] *= v.view().data<float>()[i];  // >= 0
  OwnedTensor p_d = to_device(p, DType::kF32), m_d = to_device(m, DType::kF32),
              v_d = to_device(v, DType::kF32);
  for (int64_t step = 1; step <= 3; ++step) {
    const OwnedTensor g = random_tensor(DType::kF32, {n}, 80 + step);
    const ops::AdamWParams hp{1e-3, 0.9, 0.95, 1e-8, 0.1, step};
    ops::cpu::adamw_step(cpu, p, g, m, v, hp);
    // Whole range, then again on a sub-range starting one element in (not 16-byte aligned) is
    // covered by running the aligned and misaligned kernels on halves.
    const OwnedTensor g_d = to_device(g, DType::kF32);
    const int64_t split = 1 + n / 2;
    ops::adamw_step(gpu, p_d.view().flat_view(0, {split}), g_d.view().flat_view(0, {split}),
                    m_d.view().flat_view(0, {split}), v_d.view().flat_view(0, {split}), hp);
    ops::adamw_step(gpu, p_d.view().flat_view(split, {n - split}),
                    g_d.view().flat_view(split, {n - split}),
                    m_d.view().flat_view(split, {n - split}),
                    v_d.view().flat_view(split, {n - split}), hp);
  }
  expect_matches_reference("adamw params", gpu, p_d, p, DType::kF32);
  expect_matches_reference("adamw exp_avg", gpu, m_d, m, DType::kF32);
  expect_matches_reference("adamw exp_avg_sq", gpu, v_d, v, DType::kF32);
}

TEST(AdamWGpuTest, RejectsNonFp32) {
  if (!testing::cuda_device_available()) GTEST_SKIP() << "no CUDA device visible";
  DeviceContext gpu = testing::make_cuda_context();
  OwnedTensor x = to_device(random_tensor(DType::kF32, {64}, 90), DType::kBF16);
  EXPECT_SHARDLM_ERROR(ops::cuda::adamw_step(gpu, x, x, x, x, ops::AdamWParams{}),
                       ErrorKind::kInvalidArgument, "expected fp32");
}

}  // namespace
}  // namespace shardlm
