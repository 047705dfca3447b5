// ops.h — the one op interface. Every op dispatches on the tensors' device to the CPU
// reference (ops/cpu, fp32/fp64, OpenBLAS GEMM) or the CUDA backend (ops/cuda).
//
// Conventions (all ops):
//  - Tensors are contiguous row-major views; all float tensors of one call share one dtype
//    (fp32 or fp64 on the CPU) unless the op says otherwise (wider parameter gradients, fp32
//    statistics), integer inputs (tokens, targets) are int32.
//  - Ops never allocate. Anything extra is saved in caller-provided tensors (mean/rstd, lse).
//  - Accumulation rule (DESIGN §8.7): parameter gradients ACCUMULATE (+=); activation
//    gradients are ASSIGNED (=). The model adds residual-stream gradients explicitly.
//  - Shape letters: B batch, T sequence, C hidden, V (padded) vocab, N = B*T rows,
//    NH heads, G query groups, HS head size, F ffn hidden size.
//  - Bad shapes/dtypes throw Error(kInvalidArgument) naming the op and the shapes.
#pragma once

#include <cstdint>

#include "shardlm/ops/rope_frequencies.h"
#include "shardlm/tensor/device_context.h"
#include "shardlm/tensor/philox.h"
#include "shardlm/tensor/shard_index_map.h"
#include "shardlm/tensor/tensor.h"

namespace shardlm::ops {

// ---- elementwise / utility ----------------------------------------------------------------
void fill(DeviceContext& ctx, Tensor out, double value);
void copy(DeviceContext& ctx, Tensor dst, const Tensor& src);   // same numel; converts dtype
void add(DeviceContext& ctx, Tensor out, const Tensor& a, const Tensor& b);  // out = a + b
void add_inplace(DeviceContext& ctx, Tensor acc, const Tensor& x);           // acc += x
void scale_inplace(DeviceContext& ctx, Tensor x, double alpha);              // x *= alpha
// acc += convert(x) elementwise, then x = 0, in one pass: folds a micro-batch's bf16/fp16
// compute gradients into the fp32 main gradients (mixed precision) without a conversion
// buffer. Bit-identical to copy(tmp, x) (tmp in acc's dtype), add_inplace(acc, tmp), fill(x, 0):
// the converted value is added in acc's dtype. acc fp32 (or fp64 on the CPU); x fp32, bf16 or
// fp16 (the CPU also takes fp64); same numel; acc and x must not overlap. assign: acc =
// convert(x) instead (the step's first fold; acc is not read).
void accumulate_and_zero(DeviceContext& ctx, Tensor acc, Tensor x, bool assign = false);
// Sum of squares in double precision (for global grad norm).
double sum_squares(DeviceContext& ctx, const Tensor& x);

// ---- parameter initialisation ------------------------------------------------------------
// out[i] = stddev * init_normal(key, map.global_index(i)) rounded to out's dtype (fp32/fp64):
// a parameter shard initialised where it lives, with the same bits on every backend
// (tensor/normal_math.h). The CPU uses all hardware threads.
void init_normal(DeviceContext& ctx, Tensor out, const PhiloxKey& key, double stddev,
                 const ShardIndexMap& map = {});
// True when every element is finite.
bool all_finite(DeviceContext& ctx, const Tensor& x);

// ---- embeddings ----------------------------------------------------------------------------
// out[B,T,C] = wte[tokens[b,t], :] + (wpe defined ? wpe[t, :] : 0). tokens int32 [B,T],
// wte [V,C], wpe [P,C] with P >= T. Token ids outside [0,V) throw kInvalidArgument.
void embedding_forward(DeviceContext& ctx, Tensor out, const Tensor& tokens, const Tensor& wte,
                       const Tensor& wpe);
// dwte[tokens[b,t]] += dout[b,t]; dwpe[t] += dout[b,t] (dwpe may be undefined).
// dwte may be wider than dout (gradient-accumulation fusion writes the master gradient): fp32
// for bf16/fp16 dout, fp64 for fp32 dout (CPU); dwpe is dout's dtype. Rows sharing a token are
// summed in row order (deterministic): the CPU adds each in dwte's dtype, CUDA sums them in fp32
// (a token with more than 256 rows in 256-row chunks, then the chunk sums in order:
// cuda/sorted_scatter_add.h) and adds the sum once, rounding once to dwte's dtype.
void embedding_backward(DeviceContext& ctx, Tensor dwte, Tensor dwpe, const Tensor& dout,
                        const Tensor& tokens);

// ---- normalisation -------------------------------------------------------------------------
// LayerNorm over the last axis C of in[N,C]. Saves mean[N], rstd[N] (same float dtype).
void layernorm_forward(DeviceContext& ctx, Tensor out, Tensor mean, Tensor rstd,
                       const Tensor& in, const Tensor& weight, const Tensor& bias, double eps);
// din = ... (assign); dweight, dbias accumulate.
void layernorm_backward(DeviceContext& ctx, Tensor din, Tensor dweight, Tensor dbias,
                        const Tensor& dout, const Tensor& in, const Tensor& weight,
                        const Tensor& mean, const Tensor& rstd);
// RMSNorm: out = in * rstd * weight, rstd = 1/sqrt(mean(in^2) + eps). Saves rstd[N].
void rmsnorm_forward(DeviceContext& ctx, Tensor out, Tensor rstd, const Tensor& in,
                     const Tensor& weight, double eps);
void rmsnorm_backward(DeviceContext& ctx, Tensor din, Tensor dweight, const Tensor& dout,
                      const Tensor& in, const Tensor& weight, const Tensor& rstd);

// ---- linear --------------------------------------------------------------------------------
// out[N,OC] = in[N,IC] @ weight[OC,IC]^T + bias[OC] (bias may be undefined).
void linear_forward(DeviceContext& ctx, Tensor out, const Tensor& in, const Tensor& weight,
                    const Tensor& bias);
// din[N,IC] = dout @ weight (assign; skipped when din undefined);
// dweight[OC,IC] += dout^T @ in; dbias[OC] += sum_n dout (skipped when undefined).
void linear_backward(DeviceContext& ctx, Tensor din, Tensor dweight, Tensor dbias,
                     const Tensor& dout, const Tensor& in, const Tensor& weight);
// The weight gradient alone, into a buffer that may be wider than the activations:
// dweight[OC,IC] = (accumulate ? dweight : 0) + dout[N,OC]^T @ in[N,IC], math in fp32 (fp64 for
// fp64). dweight's dtype is dout's, or fp32 for bf16/fp16 activations (CUDA) and fp64 for fp32
// ones: Megatron's gradient-accumulation fusion, where the GEMM writes the fp32 main gradient
// directly instead of a 16-bit gradient that a later pass adds in.
void linear_weight_grad(DeviceContext& ctx, Tensor dweight, const Tensor& dout, const Tensor& in,
                        bool accumulate);

// ---- fp8 (per-tensor scaled 8-bit GEMMs: --fp8-format, model/fp8.h) ----------------------
// Formats and rounding as tensor/fp8.h. A tensor x is carried as codes q = fp8(x · scale) and
// its dequantisation factor scale_inv = 1 / scale; scale maps x's largest magnitude (amax) to
// the format's largest finite value.
// amax[0] = max_i |in_i| (fp32, assigned; NaN elements are skipped, an infinity gives inf).
void abs_max(DeviceContext& ctx, Tensor amax, const Tensor& in);
// Elementwise over [k] fp32 tensors: scale = fp8_max(format) / amax · 2^-margin, in fp32 (1
// where amax is 0, the largest fp32 where the quotient overflows), and scale_inv = 1 / scale
// (correctly rounded fp32 operations: CPU and CUDA agree bit for bit). An infinite amax gives
// a scale of 0 (NaN codes downstream: an fp16 loss-scaler overflow stays visible).
void fp8_scale_from_amax(DeviceContext& ctx, Tensor scale, Tensor scale_inv, const Tensor& amax,
                         DType format, int margin);
// q[N,C] = fp8(in[N,C] · scale[0]) and/or q_t[C,N] the same codes transposed (either may be
// undefined; both have the fp8 format dtype). The product is formed in fp32 (fp64 for fp64 in),
// then rounded once (tensor/fp8.h): CPU and CUDA give the same codes. in: [N,C] or any shape
// whose last dimension is C (q_t then is [C, numel/C]).
void fp8_quantize(DeviceContext& ctx, Tensor q, Tensor q_t, const Tensor& in, const Tensor& scale);
// The fp8 GEMM, both operands K-major (cuBLASLt's "TN", the only fp8 form Hopper runs):
//   out[M,N] = a_scale_inv[0] · b_scale_inv[0] · (a[M,K] @ b[N,K]^T) (+ bias[N]) (+ out when
//   accumulate), products and sums in fp32.
// a, b: fp8 codes (not both E5M2); out: bf16/fp16/fp32 (CUDA) or fp32/fp64 (CPU); bias of out's
// dtype (CUDA: 16-bit out only). CUDA needs M, N and K multiples of 16 and 16-byte aligned
// operands (kInvalidArgument otherwise). The uses (model/fp8.h): forward out = x·W^T with
// (a, b) = (x, W); input gradient (dy, W^T); weight gradient (dy^T, x^T) into the fp32 main
// gradient.
void fp8_gemm(DeviceContext& ctx, Tensor out, const Tensor& a, const Tensor& a_scale_inv,
              const Tensor& b, const Tensor& b_scale_inv, const Tensor& bias, bool accumulate);

// ---- activations ---------------------------------------------------------------------------
// GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
void gelu_forward(DeviceContext& ctx, Tensor out, const Tensor& in);
void gelu_backward(DeviceContext& ctx, Tensor din, const Tensor& dout, const Tensor& in);
// SwiGLU as Megatron: in[N,2F] = [a | b] (first half a, second half b), out[N,F] = silu(a) * b.
void swiglu_forward(DeviceContext& ctx, Tensor out, const Tensor& in);
void swiglu_backward(DeviceContext& ctx, Tensor din, const Tensor& dout, const Tensor& in);
// tanh (BERT's pooler). Backward from the saved output: din = dout * (1 - out^2) (assign).
void tanh_forward(DeviceContext& ctx, Tensor out, const Tensor& in);
void tanh_backward(DeviceContext& ctx, Tensor din, const Tensor& dout, const Tensor& out);

// ---- dropout -------------------------------------------------------------------------------
// out = in * keep / (1 - p), keep = dropout_uniform(key, position_offset + i) >= p... precisely:
// element i is dropped when dropout_uniform(key, position_offset + i) <= p. p == 0 copies.
void dropout_forward(DeviceContext& ctx, Tensor out, const Tensor& in, double p,
                     const DropoutKey& key, uint64_t position_offset);
// din = dout * same mask / (1 - p)  (mask recomputed from the key; nothing is saved).
void dropout_backward(DeviceContext& ctx, Tensor din, const Tensor& dout, double p,
                      const DropoutKey& key, uint64_t position_offset);

// ---- fused kernels (one memory pass instead of two or three around the GEMMs) -------------
// Residual add fused with dropout: out = residual + dropout(x), with exactly dropout_forward's
// mask for the same key and positions (element i dropped when dropout_uniform(key,
// position_offset + i) <= p) and its rounding (the scaled value is rounded to the dtype, then
// added), so it equals dropout_forward followed by add bit for bit. p == 0 is a plain add (no
// random numbers). out may be x or residual itself (in place) or disjoint from both.
void dropout_add_forward(DeviceContext& ctx, Tensor out, const Tensor& x, const Tensor& residual,
                         double p, const DropoutKey& key, uint64_t position_offset);
// Its backward produces dx = dout * mask / (1 - p) (assign) only: the residual's gradient is
// dout itself (identity), so the caller passes dout on along the residual stream.
void dropout_add_backward(DeviceContext& ctx, Tensor dx, const Tensor& dout, double p,
                          const DropoutKey& key, uint64_t position_offset);
// Linear fused with GELU (tanh approximation): pre[N,F] = in[N,IC] @ weight[F,IC]^T + bias[F]
// (bias may be undefined) and out[N,F] = gelu(pre); pre is what backward needs. CUDA: one
// cuBLASLt GEMM with the GELU_AUX(_BIAS) epilogue when its requirements hold (bf16/fp16,
// F % 8 == 0, 16-byte aligned pointers, an algorithm found), else linear_forward +
// gelu_forward (always for fp32, which stays exact against the CPU).
void linear_gelu_forward(DeviceContext& ctx, Tensor out, Tensor pre, const Tensor& in,
                         const Tensor& weight, const Tensor& bias);
// GELU backward fused with the bias gradient of the linear before it: dpre[N,F] = dout *
// gelu'(pre) (assign) and dbias[F] += sum_n dpre[n,:] (accumulate; skipped when undefined).
// Follow with linear_backward(din, dweight, /*dbias=*/Tensor(), dpre, in, weight).
void gelu_backward_bias_grad(DeviceContext& ctx, Tensor dpre, Tensor dbias, const Tensor& dout,
                             const Tensor& pre);

// ---- attention -----------------------------------------------------------------------------
// Self-attention (causal, or bidirectional with key padding: AttentionShape) with grouped-query
// attention, Megatron's fused-QKV layout:
// qkv[B,T,G*(NH/G + 2)*HS]; for each group g the row holds [q heads of g (NH/G * HS) | k (HS) |
// v (HS)]. Query head h uses group h / (NH/G). out[B,T,NH*HS] (heads concatenated).
// Saves lse[B,NH,T] (log-sum-exp of the scaled, masked scores) for backward. Softmax scale
// 1/sqrt(HS). CUDA runs cuDNN's fused attention when it supports the call (bf16/fp16, fp32 lse,
// T % 128 == 0 (a chunk: rows and position + rows), HS % 8 == 0 and <= 128;
// ops/cuda/cudnn_attention.h), else ShardLM's own kernels. Attention-probability dropout p uses
// key with position ((b*NH + h)*T + i)*T + j, except on cuDNN, which draws its own Philox mask
// from a seed derived from key, head_offset and the chunk position (deterministic, but neither
// these masks nor layout-independent; cudnn_attention.h).
struct AttentionShape {
  int64_t num_heads = 0;        // NH
  int64_t num_query_groups = 0; // G, divides NH
  int64_t head_dim = 0;         // HS
  // Tensor parallelism: these NH heads are heads [head_offset, head_offset + NH) of a model with
  // dropout_num_heads heads (0: NH). The dropout position uses the GLOBAL b, h and head count,
  // ((b*dropout_num_heads + head_offset + h)*T + i)*T + j, so masks do not depend on the split.
  int64_t head_offset = 0;
  int64_t dropout_num_heads = 0;
  int64_t global_num_heads() const { return dropout_num_heads > 0 ? dropout_num_heads : num_heads; }
  // The mask (Megatron's AttnMaskType). causal: query i sees keys j <= i; false: every key
  // (bidirectional, BERT). key_lengths (optional, int32 [B] on the op's device, each in
  // [1, T]): keys j >= key_lengths[b] of sequence b are masked (BERT's padding). Every query row,
  // padding included, is still computed (over the valid keys), so all outputs stay finite.
  // The context-parallel chunk ops take neither (causal, no key_lengths); cross-attention is
  // never causal (causal = false) and may take key_lengths (the encoder's, each in [1, TK]).
  bool causal = true;
  Tensor key_lengths;
};
void attention_forward(DeviceContext& ctx, Tensor out, Tensor lse, const Tensor& qkv,
                       const AttentionShape& shape, double dropout_p, const DropoutKey& key);
// dqkv (assign) from dout[B,T,NH*HS], using saved out and lse.
void attention_backward(DeviceContext& ctx, Tensor dqkv, const Tensor& dout, const Tensor& qkv,
                        const Tensor& out, const Tensor& lse, const AttentionShape& shape,
                        double dropout_p, const DropoutKey& key);

// ---- context-parallel attention (one query chunk against the whole sequence) ---------------
// Context parallelism with Megatron's --cp-comm-type all_gather: a rank holds TQ of the T
// tokens of each sequence as equal chunks of contiguous positions; its keys and values are
// all-gathered. One call handles one chunk:
//   q_src [B, TQ, W]  the rank's fused-QKV rows (layout of attention_forward, W = G*(NH/G+2)*HS);
//                     the chunk is rows [chunk.row, chunk.row + chunk.rows); only q columns read
//   kv    [B, T,  W]  the whole sequence in global position order; only k and v columns read
// Row chunk.row + i is at global position chunk.position + i and sees keys j <= that position
// (causal), so keys [0, chunk.position + chunk.rows) take part. out [B, TQ, NH*HS] and
// lse [B, NH, TQ]: the chunk's rows (and lse entries) are written, the others left untouched.
// Dropout uses the GLOBAL position and T: ((b*NH_global + head_offset + h)*T + position + i)*T
// + j, so q_src = kv = qkv with chunk {0, T, 0} equals attention_forward on qkv, masks included,
// and any split of the sequence into chunks gives the same outputs row for row.
struct AttentionChunk {
  int64_t row = 0;       // first query row of the chunk in q_src
  int64_t rows = 0;      // chunk length (>= 1)
  int64_t position = 0;  // global position of that row; position + rows <= T
};
void attention_chunk_forward(DeviceContext& ctx, Tensor out, Tensor lse, const Tensor& q_src,
                             const Tensor& kv, const AttentionShape& shape,
                             const AttentionChunk& chunk, double dropout_p, const DropoutKey& key);
// Backward of one chunk from dout [B, TQ, NH*HS] (its chunk rows read), with forward's out/lse:
//   dq  [B, TQ, W]: the chunk's rows, q columns ASSIGNED; k/v columns and other rows untouched;
//   dkv [B, T, W]:  k and v columns of rows [0, chunk.position + chunk.rows) ASSIGNED (this
//                   chunk's contribution only); q columns and later rows untouched.
// dq and dkv must not overlap. The caller sums the dkv contributions of its chunks.
void attention_chunk_backward(DeviceContext& ctx, Tensor dq, Tensor dkv, const Tensor& dout,
                              const Tensor& q_src, const Tensor& kv, const Tensor& out,
                              const Tensor& lse, const AttentionShape& shape,
                              const AttentionChunk& chunk, double dropout_p,
                              const DropoutKey& key);

// ---- cross-attention (T5: decoder queries attend to the encoder output) --------------------
// q [B, TQ, NH*HS] (heads concatenated: Megatron's CrossAttention linear_q output), kv
// [B, TK, G*2*HS] (linear_kv output: for each group g the row holds [k (HS) | v (HS)]); query
// head h uses group h / (NH/G). TQ and TK are independent. No causal mask (shape.causal must be
// false); shape.key_lengths (optional int32 [B] on the op's device, each in [1, TK]) masks keys
// j >= key_lengths[b] (the encoder's padding). out [B, TQ, NH*HS], lse [B, NH, TQ] (dtypes as
// attention_forward). Softmax scale 1/sqrt(HS). Dropout p with key at position
// ((b*NH_global + head_offset + h)*TQ + i)*TK + j (global heads as AttentionShape says).
// CUDA always runs ShardLM's own kernels (the cuDNN graph is causal self-attention only).
void cross_attention_forward(DeviceContext& ctx, Tensor out, Tensor lse, const Tensor& q,
                             const Tensor& kv, const AttentionShape& shape, double dropout_p,
                             const DropoutKey& key);
// dq [B, TQ, NH*HS] and dkv [B, TK, G*2*HS] ASSIGNED from dout [B, TQ, NH*HS], with forward's
// out and lse (keys past key_lengths get zero gradients). dq and dkv must not overlap.
void cross_attention_backward(DeviceContext& ctx, Tensor dq, Tensor dkv, const Tensor& dout,
                              const Tensor& q, const Tensor& kv, const Tensor& out,
                              const Tensor& lse, const AttentionShape& shape, double dropout_p,
                              const DropoutKey& key);

// ---- rotary position embedding (RoPE) ------------------------------------------------------
// The cos/sin table of RoPE for positions 0..P-1 and rotary dim R (even, <= HS):
//   cos_sin[P, R/2, 2]:  cos_sin[t, i] = (cos(t * inv_freq_i), sin(t * inv_freq_i)),
//   inv_freq_i = base^(-2i / R),  i = 0 .. R/2 - 1      (Megatron / Hugging Face Llama)
// or its Llama 3 / linear rescaling (rope_frequencies.h), computed in double and rounded once
// to the table's dtype (fp32, or fp64 on the CPU). The table is the caller's workspace (ops
// never allocate); P and R are read from its shape.
void rope_cos_sin(DeviceContext& ctx, Tensor cos_sin, const RopeFrequencies& freq);
// Applies RoPE to the q and k heads of a fused QKV activation in[B,T,G*(NH/G+2)*HS] (the layout
// of attention_forward), position = token index t within the sequence; v heads and each head's
// dims >= R pass through unchanged. Each rotated pair (a, b) at angle θ = t * inv_freq_i becomes
// (a cos θ - b sin θ, b cos θ + a sin θ), with pairs
//   interleaved == false: (x[i], x[i + R/2])   rotate-half, Hugging Face Llama (the default)
//   interleaved == true:  (x[2i], x[2i + 1])   GPT-J style, Megatron --rotary-interleaved
// out may be in itself (in place) or a disjoint tensor of the same shape; in's dtype is the
// activation dtype (fp32/fp64 CPU; fp32/bf16/fp16 CUDA, math in fp32), cos_sin from rope_cos_sin
// with P >= T.
void rope_forward(DeviceContext& ctx, Tensor out, const Tensor& in, const Tensor& cos_sin,
                  const AttentionShape& shape, bool interleaved);
// din = rotation by -θ of dout (the transpose of forward's rotation): assigned, same layout
// and aliasing rule as rope_forward (din may be dout).
void rope_backward(DeviceContext& ctx, Tensor din, const Tensor& dout, const Tensor& cos_sin,
                   const AttentionShape& shape, bool interleaved);

// ---- loss ----------------------------------------------------------------------------------
// Per-row softmax cross-entropy over the last axis: losses[N] = lse(logits[n]) - logits[n,t_n].
// targets int32 [N] in [0,V). Saves lse[N].
void cross_entropy_forward(DeviceContext& ctx, Tensor losses, Tensor lse, const Tensor& logits,
                           const Tensor& targets);
// dlogits[n,:] = dlosses[n] * (softmax(logits[n]) - onehot(t_n))  (assign).
// The loss mask enters through dlosses (mask[n] / sum(mask) for the masked mean).
void cross_entropy_backward(DeviceContext& ctx, Tensor dlogits, const Tensor& dlosses,
                            const Tensor& logits, const Tensor& targets, const Tensor& lse);

// ---- vocab-parallel embedding and loss (tensor parallelism) --------------------------------
// The rank holds vocabulary rows [vocab_start, vocab_start + VL) of the word embedding (and of
// the output layer): wte / dwte [VL, C], logits [N, VL]. Token and target ids are global; ids
// outside the shard contribute nothing locally (the TP sum over ranks completes the result).
// Negative token ids throw kInvalidArgument (negative targets too, on the CPU); the upper bound
// is the caller's to check: no rank sees all of V.
//
// out[n,:] = wte[tokens[n] - vocab_start, :] when the id is in the shard, else 0.
// tokens int32 with N elements (any shape), out [.., C] with N*C elements.
void vocab_parallel_embedding_forward(DeviceContext& ctx, Tensor out, const Tensor& tokens,
                                      const Tensor& wte, int64_t vocab_start);
// dwte[tokens[n] - vocab_start, :] += dout[n, :] for ids in the shard (accumulates). dwte may
// be wider than dout, summed in row order, as embedding_backward.
void vocab_parallel_embedding_backward(DeviceContext& ctx, Tensor dwte, const Tensor& dout,
                                       const Tensor& tokens, int64_t vocab_start);
// Cross-entropy over a vocab shard without gathering logits (Megatron's
// vocab_parallel_cross_entropy), in steps with tensor-parallel all-reduces between them:
//   1. row_max[n] = max_v logits[n,v]                                      -> all-reduce MAX
//   2. sum_exp[n] = sum_v exp(logits[n,v] - row_max[n]) (row_max: the global max);
//      target_logit[n] = logits[n, t_n - vocab_start] if t_n in the shard, else 0
//                                                                          -> all-reduce SUM
//   3. lse[n] = row_max[n] + log(sum_exp[n]); losses[n] = lse[n] - target_logit[n]
// Per-row tensors have N elements, all in the logits' dtype, or all fp32 when the logits are
// bf16/fp16 (a 16-bit lse would spoil backward's probabilities); targets int32 [N].
void vocab_parallel_cross_entropy_max(DeviceContext& ctx, Tensor row_max, const Tensor& logits);
void vocab_parallel_cross_entropy_partials(DeviceContext& ctx, Tensor sum_exp,
                                           Tensor target_logit, const Tensor& logits,
                                           const Tensor& targets, const Tensor& row_max,
                                           int64_t vocab_start);
void vocab_parallel_cross_entropy_loss(DeviceContext& ctx, Tensor losses, Tensor lse,
                                       const Tensor& row_max, const Tensor& sum_exp,
                                       const Tensor& target_logit);
// dlogits[n,v] = dlosses[n] * (exp(logits[n,v] - lse[n]) - [v + vocab_start == t_n])  (assign;
// local: no communication in backward).
void vocab_parallel_cross_entropy_backward(DeviceContext& ctx, Tensor dlogits,
                                           const Tensor& dlosses, const Tensor& logits,
                                           const Tensor& targets, const Tensor& lse,
                                           int64_t vocab_start);

// ---- mixture of experts --------------------------------------------------------------------
// The router and the token dispatch / combine of a Megatron-style MoE layer (the layer and its
// expert GEMMs are elsewhere). Letters: N tokens (rows), E experts, k experts per token, M rows
// of the expert-ordered activations (N*k for dropless routing), H hidden size.
// Router logits and activation rows are one float dtype (fp32/fp64 CPU; fp32/bf16/fp16 CUDA,
// math in fp32). The "side" tensors (probs, dprobs, sums, weights, scale, dweights) are fp32
// whatever that dtype, or fp64 when it is fp64 (the CPU's fp64 reference runs). Index tensors
// are int32. The CUDA router ops run one warp per token and need E <= 1024. Zero rows (N or M
// == 0) launch nothing; moe_router_score_sums still writes its zeros.
//
// Top-k routing, Megatron's topk_softmax_with_capacity without capacity: for each token n,
// indices[n, :] are the k experts with the largest logits[n, :], by descending logit, ties to
// the lower expert index (1 <= k <= E), and probs[n, :] (in the same order) are
//   pre_softmax == false (Megatron's default):       the softmax over the k selected logits;
//   pre_softmax == true  (--moe-router-pre-softmax): the selected entries of the softmax over
//                                                    all E logits (not renormalised).
// The selection compares the logits themselves (softmax is monotone, so they are the k largest
// scores, and no rounding of the scores can tie or reorder them): every backend picks the same
// experts for the same logit values. A NaN logit ranks as -inf (its probabilities are NaN).
void moe_topk_router_forward(DeviceContext& ctx, Tensor probs, Tensor indices,
                             const Tensor& logits, int64_t k, bool pre_softmax);
// dlogits[N, E] (logits' dtype, ASSIGNED) = the gradient of forward's probs with respect to the
// logits, given dprobs[N, k] and forward's indices[N, k], the softmax recomputed from logits:
// top-k mode, p (dprobs - sum_i p_i dprobs_i) at the selected experts and 0 elsewhere;
// pre-softmax, the full softmax Jacobian applied to dscores (dprobs at the selected experts, 0
// elsewhere). An expert listed twice in a row counts twice. Indices outside [0, E) throw on the
// CPU; the CUDA kernel ignores them (forward never writes one).
void moe_topk_router_backward(DeviceContext& ctx, Tensor dlogits, const Tensor& dprobs,
                              const Tensor& logits, const Tensor& indices, bool pre_softmax);
// sums[E] (ASSIGNED) = sum_n softmax(logits[n, :]): the per-expert score sums of the auxiliary
// load-balancing loss (all E experts, whatever was selected). Deterministic: CUDA sums fp32
// partials over a split of the rows that depends only on N, then folds them in a fixed order.
void moe_router_score_sums(DeviceContext& ctx, Tensor sums, const Tensor& logits);
// dlogits[N, E] += the gradient of sum_n sum_e weights[e] * softmax(logits[n, :])[e], i.e.
// s (weights - sum_e s_e weights_e) per row with s = softmax(logits[n, :]) (ACCUMULATED: onto
// the router backward's gradient). weights[E]. With weights[e] = E * coeff / (N^2 * k) *
// tokens_per_expert[e] this is the backward of Megatron's switch load-balancing loss
// E * coeff / (N^2 * k) * sum_e tokens_per_expert[e] * sums[e] (the token counts constant).
void moe_aux_loss_backward(DeviceContext& ctx, Tensor dlogits, const Tensor& logits,
                           const Tensor& weights);
// Megatron's router z-loss (--moe-z-loss-coeff), coeff / N * sum_n logsumexp(logits[n, :])^2:
// lse[N] (side dtype, ASSIGNED) = logsumexp(logits[n, :]) for its value, and its backward
// dlogits[N, E] += scale * 2 * lse_n * softmax(logits[n, :]) (ACCUMULATED; scale = coeff / N
// times the loss's gradient scale), lse recomputed from the logits.
void moe_router_logsumexp(DeviceContext& ctx, Tensor lse, const Tensor& logits);
void moe_z_loss_backward(DeviceContext& ctx, Tensor dlogits, const Tensor& logits, double scale);
// Token dispatch and combine. The layer orders the N*k (token, choice) pairs by expert into M
// rows and keeps token_of[M] (each row's token), weight_of[M] (its probability) and slots[N, k]
// (the row of each token's i-th choice). Then
//   permute:          gather_rows(x_perm, x, token_of, {})
//   combine:          gather_sum_rows(y, expert_out, slots, probs)
//   combine backward: gather_rows(d_expert_out, dy, token_of, weight_of)
//                     gathered_row_dot(dprobs, dy, expert_out, slots)
//   permute backward: gather_sum_rows(dx, d_x_perm, slots, {})
// The row tensors (out, in, dout) share one float dtype; out must not overlap in. Row indices
// are data: the CPU throws kInvalidArgument naming one outside its range; CUDA never reads out
// of bounds and does not sync to report one: gather_rows writes that row as zeros,
// gather_sum_rows leaves that term out, gathered_row_dot writes 0 for it.
//
// out[M, H] (ASSIGNED) = in[index[m], :] * scale[m]; in [N, H], index [M] in [0, N), scale [M]
// or undefined (= 1: an exact copy). The product is taken in fp32 (double on the CPU) and
// rounded to out's dtype.
void gather_rows(DeviceContext& ctx, Tensor out, const Tensor& in, const Tensor& index,
                 const Tensor& scale);
// out[N, H] (ASSIGNED) = sum_i weights[n, i] * in[slots[n, i], :]; in [M, H], slots [N, k] in
// [0, M), weights [N, k] or undefined (= 1). Summed in i order in fp32 (double on the CPU) and
// rounded once: deterministic, no atomics.
void gather_sum_rows(DeviceContext& ctx, Tensor out, const Tensor& in, const Tensor& slots,
                     const Tensor& weights);
// dweights[N, k] (ASSIGNED) = sum_h dout[n, h] * in[slots[n, i], h] (fp32 accumulation, double
// on the CPU; deterministic): the weights' gradient of gather_sum_rows. dout [N, H], in [M, H].
void gathered_row_dot(DeviceContext& ctx, Tensor dweights, const Tensor& dout, const Tensor& in,
                      const Tensor& slots);

// ---- optimizer -----------------------------------------------------------------------------
// One AdamW step over a flat range (params, grads, exp_avg, exp_avg_sq, all same dtype/numel),
// as Megatron/apex FusedAdam with adam_w_mode: bias-corrected moments at step `step` (>= 1),
//   p -= lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p).
// compute_params (optional; undefined: none) receives convert(updated p) in the same pass: the
// mixed-precision compute copy of the range (fp32, bf16 or fp16, same numel, not overlapping
// params), bit-identical to adamw_step followed by copy(compute_params, params).
// grad_scale != 1 uses each gradient as scale_inplace(grads, grad_scale) would have stored it
// (grads themselves are not written): grad-norm clipping folded into the step, bit-identical
// to scale_inplace followed by adamw_step on the same backend.
struct AdamWParams {
  double lr = 0;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0;
  int64_t step = 1;
  double grad_scale = 1.0;
};
void adamw_step(DeviceContext& ctx, Tensor params, const Tensor& grads, Tensor exp_avg,
                Tensor exp_avg_sq, const AdamWParams& hp, Tensor compute_params = Tensor());

}  // namespace shardlm::ops
