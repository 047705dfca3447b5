// GPU tests of linear_gelu_forward (cuBLASLt GELU_AUX(_BIAS) epilogue for bf16/fp16, or its
// GEMM + GELU fallback, always taken for fp32) and gelu_backward_bias_grad against the CPU
// backend: sizes that are not tile multiples, F both a multiple of 8 (epilogue path) and not
// (fallback), with and without bias, poisoned outputs, dbias accumulated onto random starting
// values.
#include "tests/ops/gpu_test_common.h"

namespace shardlm {
namespace {

using testing::poisoned_device;
using testing::random_tensor;
using testing::round_to;
using testing::to_device;

struct LinearGeluCase {
  int64_t N, IC, F;
  bool expect_epilogue;  // for bf16/fp16: the fused path must be taken
};

class LinearGeluGpuTest : public GpuOpTest {};
SHARDLM_GPU_DTYPES(LinearGeluGpuTest);

TEST_P(LinearGeluGpuTest, ForwardMatchesCpu) {
  const DType dt = dtype();
  for (const LinearGeluCase& c :
       {LinearGeluCase{67, 136, 96, true}, LinearGeluCase{67, 129, 95, false},
        LinearGeluCase{1, 8, 3, false}, LinearGeluCase{512, 768, 3072, true},
        LinearGeluCase{300, 1024, 256, true}, LinearGeluCase{33, 64, 200, true}}) {
    SCOPED_TRACE("N=" + std::to_string(c.N) + " IC=" + std::to_string(c.IC) +
                 " F=" + std::to_string(c.F));
    const OwnedTensor in = round_to(random_tensor(DType::kF32, {c.N, c.IC}, 41), dt);
    const OwnedTensor w = round_to(random_tensor(DType::kF32, {c.F, c.IC}, 42, 0.05), dt);
    const OwnedTensor bias = round_to(random_tensor(DType::kF32, {c.F}, 43), dt);
    const OwnedTensor in_d = to_device(in, dt), w_d = to_device(w, dt), b_d = to_device(bias, dt);
    for (bool with_bias : {true, false}) {
      SCOPED_TRACE(with_bias ? "bias" : "no bias");
      const Tensor b_ref = with_bias ? bias.view() : Tensor();
      const Tensor b_dev = with_bias ? b_d.view() : Tensor();
      OwnedTensor pre = OwnedTensor::empty(DType::kF32, {c.N, c.F});
      OwnedTensor out = OwnedTensor::empty(DType::kF32, {c.N, c.F});
      ops::cpu::linear_gelu_forward(cpu_, out, pre, in, w, b_ref);
      OwnedTensor pre_d = poisoned_device(dt, {c.N, c.F}), out_d = poisoned_device(dt, {c.N, c.F});
      const bool epilogue =
          ops::cuda::linear_gelu_uses_epilogue(gpu(), out_d, pre_d, in_d, w_d, b_dev);
      RecordProperty(std::string("epilogue_") + std::to_string(c.F) + (with_bias ? "_bias" : ""),
                     epilogue ? "yes" : "no");
      if (c.F % 8 != 0) {
        EXPECT_FALSE(epilogue) << "aux leading dimension must be a multiple of 8";
      }
      if (dt == DType::kF32) {
        EXPECT_FALSE(epilogue) << "fp32 keeps the exact GEMM + GELU path";
      } else if (c.expect_epilogue) {
        EXPECT_TRUE(epilogue) << "cuBLASLt GELU_AUX epilogue expected for this shape and dtype";
      }
      ops::linear_gelu_forward(gpu(), out_d, pre_d, in_d, w_d, b_dev);
      const std::string path = epilogue ? " (epilogue)" : " (fallback)";
      testing::expect_matches_reference("linear_gelu_forward pre" + path, gpu(), pre_d, pre, dt);
      testing::expect_matches_reference("linear_gelu_forward out" + path, gpu(), out_d, out, dt);
    }
  }
}

TEST_P(LinearGeluGpuTest, GeluBackwardBiasGradMatchesCpu) {
  const DType dt = dtype();
  const std::vector<std::pair<int64_t, int64_t>> sizes = {
      {67, 96}, {1, 3}, {512, 3072}, {300, 257}, {4099, 1024}};  // 4099: the 4-row unrolled loop
  for (const auto& [N, F] : sizes) {
    SCOPED_TRACE("N=" + std::to_string(N) + " F=" + std::to_string(F));
    const OwnedTensor pre = round_to(random_tensor(DType::kF32, {N, F}, 51, 2.0), dt);
    const OwnedTensor dout = round_to(random_tensor(DType::kF32, {N, F}, 52), dt);
    const OwnedTensor db0 = round_to(random_tensor(DType::kF32, {F}, 53), dt);
    const OwnedTensor pre_d = to_device(pre, dt), dout_d = to_device(dout, dt);

    OwnedTensor dpre = OwnedTensor::empty(DType::kF32, {N, F});
    OwnedTensor db = testing::clone(db0);
    ops::cpu::gelu_backward_bias_grad(cpu_, dpre, db, dout, pre);
    OwnedTensor dpre_d = poisoned_device(dt, {N, F});
    OwnedTensor db_d = to_device(db0, dt);
    ops::gelu_backward_bias_grad(gpu(), dpre_d, db_d, dout_d, pre_d);
    testing::expect_matches_reference("gelu_backward_bias_grad dpre", gpu(), dpre_d, dpre, dt);
    testing::expect_matches_reference("gelu_backward_bias_grad dbias (+=)", gpu(), db_d, db, dt);

    // In place (dpre aliases dout), as the MLP backward calls it.
    OwnedTensor inplace_d = to_device(dout, dt);
    OwnedTensor db2_d = to_device(db0, dt);
    ops::gelu_backward_bias_grad(gpu(), inplace_d, db2_d, inplace_d, pre_d);
    testing::expect_matches_reference("gelu_backward_bias_grad dpre (in place)", gpu(), inplace_d,
                                      dpre, dt);
    testing::expect_matches_reference("gelu_backward_bias_grad dbias (in place)", gpu(), db2_d, db,
                                      dt);

    // Without dbias: GELU's backward alone.
    OwnedTensor dpre2_d = poisoned_device(dt, {N, F});
    ops::gelu_backward_bias_grad(gpu(), dpre2_d, Tensor(), dout_d, pre_d);
    testing::expect_matches_reference("gelu_backward_bias_grad dpre (no dbias)", gpu(), dpre2_d,
                                      dpre, dt);
  }
}

}  // namespace
}  // namespace shardlm
