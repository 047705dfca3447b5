// GPU tests of GQA flash attention against the CPU backend: forward out/lse and backward dqkv
// (every q/k/v slot assigned: outputs are NaN-poisoned), for the tensor-core path (bf16/fp16,
// head dims 64 and 128), the row-wise path (fp32, head dim 48), T not a multiple of the 64-row
// tiles, MHA / GQA / MQA groupings, attention dropout (masks shared with the CPU), and BERT's
// masks (AttentionShape::causal = false, key_lengths: the kernels' padded variant; lengths that
// end inside a key tile, on a tile edge and at one token; causal with padding).
#include "tests/ops/gpu_test_common.h"

namespace shardlm {
namespace {

using testing::expect_matches_reference;
using testing::poisoned_device;
using testing::random_tensor;
using testing::round_to;
using testing::to_device;

struct AttnGpuCase {
  int64_t B, T, NH, G, HS;
  double p;
  bool causal = true;
  std::vector<int32_t> lengths = {};  // key padding per sequence; empty: none
};
std::string describe(const AttnGpuCase& c) {
  std::string s = "B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) + " NH=" +
                  std::to_string(c.NH) + " G=" + std::to_string(c.G) + " HS=" +
                  std::to_string(c.HS) + " p=" + std::to_string(c.p) +
                  (c.causal ? "" : " bidirectional") + (c.lengths.empty() ? "" : " lengths=");
  for (int32_t l : c.lengths) s += std::to_string(l) + ",";
  return s;
}

const AttnGpuCase kAttnCases[] = {
    {2, 77, 4, 2, 64, 0.0},    // GQA, T % 64 != 0
    {1, 200, 8, 8, 128, 0.0},  // MHA, HS 128
    {2, 130, 6, 1, 64, 0.0},   // MQA
    {1, 33, 2, 1, 48, 0.0},    // head dim without a tensor-core kernel: row-wise path
    {1, 512, 4, 2, 128, 0.0},  // several key tiles, pipelined loads
    {2, 77, 4, 2, 64, 0.1},    // attention dropout
    {1, 150, 4, 4, 128, 0.2},  // dropout, HS 128
    {2, 77, 4, 2, 64, 0.0, false},                // bidirectional, T % 64 != 0
    {3, 200, 4, 2, 64, 0.0, false, {200, 64, 1}}, // padding: none, on a tile edge, one token
    {2, 130, 8, 8, 128, 0.0, false, {97, 130}},   // HS 128, ends inside the third tile
    {2, 150, 4, 4, 64, 0.0, true, {150, 70}},     // causal + padding
    {1, 33, 2, 1, 48, 0.0, false, {20}},          // row-wise path
    {2, 128, 4, 2, 64, 0.1, false, {128, 50}},    // dropout
};

class AttentionGpuTest : public GpuOpTest {};
SHARDLM_GPU_DTYPES(AttentionGpuTest);

TEST_P(AttentionGpuTest, ForwardBackwardMatchCpu) {
  const DType dt = dtype();
  const DropoutKey key{4242, 9, 1, 3, kDropoutAttentionProbs};
  for (const AttnGpuCase& c : kAttnCases) {
    SCOPED_TRACE(describe(c));
    ops::AttentionShape shape{c.NH, c.G, c.HS}, shape_d{c.NH, c.G, c.HS};
    shape.causal = shape_d.causal = c.causal;
    OwnedTensor lengths, lengths_d;
    if (!c.lengths.empty()) {
      lengths = OwnedTensor::empty(DType::kI32, {c.B});
      for (int64_t b = 0; b < c.B; ++b) lengths.view().data<int32_t>()[b] = c.lengths[b];
      lengths_d = OwnedTensor::empty(DType::kI32, {c.B}, gpu().device());
      ops::copy(gpu(), lengths_d.view(), lengths.view());
      shape.key_lengths = lengths.view();
      shape_d.key_lengths = lengths_d.view();
    }
    const int64_t W = c.G * (c.NH / c.G + 2) * c.HS;
    const Shape qkv_shape{c.B, c.T, W}, out_shape{c.B, c.T, c.NH * c.HS},
        lse_shape{c.B, c.NH, c.T};
    const OwnedTensor qkv = round_to(random_tensor(DType::kF32, qkv_shape, 101, 1.0), dt);
    const OwnedTensor dout = round_to(random_tensor(DType::kF32, out_shape, 102), dt);

    OwnedTensor out = OwnedTensor::empty(DType::kF32, out_shape);
    OwnedTensor lse = OwnedTensor::empty(DType::kF32, lse_shape);
    ops::cpu::attention_forward(cpu_, out, lse, qkv, shape, c.p, key);

    const OwnedTensor qkv_d = to_device(qkv, dt);
    OwnedTensor out_d = poisoned_device(dt, out_shape), lse_d = poisoned_device(dt, lse_shape);
    ops::attention_forward(gpu(), out_d, lse_d, qkv_d, shape_d, c.p, key);
    expect_matches_reference("attention_forward out", gpu(), out_d, out, dt);
    expect_matches_reference("attention_forward lse", gpu(), lse_d, lse, dt);

    // Backward from the same saved output (rounded to the dtype) on both sides; the reference
    // keeps the exact lse, the GPU gets the dtype-rounded one (it recomputes lse for 16-bit).
    const OwnedTensor out_r = round_to(out, dt);
    OwnedTensor dqkv = OwnedTensor::empty(DType::kF32, qkv_shape);
    ops::cpu::attention_backward(cpu_, dqkv, dout, qkv, out_r, lse, shape, c.p, key);
    OwnedTensor dqkv_d = poisoned_device(dt, qkv_shape);
    ops::attention_backward(gpu(), dqkv_d, to_device(dout, dt), qkv_d, to_device(out_r, dt),
                            to_device(lse, dt), shape_d, c.p, key);
    expect_matches_reference("attention_backward dqkv", gpu(), dqkv_d, dqkv, dt);
  }
}

TEST_P(AttentionGpuTest, UnsupportedHeadDimSaysSo) {
  const ops::AttentionShape shape{1, 1, 320};
  OwnedTensor qkv_d = poisoned_device(dtype(), {1, 4, 3 * 320});
  OwnedTensor out_d = poisoned_device(dtype(), {1, 4, 320});
  OwnedTensor lse_d = poisoned_device(dtype(), {1, 1, 4});
  EXPECT_SHARDLM_ERROR(ops::attention_forward(gpu(), out_d, lse_d, qkv_d, shape, 0.0, {}),
                       ErrorKind::kUnsupported, "head_dim 320");
}

}  // namespace
}  // namespace shardlm
