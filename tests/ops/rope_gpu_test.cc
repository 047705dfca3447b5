// GPU tests of RoPE: the fp32 cos/sin table against the CPU's, and rope_forward / rope_backward
// against the CPU reference on random inputs (out of place into poisoned outputs, and in place),
// for both pair layouts, partial rotation, GQA/MQA/MHA and sizes that are not tile multiples.
#include <string>

#include "tests/ops/gpu_test_common.h"

namespace shardlm {
namespace {

using testing::clone;
using testing::expect_matches_reference;
using testing::poisoned_device;
using testing::random_tensor;
using testing::round_to;
using testing::to_device;
using testing::to_host;
using testing::to_vector;

struct RopeGpuCase {
  int64_t B, T, NH, G, HS, R;
  bool interleaved;
  std::string name() const {
    return "B" + std::to_string(B) + " T" + std::to_string(T) + " NH" + std::to_string(NH) +
           " G" + std::to_string(G) + " HS" + std::to_string(HS) + " R" + std::to_string(R) +
           (interleaved ? " interleaved" : " rotate-half");
  }
};

class RopeGpuTest : public GpuOpTest {};
SHARDLM_GPU_DTYPES(RopeGpuTest);

TEST_P(RopeGpuTest, TableMatchesCpu) {
  for (const auto& [P, R, base] : {std::tuple<int64_t, int64_t, double>{4099, 128, 10000.0},
                                   {37, 20, 500000.0}, {1, 2, 10.0}}) {
    SCOPED_TRACE("P=" + std::to_string(P) + " R=" + std::to_string(R));
    OwnedTensor ref = OwnedTensor::empty(DType::kF32, {P, R / 2, 2});
    ops::cpu::rope_cos_sin(cpu_, ref, base);
    OwnedTensor dev = poisoned_device(DType::kF32, {P, R / 2, 2});
    ops::rope_cos_sin(gpu(), dev, base);
    expect_matches_reference("rope_cos_sin", gpu(), dev, ref, DType::kF32);
  }
}

TEST_P(RopeGpuTest, ForwardAndBackwardMatchCpu) {
  const DType dt = dtype();
  const RopeGpuCase cases[] = {
      {3, 37, 12, 4, 40, 20, false},  // GQA, rotary_percent 0.5, odd T
      {3, 37, 12, 4, 40, 20, true},
      {2, 129, 8, 8, 64, 64, false},  // MHA, full rotation
      {1, 67, 32, 8, 128, 128, true}, // Llama-like heads
      {2, 5, 6, 1, 6, 4, false},      // MQA, tiny head
      {1, 1, 2, 2, 2, 2, false},      // one token, one pair
  };
  for (const RopeGpuCase& c : cases) {
    SCOPED_TRACE(c.name());
    const Shape shape{c.B, c.T, c.G * (c.NH / c.G + 2) * c.HS};
    const ops::AttentionShape as{c.NH, c.G, c.HS};
    OwnedTensor table = OwnedTensor::empty(DType::kF32, {c.T + 2, c.R / 2, 2});
    ops::cpu::rope_cos_sin(cpu_, table, 10000.0);
    OwnedTensor table_d = poisoned_device(DType::kF32, {c.T + 2, c.R / 2, 2});
    ops::rope_cos_sin(gpu(), table_d, 10000.0);

    const OwnedTensor in = round_to(random_tensor(DType::kF32, shape, 51, 2.0), dt);
    const OwnedTensor dout = round_to(random_tensor(DType::kF32, shape, 52), dt);
    OwnedTensor out = OwnedTensor::empty(DType::kF32, shape);
    OwnedTensor din = OwnedTensor::empty(DType::kF32, shape);
    ops::cpu::rope_forward(cpu_, out, in, table, as, c.interleaved);
    ops::cpu::rope_backward(cpu_, din, dout, table, as, c.interleaved);

    const OwnedTensor in_d = to_device(in, dt), dout_d = to_device(dout, dt);
    OwnedTensor out_d = poisoned_device(dt, shape), din_d = poisoned_device(dt, shape);
    ops::rope_forward(gpu(), out_d, in_d, table_d, as, c.interleaved);
    ops::rope_backward(gpu(), din_d, dout_d, table_d, as, c.interleaved);
    expect_matches_reference("rope_forward", gpu(), out_d, out, dt);
    expect_matches_reference("rope_backward", gpu(), din_d, din, dt);

    // In place (what the model does) gives the same values.
    OwnedTensor x_d = to_device(in, dt), dx_d = to_device(dout, dt);
    ops::rope_forward(gpu(), x_d, x_d, table_d, as, c.interleaved);
    ops::rope_backward(gpu(), dx_d, dx_d, table_d, as, c.interleaved);
    expect_matches_reference("rope_forward in place", gpu(), x_d, out, dt);
    expect_matches_reference("rope_backward in place", gpu(), dx_d, din, dt);
  }
}

TEST_P(RopeGpuTest, RejectsNonFp32Table) {
  const DType dt = dtype();
  const ops::AttentionShape as{2, 1, 4};
  OwnedTensor x = poisoned_device(dt, {1, 3, 16});
  OwnedTensor table = poisoned_device(DType::kBF16, {3, 2, 2});
  EXPECT_SHARDLM_ERROR(ops::rope_forward(gpu(), x, x, table, as, false),
                       ErrorKind::kInvalidArgument, "cos_sin");
}

}  // namespace
}  // namespace shardlm
