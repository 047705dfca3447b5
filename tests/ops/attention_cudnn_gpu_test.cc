// GPU tests of attention through cuDNN's fused flash-attention engines (cudnn_attention.h):
// forced to cuDNN ('cudnn' kernels), forward out/lse and backward dqkv against the CPU backend
// (outputs NaN-poisoned, so every element must be written), MHA / GQA / MQA, head dims 64 and
// 128, bf16 and fp16; the same calls under 'own' kernels must agree with cuDNN within the dtype
// tolerance; cases cuDNN does not take say why under 'cudnn' and fall back under 'auto'.
#include "shardlm/ops/cuda/cuda_context.h"
#include "shardlm/ops/cuda/cudnn_attention.h"
#include "tests/ops/gpu_test_common.h"

namespace shardlm {
namespace {

using ops::cuda::AttentionKernels;
using testing::expect_matches_reference;
using testing::poisoned_device;
using testing::random_tensor;
using testing::round_to;
using testing::to_device;

struct CudnnCase {
  int64_t B, T, NH, G, HS;
};
std::string describe(const CudnnCase& c) {
  return "B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) + " NH=" +
         std::to_string(c.NH) + " G=" + std::to_string(c.G) + " HS=" + std::to_string(c.HS);
}

const CudnnCase kCases[] = {
    {2, 128, 4, 4, 64},   // MHA
    {1, 256, 8, 2, 128},  // GQA, 4 query heads per group (Q gathered, dQ scattered)
    {2, 384, 6, 1, 64},   // MQA
    {1, 512, 4, 2, 128},  // GQA, several tiles
};

class AttentionCudnnGpuTest : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    if (!testing::cuda_device_available()) GTEST_SKIP() << "no CUDA device visible";
    gpu_ = std::make_unique<DeviceContext>(testing::make_cuda_context());
#ifndef SHARDLM_WITH_CUDNN
    GTEST_SKIP() << "built without cuDNN";
#endif
  }
  DeviceContext& gpu() { return *gpu_; }
  void use(AttentionKernels k) { ops::cuda::cuda_state(gpu()).set_attention_kernels(k); }
  DeviceContext cpu_ = DeviceContext::cpu();

 private:
  std::unique_ptr<DeviceContext> gpu_;
};

INSTANTIATE_TEST_SUITE_P(HalfDTypes, AttentionCudnnGpuTest,
                         ::testing::Values(DType::kBF16, DType::kF16),
                         ::shardlm::dtype_param_name);

TEST_P(AttentionCudnnGpuTest, ForwardBackwardMatchCpuAndOwnKernels) {
  const DType dt = GetParam();
  for (const CudnnCase& c : kCases) {
    SCOPED_TRACE(describe(c));
    const ops::AttentionShape shape{c.NH, c.G, c.HS};
    const int64_t W = c.G * (c.NH / c.G + 2) * c.HS;
    const Shape qkv_shape{c.B, c.T, W}, out_shape{c.B, c.T, c.NH * c.HS},
        lse_shape{c.B, c.NH, c.T};
    const OwnedTensor qkv = round_to(random_tensor(DType::kF32, qkv_shape, 301, 1.0), dt);
    const OwnedTensor dout = round_to(random_tensor(DType::kF32, out_shape, 302), dt);

    OwnedTensor out = OwnedTensor::empty(DType::kF32, out_shape);
    OwnedTensor lse = OwnedTensor::empty(DType::kF32, lse_shape);
    ops::cpu::attention_forward(cpu_, out, lse, qkv, shape, 0.0, {});
    const OwnedTensor out_r = round_to(out, dt);
    OwnedTensor dqkv = OwnedTensor::empty(DType::kF32, qkv_shape);
    ops::cpu::attention_backward(cpu_, dqkv, dout, qkv, out_r, lse, shape, 0.0, {});

    const OwnedTensor qkv_d = to_device(qkv, dt), dout_d = to_device(dout, dt);
    const OwnedTensor out_rd = to_device(out_r, dt), lse_d32 = to_device(lse, DType::kF32);
    OwnedTensor out_by[2], lse_by[2], dqkv_by[2];
    const AttentionKernels kernels[2] = {AttentionKernels::kCudnn, AttentionKernels::kOwn};
    for (int k = 0; k < 2; ++k) {
      SCOPED_TRACE(ops::cuda::attention_kernels_name(kernels[k]));
      use(kernels[k]);
      out_by[k] = poisoned_device(dt, out_shape);
      lse_by[k] = poisoned_device(DType::kF32, lse_shape);
      ops::attention_forward(gpu(), out_by[k], lse_by[k], qkv_d, shape, 0.0, {});
      expect_matches_reference("attention_forward out", gpu(), out_by[k], out, dt);
      expect_matches_reference("attention_forward lse", gpu(), lse_by[k], lse, dt);
      // Backward from the CPU's saved output and exact lse, so both kernels see equal inputs.
      dqkv_by[k] = poisoned_device(dt, qkv_shape);
      ops::attention_backward(gpu(), dqkv_by[k], dout_d, qkv_d, out_rd, lse_d32, shape, 0.0, {});
      expect_matches_reference("attention_backward dqkv", gpu(), dqkv_by[k], dqkv, dt);
    }
  }
}

TEST_P(AttentionCudnnGpuTest, UnsupportedCasesSayWhyOrFallBack) {
  const DType dt = GetParam();
  const ops::AttentionShape shape{2, 2, 64};
  const int64_t B = 1, T = 100;  // not a multiple of 128
  const Shape qkv_shape{B, T, 2 * 3 * 64}, out_shape{B, T, 2 * 64}, lse_shape{B, 2, T};
  const OwnedTensor qkv = round_to(random_tensor(DType::kF32, qkv_shape, 303, 1.0), dt);
  const OwnedTensor qkv_d = to_device(qkv, dt);
  OwnedTensor out_d = poisoned_device(dt, out_shape);
  OwnedTensor lse_d = poisoned_device(DType::kF32, lse_shape);
  use(AttentionKernels::kCudnn);
  EXPECT_SHARDLM_ERROR(ops::attention_forward(gpu(), out_d, lse_d, qkv_d, shape, 0.0, {}),
                       ErrorKind::kUnsupported, "not a multiple of 128");
  // 'auto' runs ShardLM's kernels instead and still matches the CPU.
  use(AttentionKernels::kAuto);
  ops::attention_forward(gpu(), out_d, lse_d, qkv_d, shape, 0.0, {});
  OwnedTensor out = OwnedTensor::empty(DType::kF32, out_shape);
  OwnedTensor lse = OwnedTensor::empty(DType::kF32, lse_shape);
  ops::cpu::attention_forward(cpu_, out, lse, qkv, shape, 0.0, {});
  expect_matches_reference("attention_forward out (fallback)", gpu(), out_d, out, dt);
}

}  // namespace
}  // namespace shardlm
