// cpu_ops.h — the CPU reference backend of the op layer: same functions and signatures as
// ops.h, in namespace shardlm::ops::cpu. Call these through ops.h, never directly: the
// dispatcher (ops.cc) validates shapes, dtypes and devices first, so these functions assume
// well-formed arguments and only check what needs the data itself (token / target ids) and
// the dtype (fp32 and fp64 compute; fill/copy, accumulate_and_zero's x and the embedding
// backwards' dout also handle bf16/fp16 storage).
//
// Numerics: every op computes in double internally and rounds once on store, so fp32 results
// stay within ~1e-6 of fp64 ones and the backend can serve as the reference for CUDA kernels.
// Single-threaded on purpose: CPU tests run many ranks as threads on few cores.
#pragma once

#include <cstdint>

#include "shardlm/ops/ops.h"

namespace shardlm::ops::cpu {

// elementwise.cc
void fill(DeviceContext& ctx, Tensor out, double value);
void init_normal(DeviceContext& ctx, Tensor out, const PhiloxKey& key, double stddev,
                 const ShardIndexMap& map);
void copy(DeviceContext& ctx, Tensor dst, const Tensor& src);
void add(DeviceContext& ctx, Tensor out, const Tensor& a, const Tensor& b);
void add_inplace(DeviceContext& ctx, Tensor acc, const Tensor& x);
void scale_inplace(DeviceContext& ctx, Tensor x, double alpha);
void accumulate_and_zero(DeviceContext& ctx, Tensor acc, Tensor x, bool assign);  // accumulate_and_zero.cc
double sum_squares(DeviceContext& ctx, const Tensor& x);
bool all_finite(DeviceContext& ctx, const Tensor& x);

// embedding.cc
void embedding_forward(DeviceContext& ctx, Tensor out, const Tensor& tokens, const Tensor& wte,
                       const Tensor& wpe);
void embedding_backward(DeviceContext& ctx, Tensor dwte, Tensor dwpe, const Tensor& dout,
                        const Tensor& tokens);

// layernorm.cc
void layernorm_forward(DeviceContext& ctx, Tensor out, Tensor mean, Tensor rstd, const Tensor& in,
                       const Tensor& weight, const Tensor& bias, double eps);
void layernorm_backward(DeviceContext& ctx, Tensor din, Tensor dweight, Tensor dbias,
                        const Tensor& dout, const Tensor& in, const Tensor& weight,
                        const Tensor& mean, const Tensor& rstd);

// rmsnorm.cc
void rmsnorm_forward(DeviceContext& ctx, Tensor out, Tensor rstd, const Tensor& in,
                     const Tensor& weight, double eps);
void rmsnorm_backward(DeviceContext& ctx, Tensor din, Tensor dweight, const Tensor& dout,
                      const Tensor& in, const Tensor& weight, const Tensor& rstd);

// linear.cc
void linear_forward(DeviceContext& ctx, Tensor out, const Tensor& in, const Tensor& weight,
                    const Tensor& bias);
void linear_backward(DeviceContext& ctx, Tensor din, Tensor dweight, Tensor dbias,
                     const Tensor& dout, const Tensor& in, const Tensor& weight);
void linear_weight_grad(DeviceContext& ctx, Tensor dweight, const Tensor& dout, const Tensor& in,
                        bool accumulate);
void abs_max(DeviceContext& ctx, Tensor amax, const Tensor& in);  // fp8.cc
void fp8_scale_from_amax(DeviceContext& ctx, Tensor scale, Tensor scale_inv, const Tensor& amax,
                         DType format, int margin);
void fp8_quantize(DeviceContext& ctx, Tensor q, Tensor q_t, const Tensor& in, const Tensor& scale);
void fp8_gemm(DeviceContext& ctx, Tensor out, const Tensor& a, const Tensor& a_scale_inv,
              const Tensor& b, const Tensor& b_scale_inv, const Tensor& bias, bool accumulate);

// activations.cc
void gelu_forward(DeviceContext& ctx, Tensor out, const Tensor& in);
void gelu_backward(DeviceContext& ctx, Tensor din, const Tensor& dout, const Tensor& in);
void swiglu_forward(DeviceContext& ctx, Tensor out, const Tensor& in);
void swiglu_backward(DeviceContext& ctx, Tensor din, const Tensor& dout, const Tensor& in);
void tanh_forward(DeviceContext& ctx, Tensor out, const Tensor& in);
void tanh_backward(DeviceContext& ctx, Tensor din, const Tensor& dout, const Tensor& out);

// dropout.cc
void dropout_forward(DeviceContext& ctx, Tensor out, const Tensor& in, double p,
                     const DropoutKey& key, uint64_t position_offset);
void dropout_backward(DeviceContext& ctx, Tensor din, const Tensor& dout, double p,
                      const DropoutKey& key, uint64_t position_offset);

// fused_dropout_add.cc
void dropout_add_forward(DeviceContext& ctx, Tensor out, const Tensor& x, const Tensor& residual,
                         double p, const DropoutKey& key, uint64_t position_offset);
void dropout_add_backward(DeviceContext& ctx, Tensor dx, const Tensor& dout, double p,
                          const DropoutKey& key, uint64_t position_offset);

// fused_linear_gelu.cc
void linear_gelu_forward(DeviceContext& ctx, Tensor out, Tensor pre, const Tensor& in,
                         const Tensor& weight, const Tensor& bias);
void gelu_backward_bias_grad(DeviceContext& ctx, Tensor dpre, Tensor dbias, const Tensor& dout,
                             const Tensor& pre);

// attention.cc
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

// rope.cc
void rope_cos_sin(DeviceContext& ctx, Tensor cos_sin, const RopeFrequencies& freq);
void rope_forward(DeviceContext& ctx, Tensor out, const Tensor& in, const Tensor& cos_sin,
                  const AttentionShape& shape, bool interleaved);
void rope_backward(DeviceContext& ctx, Tensor din, const Tensor& dout, const Tensor& cos_sin,
                   const AttentionShape& shape, bool interleaved);

// cross_entropy.cc
void cross_entropy_forward(DeviceContext& ctx, Tensor losses, Tensor lse, const Tensor& logits,
                           const Tensor& targets);
void cross_entropy_backward(DeviceContext& ctx, Tensor dlogits, const Tensor& dlosses,
                            const Tensor& logits, const Tensor& targets, const Tensor& lse);

// vocab_parallel_embedding.cc
void vocab_parallel_embedding_forward(DeviceContext& ctx, Tensor out, const Tensor& tokens,
                                      const Tensor& wte, int64_t vocab_start);
void vocab_parallel_embedding_backward(DeviceContext& ctx, Tensor dwte, const Tensor& dout,
                                       const Tensor& tokens, int64_t vocab_start);

// vocab_parallel_cross_entropy.cc
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

// moe.cc
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

// adamw.cc
void adamw_step(DeviceContext& ctx, Tensor params, const Tensor& grads, Tensor exp_avg,
                Tensor exp_avg_sq, const AdamWParams& hp, Tensor compute_params = Tensor());

}  // namespace shardlm::ops::cpu
