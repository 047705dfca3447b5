// cudnn_attention.h — causal grouped-query attention forward and backward through cuDNN's fused
// flash-attention engines (the graph API, cudnn_graph.h), on the fused-QKV layout of ops.h.
//
// attention_forward / attention_backward (attention_*.cu) call these first; they return false
// when the case is not for cuDNN, and the caller runs ShardLM's own kernels. Which kernels run is
// the context's choice (CudaBackendState::set_attention_kernels):
//   kAuto  — cuDNN when it supports the case, else ShardLM's kernels (the default);
//   kOwn   — always ShardLM's kernels (tests, and to compare);
//   kCudnn — cuDNN or an Error(kUnsupported) that says why not.
// cuDNN's case: bf16/fp16, fp32 lse, no attention dropout (cuDNN's dropout mask is not ShardLM's
// Philox mask, so it would change training), head dim a multiple of 8 up to 128, sequence length
// a multiple of 128 (shorter or ragged lengths need a padding-mask workaround before cuDNN 9.16),
// 16-byte aligned pointers, and a plan that finalizes on this device. Builds without cuDNN
// (SHARDLM_WITH_CUDNN undefined) always answer "not for cuDNN".
//
// Layout, no copies for MHA (NH == G): Q, K, V are strided views of qkv[B,T,W] (W = G*(R+2)*HS,
// R = NH/G), O and dO strided views of [B,T,NH*HS], lse is cuDNN's fp32 Stats [B,NH,T,1]. With
// R > 1 the query heads of a group sit R*HS apart but groups (R+2)*HS apart, which no 4-d stride
// describes, so Q is gathered into [B,T,NH,HS] first and dQ scattered back (one 2-d copy per
// group). Plans are built once per shape and cached in the context.
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

// One attention call's geometry and pointers (the layout of ops::attention_forward).
struct CudnnAttentionCall {
  DType dtype = DType::kBF16;
  int64_t B = 0, T = 0, NH = 0, G = 0, HS = 0;
  bool lse_is_f32 = false;
  double dropout_p = 0;
  const void* qkv = nullptr;
  void* out = nullptr;        // forward: written; backward: the saved output
  void* lse = nullptr;        // forward: written; backward: read
  const void* dout = nullptr; // backward only
  void* dqkv = nullptr;       // backward only
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
