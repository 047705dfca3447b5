// GPU tests of LayerNorm and RMSNorm, forward and backward, against the CPU backend. Backward
// gets the same saved statistics on both sides (the CPU's, rounded to the dtype), and the
// parameter gradients start from random values to check that they accumulate.
#include "tests/ops/gpu_test_common.h"

namespace shardlm {
namespace {

using testing::expect_matches_reference;
using testing::poisoned_device;
using testing::random_tensor;
using testing::round_to;
using testing::to_device;

struct NormCase {
  int64_t N, C;
};
// C = 8200: above the fused backward's 8192-column limit, the two-pass path.
const NormCase kNormCases[] = {{67, 771}, {5, 33}, {256, 1024}, {3, 4100}, {4, 8200}};

class NormGpuTest : public GpuOpTest {};
SHARDLM_GPU_DTYPES(NormGpuTest);

TEST_P(NormGpuTest, LayerNormForwardBackwardMatchCpu) {
  const DType dt = dtype();
  for (const NormCase& c : kNormCases) {
    SCOPED_TRACE("N=" + std::to_string(c.N) + " C=" + std::to_string(c.C));
    const OwnedTensor in = round_to(random_tensor(DType::kF32, {c.N, c.C}, 11, 2.0), dt);
    const OwnedTensor w = round_to(random_tensor(DType::kF32, {c.C}, 12), dt);
    const OwnedTensor bias = round_to(random_tensor(DType::kF32, {c.C}, 13), dt);
    const OwnedTensor dout = round_to(random_tensor(DType::kF32, {c.N, c.C}, 14), dt);
    const OwnedTensor dw0 = round_to(random_tensor(DType::kF32, {c.C}, 15), dt);
    const OwnedTensor db0 = round_to(random_tensor(DType::kF32, {c.C}, 16), dt);

    OwnedTensor out = OwnedTensor::empty(DType::kF32, {c.N, c.C});
    OwnedTensor mean = OwnedTensor::empty(DType::kF32, {c.N});
    OwnedTensor rstd = OwnedTensor::empty(DType::kF32, {c.N});
    ops::cpu::layernorm_forward(cpu_, out, mean, rstd, in, w, bias, 1e-5);

    const OwnedTensor in_d = to_device(in, dt), w_d = to_device(w, dt), b_d = to_device(bias, dt);
    OwnedTensor out_d = poisoned_device(dt, {c.N, c.C});
    OwnedTensor mean_d = poisoned_device(dt, {c.N}), rstd_d = poisoned_device(dt, {c.N});
    ops::layernorm_forward(gpu(), out_d, mean_d, rstd_d, in_d, w_d, b_d, 1e-5);
    expect_matches_reference("layernorm_forward out", gpu(), out_d, out, dt);
    expect_matches_reference("layernorm_forward mean", gpu(), mean_d, mean, dt);
    expect_matches_reference("layernorm_forward rstd", gpu(), rstd_d, rstd, dt);

    // Backward from the same (rounded) statistics on both sides.
    const OwnedTensor mean_r = round_to(mean, dt), rstd_r = round_to(rstd, dt);
    OwnedTensor din = OwnedTensor::empty(DType::kF32, {c.N, c.C});
    OwnedTensor dw = testing::clone(dw0), db = testing::clone(db0);
    ops::cpu::layernorm_backward(cpu_, din, dw, db, dout, in, w, mean_r, rstd_r);
    OwnedTensor din_d = poisoned_device(dt, {c.N, c.C});
    OwnedTensor dw_d = to_device(dw0, dt), db_d = to_device(db0, dt);
    ops::layernorm_backward(gpu(), din_d, dw_d, db_d, to_device(dout, dt), in_d, w_d,
                            to_device(mean_r, dt), to_device(rstd_r, dt));
    expect_matches_reference("layernorm_backward din", gpu(), din_d, din, dt);
    expect_matches_reference("layernorm_backward dweight (+=)", gpu(), dw_d, dw, dt);
    expect_matches_reference("layernorm_backward dbias (+=)", gpu(), db_d, db, dt);
  }
}

TEST_P(NormGpuTest, RmsNormForwardBackwardMatchCpu) {
  const DType dt = dtype();
  for (const NormCase& c : kNormCases) {
    SCOPED_TRACE("N=" + std::to_string(c.N) + " C=" + std::to_string(c.C));
    const OwnedTensor in = round_to(random_tensor(DType::kF32, {c.N, c.C}, 21, 1.5), dt);
    const OwnedTensor w = round_to(random_tensor(DType::kF32, {c.C}, 22), dt);
    const OwnedTensor dout = round_to(random_tensor(DType::kF32, {c.N, c.C}, 23), dt);
    const OwnedTensor dw0 = round_to(random_tensor(DType::kF32, {c.C}, 24), dt);

    OwnedTensor out = OwnedTensor::empty(DType::kF32, {c.N, c.C});
    OwnedTensor rstd = OwnedTensor::empty(DType::kF32, {c.N});
    ops::cpu::rmsnorm_forward(cpu_, out, rstd, in, w, 1e-6);
    const OwnedTensor in_d = to_device(in, dt), w_d = to_device(w, dt);
    OwnedTensor out_d = poisoned_device(dt, {c.N, c.C}), rstd_d = poisoned_device(dt, {c.N});
    ops::rmsnorm_forward(gpu(), out_d, rstd_d, in_d, w_d, 1e-6);
    expect_matches_reference("rmsnorm_forward out", gpu(), out_d, out, dt);
    expect_matches_reference("rmsnorm_forward rstd", gpu(), rstd_d, rstd, dt);

    const OwnedTensor rstd_r = round_to(rstd, dt);
    OwnedTensor din = OwnedTensor::empty(DType::kF32, {c.N, c.C});
    OwnedTensor dw = testing::clone(dw0);
    ops::cpu::rmsnorm_backward(cpu_, din, dw, dout, in, w, rstd_r);
    OwnedTensor din_d = poisoned_device(dt, {c.N, c.C}), dw_d = to_device(dw0, dt);
    ops::rmsnorm_backward(gpu(), din_d, dw_d, to_device(dout, dt), in_d, w_d,
                          to_device(rstd_r, dt));
    expect_matches_reference("rmsnorm_backward din", gpu(), din_d, din, dt);
    expect_matches_reference("rmsnorm_backward dweight (+=)", gpu(), dw_d, dw, dt);
  }
}

}  // namespace
}  // namespace shardlm
