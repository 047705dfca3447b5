// GPU tests of linear (cuBLASLt) forward with and without bias, and backward (din assigned,
// dweight/dbias accumulated onto random starting values), against the CPU backend; and the
// weight gradient alone (linear_weight_grad), assigned or accumulated, into a gradient of the
// activations' dtype or, for bf16/fp16, into fp32 (gradient-accumulation fusion).
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

class LinearGpuTest : public GpuOpTest {};
SHARDLM_GPU_DTYPES(LinearGpuTest);

TEST_P(LinearGpuTest, ForwardBackwardMatchCpu) {
  const DType dt = dtype();
  for (const LinearCase& c : {LinearCase{67, 129, 95}, LinearCase{1, 8, 3},
                              LinearCase{512, 768, 2304}, LinearCase{300, 1024, 256},
                              LinearCase{4099, 64, 1024}}) {  // 4099 rows: dbias's unrolled loop
    SCOPED_TRACE("N=" + std::to_string(c.N) + " IC=" + std::to_string(c.IC) +
                 " OC=" + std::to_string(c.OC));
    const OwnedTensor in = round_to(random_tensor(DType::kF32, {c.N, c.IC}, 31), dt);
    const OwnedTensor w = round_to(random_tensor(DType::kF32, {c.OC, c.IC}, 32, 0.05), dt);
    const OwnedTensor bias = round_to(random_tensor(DType::kF32, {c.OC}, 33), dt);
    const OwnedTensor dout = round_to(random_tensor(DType::kF32, {c.N, c.OC}, 34), dt);
    const OwnedTensor dw0 = round_to(random_tensor(DType::kF32, {c.OC, c.IC}, 35), dt);
    const OwnedTensor db0 = round_to(random_tensor(DType::kF32, {c.OC}, 36), dt);
    const OwnedTensor in_d = to_device(in, dt), w_d = to_device(w, dt);

    for (bool with_bias : {true, false}) {
      OwnedTensor out = OwnedTensor::empty(DType::kF32, {c.N, c.OC});
      ops::cpu::linear_forward(cpu_, out, in, w, with_bias ? bias.view() : Tensor());
      OwnedTensor out_d = poisoned_device(dt, {c.N, c.OC});
      const OwnedTensor b_d = to_device(bias, dt);
      ops::linear_forward(gpu(), out_d, in_d, w_d, with_bias ? b_d.view() : Tensor());
      expect_matches_reference(with_bias ? "linear_forward (bias)" : "linear_forward (no bias)",
                               gpu(), out_d, out, dt);
    }

    OwnedTensor din = OwnedTensor::empty(DType::kF32, {c.N, c.IC});
    OwnedTensor dw = testing::clone(dw0), db = testing::clone(db0);
    ops::cpu::linear_backward(cpu_, din, dw, db, dout, in, w);
    OwnedTensor din_d = poisoned_device(dt, {c.N, c.IC});
    OwnedTensor dw_d = to_device(dw0, dt), db_d = to_device(db0, dt);
    ops::linear_backward(gpu(), din_d, dw_d, db_d, to_device(dout, dt), in_d, w_d);
    expect_matches_reference("linear_backward din", gpu(), din_d, din, dt);
    expect_matches_reference("linear_backward dweight (+=)", gpu(), dw_d, dw, dt);
    expect_matches_reference("linear_backward dbias (+=)", gpu(), db_d, db, dt);

    // din undefined: only the parameter gradients (accumulating a second time).
    ops::cpu::linear_backward(cpu_, Tensor(), dw, db, dout, in, w);
    ops::linear_backward(gpu(), Tensor(), dw_d, db_d, to_device(dout, dt), in_d, w_d);
    expect_matches_reference("linear_backward dweight (2nd +=)", gpu(), dw_d, dw, dt);
  }
}

TEST_P(LinearGpuTest, WeightGradIntoFp32OrOwnDtypeMatchesCpu) {
  const DType dt = dtype();
  for (const LinearCase& c : {LinearCase{67, 129, 95}, LinearCase{1, 8, 3},
                              LinearCase{512, 768, 2304}, LinearCase{4099, 64, 1024}}) {
    SCOPED_TRACE("N=" + std::to_string(c.N) + " IC=" + std::to_string(c.IC) +
                 " OC=" + std::to_string(c.OC));
    const OwnedTensor in = round_to(random_tensor(DType::kF32, {c.N, c.IC}, 41), dt);
    const OwnedTensor dout = round_to(random_tensor(DType::kF32, {c.N, c.OC}, 42), dt);
    const OwnedTensor dw0 = random_tensor(DType::kF32, {c.OC, c.IC}, 43);  // stale fp32 values
    const OwnedTensor in_d = to_device(in, dt), dout_d = to_device(dout, dt);
    // The CPU reference in fp32: the products of dt-rounded values, summed.
    OwnedTensor assigned = OwnedTensor::zeros(DType::kF32, {c.OC, c.IC});
    ops::cpu::linear_weight_grad(cpu_, assigned, dout, in, /*accumulate=*/false);
    OwnedTensor accumulated = testing::clone(dw0);
    ops::cpu::linear_weight_grad(cpu_, accumulated, dout, in, /*accumulate=*/true);

    // fp32 gradient (wide for bf16/fp16): assign overwrites poison, accumulate adds to dw0.
    OwnedTensor dw_d = poisoned_device(DType::kF32, {c.OC, c.IC});
    ops::linear_weight_grad(gpu(), dw_d, dout_d, in_d, /*accumulate=*/false);
    expect_matches_reference("linear_weight_grad fp32 (=)", gpu(), dw_d, assigned, DType::kF32);
    dw_d = to_device(dw0, DType::kF32);
    ops::linear_weight_grad(gpu(), dw_d, dout_d, in_d, /*accumulate=*/true);
    expect_matches_reference("linear_weight_grad fp32 (+=)", gpu(), dw_d, accumulated,
                             DType::kF32);
    // In the activations' dtype: rounded once, as linear_backward's dweight.
    OwnedTensor own_d = poisoned_device(dt, {c.OC, c.IC});
    ops::linear_weight_grad(gpu(), own_d, dout_d, in_d, /*accumulate=*/false);
    expect_matches_reference("linear_weight_grad own dtype (=)", gpu(), own_d, assigned, dt);
  }
}

TEST(LinearGpuArgs, WeightGradRejectsAnFp16GradientForBf16) {
  if (!testing::cuda_device_available()) GTEST_SKIP() << "no CUDA device visible";
  DeviceContext gpu = testing::make_cuda_context();
  const OwnedTensor in = to_device(random_tensor(DType::kF32, {4, 8}, 1), DType::kBF16);
  const OwnedTensor dout = to_device(random_tensor(DType::kF32, {4, 3}, 2), DType::kBF16);
  OwnedTensor dw = to_device(random_tensor(DType::kF32, {3, 8}, 3), DType::kF16);
  EXPECT_SHARDLM_ERROR(ops::linear_weight_grad(gpu, dw, dout, in, true),
                       ErrorKind::kInvalidArgument, "wider master dtype");
}

}  // namespace
}  // namespace shardlm
