// layer_ops.cc — validation and dispatch of embeddings, norms, linear, activations and the fused
// layer kernels (ops.h); the shared checks and the routing macro are in detail/op_validation.h.
#include "shardlm/ops/detail/op_validation.h"

namespace shardlm::ops {

using namespace detail;

// ---- embeddings ----------------------------------------------------------------------------

void embedding_forward(DeviceContext& ctx, Tensor out, const Tensor& tokens, const Tensor& wte,
                       const Tensor& wpe) {
  constexpr const char* op = "embedding_forward";
  check_devices(op, ctx, {{"out", out}, {"tokens", tokens}, {"wte", wte}, {"wpe", wpe}});
  for (const Arg& x : {Arg{"out", out}, Arg{"tokens", tokens}, Arg{"wte", wte}})
    require_defined(op, x);
  require_same_float(op, {{"out", out}, {"wte", wte}, {"wpe", wpe}});
  check_embedding_common(op, tokens, {"wte", wte}, {"wpe", wpe});
  require_shape(op, {"out", out}, Shape{tokens.size(0), tokens.size(1), wte.size(1)});
  SHARDLM_OPS_ROUTE(embedding_forward, ctx, out, tokens, wte, wpe);
}

void embedding_backward(DeviceContext& ctx, Tensor dwte, Tensor dwpe, const Tensor& dout,
                        const Tensor& tokens) {
  constexpr const char* op = "embedding_backward";
  check_devices(op, ctx, {{"dwte", dwte}, {"dwpe", dwpe}, {"dout", dout}, {"tokens", tokens}});
  for (const Arg& x : {Arg{"dwte", dwte}, Arg{"dout", dout}, Arg{"tokens", tokens}})
    require_defined(op, x);
  // dwte may be the wider master gradient (gradient-accumulation fusion); dwpe never is.
  require_same_float(op, {{"dout", dout}, {"dwpe", dwpe}});
  require_same_or_wider_grad(op, {"dwte", dwte}, dout.dtype(), "dout");
  check_embedding_common(op, tokens, {"dwte", dwte}, {"dwpe", dwpe});
  require_shape(op, {"dout", dout}, Shape{tokens.size(0), tokens.size(1), dwte.size(1)});
  SHARDLM_OPS_ROUTE(embedding_backward, ctx, dwte, dwpe, dout, tokens);
}

// ---- normalisation -------------------------------------------------------------------------

void layernorm_forward(DeviceContext& ctx, Tensor out, Tensor mean, Tensor rstd, const Tensor& in,
                       const Tensor& weight, const Tensor& bias, double eps) {
  constexpr const char* op = "layernorm_forward";
  check_devices(op, ctx,
                {{"out", out},
                 {"mean", mean},
                 {"rstd", rstd},
                 {"in", in},
                 {"weight", weight},
                 {"bias", bias}});
  for (const Arg& x : {Arg{"out", out}, Arg{"mean", mean}, Arg{"rstd", rstd}, Arg{"in", in},
                       Arg{"weight", weight}})
    require_defined(op, x);
  require_same_float(op, {{"in", in},
                          {"out", out},
                          {"mean", mean},
                          {"rstd", rstd},
                          {"weight", weight},
                          {"bias", bias}});
  const int64_t N = check_norm_input(op, in, weight, bias);
  const int64_t C = weight.numel();
  require_rows(op, {"out", out}, N, C, "in");
  require_numel(op, {"mean", mean}, N, "one per row of in");
  require_numel(op, {"rstd", rstd}, N, "one per row of in");
  require(eps >= 0 && std::isfinite(eps), op, "eps must be >= 0, got " + std::to_string(eps));
  SHARDLM_OPS_ROUTE(layernorm_forward, ctx, out, mean, rstd, in, weight, bias, eps);
}

void layernorm_backward(DeviceContext& ctx, Tensor din, Tensor dweight, Tensor dbias,
                        const Tensor& dout, const Tensor& in, const Tensor& weight,
                        const Tensor& mean, const Tensor& rstd) {
  constexpr const char* op = "layernorm_backward";
  check_devices(op, ctx,
                {{"din", din},
                 {"dweight", dweight},
                 {"dbias", dbias},
                 {"dout", dout},
                 {"in", in},
                 {"weight", weight},
                 {"mean", mean},
                 {"rstd", rstd}});
  for (const Arg& x : {Arg{"din", din}, Arg{"dweight", dweight}, Arg{"dout", dout}, Arg{"in", in},
                       Arg{"weight", weight}, Arg{"mean", mean}, Arg{"rstd", rstd}})
    require_defined(op, x);
  require_same_float(op, {{"in", in},
                          {"din", din},
                          {"dweight", dweight},
                          {"dbias", dbias},
                          {"dout", dout},
                          {"weight", weight},
                          {"mean", mean},
                          {"rstd", rstd}});
  const int64_t N = check_norm_input(op, in, weight, Tensor());
  const int64_t C = weight.numel();
  require_rows(op, {"din", din}, N, C, "in");
  require_rows(op, {"dout", dout}, N, C, "in");
  require_shape(op, {"dweight", dweight}, Shape{C});
  if (dbias.defined()) require_shape(op, {"dbias", dbias}, Shape{C});
  require_numel(op, {"mean", mean}, N, "one per row of in");
  require_numel(op, {"rstd", rstd}, N, "one per row of in");
  SHARDLM_OPS_ROUTE(layernorm_backward, ctx, din, dweight, dbias, dout, in, weight, mean, rstd);
}

void rmsnorm_forward(DeviceContext& ctx, Tensor out, Tensor rstd, const Tensor& in,
                     const Tensor& weight, double eps) {
  constexpr const char* op = "rmsnorm_forward";
  check_devices(op, ctx, {{"out", out}, {"rstd", rstd}, {"in", in}, {"weight", weight}});
  for (const Arg& x : {Arg{"out", out}, Arg{"rstd", rstd}, Arg{"in", in}, Arg{"weight", weight}})
    require_defined(op, x);
  require_same_float(op, {{"in", in}, {"out", out}, {"rstd", rstd}, {"weight", weight}});
  const int64_t N = check_norm_input(op, in, weight, Tensor());
  require_rows(op, {"out", out}, N, weight.numel(), "in");
  require_numel(op, {"rstd", rstd}, N, "one per row of in");
  require(eps >= 0 && std::isfinite(eps), op, "eps must be >= 0, got " + std::to_string(eps));
  SHARDLM_OPS_ROUTE(rmsnorm_forward, ctx, out, rstd, in, weight, eps);
}

void rmsnorm_backward(DeviceContext& ctx, Tensor din, Tensor dweight, const Tensor& dout,
                      const Tensor& in, const Tensor& weight, const Tensor& rstd) {
  constexpr const char* op = "rmsnorm_backward";
  check_devices(op, ctx,
                {{"din", din},
                 {"dweight", dweight},
                 {"dout", dout},
                 {"in", in},
                 {"weight", weight},
                 {"rstd", rstd}});
  for (const Arg& x : {Arg{"din", din}, Arg{"dweight", dweight}, Arg{"dout", dout}, Arg{"in", in},
                       Arg{"weight", weight}, Arg{"rstd", rstd}})
    require_defined(op, x);
  require_same_float(op, {{"in", in},
                          {"din", din},
                          {"dweight", dweight},
                          {"dout", dout},
                          {"weight", weight},
                          {"rstd", rstd}});
  const int64_t N = check_norm_input(op, in, weight, Tensor());
  const int64_t C = weight.numel();
  require_rows(op, {"din", din}, N, C, "in");
  require_rows(op, {"dout", dout}, N, C, "in");
  require_shape(op, {"dweight", dweight}, Shape{C});
  require_numel(op, {"rstd", rstd}, N, "one per row of in");
  SHARDLM_OPS_ROUTE(rmsnorm_backward, ctx, din, dweight, dout, in, weight, rstd);
}

// ---- linear --------------------------------------------------------------------------------

void linear_forward(DeviceContext& ctx, Tensor out, const Tensor& in, const Tensor& weight,
                    const Tensor& bias) {
  constexpr const char* op = "linear_forward";
  check_devices(op, ctx, {{"out", out}, {"in", in}, {"weight", weight}, {"bias", bias}});
  for (const Arg& x : {Arg{"out", out}, Arg{"in", in}, Arg{"weight", weight}})
    require_defined(op, x);
  require_same_float(op, {{"in", in}, {"out", out}, {"weight", weight}, {"bias", bias}});
  const int64_t N = check_linear_input(op, in, weight);
  const int64_t OC = weight.size(0);
  require_rows(op, {"out", out}, N, OC, "in, with OC columns");
  if (bias.defined()) require_shape(op, {"bias", bias}, Shape{OC});
  SHARDLM_OPS_ROUTE(linear_forward, ctx, out, in, weight, bias);
}

void linear_backward(DeviceContext& ctx, Tensor din, Tensor dweight, Tensor dbias,
                     const Tensor& dout, const Tensor& in, const Tensor& weight) {
  constexpr const char* op = "linear_backward";
  check_devices(op, ctx,
                {{"din", din},
                 {"dweight", dweight},
                 {"dbias", dbias},
                 {"dout", dout},
                 {"in", in},
                 {"weight", weight}});
  for (const Arg& x : {Arg{"dout", dout}, Arg{"in", in}, Arg{"weight", weight}})
    require_defined(op, x);
  require_same_float(op, {{"in", in},
                          {"din", din},
                          {"dweight", dweight},
                          {"dbias", dbias},
                          {"dout", dout},
                          {"weight", weight}});
  const int64_t N = check_linear_input(op, in, weight);
  const int64_t OC = weight.size(0), IC = weight.size(1);
  require_rows(op, {"dout", dout}, N, OC, "in, with OC columns");
  if (din.defined()) require_rows(op, {"din", din}, N, IC, "in");
  if (dweight.defined()) require_shape(op, {"dweight", dweight}, weight.shape());
  if (dbias.defined()) require_shape(op, {"dbias", dbias}, Shape{OC});
  SHARDLM_OPS_ROUTE(linear_backward, ctx, din, dweight, dbias, dout, in, weight);
}

void linear_weight_grad(DeviceContext& ctx, Tensor dweight, const Tensor& dout, const Tensor& in,
                        bool accumulate) {
  constexpr const char* op = "linear_weight_grad";
  check_devices(op, ctx, {{"dweight", dweight}, {"dout", dout}, {"in", in}});
  for (const Arg& x : {Arg{"dweight", dweight}, Arg{"dout", dout}, Arg{"in", in}})
    require_defined(op, x);
  require_same_float(op, {{"in", in}, {"dout", dout}});
  require_same_or_wider_grad(op, {"dweight", dweight}, in.dtype(), "activations");
  require(dweight.rank() == 2 && dweight.size(0) >= 1 && dweight.size(1) >= 1, op,
          "dweight must be [OC, IC], got " + shape_of(dweight));
  const int64_t OC = dweight.size(0), IC = dweight.size(1);
  const int64_t in_cols = last_dim(op, {"in", in});
  require(in_cols == IC, op,
          "in " + shape_of(in) + " does not end in IC = " + std::to_string(IC) + " of dweight " +
              shape_of(dweight));
  require_rows(op, {"dout", dout}, in.numel() / IC, OC, "in, with OC columns");
  SHARDLM_OPS_ROUTE(linear_weight_grad, ctx, dweight, dout, in, accumulate);
}

// ---- activations ---------------------------------------------------------------------------

void gelu_forward(DeviceContext& ctx, Tensor out, const Tensor& in) {
  constexpr const char* op = "gelu_forward";
  check_devices(op, ctx, {{"out", out}, {"in", in}});
  require_defined(op, {"out", out});
  require_defined(op, {"in", in});
  require_same_float(op, {{"in", in}, {"out", out}});
  require_same_numel(op, {"out", out}, {"in", in});
  SHARDLM_OPS_ROUTE(gelu_forward, ctx, out, in);
}

void gelu_backward(DeviceContext& ctx, Tensor din, const Tensor& dout, const Tensor& in) {
  constexpr const char* op = "gelu_backward";
  check_devices(op, ctx, {{"din", din}, {"dout", dout}, {"in", in}});
  for (const Arg& x : {Arg{"din", din}, Arg{"dout", dout}, Arg{"in", in}}) require_defined(op, x);
  require_same_float(op, {{"in", in}, {"din", din}, {"dout", dout}});
  require_same_numel(op, {"din", din}, {"in", in});
  require_same_numel(op, {"dout", dout}, {"in", in});
  SHARDLM_OPS_ROUTE(gelu_backward, ctx, din, dout, in);
}

void swiglu_forward(DeviceContext& ctx, Tensor out, const Tensor& in) {
  constexpr const char* op = "swiglu_forward";
  check_devices(op, ctx, {{"out", out}, {"in", in}});
  require_defined(op, {"out", out});
  require_defined(op, {"in", in});
  require_same_float(op, {{"in", in}, {"out", out}});
  const int64_t F = check_swiglu_input(op, in);
  require_rows(op, {"out", out}, in.numel() / (2 * F), F, "in, with half its columns");
  SHARDLM_OPS_ROUTE(swiglu_forward, ctx, out, in);
}

void swiglu_backward(DeviceContext& ctx, Tensor din, const Tensor& dout, const Tensor& in) {
  constexpr const char* op = "swiglu_backward";
  check_devices(op, ctx, {{"din", din}, {"dout", dout}, {"in", in}});
  for (const Arg& x : {Arg{"din", din}, Arg{"dout", dout}, Arg{"in", in}}) require_defined(op, x);
  require_same_float(op, {{"in", in}, {"din", din}, {"dout", dout}});
  const int64_t F = check_swiglu_input(op, in);
  const int64_t N = in.numel() / (2 * F);
  require_rows(op, {"din", din}, N, 2 * F, "in");
  require_rows(op, {"dout", dout}, N, F, "in, with half its columns");
  SHARDLM_OPS_ROUTE(swiglu_backward, ctx, din, dout, in);
}

void tanh_forward(DeviceContext& ctx, Tensor out, const Tensor& in) {
  constexpr const char* op = "tanh_forward";
  check_devices(op, ctx, {{"out", out}, {"in", in}});
  require_defined(op, {"out", out});
  require_defined(op, {"in", in});
  require_same_float(op, {{"in", in}, {"out", out}});
  require_same_numel(op, {"out", out}, {"in", in});
  SHARDLM_OPS_ROUTE(tanh_forward, ctx, out, in);
}

void tanh_backward(DeviceContext& ctx, Tensor din, const Tensor& dout, const Tensor& out) {
  constexpr const char* op = "tanh_backward";
  check_devices(op, ctx, {{"din", din}, {"dout", dout}, {"out", out}});
  for (const Arg& x : {Arg{"din", din}, Arg{"dout", dout}, Arg{"out", out}})
    require_defined(op, x);
  require_same_float(op, {{"out", out}, {"din", din}, {"dout", dout}});
  require_same_numel(op, {"din", din}, {"out", out});
  require_same_numel(op, {"dout", dout}, {"out", out});
  SHARDLM_OPS_ROUTE(tanh_backward, ctx, din, dout, out);
}

// ---- fused kernels -------------------------------------------------------------------------

void dropout_add_forward(DeviceContext& ctx, Tensor out, const Tensor& x, const Tensor& residual,
                         double p, const DropoutKey& key, uint64_t position_offset) {
  constexpr const char* op = "dropout_add_forward";
  check_devices(op, ctx, {{"out", out}, {"x", x}, {"residual", residual}});
  for (const Arg& a : {Arg{"out", out}, Arg{"x", x}, Arg{"residual", residual}})
    require_defined(op, a);
  require_same_float(op, {{"x", x}, {"out", out}, {"residual", residual}});
  require_same_numel(op, {"out", out}, {"x", x});
  require_same_numel(op, {"residual", residual}, {"x", x});
  require_same_or_disjoint(op, {"out", out}, {"x", x}, true);
  require_same_or_disjoint(op, {"out", out}, {"residual", residual}, true);
  require_probability(op, p);
  SHARDLM_OPS_ROUTE(dropout_add_forward, ctx, out, x, residual, p, key, position_offset);
}

void dropout_add_backward(DeviceContext& ctx, Tensor dx, const Tensor& dout, double p,
                          const DropoutKey& key, uint64_t position_offset) {
  constexpr const char* op = "dropout_add_backward";
  check_devices(op, ctx, {{"dx", dx}, {"dout", dout}});
  require_defined(op, {"dx", dx});
  require_defined(op, {"dout", dout});
  require_same_float(op, {{"dout", dout}, {"dx", dx}});
  require_same_numel(op, {"dx", dx}, {"dout", dout});
  require_same_or_disjoint(op, {"dx", dx}, {"dout", dout}, true);
  require_probability(op, p);
  SHARDLM_OPS_ROUTE(dropout_add_backward, ctx, dx, dout, p, key, position_offset);
}

void linear_gelu_forward(DeviceContext& ctx, Tensor out, Tensor pre, const Tensor& in,
                         const Tensor& weight, const Tensor& bias) {
  constexpr const char* op = "linear_gelu_forward";
  check_devices(op, ctx,
                {{"out", out}, {"pre", pre}, {"in", in}, {"weight", weight}, {"bias", bias}});
  for (const Arg& a : {Arg{"out", out}, Arg{"pre", pre}, Arg{"in", in}, Arg{"weight", weight}})
    require_defined(op, a);
  require_same_float(op,
                     {{"in", in}, {"out", out}, {"pre", pre}, {"weight", weight}, {"bias", bias}});
  const int64_t N = check_linear_input(op, in, weight);
  const int64_t F = weight.size(0);
  require_rows(op, {"pre", pre}, N, F, "in, with OC = weight rows columns");
  require_rows(op, {"out", out}, N, F, "in, with OC = weight rows columns");
  if (bias.defined()) require_shape(op, {"bias", bias}, Shape{F});
  require_same_or_disjoint(op, {"out", out}, {"pre", pre}, false);
  require_same_or_disjoint(op, {"out", out}, {"in", in}, false);
  require_same_or_disjoint(op, {"pre", pre}, {"in", in}, false);
  SHARDLM_OPS_ROUTE(linear_gelu_forward, ctx, out, pre, in, weight, bias);
}

void gelu_backward_bias_grad(DeviceContext& ctx, Tensor dpre, Tensor dbias, const Tensor& dout,
                             const Tensor& pre) {
  constexpr const char* op = "gelu_backward_bias_grad";
  check_devices(op, ctx, {{"dpre", dpre}, {"dbias", dbias}, {"dout", dout}, {"pre", pre}});
  for (const Arg& a : {Arg{"dpre", dpre}, Arg{"dout", dout}, Arg{"pre", pre}})
    require_defined(op, a);
  require_same_float(op, {{"pre", pre}, {"dpre", dpre}, {"dout", dout}, {"dbias", dbias}});
  const int64_t F = last_dim(op, {"pre", pre});
  const int64_t N = pre.numel() / F;
  require_rows(op, {"dpre", dpre}, N, F, "pre");
  require_rows(op, {"dout", dout}, N, F, "pre");
  if (dbias.defined()) require_shape(op, {"dbias", dbias}, Shape{F});
  require_same_or_disjoint(op, {"dpre", dpre}, {"dout", dout}, true);
  require_same_or_disjoint(op, {"dpre", dpre}, {"pre", pre}, true);
  SHARDLM_OPS_ROUTE(gelu_backward_bias_grad, ctx, dpre, dbias, dout, pre);
}

}  // namespace shardlm::ops
