// GPU tests of LayerNorm and RMSNorm, forward and backward, against the CPU backend. Backward
// gets the same saved statistics on both sides (the CPU's, rounded to the dtype), and the
// parameter gradients start from random values to check that they accumulate. The residual
// gradient added in the backward pass (dresidual) equals backward then ops::add bit for bit on
// the GPU, in place too, on the fused and the two-pass paths.
#include <cmath>
#include <cstring>
#include <span>

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
    ops::cpu::layernorm_backward(cpu_, din, dw, db, dout, in, w, mean_r, rstd_r, Tensor());
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
    ops::cpu::rmsnorm_backward(cpu_, din, dw, dout, in, w, rstd_r, Tensor());
    OwnedTensor din_d = poisoned_device(dt, {c.N, c.C}), dw_d = to_device(dw0, dt);
    ops::rmsnorm_backward(gpu(), din_d, dw_d, to_device(dout, dt), in_d, w_d,
                          to_device(rstd_r, dt));
    expect_matches_reference("rmsnorm_backward din", gpu(), din_d, din, dt);
    expect_matches_reference("rmsnorm_backward dweight (+=)", gpu(), dw_d, dw, dt);
  }
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// din = dresidual + the norm's input gradient: same bytes as the gradient then ops::add, into a
// separate buffer and in place (din == dresidual). backward(din, dresidual) runs one norm.
template <typename Backward>
void expect_residual_add_matches_add(DeviceContext& gpu, DType dt, const NormCase& c,
                                     const Backward& backward) {
  const OwnedTensor dres = to_device(round_to(random_tensor(DType::kF32, {c.N, c.C}, 31), dt), dt);
  OwnedTensor plain = poisoned_device(dt, {c.N, c.C});
  backward(plain.view(), Tensor());
  OwnedTensor want = poisoned_device(dt, {c.N, c.C});
  ops::add(gpu, want, dres, plain);
  OwnedTensor fused = poisoned_device(dt, {c.N, c.C});
  backward(fused.view(), dres.view());
  EXPECT_TRUE(same_bytes(testing::to_host(gpu, fused), testing::to_host(gpu, want)))
      << "residual added in the pass differs from backward + add";
  OwnedTensor in_place = to_device(testing::to_host(gpu, dres), dt);
  backward(in_place.view(), in_place.view());
  EXPECT_TRUE(same_bytes(testing::to_host(gpu, in_place), testing::to_host(gpu, want)))
      << "in place (din == dresidual) differs";
  EXPECT_FALSE(same_bytes(testing::to_host(gpu, plain), testing::to_host(gpu, want)));
}

TEST_P(NormGpuTest, ResidualGradientAddedInTheBackwardPass) {
  const DType dt = dtype();
  for (const NormCase& c : kNormCases) {
    SCOPED_TRACE("N=" + std::to_string(c.N) + " C=" + std::to_string(c.C));
    const OwnedTensor in = to_device(round_to(random_tensor(DType::kF32, {c.N, c.C}, 32), dt), dt);
    const OwnedTensor w = to_device(round_to(random_tensor(DType::kF32, {c.C}, 33), dt), dt);
    const OwnedTensor dout = to_device(round_to(random_tensor(DType::kF32, {c.N, c.C}, 34), dt), dt);
    const OwnedTensor mean = to_device(round_to(random_tensor(DType::kF32, {c.N}, 35, 0.1), dt), dt);
    OwnedTensor rstd_host = random_tensor(DType::kF32, {c.N}, 36, 0.1);
    for (float& r : std::span(rstd_host.view().data<float>(), static_cast<size_t>(c.N)))
      r = 1.0f + std::abs(r);
    const OwnedTensor rstd = to_device(round_to(rstd_host, dt), dt);
    OwnedTensor dw = poisoned_device(dt, {c.C}), db = poisoned_device(dt, {c.C});
    ops::fill(gpu(), dw, 0.0);
    ops::fill(gpu(), db, 0.0);
    expect_residual_add_matches_add(gpu(), dt, c, [&](Tensor din, const Tensor& dres) {
      ops::layernorm_backward(gpu(), din, dw, db, dout, in, w, mean, rstd, dres);
    });
    expect_residual_add_matches_add(gpu(), dt, c, [&](Tensor din, const Tensor& dres) {
      ops::rmsnorm_backward(gpu(), din, dw, dout, in, w, rstd, dres);
    });
  }
}

}  // namespace
}  // namespace shardlm
