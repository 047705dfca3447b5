// GPU tests of the cuBLASLt plan cache behind linear (ops/cuda/gemm_plan_cache.h): bf16
// linear_forward (with and without bias) and linear_backward (din assigned, dweight accumulated)
// against the CPU backend, with autotune on and off.
//   - A shape's second call runs its cached plan (no new plan) on new operands.
//   - Shapes that differ from a cached one in a single dimension get their own plans. They grow
//     one dimension at a time, so a smaller shape's plan reused by mistake leaves poisoned (NaN)
//     elements of the larger output or sums over too few k, and the comparison fails.
//   - Views 2 bytes off a 16-byte boundary get their own plans; views 16 bytes off share them.
//   - Toggling autotune keeps timed and heuristic plans apart for bf16, and fp32 is never timed.
#include <algorithm>

#include "shardlm/ops/cuda/cuda_context.h"
#include "tests/ops/gpu_test_common.h"

namespace shardlm {
namespace {

using testing::expect_matches_reference;
using testing::poisoned_device;
using testing::random_tensor;
using testing::round_to;
using testing::to_device;

struct LinearCase {
  int64_t N, IC, OC;
};

// GEMM plans one expect_linear_matches_cpu call makes for a new shape or alignment: forward with
// bias, forward without, din, dweight.
constexpr size_t kPlansPerCase = 4;

// A device tensor of `shape` at element `offset` of its buffer (keeps the buffer alive).
struct DeviceView {
  OwnedTensor buffer;
  Tensor view;
};

// host's values (fp32) in dtype, `offset` elements into a device buffer.
DeviceView device_at(const Tensor& host, DType dtype, int64_t offset) {
  OwnedTensor padded = OwnedTensor::zeros(DType::kF32, {host.numel() + offset});
  std::copy_n(host.data<float>(), host.numel(), padded.view().data<float>() + offset);
  DeviceView d{to_device(padded, dtype), Tensor()};
  d.view = d.buffer.view().flat_view(offset, host.shape());
  return d;
}

// A NaN-filled device tensor of `shape`, `offset` elements into its buffer.
DeviceView poisoned_at(DType dtype, const Shape& shape, int64_t offset) {
  DeviceView d{poisoned_device(dtype, {shape.numel() + offset}), Tensor()};
  d.view = d.buffer.view().flat_view(offset, shape);
  return d;
}

class GemmPlanCacheGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::cuda_device_available()) GTEST_SKIP() << "no CUDA device visible";
    gpu_ = std::make_unique<DeviceContext>(testing::make_cuda_context());
  }
  ops::cuda::CudaBackendState& state() { return ops::cuda::cuda_state(*gpu_); }
  size_t plans() { return state().gemm_plans().size(); }

  // Runs linear forward (bias and no bias) and backward of case c in dtype on views `offset`
  // elements into their buffers (the bias stays at offset 0: cuBLASLt takes no alignment
  // preference for it), inputs drawn from seed, and EXPECTs every result to match the CPU.
  void expect_linear_matches_cpu(const LinearCase& c, int64_t offset, uint64_t seed,
                                 DType dt = DType::kBF16) {
    SCOPED_TRACE(std::string(dtype_name(dt)) + " N=" + std::to_string(c.N) +
                 " IC=" + std::to_string(c.IC) + " OC=" + std::to_string(c.OC) +
                 " offset=" + std::to_string(offset) + " seed=" + std::to_string(seed));
    const OwnedTensor in = round_to(random_tensor(DType::kF32, {c.N, c.IC}, seed), dt);
    const OwnedTensor w = round_to(random_tensor(DType::kF32, {c.OC, c.IC}, seed + 1, 0.05), dt);
    const OwnedTensor bias = round_to(random_tensor(DType::kF32, {c.OC}, seed + 2), dt);
    const OwnedTensor dout = round_to(random_tensor(DType::kF32, {c.N, c.OC}, seed + 3), dt);
    const OwnedTensor dw0 = round_to(random_tensor(DType::kF32, {c.OC, c.IC}, seed + 4), dt);
    const DeviceView in_d = device_at(in, dt, offset), w_d = device_at(w, dt, offset);
    const DeviceView dout_d = device_at(dout, dt, offset);
    const OwnedTensor b_d = to_device(bias, dt);

    for (bool with_bias : {true, false}) {
      OwnedTensor out = OwnedTensor::empty(DType::kF32, {c.N, c.OC});
      ops::cpu::linear_forward(cpu_, out, in, w, with_bias ? bias.view() : Tensor());
      const DeviceView out_d = poisoned_at(dt, {c.N, c.OC}, offset);
      ops::linear_forward(*gpu_, out_d.view, in_d.view, w_d.view,
                          with_bias ? b_d.view() : Tensor());
      expect_matches_reference(with_bias ? "linear_forward (bias)" : "linear_forward (no bias)",
                               *gpu_, out_d.view, out, dt);
    }

    OwnedTensor din = OwnedTensor::empty(DType::kF32, {c.N, c.IC});
    OwnedTensor dw = testing::clone(dw0);
    ops::cpu::linear_backward(cpu_, din, dw, Tensor(), dout, in, w);
    const DeviceView din_d = poisoned_at(dt, {c.N, c.IC}, offset);
    const DeviceView dw_d = device_at(dw0, dt, offset);
    ops::linear_backward(*gpu_, din_d.view, dw_d.view, Tensor(), dout_d.view, in_d.view,
                         w_d.view);
    expect_matches_reference("linear_backward din", *gpu_, din_d.view, din, dt);
    expect_matches_reference("linear_backward dweight (+=)", *gpu_, dw_d.view, dw, dt);
  }

  DeviceContext cpu_ = DeviceContext::cpu();

 private:
  std::unique_ptr<DeviceContext> gpu_;
};

// The same tests with autotune on and off.
class GemmPlanCacheAutotuneGpuTest : public GemmPlanCacheGpuTest,
                                     public ::testing::WithParamInterface<bool> {
 protected:
  void SetUp() override {
    GemmPlanCacheGpuTest::SetUp();
    if (IsSkipped()) return;
    state().set_gemm_autotune(GetParam());
  }
};
INSTANTIATE_TEST_SUITE_P(Autotune, GemmPlanCacheAutotuneGpuTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return std::string(info.param ? "On" : "Off");
                         });

TEST_P(GemmPlanCacheAutotuneGpuTest, SecondCallOfAShapeRunsTheCachedPlan) {
  const LinearCase c{256, 384, 320};
  ASSERT_EQ(plans(), 0u);
  expect_linear_matches_cpu(c, 0, 10);
  EXPECT_EQ(plans(), kPlansPerCase);
  // New operand values and buffers: the cached plan must compute them, not replay anything.
  expect_linear_matches_cpu(c, 0, 20);
  EXPECT_EQ(plans(), kPlansPerCase);
}

TEST_P(GemmPlanCacheAutotuneGpuTest, ShapesDifferingInOneDimensionGetTheirOwnPlans) {
  // Each case grows one of N, IC, OC over the previous one (odd sizes: unaligned leading dims).
  const LinearCase cases[] = {{64, 96, 80}, {67, 96, 80}, {67, 129, 80}, {67, 129, 95}};
  size_t expected = 0;
  for (const LinearCase& c : cases) {
    expect_linear_matches_cpu(c, 0, 30 + expected);
    expected += kPlansPerCase;
    EXPECT_EQ(plans(), expected);
  }
  // Back to the first shape: its own plans, not the largest's.
  expect_linear_matches_cpu(cases[0], 0, 70);
  EXPECT_EQ(plans(), expected);
}

TEST_P(GemmPlanCacheAutotuneGpuTest, MisalignedViewsOfACachedShapeGetTheirOwnPlans) {
  const LinearCase c{64, 128, 96};
  expect_linear_matches_cpu(c, 0, 40);
  const size_t aligned = plans();
  // 8 bf16 elements = 16 bytes off a cudaMalloc (256-byte aligned) start: same key.
  expect_linear_matches_cpu(c, 8, 41);
  EXPECT_EQ(plans(), aligned);
  // 1 element = 2 bytes: A, B and D of every GEMM are misaligned, so every key is new.
  expect_linear_matches_cpu(c, 1, 42);
  EXPECT_EQ(plans(), aligned + kPlansPerCase);
  expect_linear_matches_cpu(c, 1, 43);
  EXPECT_EQ(plans(), aligned + kPlansPerCase);
  // And the aligned plans are still the ones aligned views get.
  expect_linear_matches_cpu(c, 0, 44);
  EXPECT_EQ(plans(), aligned + kPlansPerCase);
}

TEST_F(GemmPlanCacheGpuTest, AutotuneOnAndOffKeepSeparatePlans) {
  EXPECT_TRUE(state().gemm_autotune());  // the default
  const LinearCase c{128, 256, 192};
  expect_linear_matches_cpu(c, 0, 50);
  const size_t tuned = plans();
  state().set_gemm_autotune(false);
  expect_linear_matches_cpu(c, 0, 51);
  // Forward (bias, no bias) and din are timed under autotune; dweight (beta = 1) never is.
  EXPECT_EQ(plans(), tuned + 3);
  state().set_gemm_autotune(true);
  expect_linear_matches_cpu(c, 0, 52);
  EXPECT_EQ(plans(), tuned + 3);

  // fp32 takes the heuristic's first choice either way: one set of plans.
  expect_linear_matches_cpu(c, 0, 53, DType::kF32);
  const size_t with_f32 = plans();
  EXPECT_EQ(with_f32, tuned + 3 + kPlansPerCase);
  state().set_gemm_autotune(false);
  expect_linear_matches_cpu(c, 0, 54, DType::kF32);
  EXPECT_EQ(plans(), with_f32);
}

}  // namespace
}  // namespace shardlm
