// GPU test of the fused AdamW step (fp32 flat buffers) against the CPU backend over several
// steps, with an odd length and a misaligned sub-range (scalar head), and of the compute copy
// written in the same pass (fp32/bf16/fp16): poisoned before the step, it must equal the device
// copy of the updated parameters bit for bit, leave its neighbours alone, and not change the
// parameters' own bits.
#include <cstring>

#include "tests/ops/gpu_test_common.h"

namespace shardlm {
namespace {

using testing::expect_matches_reference;
using testing::random_tensor;
using testing::round_to;
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

// Clipping folded into the step: the same bits as scale_inplace + adamw_step on the GPU, and the
// CPU's within fp32 tolerance; the gradients are not written.
TEST(AdamWGpuTest, GradScaleEqualsScaleInplaceThenStep) {
  if (!testing::cuda_device_available()) GTEST_SKIP() << "no CUDA device visible";
  DeviceContext gpu = testing::make_cuda_context();
  DeviceContext cpu = DeviceContext::cpu();
  const int64_t n = 50001;
  OwnedTensor p = random_tensor(DType::kF32, {n}, 91);
  OwnedTensor m = OwnedTensor::zeros(DType::kF32, {n}), v = OwnedTensor::zeros(DType::kF32, {n});
  OwnedTensor p_d = to_device(p, DType::kF32), m_d = to_device(m, DType::kF32),
              v_d = to_device(v, DType::kF32);
  OwnedTensor pr_d = to_device(p, DType::kF32), mr_d = to_device(m, DType::kF32),
              vr_d = to_device(v, DType::kF32);
  for (int64_t step = 1; step <= 3; ++step) {
    const OwnedTensor g = random_tensor(DType::kF32, {n}, 95 + step);
    const double coeff = 0.37 / step;
    ops::AdamWParams hp{1e-3, 0.9, 0.95, 1e-8, 0.1, step};
    ops::AdamWParams scaled = hp;
    scaled.grad_scale = coeff;
    ops::cpu::adamw_step(cpu, p, g, m, v, scaled);
    const OwnedTensor g_d = to_device(g, DType::kF32);
    OwnedTensor gs_d = to_device(g, DType::kF32);
    ops::scale_inplace(gpu, gs_d, coeff);
    ops::adamw_step(gpu, pr_d, gs_d, mr_d, vr_d, hp);
    ops::adamw_step(gpu, p_d, g_d, m_d, v_d, scaled);
    auto host = [&](const Tensor& t) {
      OwnedTensor h = OwnedTensor::empty(DType::kF32, {n});
      ops::copy(gpu, h, t);
      return h;
    };
    const OwnedTensor a = host(p_d), b = host(pr_d), ga = host(g_d);
    EXPECT_EQ(std::memcmp(a.view().raw(), b.view().raw(), a.view().nbytes()), 0) << step;
    EXPECT_EQ(std::memcmp(ga.view().raw(), g.view().raw(), g.view().nbytes()), 0) << step;
  }
  expect_matches_reference("adamw params (grad_scale)", gpu, p_d, p, DType::kF32);
  expect_matches_reference("adamw exp_avg (grad_scale)", gpu, m_d, m, DType::kF32);
}

class AdamWComputeCopyGpuTest : public GpuOpTest {};  // parameter: the compute dtype
SHARDLM_GPU_DTYPES(AdamWComputeCopyGpuTest);

TEST_P(AdamWComputeCopyGpuTest, EqualsStepThenCopyAndMatchesCpu) {
  // Offsets of the fp32 state views and of the compute view inside their buffers: equal (a
  // scalar head, then vectors) or relatively misaligned (scalar loop only).
  struct Offsets {
    int64_t state, moments, compute;
  };
  for (int64_t n : {1, 5, 4099, 100003}) {
    for (Offsets off : {Offsets{0, 0, 0}, Offsets{1, 1, 1}, Offsets{3, 3, 3}, Offsets{2, 2, 1},
                        Offsets{0, 1, 0}}) {
      SCOPED_TRACE("n=" + std::to_string(n) + " offsets " + std::to_string(off.state) + "/" +
                   std::to_string(off.moments) + "/" + std::to_string(off.compute));
      const int64_t total = n + 8;
      const auto view = [n](const OwnedTensor& t, int64_t o) { return t.view().flat_view(o, {n}); };
      OwnedTensor p = random_tensor(DType::kF32, {total}, 71 + n);
      OwnedTensor m = random_tensor(DType::kF32, {total}, 72 + n, 0.01);
      OwnedTensor v = random_tensor(DType::kF32, {total}, 73 + n, 0.01);
      for (int64_t i = 0; i < total; ++i) v.view().data<float>()[i] *= v.view().data<float>()[i];
      OwnedTensor p_d = to_device(p, DType::kF32), m_d = to_device(m, DType::kF32),
                  v_d = to_device(v, DType::kF32);
      // The same state stepped without the compute copy, to compare the parameters' bits.
      OwnedTensor p_plain = to_device(p, DType::kF32), m_plain = to_device(m, DType::kF32),
                  v_plain = to_device(v, DType::kF32);
      OwnedTensor c_d = testing::poisoned_device(dtype(), {total});
      for (int64_t step = 1; step <= 2; ++step) {
        const OwnedTensor g = random_tensor(DType::kF32, {total}, 80 + step);
        const OwnedTensor g_d = to_device(g, DType::kF32);
        const ops::AdamWParams hp{1e-3, 0.9, 0.95, 1e-8, 0.1, step};
        ops::cpu::adamw_step(cpu_, view(p, off.state), view(g, off.state), view(m, off.moments),
                             view(v, off.moments), hp);
        ops::adamw_step(gpu(), view(p_d, off.state), view(g_d, off.state),
                        view(m_d, off.moments), view(v_d, off.moments), hp,
                        view(c_d, off.compute));
        ops::adamw_step(gpu(), view(p_plain, off.state), view(g_d, off.state),
                        view(m_plain, off.moments), view(v_plain, off.moments), hp);
      }
      expect_matches_reference("adamw params", gpu(), p_d, p, DType::kF32);
      expect_matches_reference("adamw exp_avg", gpu(), m_d, m, DType::kF32);
      expect_matches_reference("adamw exp_avg_sq", gpu(), v_d, v, DType::kF32);
      const OwnedTensor p_host = testing::to_host(gpu(), p_d);
      const OwnedTensor plain_host = testing::to_host(gpu(), p_plain);
      EXPECT_EQ(std::memcmp(p_host.view().raw(), plain_host.view().raw(), p_host.view().nbytes()),
                0)
          << "writing the compute copy changed the fp32 parameters";
      // The compute copy is the device's own conversion of the updated parameters.
      OwnedTensor c_want = testing::poisoned_device(dtype(), {total});
      ops::copy(gpu(), view(c_want, off.compute), view(p_d, off.state));
      const OwnedTensor got = testing::to_host(gpu(), c_d), want = testing::to_host(gpu(), c_want);
      EXPECT_EQ(std::memcmp(got.view().raw(), want.view().raw(), got.view().nbytes()), 0)
          << "compute copy differs from copy(params) (or a poisoned neighbour was written)";
      expect_matches_reference("adamw compute copy", gpu(), view(c_d, off.compute),
                               round_to(view(p, off.state), dtype()), dtype());
    }
  }
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
