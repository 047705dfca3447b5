// moe_ops.cc — validation and dispatch of the mixture-of-experts ops (ops.h): the top-k router,
// the auxiliary-loss score sums and backward, and the row gathers of token dispatch / combine.
// The shared checks and the routing macro are in detail/op_validation.h; index values are data
// and are checked by the backends.
#include "shardlm/ops/detail/op_validation.h"

namespace shardlm::ops {

using namespace detail;

namespace {

// indices [N, k] int32 for logits [N, E], 1 <= k <= E; returns k.
int64_t check_router_indices(const char* op, const Tensor& indices, const Tensor& logits) {
  require_int32(op, {"indices", indices});
  require(indices.rank() == 2 && indices.size(0) == logits.size(0), op,
          "indices must be [N, k] with N = " + std::to_string(logits.size(0)) +
              " rows like logits " + shape_of(logits) + " (forward's indices), got shape " +
              shape_of(indices));
  require_router_k(op, indices.size(1), logits);
  return indices.size(1);
}

// A gather through slots [N, k] (int32) from in [M, H], with rows [N, H] (out or dout) of in's
// float dtype; returns {N, k}.
Shape check_slot_gather(const char* op, const Tensor& in, const Arg& rows, const Tensor& slots) {
  require_same_float(op, {{"in", in}, rows});
  require_matrix(op, {"in", in}, "[M, H]");
  require_int32(op, {"slots", slots});
  require_matrix(op, {"slots", slots}, "[N, k]");
  require_shape(op, rows, Shape{slots.size(0), in.size(1)});
  return slots.shape();
}

}  // namespace

// ---- router ----------------------------------------------------------------------------------

void moe_topk_router_forward(DeviceContext& ctx, Tensor probs, Tensor indices, const Tensor& logits,
                             int64_t k, bool pre_softmax) {
  constexpr const char* op = "moe_topk_router_forward";
  check_devices(op, ctx, {{"probs", probs}, {"indices", indices}, {"logits", logits}});
  for (const Arg& x : {Arg{"probs", probs}, Arg{"indices", indices}, Arg{"logits", logits}})
    require_defined(op, x);
  check_router_logits(op, logits);
  require_router_k(op, k, logits);
  require_moe_side_dtype(op, {"probs", probs}, {"logits", logits});
  require_int32(op, {"indices", indices});
  const int64_t N = logits.size(0);
  require_shape(op, {"probs", probs}, Shape{N, k});
  require_shape(op, {"indices", indices}, Shape{N, k});
  SHARDLM_OPS_ROUTE(moe_topk_router_forward, ctx, probs, indices, logits, k, pre_softmax);
}

void moe_topk_router_backward(DeviceContext& ctx, Tensor dlogits, const Tensor& dprobs,
                              const Tensor& logits, const Tensor& indices, bool pre_softmax) {
  constexpr const char* op = "moe_topk_router_backward";
  check_devices(
      op, ctx,
      {{"dlogits", dlogits}, {"dprobs", dprobs}, {"logits", logits}, {"indices", indices}});
  for (const Arg& x : {Arg{"dlogits", dlogits}, Arg{"dprobs", dprobs}, Arg{"logits", logits},
                       Arg{"indices", indices}})
    require_defined(op, x);
  check_router_logits(op, logits);
  require_same_float(op, {{"logits", logits}, {"dlogits", dlogits}});
  require_shape(op, {"dlogits", dlogits}, logits.shape());
  const int64_t k = check_router_indices(op, indices, logits);
  require_moe_side_dtype(op, {"dprobs", dprobs}, {"logits", logits});
  require_shape(op, {"dprobs", dprobs}, Shape{logits.size(0), k});
  SHARDLM_OPS_ROUTE(moe_topk_router_backward, ctx, dlogits, dprobs, logits, indices, pre_softmax);
}

// ---- auxiliary load-balancing loss -----------------------------------------------------------

void moe_router_score_sums(DeviceContext& ctx, Tensor sums, const Tensor& logits) {
  constexpr const char* op = "moe_router_score_sums";
  check_devices(op, ctx, {{"sums", sums}, {"logits", logits}});
  require_defined(op, {"sums", sums});
  require_defined(op, {"logits", logits});
  const int64_t E = check_router_logits(op, logits);
  require_moe_side_dtype(op, {"sums", sums}, {"logits", logits});
  require_shape(op, {"sums", sums}, Shape{E});
  SHARDLM_OPS_ROUTE(moe_router_score_sums, ctx, sums, logits);
}

void moe_aux_loss_backward(DeviceContext& ctx, Tensor dlogits, const Tensor& logits,
                           const Tensor& weights) {
  constexpr const char* op = "moe_aux_loss_backward";
  check_devices(op, ctx, {{"dlogits", dlogits}, {"logits", logits}, {"weights", weights}});
  for (const Arg& x : {Arg{"dlogits", dlogits}, Arg{"logits", logits}, Arg{"weights", weights}})
    require_defined(op, x);
  const int64_t E = check_router_logits(op, logits);
  require_same_float(op, {{"logits", logits}, {"dlogits", dlogits}});
  require_shape(op, {"dlogits", dlogits}, logits.shape());
  require_moe_side_dtype(op, {"weights", weights}, {"logits", logits});
  require_shape(op, {"weights", weights}, Shape{E});
  SHARDLM_OPS_ROUTE(moe_aux_loss_backward, ctx, dlogits, logits, weights);
}

void moe_router_logsumexp(DeviceContext& ctx, Tensor lse, const Tensor& logits) {
  constexpr const char* op = "moe_router_logsumexp";
  check_devices(op, ctx, {{"lse", lse}, {"logits", logits}});
  require_defined(op, {"lse", lse});
  require_defined(op, {"logits", logits});
  check_router_logits(op, logits);
  require_moe_side_dtype(op, {"lse", lse}, {"logits", logits});
  require_shape(op, {"lse", lse}, Shape{logits.size(0)});
  SHARDLM_OPS_ROUTE(moe_router_logsumexp, ctx, lse, logits);
}

void moe_z_loss_backward(DeviceContext& ctx, Tensor dlogits, const Tensor& logits, double scale) {
  constexpr const char* op = "moe_z_loss_backward";
  check_devices(op, ctx, {{"dlogits", dlogits}, {"logits", logits}});
  require_defined(op, {"dlogits", dlogits});
  require_defined(op, {"logits", logits});
  check_router_logits(op, logits);
  require_same_float(op, {{"logits", logits}, {"dlogits", dlogits}});
  require_shape(op, {"dlogits", dlogits}, logits.shape());
  require(std::isfinite(scale), op, "scale must be finite, got " + std::to_string(scale));
  SHARDLM_OPS_ROUTE(moe_z_loss_backward, ctx, dlogits, logits, scale);
}

// ---- token dispatch / combine ----------------------------------------------------------------

void gather_rows(DeviceContext& ctx, Tensor out, const Tensor& in, const Tensor& index,
                 const Tensor& scale) {
  constexpr const char* op = "gather_rows";
  check_devices(op, ctx, {{"out", out}, {"in", in}, {"index", index}, {"scale", scale}});
  for (const Arg& x : {Arg{"out", out}, Arg{"in", in}, Arg{"index", index}}) require_defined(op, x);
  require_same_float(op, {{"in", in}, {"out", out}});
  require_matrix(op, {"in", in}, "[N, H]");
  require_int32(op, {"index", index});
  require(index.rank() == 1, op,
          "index must be [M] (a row of in per row of out), got shape " + shape_of(index));
  const int64_t M = index.size(0);
  require_shape(op, {"out", out}, Shape{M, in.size(1)});
  if (scale.defined()) {
    require_moe_side_dtype(op, {"scale", scale}, {"in", in});
    require_shape(op, {"scale", scale}, Shape{M});
  }
  require_same_or_disjoint(op, {"out", out}, {"in", in}, false);
  SHARDLM_OPS_ROUTE(gather_rows, ctx, out, in, index, scale);
}

void gather_sum_rows(DeviceContext& ctx, Tensor out, const Tensor& in, const Tensor& slots,
                     const Tensor& weights) {
  constexpr const char* op = "gather_sum_rows";
  check_devices(op, ctx, {{"out", out}, {"in", in}, {"slots", slots}, {"weights", weights}});
  for (const Arg& x : {Arg{"out", out}, Arg{"in", in}, Arg{"slots", slots}}) require_defined(op, x);
  const Shape nk = check_slot_gather(op, in, {"out", out}, slots);
  if (weights.defined()) {
    require_moe_side_dtype(op, {"weights", weights}, {"in", in});
    require_shape(op, {"weights", weights}, nk);
  }
  require_same_or_disjoint(op, {"out", out}, {"in", in}, false);
  SHARDLM_OPS_ROUTE(gather_sum_rows, ctx, out, in, slots, weights);
}

void gathered_row_dot(DeviceContext& ctx, Tensor dweights, const Tensor& dout, const Tensor& in,
                      const Tensor& slots) {
  constexpr const char* op = "gathered_row_dot";
  check_devices(op, ctx, {{"dweights", dweights}, {"dout", dout}, {"in", in}, {"slots", slots}});
  for (const Arg& x :
       {Arg{"dweights", dweights}, Arg{"dout", dout}, Arg{"in", in}, Arg{"slots", slots}})
    require_defined(op, x);
  const Shape nk = check_slot_gather(op, in, {"dout", dout}, slots);
  require_moe_side_dtype(op, {"dweights", dweights}, {"dout", dout});
  require_shape(op, {"dweights", dweights}, nk);
  SHARDLM_OPS_ROUTE(gathered_row_dot, ctx, dweights, dout, in, slots);
}

}  // namespace shardlm::ops
