// cudnn_attention.h — causal grouped-query attention forward and backward through cuDNN's fused
// flash-attention engines (the graph API, cudnn_graph.h), on the fused-QKV layout of ops.h: the
// whole sequence, or one context-parallel query chunk against the whole sequence's keys.
//
// attention_forward / attention_backward and attention_chunk_forward / attention_chunk_backward
// (attention_*.cu) call these first; they return false
// when the case is not for cuDNN, and the caller runs ShardLM's own kernels. Which kernels run is
// the context's choice (CudaBackendState::set_attention_kernels):
//   kAuto  — cuDNN when it supports the case, else ShardLM's kernels (the default);
//   kOwn   — always ShardLM's kernels (tests, and to compare);
//   kCudnn — cuDNN or an Error(kUnsupported) that says why not.
// cuDNN's case: bf16/fp16, fp32 lse, head dim a multiple of 8 up to 128, query rows and
// key count multiples of 128 (the sequence length T for the whole sequence; a chunk's rows and
// position + rows; shorter or ragged lengths need a padding-mask workaround before cuDNN 9.16),
// 16-byte aligned pointers (the chunk's views included), and a plan that finalizes on this
// device. Builds without cuDNN
// (SHARDLM_WITH_CUDNN undefined) always answer "not for cuDNN".
//
// Attention dropout on cuDNN draws cuDNN's mask (its Philox generator inside the fused kernel),
// not ShardLM's: the call's seed is derived from ShardLM's dropout key, the global head offset and
// the chunk's position (cudnn_dropout_seed in attention_shape.h), so masks are deterministic
// (the backward and a recompute regenerate them; a resumed run draws the same ones) and differ
// between layers, micro-batches, steps, tensor-parallel head slices and context-parallel chunks.
// They are not the masks of the CPU backend or ShardLM's kernels, and they depend on the layout;
// 'own' kernels keep ShardLM's layout-independent masks.
//
// Layout, no copies for MHA (NH == G): for a chunk of `rows` query rows starting at row `row` of
// q_src[B,TQ,W] (W = G*(R+2)*HS, R = NH/G) at global position `position`, Q and dQ are strided
// views of those rows of q_src / dq (pointer offset, the full tensors' strides), K, V, dK, dV
// strided views of rows [0, position + rows) of kv[B,T,W] / dkv, O and dO views of the chunk's
// rows of [B,TQ,NH*HS], and lse is cuDNN's fp32 Stats [B,NH,rows,1] inside [B,NH,TQ]. The
// causal mask compares the query's global position, row index + position (as cudnn-frontend's
// bottom-right alignment: + s_kv - s_q), with the key index; position 0 (the whole sequence:
// q_src = kv = qkv, TQ = rows = T) builds the plain top-left graph. With R > 1 the query heads of
// a group sit R*HS apart but groups (R+2)*HS apart, which no 4-d stride describes, so Q is
// gathered into [B,rows,NH,HS] first and dQ scattered back. Plans are built once per shape
// (B, TQ, T, rows, position, heads) and cached in the context.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "shardlm/tensor/dtype.h"
#include "shardlm/tensor/device_context.h"

struct cudnnContext;

namespace shardlm::ops::cuda {

enum class AttentionKernels { kAuto, kOwn, kCudnn };
const char* attention_kernels_name(AttentionKernels k);

// One attention call's geometry and pointers (the layout of ops::attention_chunk_forward; the
// whole sequence is q_src = kv = qkv, TQ = rows = T, row = position = 0, dq = dkv = dqkv).
struct CudnnAttentionCall {
  DType dtype = DType::kBF16;
  int64_t B = 0, T = 0, NH = 0, G = 0, HS = 0;    // T: kv's length (the whole sequence)
  int64_t TQ = 0, row = 0, rows = 0, position = 0;  // the query chunk (AttentionChunk)
  bool lse_is_f32 = false;
  bool padded = false;  // not causal, or key padding (AttentionShape): not for this graph
  double dropout_p = 0;
  uint64_t dropout_seed = 0;  // cuDNN's RNG seed for this call (dropout_p > 0)
  const void* q_src = nullptr;  // [B, TQ, W]
  const void* kv = nullptr;     // [B, T, W]
  void* out = nullptr;          // [B, TQ, NH*HS] forward: written; backward: the saved output
  void* lse = nullptr;          // [B, NH, TQ] forward: written; backward: read
  const void* dout = nullptr;   // backward only, [B, TQ, NH*HS]
  void* dq = nullptr;           // backward only, [B, TQ, W]
  void* dkv = nullptr;          // backward only, [B, T, W]
  int64_t keys() const { return position + rows; }
};

// Returns true when cuDNN computed the call, false when the caller should use its own kernels
// (kAuto and the case is not for cuDNN, or kOwn). Throws Error(kUnsupported) under kCudnn when
// cuDNN cannot run the case.
bool cudnn_attention_forward(const DeviceContext& ctx, const CudnnAttentionCall& call);
bool cudnn_attention_backward(const DeviceContext& ctx, const CudnnAttentionCall& call);

// Per-context cuDNN state: the handle (bound to the context's stream) and the plan cache.
// Owned by CudaBackendState; opaque outside cudnn_attention.cc.
class CudnnAttentionCache {
 public:
  CudnnAttentionCache();
  ~CudnnAttentionCache();
  CudnnAttentionCache(const CudnnAttentionCache&) = delete;
  CudnnAttentionCache& operator=(const CudnnAttentionCache&) = delete;
  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace shardlm::ops::cuda
