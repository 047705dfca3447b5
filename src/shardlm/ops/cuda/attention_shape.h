// attention_shape.h — host-side validation of attention arguments (whole sequence, one
// context-parallel query chunk, or cross-attention) and the kernel parameter block they produce
// (shared by attention_forward.cu and attention_backward.cu).
#pragma once

#include <cmath>
#include <initializer_list>
#include <string>

#include "shardlm/ops/cuda/attention_common.cuh"
#include "shardlm/ops/cuda/cudnn_attention.h"
#include "shardlm/ops/ops.h"

namespace shardlm::ops::cuda {

// NH, G dividing NH, and HS all positive (checked before the layouts that use them).
inline void require_head_shape(const AttentionShape& shape, const char* op) {
  const int64_t NH = shape.num_heads, G = shape.num_query_groups, HS = shape.head_dim;
  if (NH <= 0 || G <= 0 || HS <= 0 || NH % G != 0)
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: bad AttentionShape NH=" + std::to_string(NH) +
                    " G=" + std::to_string(G) + " HS=" + std::to_string(HS) +
                    " (all positive, G divides NH)");
}

// Checks every attention call shares (devices, dtypes, dropout p) and fills the params'
// pointers, heads, scale, dropout and key padding; the caller has checked the head shape and
// that q_src and kv are rank 3 of one batch size, and sets the layout and the chunk.
inline AttentionParams make_common_attention_params(const DeviceContext& ctx, const Tensor& q_src,
                                                    const Tensor& kv, const Tensor& out,
                                                    const Tensor& lse, const AttentionShape& shape,
                                                    double dropout_p, const DropoutKey& key,
                                                    const char* op) {
  require_on_device(ctx, q_src, op, "q_src");
  require_on_device(ctx, kv, op, "kv");
  require_on_device(ctx, out, op, "out");
  require_on_device(ctx, lse, op, "lse");
  require_same_dtype(kv, q_src, op, "kv", "q_src");
  require_same_dtype(kv, out, op, "kv", "out");
  if (lse.dtype() != DType::kF32) require_same_dtype(kv, lse, op, "kv", "lse");
  const int64_t NH = shape.num_heads, G = shape.num_query_groups, HS = shape.head_dim;
  if (!(dropout_p >= 0.0 && dropout_p < 1.0))
    throw Error(ErrorKind::kInvalidArgument, std::string(op) + " on CUDA: dropout p = " +
                                                 std::to_string(dropout_p) + " is not in [0, 1)");
  AttentionParams p;
  p.q_src = q_src.raw();
  p.kv = kv.raw();
  p.out = out.raw();
  p.lse = lse.raw();
  p.lse_is_f32 = lse.dtype() == DType::kF32;
  p.B = kv.size(0);
  p.T = kv.size(1);
  p.TQ = q_src.size(1);
  p.NH = NH;
  p.G = G;
  p.R = NH / G;
  p.HS = HS;
  require_numel(out, p.B * p.TQ * NH * HS, op, "out");
  require_numel(lse, p.B * NH * p.TQ, op, "lse");
  p.causal = shape.causal;
  if (shape.key_lengths.defined()) {
    require_on_device(ctx, shape.key_lengths, op, "key_lengths");
    if (shape.key_lengths.dtype() != DType::kI32 || shape.key_lengths.numel() != p.B)
      throw Error(ErrorKind::kInvalidArgument,
                  std::string(op) + " on CUDA: key_lengths must be int32 [B = " +
                      std::to_string(p.B) + "]");
    p.key_lengths = static_cast<const int32_t*>(shape.key_lengths.raw());
  }
  p.dropout_NH = shape.global_num_heads();
  p.head_offset = shape.head_offset;
  p.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(HS)));
  p.scale_log2 = p.scale * kLog2e;
  p.dropout = make_dropout_stream(key, dropout_p);
  p.keep_scale = static_cast<float>(1.0 / (1.0 - dropout_p));
  return p;
}

// Self-attention, one query chunk: checks q_src [B,TQ,W] and kv [B,T,W] (W = G*(NH/G+2)*HS),
// out/dout [B,TQ,NH*HS], lse [B,NH,TQ] (fp32 or the inputs' dtype), the chunk and the dropout
// probability, then fills the fused-QKV layout and the chunk.
inline AttentionParams make_attention_chunk_params(const DeviceContext& ctx, const Tensor& q_src,
                                                   const Tensor& kv, const Tensor& out,
                                                   const Tensor& lse, const AttentionShape& shape,
                                                   const AttentionChunk& chunk, double dropout_p,
                                                   const DropoutKey& key, const char* op) {
  require_head_shape(shape, op);
  const int64_t G = shape.num_query_groups, HS = shape.head_dim;
  const int64_t R = shape.num_heads / G, W = G * (R + 2) * HS;
  for (const Tensor* t : {&q_src, &kv})
    if (t->rank() != 3 || t->size(2) != W || t->size(0) != kv.size(0))
      throw Error(ErrorKind::kInvalidArgument,
                  std::string(op) + " on CUDA: q_src " + q_src.shape().to_string() + " and kv " +
                      kv.shape().to_string() + " must be [B, TQ or T, G*(NH/G+2)*HS = " +
                      std::to_string(W) + "]");
  AttentionParams p =
      make_common_attention_params(ctx, q_src, kv, out, lse, shape, dropout_p, key, op);
  const int64_t T = p.T, TQ = p.TQ;
  if (chunk.rows < 0 || chunk.row < 0 || chunk.row + chunk.rows > TQ || chunk.position < 0 ||
      chunk.position + chunk.rows > T)
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: chunk {row " + std::to_string(chunk.row) +
                    ", rows " + std::to_string(chunk.rows) + ", position " +
                    std::to_string(chunk.position) + "} does not fit TQ = " + std::to_string(TQ) +
                    ", T = " + std::to_string(T));
  if (p.padded() && (chunk.row != 0 || chunk.position != 0 || chunk.rows != T || TQ != T))
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: bidirectional or padded attention runs on the whole "
                                  "sequence only (context-parallel chunks are causal)");
  p.W = W;
  p.q_row0 = chunk.row;
  p.rows = chunk.rows;
  p.q_pos0 = chunk.position;
  return p;
}

// The whole sequence: q_src = kv = qkv [B,T,W], chunk {0, T, 0} (rows = 0 when T = 0: the
// callers return before launching anything when B * rows == 0).
inline AttentionParams make_attention_params(const DeviceContext& ctx, const Tensor& qkv,
                                             const Tensor& out, const Tensor& lse,
                                             const AttentionShape& shape, double dropout_p,
                                             const DropoutKey& key, const char* op) {
  const int64_t T = qkv.rank() == 3 ? qkv.size(1) : 0;
  return make_attention_chunk_params(ctx, qkv, qkv, out, lse, shape, AttentionChunk{0, T, 0},
                                     dropout_p, key, op);
}

// Cross-attention: checks q [B,TQ,NH*HS], kv [B,TK,G*2*HS], out/dout [B,TQ,NH*HS], lse
// [B,NH,TQ] and that the mask is not causal, then fills the separate-q/kv layout: every query
// row (rows = TQ, positions 0..TQ-1) against all TK keys.
inline AttentionParams make_cross_attention_params(const DeviceContext& ctx, const Tensor& q,
                                                   const Tensor& kv, const Tensor& out,
                                                   const Tensor& lse, const AttentionShape& shape,
                                                   double dropout_p, const DropoutKey& key,
                                                   const char* op) {
  require_head_shape(shape, op);
  const int64_t NH = shape.num_heads, G = shape.num_query_groups, HS = shape.head_dim;
  if (q.rank() != 3 || q.size(2) != NH * HS || kv.rank() != 3 || kv.size(2) != G * 2 * HS ||
      kv.size(0) != q.size(0) || kv.size(1) < 1)
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: q " + q.shape().to_string() + " and kv " +
                    kv.shape().to_string() + " must be [B, TQ, NH*HS = " +
                    std::to_string(NH * HS) + "] and [B, TK >= 1, G*2*HS = " +
                    std::to_string(G * 2 * HS) + "]");
  if (shape.causal)
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: cross-attention is unmasked except for key "
                                  "padding (AttentionShape::causal must be false)");
  AttentionParams p =
      make_common_attention_params(ctx, q, kv, out, lse, shape, dropout_p, key, op);
  p.cross = true;
  p.q_row0 = 0;
  p.rows = p.TQ;
  p.q_pos0 = 0;
  return p;
}

// The tensor-core kernels need 16-bit data, HS in {64, 128} and 16-byte aligned rows.
inline bool attention_uses_tensor_cores(DType dtype, int64_t HS,
                                        std::initializer_list<const void*> ptrs) {
  if (dtype != DType::kBF16 && dtype != DType::kF16) return false;
  if (HS != 64 && HS != 128) return false;
  for (const void* ptr : ptrs)
    if (!aligned16(ptr)) return false;
  return true;
}

// The row-wise fallback keeps HS / 32 values per lane in registers.
constexpr int kRowwiseMaxPerLane = 8;  // HS <= 256
inline void require_rowwise_head_dim(int64_t HS, const char* op) {
  if (HS > 32 * kRowwiseMaxPerLane)
    throw Error(ErrorKind::kUnsupported,
                std::string(op) + " on CUDA: head_dim " + std::to_string(HS) +
                    " is supported only up to 256 (tensor-core path: 64 and 128 in bf16/fp16)");
}

// cuDNN's dropout seed for a call (cudnn_attention.h): ShardLM's Philox key of the dropout site
// (seed, layer, site), the step and global micro-batch, then the call's first global head and
// first query position, each folded in through a bijective 64-bit mix, so tensor-parallel head
// slices and context-parallel chunks draw independent masks.
inline uint64_t cudnn_dropout_seed(const AttentionParams& p) {
  uint64_t h = mix64_device((static_cast<uint64_t>(p.dropout.key1) << 32) | p.dropout.key0);
  h = mix64_device(h ^ ((static_cast<uint64_t>(p.dropout.step) << 32) | p.dropout.microbatch));
  h = mix64_device(h ^ static_cast<uint64_t>(p.head_offset));
  return mix64_device(h ^ static_cast<uint64_t>(p.q_pos0));
}

// The cuDNN path's view of a validated call (dout/dq/dkv only for backward).
inline CudnnAttentionCall cudnn_attention_call(const AttentionParams& p, DType dtype,
                                               double dropout_p, const void* dout = nullptr,
                                               void* dq = nullptr, void* dkv = nullptr) {
  CudnnAttentionCall c;
  c.dtype = dtype;
  c.B = p.B;
  c.T = p.T;
  c.NH = p.NH;
  c.G = p.G;
  c.HS = p.HS;
  c.TQ = p.TQ;
  c.row = p.q_row0;
  c.rows = p.rows;
  c.position = p.q_pos0;
  c.lse_is_f32 = p.lse_is_f32;
  c.padded = p.padded();
  c.dropout_p = dropout_p;
  c.dropout_seed = dropout_p > 0.0 ? cudnn_dropout_seed(p) : 0;
  c.q_src = p.q_src;
  c.kv = p.kv;
  c.out = p.out;
  c.lse = p.lse;
  c.dout = dout;
  c.dq = dq;
  c.dkv = dkv;
  return c;
}

}  // namespace shardlm::ops::cuda
