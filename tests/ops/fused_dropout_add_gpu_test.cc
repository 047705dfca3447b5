// GPU tests of the fused residual-add + dropout against the CPU backend and against the unfused
// GPU sequence (dropout_forward + add, which it must equal bit for bit): several p, sizes that
// are not multiples of the 4-element Philox groups, position offsets that are not (scalar
// path) and are (vector path) group-aligned, a misaligned view, in-place use, the mask against
// the CPU's mask, and the backward.
#include <cstring>

#include "tests/ops/gpu_test_common.h"

namespace shardlm {
namespace {

using testing::poisoned_device;
using testing::random_tensor;
using testing::round_to;
using testing::to_device;
using testing::to_host;
using testing::to_vector;

DropoutKey gpu_key() { return DropoutKey{4242, 11, 3, 2, kDropoutMlpOutput}; }

// Both device tensors hold the same bytes.
void expect_same_bits(const std::string& what, const DeviceContext& ctx, const Tensor& a,
                      const Tensor& b) {
  const OwnedTensor oa = to_host(ctx, a), ob = to_host(ctx, b);
  const Tensor &ha = oa.view(), &hb = ob.view();
  ASSERT_EQ(ha.nbytes(), hb.nbytes()) << what;
  EXPECT_EQ(std::memcmp(ha.raw(), hb.raw(), ha.nbytes()), 0)
      << what << ": fused and unfused results differ";
}

class DropoutAddGpuTest : public GpuOpTest {};
SHARDLM_GPU_DTYPES(DropoutAddGpuTest);

TEST_P(DropoutAddGpuTest, ForwardMatchesCpuAndUnfusedGpu) {
  const DType dt = dtype();
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{4099}, int64_t{1000003}}) {
    for (uint64_t offset : {uint64_t{0}, uint64_t{3}, uint64_t{4096}}) {
      for (double p : {0.0, 0.1, 0.5}) {
        SCOPED_TRACE("n=" + std::to_string(n) + " offset=" + std::to_string(offset) +
                     " p=" + std::to_string(p));
        const OwnedTensor x = round_to(random_tensor(DType::kF32, {n}, 1), dt);
        const OwnedTensor res = round_to(random_tensor(DType::kF32, {n}, 2), dt);
        const OwnedTensor x_d = to_device(x, dt), res_d = to_device(res, dt);

        // The op rounds dropout(x) to the dtype before adding (as dropout_forward + add do), so
        // the reference does too: with n = 1 an unrounded reference can cancel against the
        // residual and turn one bf16 rounding into a large relative error.
        OwnedTensor dropped = OwnedTensor::empty(DType::kF32, {n});
        ops::cpu::dropout_forward(cpu_, dropped, x, p, gpu_key(), offset);
        const OwnedTensor dropped_rounded = round_to(dropped, dt);
        OwnedTensor ref = OwnedTensor::empty(DType::kF32, {n});
        ops::cpu::add(cpu_, ref, res, dropped_rounded);
        OwnedTensor out_d = poisoned_device(dt, {n});
        ops::dropout_add_forward(gpu(), out_d, x_d, res_d, p, gpu_key(), offset);
        testing::expect_matches_reference("dropout_add_forward", gpu(), out_d, ref, dt);

        OwnedTensor dropped_d = poisoned_device(dt, {n}), unfused_d = poisoned_device(dt, {n});
        ops::dropout_forward(gpu(), dropped_d, x_d, p, gpu_key(), offset);
        ops::add(gpu(), unfused_d, res_d, dropped_d);
        expect_same_bits("dropout_add_forward vs dropout_forward + add", gpu(), out_d, unfused_d);
      }
    }
  }
}

TEST_P(DropoutAddGpuTest, MaskEqualsCpuMask) {
  // residual = 0: out is dropout(x) itself, so its zeros are the mask.
  const DType dt = dtype();
  const int64_t n = 65539;
  const double p = 0.3;
  const OwnedTensor x = round_to(random_tensor(DType::kF32, {n}, 3), dt);
  const OwnedTensor zeros = OwnedTensor::zeros(DType::kF32, {n});
  OwnedTensor ref = OwnedTensor::empty(DType::kF32, {n});
  ops::cpu::dropout_add_forward(cpu_, ref, x, zeros, p, gpu_key(), 8);
  OwnedTensor out_d = poisoned_device(dt, {n});
  ops::dropout_add_forward(gpu(), out_d, to_device(x, dt), to_device(zeros, dt), p, gpu_key(), 8);
  const std::vector<double> got = to_vector(to_host(gpu(), out_d)), want = to_vector(ref);
  int64_t mismatches = 0, dropped = 0;
  for (int64_t i = 0; i < n; ++i) {
    mismatches += (got[i] == 0.0) != (want[i] == 0.0);
    dropped += want[i] == 0.0;
  }
  EXPECT_EQ(mismatches, 0);
  EXPECT_GT(dropped, n / 5);
}

TEST_P(DropoutAddGpuTest, InPlaceAndMisalignedViews) {
  const DType dt = dtype();
  const int64_t n = 10007;
  const double p = 0.2;
  const OwnedTensor x = round_to(random_tensor(DType::kF32, {n + 1}, 4), dt);
  const OwnedTensor res = round_to(random_tensor(DType::kF32, {n + 1}, 5), dt);
  const OwnedTensor x_d = to_device(x, dt), res_d = to_device(res, dt);
  // Whole-tensor reference on aligned storage.
  OwnedTensor expect_d = poisoned_device(dt, {n + 1});
  ops::dropout_add_forward(gpu(), expect_d, x_d, res_d, p, gpu_key(), 0);
  // In place on the residual stream.
  OwnedTensor r_d = to_device(res, dt);
  ops::dropout_add_forward(gpu(), r_d, x_d, r_d, p, gpu_key(), 0);
  expect_same_bits("in place on residual", gpu(), r_d, expect_d);
  // In place on x.
  OwnedTensor y_d = to_device(x, dt);
  ops::dropout_add_forward(gpu(), y_d, y_d, res_d, p, gpu_key(), 0);
  expect_same_bits("in place on x", gpu(), y_d, expect_d);
  // Views starting one element in (misaligned for the vector path), positions shifted to match.
  OwnedTensor part_d = poisoned_device(dt, {n + 1});
  ops::dropout_add_forward(gpu(), part_d.view().slice(0, 1), x_d.view().slice(0, 1),
                           res_d.view().slice(0, 1), p, gpu_key(), 0);
  ops::dropout_add_forward(gpu(), part_d.view().slice(1, n + 1), x_d.view().slice(1, n + 1),
                           res_d.view().slice(1, n + 1), p, gpu_key(), 1);
  expect_same_bits("misaligned views", gpu(), part_d, expect_d);
  // Misaligned pointers with a group-aligned position offset: must not take the vector path.
  OwnedTensor ref = OwnedTensor::empty(DType::kF32, {n});
  ops::cpu::dropout_add_forward(cpu_, ref, x.view().slice(1, n + 1), res.view().slice(1, n + 1),
                                p, gpu_key(), 4);
  OwnedTensor shifted_d = poisoned_device(dt, {n + 1});
  ops::dropout_add_forward(gpu(), shifted_d.view().slice(1, n + 1), x_d.view().slice(1, n + 1),
                           res_d.view().slice(1, n + 1), p, gpu_key(), 4);
  testing::expect_matches_reference("misaligned pointers, aligned positions", gpu(),
                                    shifted_d.view().slice(1, n + 1), ref, dt);
}

TEST_P(DropoutAddGpuTest, BackwardMatchesCpuAndDropoutBackward) {
  const DType dt = dtype();
  for (int64_t n : {int64_t{5}, int64_t{262147}}) {
    for (double p : {0.0, 0.4}) {
      SCOPED_TRACE("n=" + std::to_string(n) + " p=" + std::to_string(p));
      const OwnedTensor dout = round_to(random_tensor(DType::kF32, {n}, 6), dt);
      const OwnedTensor dout_d = to_device(dout, dt);
      OwnedTensor ref = OwnedTensor::empty(DType::kF32, {n});
      ops::cpu::dropout_add_backward(cpu_, ref, dout, p, gpu_key(), 5);
      OwnedTensor dx_d = poisoned_device(dt, {n});
      ops::dropout_add_backward(gpu(), dx_d, dout_d, p, gpu_key(), 5);
      testing::expect_matches_reference("dropout_add_backward dx", gpu(), dx_d, ref, dt);
      OwnedTensor via_d = poisoned_device(dt, {n});
      ops::dropout_backward(gpu(), via_d, dout_d, p, gpu_key(), 5);
      expect_same_bits("dropout_add_backward vs dropout_backward", gpu(), dx_d, via_d);
    }
  }
}

}  // namespace
}  // namespace shardlm
