// attention_ops.cc — validation and dispatch of attention and rotary position embedding (ops.h);
// the shared checks and the routing macro are in detail/op_validation.h.
#include "shardlm/ops/detail/op_validation.h"

namespace shardlm::ops {

using namespace detail;

// ---- attention -----------------------------------------------------------------------------

void attention_forward(DeviceContext& ctx, Tensor out, Tensor lse, const Tensor& qkv,
                       const AttentionShape& shape, double dropout_p, const DropoutKey& key) {
  constexpr const char* op = "attention_forward";
  check_devices(op, ctx, {{"out", out}, {"lse", lse}, {"qkv", qkv}});
  for (const Arg& x : {Arg{"out", out}, Arg{"lse", lse}, Arg{"qkv", qkv}}) require_defined(op, x);
  require_same_float(op, {{"qkv", qkv}, {"out", out}});
  require_lse_dtype(op, lse, qkv);
  check_attention(op, qkv, {"out", out}, lse, shape, dropout_p);
  SHARDLM_OPS_ROUTE(attention_forward, ctx, out, lse, qkv, shape, dropout_p, key);
}

void attention_backward(DeviceContext& ctx, Tensor dqkv, const Tensor& dout, const Tensor& qkv,
                        const Tensor& out, const Tensor& lse, const AttentionShape& shape,
                        double dropout_p, const DropoutKey& key) {
  constexpr const char* op = "attention_backward";
  check_devices(op, ctx,
                {{"dqkv", dqkv}, {"dout", dout}, {"qkv", qkv}, {"out", out}, {"lse", lse}});
  for (const Arg& x :
       {Arg{"dqkv", dqkv}, Arg{"dout", dout}, Arg{"qkv", qkv}, Arg{"out", out}, Arg{"lse", lse}})
    require_defined(op, x);
  require_same_float(op, {{"qkv", qkv}, {"dqkv", dqkv}, {"dout", dout}, {"out", out}});
  require_lse_dtype(op, lse, qkv);
  check_attention(op, qkv, {"out", out}, lse, shape, dropout_p);
  require_shape(op, {"dout", dout}, out.shape());
  require_shape(op, {"dqkv", dqkv}, qkv.shape());
  SHARDLM_OPS_ROUTE(attention_backward, ctx, dqkv, dout, qkv, out, lse, shape, dropout_p, key);
}

void attention_chunk_forward(DeviceContext& ctx, Tensor out, Tensor lse, const Tensor& q_src,
                             const Tensor& kv, const AttentionShape& shape,
                             const AttentionChunk& chunk, double dropout_p, const DropoutKey& key) {
  constexpr const char* op = "attention_chunk_forward";
  check_devices(op, ctx, {{"out", out}, {"lse", lse}, {"q_src", q_src}, {"kv", kv}});
  for (const Arg& x :
       {Arg{"out", out}, Arg{"lse", lse}, Arg{"q_src", q_src}, Arg{"kv", kv}})
    require_defined(op, x);
  require_same_float(op, {{"q_src", q_src}, {"kv", kv}, {"out", out}});
  require_lse_dtype(op, lse, q_src);
  check_attention_chunk(op, q_src, kv, {"out", out}, lse, shape, chunk, dropout_p);
  SHARDLM_OPS_ROUTE(attention_chunk_forward, ctx, out, lse, q_src, kv, shape, chunk, dropout_p,
                    key);
}

void attention_chunk_backward(DeviceContext& ctx, Tensor dq, Tensor dkv, const Tensor& dout,
                              const Tensor& q_src, const Tensor& kv, const Tensor& out,
                              const Tensor& lse, const AttentionShape& shape,
                              const AttentionChunk& chunk, double dropout_p,
                              const DropoutKey& key) {
  constexpr const char* op = "attention_chunk_backward";
  check_devices(op, ctx,
                {{"dq", dq}, {"dkv", dkv}, {"dout", dout}, {"q_src", q_src}, {"kv", kv},
                 {"out", out}, {"lse", lse}});
  for (const Arg& x : {Arg{"dq", dq}, Arg{"dkv", dkv}, Arg{"dout", dout}, Arg{"q_src", q_src},
                       Arg{"kv", kv}, Arg{"out", out}, Arg{"lse", lse}})
    require_defined(op, x);
  require_same_float(op, {{"q_src", q_src}, {"kv", kv}, {"dq", dq}, {"dkv", dkv},
                          {"dout", dout}, {"out", out}});
  require_lse_dtype(op, lse, q_src);
  check_attention_chunk(op, q_src, kv, {"out", out}, lse, shape, chunk, dropout_p);
  require_shape(op, {"dout", dout}, out.shape());
  require_shape(op, {"dq", dq}, q_src.shape());
  require_shape(op, {"dkv", dkv}, kv.shape());
  // Each backend writes dq's rows and dkv's rows independently; an overlap would race.
  require_same_or_disjoint(op, {"dq", dq}, {"dkv", dkv}, /*allow_same=*/false);
  SHARDLM_OPS_ROUTE(attention_chunk_backward, ctx, dq, dkv, dout, q_src, kv, out, lse, shape,
                    chunk, dropout_p, key);
}

void cross_attention_forward(DeviceContext& ctx, Tensor out, Tensor lse, const Tensor& q,
                             const Tensor& kv, const AttentionShape& shape, double dropout_p,
                             const DropoutKey& key) {
  constexpr const char* op = "cross_attention_forward";
  check_devices(op, ctx, {{"out", out}, {"lse", lse}, {"q", q}, {"kv", kv}});
  for (const Arg& x : {Arg{"out", out}, Arg{"lse", lse}, Arg{"q", q}, Arg{"kv", kv}})
    require_defined(op, x);
  require_same_float(op, {{"q", q}, {"kv", kv}, {"out", out}});
  require_lse_dtype(op, lse, q);
  check_cross_attention(op, q, kv, {"out", out}, lse, shape, dropout_p);
  SHARDLM_OPS_ROUTE(cross_attention_forward, ctx, out, lse, q, kv, shape, dropout_p, key);
}

void cross_attention_backward(DeviceContext& ctx, Tensor dq, Tensor dkv, const Tensor& dout,
                              const Tensor& q, const Tensor& kv, const Tensor& out,
                              const Tensor& lse, const AttentionShape& shape, double dropout_p,
                              const DropoutKey& key) {
  constexpr const char* op = "cross_attention_backward";
  check_devices(op, ctx,
                {{"dq", dq}, {"dkv", dkv}, {"dout", dout}, {"q", q}, {"kv", kv}, {"out", out},
                 {"lse", lse}});
  for (const Arg& x : {Arg{"dq", dq}, Arg{"dkv", dkv}, Arg{"dout", dout}, Arg{"q", q},
                       Arg{"kv", kv}, Arg{"out", out}, Arg{"lse", lse}})
    require_defined(op, x);
  require_same_float(op, {{"q", q}, {"kv", kv}, {"dq", dq}, {"dkv", dkv}, {"dout", dout},
                          {"out", out}});
  require_lse_dtype(op, lse, q);
  check_cross_attention(op, q, kv, {"out", out}, lse, shape, dropout_p);
  require_shape(op, {"dout", dout}, out.shape());
  require_shape(op, {"dq", dq}, q.shape());
  require_shape(op, {"dkv", dkv}, kv.shape());
  // The backends write dq and dkv from different kernels / loops; an overlap would race.
  require_same_or_disjoint(op, {"dq", dq}, {"dkv", dkv}, /*allow_same=*/false);
  SHARDLM_OPS_ROUTE(cross_attention_backward, ctx, dq, dkv, dout, q, kv, out, lse, shape,
                    dropout_p, key);
}

// ---- rotary position embedding -------------------------------------------------------------

void rope_cos_sin(DeviceContext& ctx, Tensor cos_sin, const RopeFrequencies& freq) {
  constexpr const char* op = "rope_cos_sin";
  check_devices(op, ctx, {{"cos_sin", cos_sin}});
  require_defined(op, {"cos_sin", cos_sin});
  check_rope_table(op, cos_sin);
  const std::string bad = rope_frequencies_error(freq);
  require(bad.empty(), op, bad);
  SHARDLM_OPS_ROUTE(rope_cos_sin, ctx, cos_sin, freq);
}

void rope_forward(DeviceContext& ctx, Tensor out, const Tensor& in, const Tensor& cos_sin,
                  const AttentionShape& shape, bool interleaved) {
  constexpr const char* op = "rope_forward";
  check_devices(op, ctx, {{"out", out}, {"in", in}, {"cos_sin", cos_sin}});
  for (const Arg& x : {Arg{"out", out}, Arg{"in", in}, Arg{"cos_sin", cos_sin}})
    require_defined(op, x);
  check_rope(op, {"out", out}, {"in", in}, cos_sin, shape);
  SHARDLM_OPS_ROUTE(rope_forward, ctx, out, in, cos_sin, shape, interleaved);
}

void rope_backward(DeviceContext& ctx, Tensor din, const Tensor& dout, const Tensor& cos_sin,
                   const AttentionShape& shape, bool interleaved) {
  constexpr const char* op = "rope_backward";
  check_devices(op, ctx, {{"din", din}, {"dout", dout}, {"cos_sin", cos_sin}});
  for (const Arg& x : {Arg{"din", din}, Arg{"dout", dout}, Arg{"cos_sin", cos_sin}})
    require_defined(op, x);
  check_rope(op, {"din", din}, {"dout", dout}, cos_sin, shape);
  SHARDLM_OPS_ROUTE(rope_backward, ctx, din, dout, cos_sin, shape, interleaved);
}

}  // namespace shardlm::ops
