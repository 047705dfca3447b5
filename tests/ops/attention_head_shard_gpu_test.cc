// GPU test of attention over a tensor-parallel shard of the heads (AttentionShape::head_offset /
// dropout_num_heads) with attention dropout: the CUDA kernels (tensor-core and row-wise paths)
// draw the same masks as the CPU backend for the shard's global heads.
#include "tests/ops/gpu_test_common.h"

namespace shardlm {
namespace {

using testing::expect_matches_reference;
using testing::poisoned_device;
using testing::random_tensor;
using testing::round_to;
using testing::to_device;

class AttentionHeadShardGpuTest : public GpuOpTest {};
SHARDLM_GPU_DTYPES(AttentionHeadShardGpuTest);

TEST_P(AttentionHeadShardGpuTest, ShardWithDropoutMatchesCpu) {
  const DType dt = dtype();
  const DropoutKey key{4243, 5, 0, 2, kDropoutAttentionProbs};
  for (const int64_t HS : {int64_t{64}, int64_t{48}}) {
    SCOPED_TRACE("HS=" + std::to_string(HS));
    const int64_t B = 2, T = 77, NL = 2, GL = 1;
    ops::AttentionShape shape{NL, GL, HS};
    shape.head_offset = 4;  // rank 2 of TP = 4 over 8 heads
    shape.dropout_num_heads = 8;
    const int64_t W = GL * (NL / GL + 2) * HS;
    const Shape qkv_shape{B, T, W}, out_shape{B, T, NL * HS}, lse_shape{B, NL, T};
    const OwnedTensor qkv = round_to(random_tensor(DType::kF32, qkv_shape, 111), dt);
    const OwnedTensor dout = round_to(random_tensor(DType::kF32, out_shape, 112), dt);
    OwnedTensor out = OwnedTensor::empty(DType::kF32, out_shape);
    OwnedTensor lse = OwnedTensor::empty(DType::kF32, lse_shape);
    ops::cpu::attention_forward(cpu_, out, lse, qkv, shape, 0.2, key);
    const OwnedTensor qkv_d = to_device(qkv, dt);
    OwnedTensor out_d = poisoned_device(dt, out_shape), lse_d = poisoned_device(dt, lse_shape);
    ops::attention_forward(gpu(), out_d, lse_d, qkv_d, shape, 0.2, key);
    expect_matches_reference("attention_forward shard out", gpu(), out_d, out, dt);
    expect_matches_reference("attention_forward shard lse", gpu(), lse_d, lse, dt);
    OwnedTensor dqkv = OwnedTensor::empty(DType::kF32, qkv_shape);
    ops::cpu::attention_backward(cpu_, dqkv, dout, qkv, out, lse, shape, 0.2, key);
    OwnedTensor dqkv_d = poisoned_device(dt, qkv_shape);
    ops::attention_backward(gpu(), dqkv_d, to_device(dout, dt), qkv_d, out_d, lse_d, shape, 0.2,
                            key);
    expect_matches_reference("attention_backward shard dqkv", gpu(), dqkv_d, dqkv, dt);
  }
}

}  // namespace
}  // namespace shardlm
