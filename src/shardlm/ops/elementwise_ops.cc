// elementwise_ops.cc — validation and dispatch of the elementwise and utility ops, dropout and
// the optimizer step (ops.h); the shared checks and the routing macro are in
// detail/op_validation.h.
#include <cmath>

#include "shardlm/ops/detail/op_validation.h"

namespace shardlm::ops {

using namespace detail;

// ---- elementwise / utility ----------------------------------------------------------------

void fill(DeviceContext& ctx, Tensor out, double value) {
  constexpr const char* op = "fill";
  check_devices(op, ctx, {{"out", out}});
  require_defined(op, {"out", out});
  SHARDLM_OPS_ROUTE(fill, ctx, out, value);
}

void copy(DeviceContext& ctx, Tensor dst, const Tensor& src) {
  constexpr const char* op = "copy";
  // copy is also the host <-> device transfer: with a CUDA context either side may be on the
  // host (same dtype on both sides then; the CUDA backend converts only on the device).
  if (ctx.device().is_cuda() && (dst.device().is_cpu() || src.device().is_cpu())) {
    check_devices(op, ctx, {{"dst", dst.device().is_cpu() ? Tensor() : dst},
                            {"src", src.device().is_cpu() ? Tensor() : src}});
  } else {
    check_devices(op, ctx, {{"dst", dst}, {"src", src}});
  }
  require_defined(op, {"dst", dst});
  require_defined(op, {"src", src});
  require_same_numel(op, {"dst", dst}, {"src", src});
  SHARDLM_OPS_ROUTE(copy, ctx, dst, src);
}

void add(DeviceContext& ctx, Tensor out, const Tensor& a, const Tensor& b) {
  constexpr const char* op = "add";
  check_devices(op, ctx, {{"out", out}, {"a", a}, {"b", b}});
  for (const Arg& x : {Arg{"out", out}, Arg{"a", a}, Arg{"b", b}}) require_defined(op, x);
  require_same_float(op, {{"out", out}, {"a", a}, {"b", b}});
  require_same_numel(op, {"a", a}, {"b", b});
  require_same_numel(op, {"out", out}, {"a", a});
  SHARDLM_OPS_ROUTE(add, ctx, out, a, b);
}

void add_inplace(DeviceContext& ctx, Tensor acc, const Tensor& x) {
  constexpr const char* op = "add_inplace";
  check_devices(op, ctx, {{"acc", acc}, {"x", x}});
  require_defined(op, {"acc", acc});
  require_defined(op, {"x", x});
  require_same_float(op, {{"acc", acc}, {"x", x}});
  require_same_numel(op, {"acc", acc}, {"x", x});
  SHARDLM_OPS_ROUTE(add_inplace, ctx, acc, x);
}

void scale_inplace(DeviceContext& ctx, Tensor x, double alpha) {
  constexpr const char* op = "scale_inplace";
  check_devices(op, ctx, {{"x", x}});
  require_defined(op, {"x", x});
  require_same_float(op, {{"x", x}});
  SHARDLM_OPS_ROUTE(scale_inplace, ctx, x, alpha);
}

void accumulate_and_zero(DeviceContext& ctx, Tensor acc, Tensor x, bool assign) {
  constexpr const char* op = "accumulate_and_zero";
  check_devices(op, ctx, {{"acc", acc}, {"x", x}});
  require_defined(op, {"acc", acc});
  require_defined(op, {"x", x});
  require(acc.dtype() == DType::kF32 || acc.dtype() == DType::kF64, op,
          std::string("acc must be fp32 or fp64 (main gradients), got ") +
              dtype_name(acc.dtype()));
  require(x.dtype() == DType::kF32 || x.dtype() == DType::kBF16 || x.dtype() == DType::kF16 ||
              x.dtype() == DType::kF64,
          op, std::string("x must be fp32, bf16, fp16 or fp64 (compute gradients), got ") +
                  dtype_name(x.dtype()));
  require_same_numel(op, {"acc", acc}, {"x", x});
  require(acc.numel() == 0 || acc.raw() != x.raw(), op,
          "acc and x must be different buffers (x is zeroed after it is added)");
  SHARDLM_OPS_ROUTE(accumulate_and_zero, ctx, acc, x, assign);
}

void init_normal(DeviceContext& ctx, Tensor out, const PhiloxKey& key, double stddev,
                 const ShardIndexMap& map) {
  constexpr const char* op = "init_normal";
  check_devices(op, ctx, {{"out", out}});
  require_defined(op, {"out", out});
  SHARDLM_REQUIRE(out.dtype() == DType::kF32 || out.dtype() == DType::kF64,
                  ErrorKind::kInvalidArgument,
                  std::string("init_normal: out must be fp32 or fp64 (master weights), got ") +
                      dtype_name(out.dtype()));
  const int64_t row = map.local_extent * map.inner;  // elements per outer index
  SHARDLM_REQUIRE(map.local_extent > 0 && map.inner > 0 && out.numel() % row == 0,
                  ErrorKind::kInvalidArgument,
                  "init_normal: " + std::to_string(out.numel()) +
                      " elements are not whole rows of the shard map");
  SHARDLM_OPS_ROUTE(init_normal, ctx, out, key, stddev, map);
}

double sum_squares(DeviceContext& ctx, const Tensor& x) {
  constexpr const char* op = "sum_squares";
  check_devices(op, ctx, {{"x", x}});
  require_defined(op, {"x", x});
  require_same_float(op, {{"x", x}});
  SHARDLM_OPS_ROUTE(sum_squares, ctx, x);
}

bool all_finite(DeviceContext& ctx, const Tensor& x) {
  constexpr const char* op = "all_finite";
  check_devices(op, ctx, {{"x", x}});
  require_defined(op, {"x", x});
  require_same_float(op, {{"x", x}});
  SHARDLM_OPS_ROUTE(all_finite, ctx, x);
}

// ---- dropout -------------------------------------------------------------------------------

void dropout_forward(DeviceContext& ctx, Tensor out, const Tensor& in, double p,
                     const DropoutKey& key, uint64_t position_offset) {
  constexpr const char* op = "dropout_forward";
  check_devices(op, ctx, {{"out", out}, {"in", in}});
  require_defined(op, {"out", out});
  require_defined(op, {"in", in});
  require_same_float(op, {{"in", in}, {"out", out}});
  require_same_numel(op, {"out", out}, {"in", in});
  require_probability(op, p);
  SHARDLM_OPS_ROUTE(dropout_forward, ctx, out, in, p, key, position_offset);
}

void dropout_backward(DeviceContext& ctx, Tensor din, const Tensor& dout, double p,
                      const DropoutKey& key, uint64_t position_offset) {
  constexpr const char* op = "dropout_backward";
  check_devices(op, ctx, {{"din", din}, {"dout", dout}});
  require_defined(op, {"din", din});
  require_defined(op, {"dout", dout});
  require_same_float(op, {{"dout", dout}, {"din", din}});
  require_same_numel(op, {"din", din}, {"dout", dout});
  require_probability(op, p);
  SHARDLM_OPS_ROUTE(dropout_backward, ctx, din, dout, p, key, position_offset);
}

// ---- optimizer -----------------------------------------------------------------------------

void adamw_step(DeviceContext& ctx, Tensor params, const Tensor& grads, Tensor exp_avg,
                Tensor exp_avg_sq, const AdamWParams& hp, Tensor compute_params) {
  constexpr const char* op = "adamw_step";
  check_devices(op, ctx,
                {{"params", params},
                 {"grads", grads},
                 {"exp_avg", exp_avg},
                 {"exp_avg_sq", exp_avg_sq},
                 {"compute_params", compute_params}});
  for (const Arg& x : {Arg{"params", params}, Arg{"grads", grads}, Arg{"exp_avg", exp_avg},
                       Arg{"exp_avg_sq", exp_avg_sq}})
    require_defined(op, x);
  require_same_float(
      op, {{"params", params}, {"grads", grads}, {"exp_avg", exp_avg}, {"exp_avg_sq", exp_avg_sq}});
  require_same_numel(op, {"grads", grads}, {"params", params});
  require_same_numel(op, {"exp_avg", exp_avg}, {"params", params});
  require_same_numel(op, {"exp_avg_sq", exp_avg_sq}, {"params", params});
  require(std::isfinite(hp.grad_scale) && hp.grad_scale > 0, op,
          "grad_scale must be finite and > 0, got " + std::to_string(hp.grad_scale));
  require(hp.step >= 1, op,
          "step must be >= 1 (bias correction 1 - beta^step), got " + std::to_string(hp.step));
  require(hp.beta1 >= 0 && hp.beta1 < 1 && hp.beta2 >= 0 && hp.beta2 < 1, op,
          "betas must be in [0, 1), got beta1=" + std::to_string(hp.beta1) +
              " beta2=" + std::to_string(hp.beta2));
  if (compute_params.defined()) {  // optional: the compute copy written in the same pass
    const DType c = compute_params.dtype();
    require(c == DType::kF32 || c == DType::kBF16 || c == DType::kF16, op,
            std::string("compute_params must be fp32, bf16 or fp16 (the compute copy), got ") +
                dtype_name(c));
    require_same_numel(op, {"compute_params", compute_params}, {"params", params});
    require(params.numel() == 0 || compute_params.raw() != params.raw(), op,
            "compute_params must be a separate buffer from params (pass an undefined Tensor "
            "when the parameters are their own compute copy)");
  }
  SHARDLM_OPS_ROUTE(adamw_step, ctx, params, grads, exp_avg, exp_avg_sq, hp, compute_params);
}

#undef SHARDLM_OPS_ROUTE

}  // namespace shardlm::ops
