// GPU tests of the fused cross-entropy: losses and lse forward, dlogits backward (with a
// loss-mask-like dlosses), odd and GPT-2-sized padded vocabularies, against the CPU backend.
#include "tests/ops/gpu_test_common.h"

namespace shardlm {
namespace {

using testing::expect_matches_reference;
using testing::poisoned_device;
using testing::random_ints;
using testing::random_tensor;
using testing::round_to;
using testing::to_device;

class CrossEntropyGpuTest : public GpuOpTest {};
SHARDLM_GPU_DTYPES(CrossEntropyGpuTest);

TEST_P(CrossEntropyGpuTest, ForwardBackwardMatchCpu) {
  const DType dt = dtype();
  for (const auto& [N, V] : {std::pair<int64_t, int64_t>{37, 1003}, {64, 50304}, {3, 7}}) {
    SCOPED_TRACE("N=" + std::to_string(N) + " V=" + std::to_string(V));
    const OwnedTensor logits = round_to(random_tensor(DType::kF32, {N, V}, 61, 3.0), dt);
    const OwnedTensor targets = random_ints({N}, static_cast<int32_t>(V), 62);
    const OwnedTensor dlosses = round_to(random_tensor(DType::kF32, {N}, 63, 0.1), dt);
    OwnedTensor losses = OwnedTensor::empty(DType::kF32, {N});
    OwnedTensor lse = OwnedTensor::empty(DType::kF32, {N});
    ops::cpu::cross_entropy_forward(cpu_, losses, lse, logits, targets);

    const OwnedTensor logits_d = to_device(logits, dt), targets_d = to_device(targets, DType::kI32);
    OwnedTensor losses_d = poisoned_device(dt, {N}), lse_d = poisoned_device(dt, {N});
    ops::cross_entropy_forward(gpu(), losses_d, lse_d, logits_d, targets_d);
    expect_matches_reference("cross_entropy_forward losses", gpu(), losses_d, losses, dt);
    expect_matches_reference("cross_entropy_forward lse", gpu(), lse_d, lse, dt);

    // The reference uses the exact fp32 lse; the GPU gets its own (dtype-rounded) saved lse.
    OwnedTensor dlogits = OwnedTensor::empty(DType::kF32, {N, V});
    ops::cpu::cross_entropy_backward(cpu_, dlogits, dlosses, logits, targets, lse);
    OwnedTensor dlogits_d = poisoned_device(dt, {N, V});
    ops::cross_entropy_backward(gpu(), dlogits_d, to_device(dlosses, dt), logits_d, targets_d,
                                lse_d);
    expect_matches_reference("cross_entropy_backward dlogits", gpu(), dlogits_d, dlogits, dt);
  }
}

}  // namespace
}  // namespace shardlm
