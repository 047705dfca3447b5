// cuda_ops.h — the CUDA backend of ops.h. Same names and signatures as shardlm::ops, in
// namespace shardlm::ops::cuda. The dispatcher (ops.cc) validates shapes/dtypes and then calls
// these for CUDA tensors; each entry point re-checks what it relies on (dtype, contiguity,
// device) and throws Error(kInvalidArgument) naming the op.
//
// Contract: every op runs asynchronously on the stream of the CudaBackendState attached to ctx
// (cuda_context.h, init_cuda_backend). Tensors are never allocated by ops; the parameter-gradient
// column reductions (norms, linear bias), the embedding backwards' sort (sorted_scatter_add.h),
// the attention backwards (self, chunk, cross) and moe_router_score_sums take per-call scratch
// from the context (CudaBackendState::scratch, grown stream-ordered on first use, then reused).
// The only host syncs are the ops that return a host value (sum_squares, all_finite), copies
// to/from host memory, and embedding_forward's token-range check (which reads back one flag).
//
//   DeviceContext ctx(Device::cuda(0));
//   ops::cuda::init_cuda_backend(ctx);
//   ops::cuda::gelu_forward(ctx, out, in);   // out/in bf16, fp16 or fp32 on cuda:0
#pragma once

#include <cstdint>

#include "shardlm/ops/ops.h"
#include "shardlm/tensor/device_context.h"
#include "shardlm/tensor/philox.h"
#include "shardlm/tensor/tensor.h"

namespace shardlm::ops::cuda {

// ---- elementwise / utility ----------------------------------------------------------------
void fill(DeviceContext& ctx, Tensor out, double value);
void init_normal(DeviceContext& ctx, Tensor out, const PhiloxKey& key, double stddev,
                 const ShardIndexMap& map);
void copy(DeviceContext& ctx, Tensor dst, const Tensor& src);
void add(DeviceContext& ctx, Tensor out, const Tensor& a, const Tensor& b);
void add_inplace(DeviceContext& ctx, Tensor acc, const Tensor& x);
void scale_inplace(DeviceContext& ctx, Tensor x, double alpha);
void accumulate_and_zero(DeviceContext& ctx, Tensor acc, Tensor x, bool assign);  // accumulate_and_zero.cu
double sum_squares(DeviceContext& ctx, const Tensor& x);
bool all_finite(DeviceContext& ctx, const Tensor& x);

// ---- embeddings ----------------------------------------------------------------------------
void embedding_forward(DeviceContext& ctx, Tensor out, const Tensor& tokens, const Tensor& wte,
                       const Tensor& wpe);
void embedding_backward(DeviceContext& ctx, Tensor dwte, Tensor dwpe, const Tensor& dout,
                        const Tensor& tokens);

// ---- normalisation -------------------------------------------------------------------------
void layernorm_forward(DeviceContext& ctx, Tensor out, Tensor mean, Tensor rstd,
                       const Tensor& in, const Tensor& weight, const Tensor& bias, double eps);
void layernorm_backward(DeviceContext& ctx, Tensor din, Tensor dweight, Tensor dbias,
                        const Tensor& dout, const Tensor& in, const Tensor& weight,
                        const Tensor& mean, const Tensor& rstd);
void rmsnorm_forward(DeviceContext& ctx, Tensor out, Tensor rstd, const Tensor& in,
                     const Tensor& weight, double eps);
void rmsnorm_backward(DeviceContext& ctx, Tensor din, Tensor dweight, const Tensor& dout,
                      const Tensor& in, const Tensor& weight, const Tensor& rstd);

// ---- linear --------------------------------------------------------------------------------
void linear_forward(DeviceContext& ctx, Tensor out, const Tensor& in, const Tensor& weight,
                    const Tensor& bias);
void linear_backward(DeviceContext& ctx, Tensor din, Tensor dweight, Tensor dbias,
                     const Tensor& dout, const Tensor& in, const Tensor& weight);
void linear_weight_grad(DeviceContext& ctx, Tensor dweight, const Tensor& dout, const Tensor& in,
                        bool accumulate);
void abs_max(DeviceContext& ctx, Tensor amax, const Tensor& in);  // fp8.cu
void fp8_scale_from_amax(DeviceContext& ctx, Tensor scale, Tensor scale_inv, const Tensor& amax,
                         DType format, int margin);
void fp8_quantize(DeviceContext& ctx, Tensor q, Tensor q_t, const Tensor& in, const Tensor& scale);
void fp8_gemm(DeviceContext& ctx, Tensor out, const Tensor& a, const Tensor& a_scale_inv,
              const Tensor& b, const Tensor& b_scale_inv, const Tensor& bias, bool accumulate);

// ---- activations ---------------------------------------------------------------------------
void gelu_forward(DeviceContext& ctx, Tensor out, const Tensor& in);
void gelu_backward(DeviceContext& ctx, Tensor din, const Tensor& dout, const Tensor& in);
void swiglu_forward(DeviceContext& ctx, Tensor out, const Tensor& in);
void swiglu_backward(DeviceContext& ctx, Tensor din, const Tensor& dout, const Tensor& in);
void tanh_forward(DeviceContext& ctx, Tensor out, const Tensor& in);
void tanh_backward(DeviceContext& ctx, Tensor din, const Tensor& dout, const Tensor& out);

// ---- dropout -------------------------------------------------------------------------------
void dropout_forward(DeviceContext& ctx, Tensor out, const Tensor& in, double p,
                     const DropoutKey& key, uint64_t position_offset);
void dropout_backward(DeviceContext& ctx, Tensor din, const Tensor& dout, double p,
                      const DropoutKey& key, uint64_t position_offset);

// ---- fused kernels (fused_dropout_add.cu, fused_linear_gelu.cu) ----------------------------
void dropout_add_forward(DeviceContext& ctx, Tensor out, const Tensor& x, const Tensor& residual,
                         double p, const DropoutKey& key, uint64_t position_offset);
void dropout_add_backward(DeviceContext& ctx, Tensor dx, const Tensor& dout, double p,
                          const DropoutKey& key, uint64_t position_offset);
void linear_gelu_forward(DeviceContext& ctx, Tensor out, Tensor pre, const Tensor& in,
                         const Tensor& weight, const Tensor& bias);
void gelu_backward_bias_grad(DeviceContext& ctx, Tensor dpre, Tensor dbias, const Tensor& dout,
                             const Tensor& pre);
// True when linear_gelu_forward with these arguments takes the one-GEMM cuBLASLt GELU_AUX
// epilogue path (false: GEMM + separate GELU). For tests and profiling; runs the heuristic.
bool linear_gelu_uses_epilogue(DeviceContext& ctx, const Tensor& out, const Tensor& pre,
                               const Tensor& in, const Tensor& weight, const Tensor& bias);

// ---- attention -----------------------------------------------------------------------------
void attention_forward(DeviceContext& ctx, Tensor out, Tensor lse, const Tensor& qkv,
                       const AttentionShape& shape, double dropout_p, const DropoutKey& key);
void attention_backward(DeviceContext& ctx, Tensor dqkv, const Tensor& dout, const Tensor& qkv,
                        const Tensor& out, const Tensor& lse, const AttentionShape& shape,
                        double dropout_p, const DropoutKey& key);
void attention_chunk_forward(DeviceContext& ctx, Tensor out, Tensor lse, const Tensor& q_src,
                             const Tensor& kv, const AttentionShape& shape,
                             const AttentionChunk& chunk, double dropout_p, const DropoutKey& key);
void attention_chunk_backward(DeviceContext& ctx, Tensor dq, Tensor dkv, const Tensor& dout,
                              const Tensor& q_src, const Tensor& kv, const Tensor& out,
                              const Tensor& lse, const AttentionShape& shape,
                              const AttentionChunk& chunk, double dropout_p,
                              const DropoutKey& key);
void cross_attention_forward(DeviceContext& ctx, Tensor out, Tensor lse, const Tensor& q,
                             const Tensor& kv, const AttentionShape& shape, double dropout_p,
                             const DropoutKey& key);
void cross_attention_backward(DeviceContext& ctx, Tensor dq, Tensor dkv, const Tensor& dout,
                              const Tensor& q, const Tensor& kv, const Tensor& out,
                              const Tensor& lse, const AttentionShape& shape, double dropout_p,
                              const DropoutKey& key);

// ---- rotary position embedding (rope.cu) ----------------------------------------------------
void rope_cos_sin(DeviceContext& ctx, Tensor cos_sin, const RopeFrequencies& freq);
void rope_forward(DeviceContext& ctx, Tensor out, const Tensor& in, const Tensor& cos_sin,
                  const AttentionShape& shape, bool interleaved);
void rope_backward(DeviceContext& ctx, Tensor din, const Tensor& dout, const Tensor& cos_sin,
                   const AttentionShape& shape, bool interleaved);

// ---- loss ----------------------------------------------------------------------------------
void cross_entropy_forward(DeviceContext& ctx, Tensor losses, Tensor lse, const Tensor& logits,
                           const Tensor& targets);
void cross_entropy_backward(DeviceContext& ctx, Tensor dlogits, const Tensor& dlosses,
                            const Tensor& logits, const Tensor& targets, const Tensor& lse);

// ---- vocab-parallel embedding and loss (vocab_parallel_embedding.cu,
// vocab_parallel_cross_entropy.cu) -----------------------------------------------------------
void vocab_parallel_embedding_forward(DeviceContext& ctx, Tensor out, const Tensor& tokens,
                                      const Tensor& wte, int64_t vocab_start);
void vocab_parallel_embedding_backward(DeviceContext& ctx, Tensor dwte, const Tensor& dout,
                                       const Tensor& tokens, int64_t vocab_start);
void vocab_parallel_cross_entropy_max(DeviceContext& ctx, Tensor row_max, const Tensor& logits);
void vocab_parallel_cross_entropy_partials(DeviceContext& ctx, Tensor sum_exp,
                                           Tensor target_logit, const Tensor& logits,
                                           const Tensor& targets, const Tensor& row_max,
                                           int64_t vocab_start);
void vocab_parallel_cross_entropy_loss(DeviceContext& ctx, Tensor losses, Tensor lse,
                                       const Tensor& row_max, const Tensor& sum_exp,
                                       const Tensor& target_logit);
void vocab_parallel_cross_entropy_backward(DeviceContext& ctx, Tensor dlogits,
                                           const Tensor& dlosses, const Tensor& logits,
                                           const Tensor& targets, const Tensor& lse,
                                           int64_t vocab_start);

// ---- mixture of experts (moe.cu) ---------------------------------------------------------
void moe_topk_router_forward(DeviceContext& ctx, Tensor probs, Tensor indices,
                             const Tensor& logits, int64_t k, bool pre_softmax);
void moe_topk_router_backward(DeviceContext& ctx, Tensor dlogits, const Tensor& dprobs,
                              const Tensor& logits, const Tensor& indices, bool pre_softmax);
void moe_router_score_sums(DeviceContext& ctx, Tensor sums, const Tensor& logits);
void moe_router_logsumexp(DeviceContext& ctx, Tensor lse, const Tensor& logits);
void moe_z_loss_backward(DeviceContext& ctx, Tensor dlogits, const Tensor& logits, double scale);
void moe_aux_loss_backward(DeviceContext& ctx, Tensor dlogits, const Tensor& logits,
                           const Tensor& weights);
void gather_rows(DeviceContext& ctx, Tensor out, const Tensor& in, const Tensor& index,
                 const Tensor& scale);
void gather_sum_rows(DeviceContext& ctx, Tensor out, const Tensor& in, const Tensor& slots,
                     const Tensor& weights);
void gathered_row_dot(DeviceContext& ctx, Tensor dweights, const Tensor& dout, const Tensor& in,
                      const Tensor& slots);

// ---- optimizer -----------------------------------------------------------------------------
void adamw_step(DeviceContext& ctx, Tensor params, const Tensor& grads, Tensor exp_avg,
                Tensor exp_avg_sq, const AdamWParams& hp, Tensor compute_params = Tensor());

}  // namespace shardlm::ops::cuda
