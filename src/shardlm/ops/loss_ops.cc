// loss_ops.cc — validation and dispatch of cross-entropy and the vocab-parallel embedding and
// loss (ops.h); the shared checks and the routing macro are in detail/op_validation.h.
#include "shardlm/ops/detail/op_validation.h"

namespace shardlm::ops {

using namespace detail;

// ---- loss ----------------------------------------------------------------------------------

void cross_entropy_forward(DeviceContext& ctx, Tensor losses, Tensor lse, const Tensor& logits,
                           const Tensor& targets) {
  constexpr const char* op = "cross_entropy_forward";
  check_devices(op, ctx,
                {{"losses", losses}, {"lse", lse}, {"logits", logits}, {"targets", targets}});
  for (const Arg& x :
       {Arg{"losses", losses}, Arg{"lse", lse}, Arg{"logits", logits}, Arg{"targets", targets}})
    require_defined(op, x);
  require_same_float(op, {{"logits", logits}, {"losses", losses}, {"lse", lse}});
  const int64_t N = check_cross_entropy(op, logits, targets);
  require_numel(op, {"losses", losses}, N, "one per row of logits " + shape_of(logits));
  require_numel(op, {"lse", lse}, N, "one per row of logits " + shape_of(logits));
  SHARDLM_OPS_ROUTE(cross_entropy_forward, ctx, losses, lse, logits, targets);
}

void cross_entropy_backward(DeviceContext& ctx, Tensor dlogits, const Tensor& dlosses,
                            const Tensor& logits, const Tensor& targets, const Tensor& lse) {
  constexpr const char* op = "cross_entropy_backward";
  check_devices(op, ctx,
                {{"dlogits", dlogits},
                 {"dlosses", dlosses},
                 {"logits", logits},
                 {"targets", targets},
                 {"lse", lse}});
  for (const Arg& x : {Arg{"dlogits", dlogits}, Arg{"dlosses", dlosses}, Arg{"logits", logits},
                       Arg{"targets", targets}, Arg{"lse", lse}})
    require_defined(op, x);
  require_same_float(
      op, {{"logits", logits}, {"dlogits", dlogits}, {"dlosses", dlosses}, {"lse", lse}});
  const int64_t N = check_cross_entropy(op, logits, targets);
  require_rows(op, {"dlogits", dlogits}, N, logits.size(-1), "logits");
  require_numel(op, {"dlosses", dlosses}, N, "one per row of logits " + shape_of(logits));
  require_numel(op, {"lse", lse}, N, "one per row of logits " + shape_of(logits));
  SHARDLM_OPS_ROUTE(cross_entropy_backward, ctx, dlogits, dlosses, logits, targets, lse);
}

// ---- vocab-parallel embedding and loss -----------------------------------------------------

void vocab_parallel_embedding_forward(DeviceContext& ctx, Tensor out, const Tensor& tokens,
                                      const Tensor& wte, int64_t vocab_start) {
  constexpr const char* op = "vocab_parallel_embedding_forward";
  check_devices(op, ctx, {{"out", out}, {"tokens", tokens}, {"wte", wte}});
  for (const Arg& x : {Arg{"out", out}, Arg{"tokens", tokens}, Arg{"wte", wte}})
    require_defined(op, x);
  require_same_float(op, {{"out", out}, {"wte", wte}});
  check_vocab_parallel_embedding(op, tokens, {"wte", wte}, {"out", out}, vocab_start);
  SHARDLM_OPS_ROUTE(vocab_parallel_embedding_forward, ctx, out, tokens, wte, vocab_start);
}

void vocab_parallel_embedding_backward(DeviceContext& ctx, Tensor dwte, const Tensor& dout,
                                       const Tensor& tokens, int64_t vocab_start) {
  constexpr const char* op = "vocab_parallel_embedding_backward";
  check_devices(op, ctx, {{"dwte", dwte}, {"dout", dout}, {"tokens", tokens}});
  for (const Arg& x : {Arg{"dwte", dwte}, Arg{"dout", dout}, Arg{"tokens", tokens}})
    require_defined(op, x);
  require_same_float(op, {{"dout", dout}});
  require_same_or_wider_grad(op, {"dwte", dwte}, dout.dtype(), "dout");  // fusion: the master
  check_vocab_parallel_embedding(op, tokens, {"dwte", dwte}, {"dout", dout}, vocab_start);
  SHARDLM_OPS_ROUTE(vocab_parallel_embedding_backward, ctx, dwte, dout, tokens, vocab_start);
}

void vocab_parallel_cross_entropy_max(DeviceContext& ctx, Tensor row_max, const Tensor& logits) {
  constexpr const char* op = "vocab_parallel_cross_entropy_max";
  check_devices(op, ctx, {{"row_max", row_max}, {"logits", logits}});
  for (const Arg& x : {Arg{"row_max", row_max}, Arg{"logits", logits}}) require_defined(op, x);
  require_same_float(op, {{"logits", logits}});
  require_same_float(op, {{"row_max", row_max}});
  require_row_stats_dtype(op, logits, {"row_max", row_max});
  const int64_t N = check_vocab_parallel_logits(op, logits);
  require_numel(op, {"row_max", row_max}, N, "one per row of logits " + shape_of(logits));
  SHARDLM_OPS_ROUTE(vocab_parallel_cross_entropy_max, ctx, row_max, logits);
}

void vocab_parallel_cross_entropy_partials(DeviceContext& ctx, Tensor sum_exp,
                                           Tensor target_logit, const Tensor& logits,
                                           const Tensor& targets, const Tensor& row_max,
                                           int64_t vocab_start) {
  constexpr const char* op = "vocab_parallel_cross_entropy_partials";
  check_devices(op, ctx,
                {{"sum_exp", sum_exp},
                 {"target_logit", target_logit},
                 {"logits", logits},
                 {"targets", targets},
                 {"row_max", row_max}});
  for (const Arg& x : {Arg{"sum_exp", sum_exp}, Arg{"target_logit", target_logit},
                       Arg{"logits", logits}, Arg{"targets", targets}, Arg{"row_max", row_max}})
    require_defined(op, x);
  require_same_float(op, {{"logits", logits}});
  require_same_float(op,
                     {{"row_max", row_max}, {"sum_exp", sum_exp}, {"target_logit", target_logit}});
  require_row_stats_dtype(op, logits, {"row_max", row_max});
  const int64_t N = check_vocab_parallel_logits(op, logits);
  require_int32(op, {"targets", targets});
  const std::string why = "one per row of logits " + shape_of(logits);
  for (const Arg& x : {Arg{"targets", targets}, Arg{"sum_exp", sum_exp},
                       Arg{"target_logit", target_logit}, Arg{"row_max", row_max}})
    require_numel(op, x, N, why);
  require(vocab_start >= 0, op, "vocab_start must be >= 0, got " + std::to_string(vocab_start));
  SHARDLM_OPS_ROUTE(vocab_parallel_cross_entropy_partials, ctx, sum_exp, target_logit, logits,
                    targets, row_max, vocab_start);
}

void vocab_parallel_cross_entropy_loss(DeviceContext& ctx, Tensor losses, Tensor lse,
                                       const Tensor& row_max, const Tensor& sum_exp,
                                       const Tensor& target_logit) {
  constexpr const char* op = "vocab_parallel_cross_entropy_loss";
  check_devices(op, ctx,
                {{"losses", losses},
                 {"lse", lse},
                 {"row_max", row_max},
                 {"sum_exp", sum_exp},
                 {"target_logit", target_logit}});
  for (const Arg& x : {Arg{"losses", losses}, Arg{"lse", lse}, Arg{"row_max", row_max},
                       Arg{"sum_exp", sum_exp}, Arg{"target_logit", target_logit}})
    require_defined(op, x);
  require_same_float(op, {{"losses", losses},
                          {"lse", lse},
                          {"row_max", row_max},
                          {"sum_exp", sum_exp},
                          {"target_logit", target_logit}});
  const int64_t N = losses.numel();
  for (const Arg& x : {Arg{"lse", lse}, Arg{"row_max", row_max}, Arg{"sum_exp", sum_exp},
                       Arg{"target_logit", target_logit}})
    require_numel(op, x, N, "one per row, like losses");
  SHARDLM_OPS_ROUTE(vocab_parallel_cross_entropy_loss, ctx, losses, lse, row_max, sum_exp,
                    target_logit);
}

void vocab_parallel_cross_entropy_backward(DeviceContext& ctx, Tensor dlogits,
                                           const Tensor& dlosses, const Tensor& logits,
                                           const Tensor& targets, const Tensor& lse,
                                           int64_t vocab_start) {
  constexpr const char* op = "vocab_parallel_cross_entropy_backward";
  check_devices(op, ctx,
                {{"dlogits", dlogits},
                 {"dlosses", dlosses},
                 {"logits", logits},
                 {"targets", targets},
                 {"lse", lse}});
  for (const Arg& x : {Arg{"dlogits", dlogits}, Arg{"dlosses", dlosses}, Arg{"logits", logits},
                       Arg{"targets", targets}, Arg{"lse", lse}})
    require_defined(op, x);
  require_same_float(op, {{"logits", logits}, {"dlogits", dlogits}});
  require_same_float(op, {{"dlosses", dlosses}, {"lse", lse}});
  require_row_stats_dtype(op, logits, {"lse", lse});
  const int64_t N = check_vocab_parallel_logits(op, logits);
  require_int32(op, {"targets", targets});
  require_rows(op, {"dlogits", dlogits}, N, logits.size(-1), "logits");
  const std::string why = "one per row of logits " + shape_of(logits);
  for (const Arg& x : {Arg{"targets", targets}, Arg{"dlosses", dlosses}, Arg{"lse", lse}})
    require_numel(op, x, N, why);
  require(vocab_start >= 0, op, "vocab_start must be >= 0, got " + std::to_string(vocab_start));
  SHARDLM_OPS_ROUTE(vocab_parallel_cross_entropy_backward, ctx, dlogits, dlosses, logits, targets,
                    lse, vocab_start);
}

}  // namespace shardlm::ops
