// GPU tests of GELU, SwiGLU and tanh (forward and backward) and of dropout: values against the CPU
// backend, and the dropout mask bit-identical to the CPU's for the same key and positions.
#include <cmath>

#include "tests/ops/gpu_test_common.h"

namespace shardlm {
namespace {

using testing::expect_matches_reference;
using testing::poisoned_device;
using testing::random_tensor;
using testing::round_to;
using testing::to_device;
using testing::to_host;
using testing::to_vector;

class ActivationGpuTest : public GpuOpTest {};
SHARDLM_GPU_DTYPES(ActivationGpuTest);

TEST_P(ActivationGpuTest, GeluMatchesCpu) {
  const DType dt = dtype();
  for (const Shape& shape : {Shape{3, 5, 1031}, Shape{64, 3072}, Shape{1}}) {
    SCOPED_TRACE(shape.to_string());
    const OwnedTensor in = round_to(random_tensor(DType::kF32, shape, 41, 2.0), dt);
    const OwnedTensor dout = round_to(random_tensor(DType::kF32, shape, 42), dt);
    OwnedTensor out = OwnedTensor::empty(DType::kF32, shape);
    OwnedTensor din = OwnedTensor::empty(DType::kF32, shape);
    ops::cpu::gelu_forward(cpu_, out, in);
    ops::cpu::gelu_backward(cpu_, din, dout, in);
    const OwnedTensor in_d = to_device(in, dt);
    OwnedTensor out_d = poisoned_device(dt, shape), din_d = poisoned_device(dt, shape);
    ops::gelu_forward(gpu(), out_d, in_d);
    ops::gelu_backward(gpu(), din_d, to_device(dout, dt), in_d);
    expect_matches_reference("gelu_forward", gpu(), out_d, out, dt);
    expect_matches_reference("gelu_backward", gpu(), din_d, din, dt);
  }
}

TEST_P(ActivationGpuTest, SwigluMatchesCpu) {
  const DType dt = dtype();
  for (const auto& [N, F] : {std::pair<int64_t, int64_t>{33, 171}, {128, 2816}, {2, 8}}) {
    SCOPED_TRACE("N=" + std::to_string(N) + " F=" + std::to_string(F));
    const OwnedTensor in = round_to(random_tensor(DType::kF32, {N, 2 * F}, 43, 2.0), dt);
    const OwnedTensor dout = round_to(random_tensor(DType::kF32, {N, F}, 44), dt);
    OwnedTensor out = OwnedTensor::empty(DType::kF32, {N, F});
    OwnedTensor din = OwnedTensor::empty(DType::kF32, {N, 2 * F});
    ops::cpu::swiglu_forward(cpu_, out, in);
    ops::cpu::swiglu_backward(cpu_, din, dout, in);
    const OwnedTensor in_d = to_device(in, dt);
    OwnedTensor out_d = poisoned_device(dt, {N, F}), din_d = poisoned_device(dt, {N, 2 * F});
    ops::swiglu_forward(gpu(), out_d, in_d);
    ops::swiglu_backward(gpu(), din_d, to_device(dout, dt), in_d);
    expect_matches_reference("swiglu_forward", gpu(), out_d, out, dt);
    expect_matches_reference("swiglu_backward", gpu(), din_d, din, dt);
  }
}

TEST_P(ActivationGpuTest, TanhMatchesCpu) {
  const DType dt = dtype();
  const OwnedTensor x = round_to(random_tensor(DType::kF32, {37, 19}, 203, 2.0), dt);
  const OwnedTensor dy = round_to(random_tensor(DType::kF32, {37, 19}, 204), dt);
  OwnedTensor y = OwnedTensor::empty(DType::kF32, {37, 19});
  ops::cpu::tanh_forward(cpu_, y, x);
  OwnedTensor y_d = poisoned_device(dt, {37, 19});
  ops::tanh_forward(gpu(), y_d, to_device(x, dt));
  expect_matches_reference("tanh_forward", gpu(), y_d, y, dt);
  const OwnedTensor y_r = round_to(y, dt);
  OwnedTensor dx = OwnedTensor::empty(DType::kF32, {37, 19});
  ops::cpu::tanh_backward(cpu_, dx, dy, y_r);
  OwnedTensor dx_d = poisoned_device(dt, {37, 19});
  ops::tanh_backward(gpu(), dx_d, to_device(dy, dt), to_device(y_r, dt));
  expect_matches_reference("tanh_backward", gpu(), dx_d, dx, dt);
}

TEST_P(ActivationGpuTest, DropoutMaskIsBitIdenticalToCpu) {
  const DType dt = dtype();
  const DropoutKey key{1234, 7, 2, 5, kDropoutMlpOutput};
  for (const auto& [n, offset, p] :
       {std::tuple<int64_t, uint64_t, double>{100003, 13, 0.1}, {4096, 0, 0.5}, {5, 3, 0.9},
        {77777, (uint64_t{1} << 33) + 1, 0.25}}) {
    SCOPED_TRACE("n=" + std::to_string(n) + " offset=" + std::to_string(offset) +
                 " p=" + std::to_string(p));
    const OwnedTensor in = round_to(random_tensor(DType::kF32, {n}, 45), dt);
    OwnedTensor out = OwnedTensor::empty(DType::kF32, {n});
    ops::cpu::dropout_forward(cpu_, out, in, p, key, offset);
    OwnedTensor out_d = poisoned_device(dt, {n});
    ops::dropout_forward(gpu(), out_d, to_device(in, dt), p, key, offset);
    const std::vector<double> got = to_vector(to_host(gpu(), out_d)), want = to_vector(out);
    int64_t mask_mismatches = 0, first = -1;
    for (int64_t i = 0; i < n; ++i)
      if ((got[i] == 0.0) != (want[i] == 0.0)) {
        ++mask_mismatches;
        if (first < 0) first = i;
      }
    EXPECT_EQ(mask_mismatches, 0) << "GPU and CPU dropout masks differ, first at element "
                                  << first << " (position " << offset + first << ")";
    expect_matches_reference("dropout_forward", gpu(), out_d, out, dt);

    const OwnedTensor dout = round_to(random_tensor(DType::kF32, {n}, 46), dt);
    OwnedTensor din = OwnedTensor::empty(DType::kF32, {n});
    ops::cpu::dropout_backward(cpu_, din, dout, p, key, offset);
    OwnedTensor din_d = poisoned_device(dt, {n});
    ops::dropout_backward(gpu(), din_d, to_device(dout, dt), p, key, offset);
    expect_matches_reference("dropout_backward", gpu(), din_d, din, dt);
  }
}

}  // namespace
}  // namespace shardlm
