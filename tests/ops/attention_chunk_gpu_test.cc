// GPU tests of context-parallel attention chunks (attention_chunk_forward / _backward) against
// the CPU chunk ops, with CP-style load-balanced layouts (rank r holds chunks r and 2*CP-1-r):
// the row-wise path (fp32), the tensor-core path (bf16/fp16, HS 64 and 128, chunks that do and
// do not fill 64-row tiles, dropout, 16-bit lse that the backward recomputes), and cuDNN forced
// (chunk rows 128, T 512, MHA and GQA). Forward outputs are NaN-poisoned (every chunk row must be
// written); dq and dkv start at a sentinel on both sides, so what a chunk must leave untouched is
// checked too. Chunk {0, T, 0} of qkv equals attention_forward / attention_backward bit for bit
// on ShardLM's kernels.
#include <cstring>

#include "shardlm/ops/cuda/cuda_context.h"
#include "shardlm/ops/cuda/cudnn_attention.h"
#include "tests/ops/gpu_test_common.h"

namespace shardlm {
namespace {

using ops::cuda::AttentionKernels;
using testing::expect_matches_reference;
using testing::from_vector;
using testing::poisoned_device;
using testing::random_tensor;
using testing::round_to;
using testing::to_device;
using testing::to_host;
using testing::to_vector;

constexpr double kSentinel = 7.0;

struct ChunkGpuCase {
  DType dt;
  int64_t B, T, NH, G, HS, CP;
  double p;
  AttentionKernels kernels;
  bool lse_f32;  // the saved lse in fp32 (else the dtype: the backward recomputes it)
};
std::string describe(const ChunkGpuCase& c) {
  return std::string(dtype_name(c.dt)) + " B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) +
         " NH=" + std::to_string(c.NH) + " G=" + std::to_string(c.G) +
         " HS=" + std::to_string(c.HS) + " CP=" + std::to_string(c.CP) +
         " p=" + std::to_string(c.p) + " kernels=" + ops::cuda::attention_kernels_name(c.kernels) +
         (c.lse_f32 ? " lse fp32" : " lse 16-bit");
}

const ChunkGpuCase kCases[] = {
    // row-wise path
    {DType::kF32, 2, 48, 4, 2, 32, 2, 0.0, AttentionKernels::kOwn, true},
    {DType::kF32, 2, 48, 4, 2, 32, 2, 0.1, AttentionKernels::kOwn, true},
    // tensor-core path: chunks of 64 rows, GQA / MHA, dropout, 16-bit lse
    {DType::kBF16, 2, 256, 4, 2, 64, 2, 0.0, AttentionKernels::kOwn, true},
    {DType::kBF16, 2, 256, 4, 2, 64, 2, 0.1, AttentionKernels::kOwn, true},
    {DType::kBF16, 2, 256, 4, 2, 64, 2, 0.0, AttentionKernels::kOwn, false},
    {DType::kBF16, 1, 256, 4, 4, 128, 2, 0.0, AttentionKernels::kOwn, true},
    // chunks of 32 rows at positions that are not multiples of 64
    {DType::kF16, 2, 256, 4, 2, 64, 4, 0.1, AttentionKernels::kOwn, true},
    // 'auto': chunks of 64 rows are not for cuDNN, ShardLM's kernels run
    {DType::kBF16, 1, 256, 2, 1, 64, 2, 0.0, AttentionKernels::kAuto, true},
    // cuDNN forced: chunk rows 128, T 512 (GQA: Q gathered per sequence; MHA: strided views)
    {DType::kBF16, 2, 512, 4, 2, 64, 2, 0.0, AttentionKernels::kCudnn, true},
    {DType::kBF16, 1, 512, 4, 4, 128, 2, 0.0, AttentionKernels::kCudnn, true},
};

class AttentionChunkGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::cuda_device_available()) GTEST_SKIP() << "no CUDA device visible";
    gpu_ = std::make_unique<DeviceContext>(testing::make_cuda_context());
  }
  DeviceContext& gpu() { return *gpu_; }
  void use(AttentionKernels k) { ops::cuda::cuda_state(gpu()).set_attention_kernels(k); }
  DeviceContext cpu_ = DeviceContext::cpu();

 private:
  std::unique_ptr<DeviceContext> gpu_;
};

// Rows [from, from + n) of a [B, Tfrom, C] tensor into rows [to, to + n) of a [B, Tto, C] one.
void copy_rows(const std::vector<double>& src, int64_t Tfrom, int64_t from,
               std::vector<double>* dst, int64_t Tto, int64_t to, int64_t n, int64_t C, int64_t B) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < C; ++k)
        (*dst)[(b * Tto + to + i) * C + k] = src[(b * Tfrom + from + i) * C + k];
}

OwnedTensor filled(const Shape& shape, double value) {
  return from_vector(DType::kF32, shape, std::vector<double>(shape.numel(), value));
}

TEST_F(AttentionChunkGpuTest, CpLayoutsMatchCpu) {
  const DropoutKey key{777, 4, 0, 2, kDropoutAttentionProbs};
  for (const ChunkGpuCase& c : kCases) {
#ifndef SHARDLM_WITH_CUDNN
    if (c.kernels == AttentionKernels::kCudnn) continue;
#endif
    SCOPED_TRACE(describe(c));
    use(c.kernels);
    const DType dt = c.dt, lse_dt = c.lse_f32 ? DType::kF32 : dt;
    const ops::AttentionShape shape{c.NH, c.G, c.HS};
    const int64_t W = c.G * (c.NH / c.G + 2) * c.HS, C = c.NH * c.HS;
    const int64_t chunk = c.T / (2 * c.CP), TQ = 2 * chunk;
    const OwnedTensor qkv = round_to(random_tensor(DType::kF32, {c.B, c.T, W}, 501, 1.0), dt);
    const OwnedTensor qkv_d = to_device(qkv, dt);
    const std::vector<double> qkv_v = to_vector(qkv);
    for (int64_t r = 0; r < c.CP; ++r) {
      SCOPED_TRACE("rank " + std::to_string(r));
      const ops::AttentionChunk chunks[2] = {{0, chunk, r * chunk},
                                             {chunk, chunk, (2 * c.CP - 1 - r) * chunk}};
      std::vector<double> q_v(c.B * TQ * W);
      for (const ops::AttentionChunk& ch : chunks)
        copy_rows(qkv_v, c.T, ch.position, &q_v, TQ, ch.row, ch.rows, W, c.B);
      const OwnedTensor q_src = from_vector(DType::kF32, {c.B, TQ, W}, q_v);
      const OwnedTensor q_src_d = to_device(q_src, dt);
      const OwnedTensor dout = round_to(random_tensor(DType::kF32, {c.B, TQ, C}, 502 + r), dt);
      const OwnedTensor dout_d = to_device(dout, dt);

      OwnedTensor out = OwnedTensor::empty(DType::kF32, {c.B, TQ, C});
      OwnedTensor lse = OwnedTensor::empty(DType::kF32, {c.B, c.NH, TQ});
      OwnedTensor out_d = poisoned_device(dt, {c.B, TQ, C});
      OwnedTensor lse_d = poisoned_device(lse_dt, {c.B, c.NH, TQ});
      for (const ops::AttentionChunk& ch : chunks) {
        ops::cpu::attention_chunk_forward(cpu_, out, lse, q_src, qkv, shape, ch, c.p, key);
        ops::attention_chunk_forward(gpu(), out_d, lse_d, q_src_d, qkv_d, shape, ch, c.p, key);
      }
      expect_matches_reference("attention_chunk_forward out", gpu(), out_d, out, dt);
      expect_matches_reference("attention_chunk_forward lse", gpu(), lse_d, lse, dt);

      // Backward from the same saved output (rounded to the dtype) and lse on both sides.
      const OwnedTensor out_r = round_to(out, dt), out_rd = to_device(out_r, dt);
      const OwnedTensor lse_d_in = to_device(lse, lse_dt);
      OwnedTensor dq = filled({c.B, TQ, W}, kSentinel);
      OwnedTensor dq_d = to_device(dq, dt);
      for (const ops::AttentionChunk& ch : chunks) {
        SCOPED_TRACE("chunk at position " + std::to_string(ch.position));
        OwnedTensor dkv = filled({c.B, c.T, W}, kSentinel);
        OwnedTensor dkv_d = to_device(dkv, dt);
        ops::cpu::attention_chunk_backward(cpu_, dq, dkv, dout, q_src, qkv, out_r, lse, shape, ch,
                                           c.p, key);
        ops::attention_chunk_backward(gpu(), dq_d, dkv_d, dout_d, q_src_d, qkv_d, out_rd, lse_d_in,
                                      shape, ch, c.p, key);
        expect_matches_reference("attention_chunk_backward dkv", gpu(), dkv_d, dkv, dt);
      }
      expect_matches_reference("attention_chunk_backward dq", gpu(), dq_d, dq, dt);
    }
  }
  use(AttentionKernels::kAuto);
}

bool same_bits(const DeviceContext& ctx, const Tensor& a, const Tensor& b) {
  const OwnedTensor ha = to_host(ctx, a), hb = to_host(ctx, b);
  return ha.view().nbytes() == hb.view().nbytes() &&
         std::memcmp(ha.view().raw(), hb.view().raw(), ha.view().nbytes()) == 0;
}

// Chunk {0, T, 0} with q_src = kv = qkv runs the whole-sequence kernels: equal bit for bit
// (dq holds dqkv's q columns, dkv its k/v columns, the rest keeps the sentinel).
TEST_F(AttentionChunkGpuTest, WholeSequenceChunkIsAttentionBitForBit) {
  struct Case {
    DType dt;
    int64_t B, T, NH, G, HS;
    double p;
  };
  const Case cases[] = {{DType::kF32, 2, 40, 4, 2, 32, 0.1},    // row-wise
                        {DType::kBF16, 2, 200, 4, 2, 64, 0.1},  // tensor cores, dropout
                        {DType::kF16, 1, 256, 4, 4, 128, 0.0}};
  use(AttentionKernels::kOwn);
  const DropoutKey key{778, 4, 0, 2, kDropoutAttentionProbs};
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(dtype_name(c.dt)) + " T=" + std::to_string(c.T));
    const ops::AttentionShape shape{c.NH, c.G, c.HS};
    const int64_t W = c.G * (c.NH / c.G + 2) * c.HS, C = c.NH * c.HS;
    const OwnedTensor qkv_d = to_device(random_tensor(DType::kF32, {c.B, c.T, W}, 601), c.dt);
    const OwnedTensor dout_d = to_device(random_tensor(DType::kF32, {c.B, c.T, C}, 602), c.dt);
    OwnedTensor out_d = poisoned_device(c.dt, {c.B, c.T, C});
    OwnedTensor lse_d = poisoned_device(DType::kF32, {c.B, c.NH, c.T});
    OwnedTensor out_c = poisoned_device(c.dt, {c.B, c.T, C});
    OwnedTensor lse_c = poisoned_device(DType::kF32, {c.B, c.NH, c.T});
    ops::attention_forward(gpu(), out_d, lse_d, qkv_d, shape, c.p, key);
    const ops::AttentionChunk whole{0, c.T, 0};
    ops::attention_chunk_forward(gpu(), out_c, lse_c, qkv_d, qkv_d, shape, whole, c.p, key);
    EXPECT_TRUE(same_bits(gpu(), out_c, out_d)) << "out";
    EXPECT_TRUE(same_bits(gpu(), lse_c, lse_d)) << "lse";

    OwnedTensor dqkv_d = poisoned_device(c.dt, {c.B, c.T, W});
    ops::attention_backward(gpu(), dqkv_d, dout_d, qkv_d, out_d, lse_d, shape, c.p, key);
    OwnedTensor dq_d = to_device(filled({c.B, c.T, W}, kSentinel), c.dt);
    OwnedTensor dkv_d = to_device(filled({c.B, c.T, W}, kSentinel), c.dt);
    ops::attention_chunk_backward(gpu(), dq_d, dkv_d, dout_d, qkv_d, qkv_d, out_d, lse_d, shape,
                                  whole, c.p, key);
    const std::vector<double> dq = to_vector(to_host(gpu(), dq_d));
    const std::vector<double> dkv = to_vector(to_host(gpu(), dkv_d));
    const std::vector<double> want = to_vector(to_host(gpu(), dqkv_d));
    const int64_t R = c.NH / c.G;
    int64_t mismatches = 0;
    for (size_t n = 0; n < want.size(); ++n) {
      const bool q_col = static_cast<int64_t>(n % W) % ((R + 2) * c.HS) < R * c.HS;
      mismatches += dq[n] != (q_col ? want[n] : kSentinel);
      mismatches += dkv[n] != (q_col ? kSentinel : want[n]);
    }
    EXPECT_EQ(mismatches, 0);
  }
  use(AttentionKernels::kAuto);
}

}  // namespace
}  // namespace shardlm
