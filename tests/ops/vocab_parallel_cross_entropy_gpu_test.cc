// GPU tests of the vocab-parallel cross-entropy steps (max, partials, loss, backward) against the
// CPU backend: a vocabulary shard [start, start + VL) of a larger vocabulary, targets inside and
// outside the shard, per-row statistics in the logits' dtype and in fp32 (what the model uses
// under bf16/fp16), poisoned outputs.
#include "tests/ops/gpu_test_common.h"

namespace shardlm {
namespace {

using testing::expect_matches_reference;
using testing::poisoned_device;
using testing::random_ints;
using testing::random_tensor;
using testing::round_to;
using testing::to_device;

class VocabParallelCrossEntropyGpuTest : public GpuOpTest {};
SHARDLM_GPU_DTYPES(VocabParallelCrossEntropyGpuTest);

TEST_P(VocabParallelCrossEntropyGpuTest, StepsMatchCpu) {
  const DType dt = dtype();
  for (const DType st : {dt, DType::kF32}) {
    for (const auto& [N, VL] : {std::pair<int64_t, int64_t>{37, 1003}, {64, 12576}, {3, 7}}) {
      SCOPED_TRACE("N=" + std::to_string(N) + " VL=" + std::to_string(VL) + " stats " +
                   dtype_name(st));
      const int64_t start = VL;  // the second shard of a 3-shard vocabulary
      const OwnedTensor logits = round_to(random_tensor(DType::kF32, {N, VL}, 71, 3.0), dt);
      const OwnedTensor targets = random_ints({N}, static_cast<int32_t>(3 * VL), 72);
      const OwnedTensor logits_d = to_device(logits, dt);
      const OwnedTensor targets_d = to_device(targets, DType::kI32);

      OwnedTensor row_max = OwnedTensor::empty(DType::kF32, {N});
      ops::cpu::vocab_parallel_cross_entropy_max(cpu_, row_max, logits);
      OwnedTensor row_max_d = poisoned_device(st, {N});
      ops::vocab_parallel_cross_entropy_max(gpu(), row_max_d, logits_d);
      expect_matches_reference("max", gpu(), row_max_d, row_max, dt);

      // A global max a little above the shard's (as after the all-reduce).
      OwnedTensor gmax = testing::clone(row_max);
      for (int64_t n = 0; n < N; ++n) gmax.view().data<float>()[n] += 0.25f * (n % 3);
      gmax = round_to(gmax, st);
      OwnedTensor sum_exp = OwnedTensor::empty(DType::kF32, {N});
      OwnedTensor target_logit = OwnedTensor::empty(DType::kF32, {N});
      ops::cpu::vocab_parallel_cross_entropy_partials(cpu_, sum_exp, target_logit, logits,
                                                      targets, gmax, start);
      OwnedTensor sum_exp_d = poisoned_device(st, {N}), target_logit_d = poisoned_device(st, {N});
      ops::vocab_parallel_cross_entropy_partials(gpu(), sum_exp_d, target_logit_d, logits_d,
                                                 targets_d, to_device(gmax, st), start);
      expect_matches_reference("partials sum_exp", gpu(), sum_exp_d, sum_exp, dt);
      expect_matches_reference("partials target_logit", gpu(), target_logit_d, target_logit, dt);

      const OwnedTensor s_in = round_to(sum_exp, st), t_in = round_to(target_logit, st);
      OwnedTensor losses = OwnedTensor::empty(DType::kF32, {N}),
                  lse = OwnedTensor::empty(DType::kF32, {N});
      ops::cpu::vocab_parallel_cross_entropy_loss(cpu_, losses, lse, gmax, s_in, t_in);
      OwnedTensor losses_d = poisoned_device(st, {N}), lse_d = poisoned_device(st, {N});
      ops::vocab_parallel_cross_entropy_loss(gpu(), losses_d, lse_d, to_device(gmax, st),
                                             to_device(s_in, st), to_device(t_in, st));
      expect_matches_reference("loss losses", gpu(), losses_d, losses, st);
      expect_matches_reference("loss lse", gpu(), lse_d, lse, st);

      const OwnedTensor lse_in = round_to(lse, st);
      const OwnedTensor dlosses = round_to(random_tensor(DType::kF32, {N}, 73, 0.1), st);
      OwnedTensor dlogits = OwnedTensor::empty(DType::kF32, {N, VL});
      ops::cpu::vocab_parallel_cross_entropy_backward(cpu_, dlogits, dlosses, logits, targets,
                                                      lse_in, start);
      OwnedTensor dlogits_d = poisoned_device(dt, {N, VL});
      ops::vocab_parallel_cross_entropy_backward(gpu(), dlogits_d, to_device(dlosses, st),
                                                 logits_d, targets_d, to_device(lse_in, st), start);
      expect_matches_reference("backward dlogits", gpu(), dlogits_d, dlogits, dt);
    }
  }
}

TEST_P(VocabParallelCrossEntropyGpuTest, RejectsOtherStatsDtypes) {
  if (dtype() == DType::kF32) GTEST_SKIP() << "fp32 logits take fp32 statistics only";
  const OwnedTensor logits_d = to_device(random_tensor(DType::kF32, {4, 9}, 74), dtype());
  const DType other = dtype() == DType::kBF16 ? DType::kF16 : DType::kBF16;
  OwnedTensor row_max_d = poisoned_device(other, {4});
  EXPECT_SHARDLM_ERROR(ops::vocab_parallel_cross_entropy_max(gpu(), row_max_d, logits_d),
                       ErrorKind::kInvalidArgument, "or fp32");
}

}  // namespace
}  // namespace shardlm
