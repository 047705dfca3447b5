// GPU tests of GQA flash attention against the CPU backend: forward out/lse and backward dqkv
// (every q/k/v slot assigned: outputs are NaN-poisoned), for the tensor-core path (bf16/fp16,
// head dims 64 and 128), the row-wise path (fp32, head dim 48), T not a multiple of the 64-row
// tiles, MHA / GQA / MQA groupings, attention dropout (masks shared with the CPU), and BERT's
// masks (AttentionShape::causal = false, key_lengths: the kernels' padded variant; lengths that
// end inside a key tile, on a tile edge and at one token; causal with padding).
// Cross-attention (T5: q [B,TQ,NH*HS] against kv [B,TK,G*2*HS]) the same way: TQ != TK both ways
// and neither a tile multiple, key lengths inside a tile, on a tile edge and of one token (dkv
// rows past them exactly zero), grouped and not, head dims 64 and 128 (tensor cores for 16-bit)
// and 16 (row-wise), dropout with the CPU's masks, a tensor-parallel head shard, and never cuDNN.
#include <cstring>

#include "shardlm/ops/cuda/cuda_context.h"
#include "shardlm/ops/cuda/cudnn_attention.h"
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

// ---- cross-attention ---------------------------------------------------------------------------

struct CrossGpuCase {
  int64_t B, TQ, TK, NH, G, HS;
  double p;
  std::vector<int32_t> lengths = {};  // key padding per sequence; empty: none
  bool lse_f32 = false;               // 16-bit runs save lse in fp32 (else the dtype: recomputed)
  int64_t head_offset = 0, global_heads = 0;  // a tensor-parallel shard of global_heads heads
};
std::string describe(const CrossGpuCase& c) {
  std::string s = "B=" + std::to_string(c.B) + " TQ=" + std::to_string(c.TQ) + " TK=" +
                  std::to_string(c.TK) + " NH=" + std::to_string(c.NH) + " G=" +
                  std::to_string(c.G) + " HS=" + std::to_string(c.HS) + " p=" +
                  std::to_string(c.p) + (c.lse_f32 ? " lse fp32" : "") +
                  (c.global_heads > 0 ? " heads from " + std::to_string(c.head_offset) + " of " +
                                            std::to_string(c.global_heads)
                                      : "") +
                  (c.lengths.empty() ? "" : " lengths=");
  for (int32_t l : c.lengths) s += std::to_string(l) + ",";
  return s;
}

const CrossGpuCase kCrossCases[] = {
    {2, 77, 130, 4, 2, 64, 0.0},                   // TQ < TK, GQA, neither a tile multiple
    {2, 150, 77, 4, 4, 128, 0.0},                  // TQ > TK, MHA, HS 128
    {3, 70, 200, 4, 1, 64, 0.0, {200, 64, 1}},     // MQA; lengths: none, tile edge, one key
    {2, 40, 77, 8, 8, 128, 0.0, {77, 50}, true},   // a length inside the second tile
    {2, 77, 130, 4, 2, 64, 0.1, {130, 97}, true},  // dropout, length inside the second tile
    {1, 150, 77, 4, 4, 128, 0.2},                  // dropout, HS 128
    {1, 33, 45, 2, 1, 16, 0.0, {20}},              // head dim 16: row-wise path
    {2, 33, 45, 4, 2, 16, 0.1, {45, 7}},           // row-wise path, dropout
    {2, 77, 100, 2, 1, 64, 0.2, {100, 60}, false, 4, 8},  // TP: heads [4, 6) of 8, dropout
    {2, 35, 50, 2, 1, 16, 0.2, {50, 13}, false, 2, 4},    // TP, row-wise path
};

OwnedTensor lengths_on(const std::vector<int32_t>& lengths, Device device) {
  OwnedTensor host = OwnedTensor::empty(DType::kI32, {static_cast<int64_t>(lengths.size())});
  std::memcpy(host.view().raw(), lengths.data(), lengths.size() * sizeof(int32_t));
  return device.is_cuda() ? to_device(host, DType::kI32) : std::move(host);
}

class CrossAttentionGpuTest : public GpuOpTest {};
SHARDLM_GPU_DTYPES(CrossAttentionGpuTest);

TEST_P(CrossAttentionGpuTest, ForwardBackwardMatchCpu) {
  const DType dt = dtype();
  const DropoutKey key{4244, 7, 2, 5, kDropoutAttentionProbs};
  // cuDNN forced: cross-attention never asks it (its graph is causal self-attention), so every
  // case, none of them cuDNN-shaped, still runs (ShardLM's kernels).
  ops::cuda::cuda_state(gpu()).set_attention_kernels(ops::cuda::AttentionKernels::kCudnn);
  for (const CrossGpuCase& c : kCrossCases) {
    SCOPED_TRACE(describe(c));
    ops::AttentionShape shape{c.NH, c.G, c.HS}, shape_d{c.NH, c.G, c.HS};
    shape.causal = shape_d.causal = false;
    shape.head_offset = shape_d.head_offset = c.head_offset;
    shape.dropout_num_heads = shape_d.dropout_num_heads = c.global_heads;
    OwnedTensor lengths, lengths_d;
    if (!c.lengths.empty()) {
      lengths = lengths_on(c.lengths, Device::cpu());
      lengths_d = lengths_on(c.lengths, gpu().device());
      shape.key_lengths = lengths.view();
      shape_d.key_lengths = lengths_d.view();
    }
    const Shape q_shape{c.B, c.TQ, c.NH * c.HS}, kv_shape{c.B, c.TK, c.G * 2 * c.HS},
        lse_shape{c.B, c.NH, c.TQ};
    const DType lse_dt = c.lse_f32 ? DType::kF32 : dt;
    const OwnedTensor q = round_to(random_tensor(DType::kF32, q_shape, 121, 1.0), dt);
    const OwnedTensor kv = round_to(random_tensor(DType::kF32, kv_shape, 122, 1.0), dt);
    const OwnedTensor dout = round_to(random_tensor(DType::kF32, q_shape, 123), dt);

    OwnedTensor out = OwnedTensor::empty(DType::kF32, q_shape);
    OwnedTensor lse = OwnedTensor::empty(DType::kF32, lse_shape);
    ops::cpu::cross_attention_forward(cpu_, out, lse, q, kv, shape, c.p, key);

    const OwnedTensor q_d = to_device(q, dt), kv_d = to_device(kv, dt);
    OwnedTensor out_d = poisoned_device(dt, q_shape), lse_d = poisoned_device(lse_dt, lse_shape);
    ops::cross_attention_forward(gpu(), out_d, lse_d, q_d, kv_d, shape_d, c.p, key);
    expect_matches_reference("cross_attention_forward out", gpu(), out_d, out, dt);
    expect_matches_reference("cross_attention_forward lse", gpu(), lse_d, lse, dt);

    // Backward from the same saved output (rounded to the dtype) on both sides, as above.
    const OwnedTensor out_r = round_to(out, dt);
    OwnedTensor dq = OwnedTensor::empty(DType::kF32, q_shape);
    OwnedTensor dkv = OwnedTensor::empty(DType::kF32, kv_shape);
    ops::cpu::cross_attention_backward(cpu_, dq, dkv, dout, q, kv, out_r, lse, shape, c.p, key);
    OwnedTensor dq_d = poisoned_device(dt, q_shape), dkv_d = poisoned_device(dt, kv_shape);
    ops::cross_attention_backward(gpu(), dq_d, dkv_d, to_device(dout, dt), q_d, kv_d,
                                  to_device(out_r, dt), to_device(lse, lse_dt), shape_d, c.p, key);
    expect_matches_reference("cross_attention_backward dq", gpu(), dq_d, dq, dt);
    expect_matches_reference("cross_attention_backward dkv", gpu(), dkv_d, dkv, dt);
    // Keys past a sequence's length: exactly zero gradients (assigned, poison overwritten).
    const std::vector<double> g = to_vector(to_host(gpu(), dkv_d));
    const int64_t KW = c.G * 2 * c.HS;
    for (int64_t b = 0; b < c.B && !c.lengths.empty(); ++b)
      for (int64_t j = c.lengths[b]; j < c.TK; ++j)
        for (int64_t w = 0; w < KW; ++w)
          ASSERT_EQ(g[(b * c.TK + j) * KW + w], 0.0) << "b=" << b << " key " << j;
  }
}

}  // namespace
}  // namespace shardlm
