// GPU tests of linear (cuBLASLt) forward with and without bias, and backward (din assigned,
// dweight/dbias accumulated onto random starting values), against the CPU backend.
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

}  // namespace
}  // namespace shardlm
