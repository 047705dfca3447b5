// fp8_ops.cc — validation and dispatch of the fp8 ops (ops.h): amax, scales, quantisation and
// the per-tensor scaled GEMM. The shared checks and the routing macro are in
// detail/op_validation.h.
#include "shardlm/ops/detail/op_validation.h"
#include "shardlm/tensor/fp8.h"

namespace shardlm::ops {

using namespace detail;

namespace {

void require_fp8(const char* op, const Arg& a) {
  require(dtype_is_fp8(a.t.dtype()), op,
          std::string(a.name) + " must hold fp8 codes (fp8_e4m3 or fp8_e5m2), got " +
              dtype_name(a.t.dtype()));
}
void require_f32(const char* op, const Arg& a) {
  require(a.t.dtype() == DType::kF32, op,
          std::string(a.name) + " must be fp32, got " + dtype_name(a.t.dtype()));
}
// A per-tensor factor: one fp32 element.
void require_factor(const char* op, const Arg& a) {
  require_defined(op, a);
  require_f32(op, a);
  require(a.t.numel() == 1, op,
          std::string(a.name) + " must hold one fp32 factor, got shape " + shape_of(a.t));
}
void require_compute_float(const char* op, const Arg& a) {
  const DType d = a.t.dtype();
  require(d == DType::kF32 || d == DType::kF64 || d == DType::kBF16 || d == DType::kF16, op,
          std::string(a.name) + " must be fp64, fp32, bf16 or fp16, got " + dtype_name(d));
}

}  // namespace

void abs_max(DeviceContext& ctx, Tensor amax, const Tensor& in) {
  constexpr const char* op = "abs_max";
  check_devices(op, ctx, {{"amax", amax}, {"in", in}});
  require_factor(op, {"amax", amax});
  require_defined(op, {"in", in});
  require_compute_float(op, {"in", in});
  SHARDLM_OPS_ROUTE(abs_max, ctx, amax, in);
}

void fp8_scale_from_amax(DeviceContext& ctx, Tensor scale, Tensor scale_inv, const Tensor& amax,
                         DType format, int margin) {
  constexpr const char* op = "fp8_scale_from_amax";
  check_devices(op, ctx, {{"scale", scale}, {"scale_inv", scale_inv}, {"amax", amax}});
  for (const Arg& x : {Arg{"scale", scale}, Arg{"scale_inv", scale_inv}, Arg{"amax", amax}}) {
    require_defined(op, x);
    require_f32(op, x);
  }
  require_same_numel(op, {"scale", scale}, {"amax", amax});
  require_same_numel(op, {"scale_inv", scale_inv}, {"amax", amax});
  require(dtype_is_fp8(format), op,
          std::string("format must be fp8_e4m3 or fp8_e5m2, got ") + dtype_name(format));
  require(margin >= 0 && margin <= 64, op,
          "margin must be in [0, 64] (powers of two of headroom), got " + std::to_string(margin));
  SHARDLM_OPS_ROUTE(fp8_scale_from_amax, ctx, scale, scale_inv, amax, format, margin);
}

void fp8_quantize(DeviceContext& ctx, Tensor q, Tensor q_t, const Tensor& in, const Tensor& scale) {
  constexpr const char* op = "fp8_quantize";
  check_devices(op, ctx, {{"q", q}, {"q_t", q_t}, {"in", in}, {"scale", scale}});
  require_defined(op, {"in", in});
  require_compute_float(op, {"in", in});
  require_factor(op, {"scale", scale});
  require(q.defined() || q_t.defined(), op, "give q, q_t or both (nothing to write)");
  const int64_t C = last_dim(op, {"in", in});
  const int64_t N = C == 0 ? 0 : in.numel() / C;
  if (q.defined()) {
    require_fp8(op, {"q", q});
    require_same_numel(op, {"q", q}, {"in", in});
  }
  if (q_t.defined()) {
    require_fp8(op, {"q_t", q_t});
    require_shape(op, {"q_t", q_t}, Shape{C, N});
  }
  if (q.defined() && q_t.defined())
    require(q.dtype() == q_t.dtype(), op,
            std::string("q is ") + dtype_name(q.dtype()) + " but q_t is " +
                dtype_name(q_t.dtype()) + "; both hold the same codes");
  SHARDLM_OPS_ROUTE(fp8_quantize, ctx, q, q_t, in, scale);
}

void fp8_gemm(DeviceContext& ctx, Tensor out, const Tensor& a, const Tensor& a_scale_inv,
              const Tensor& b, const Tensor& b_scale_inv, const Tensor& bias, bool accumulate) {
  constexpr const char* op = "fp8_gemm";
  check_devices(op, ctx,
                {{"out", out},
                 {"a", a},
                 {"a_scale_inv", a_scale_inv},
                 {"b", b},
                 {"b_scale_inv", b_scale_inv},
                 {"bias", bias}});
  for (const Arg& x : {Arg{"out", out}, Arg{"a", a}, Arg{"b", b}}) require_defined(op, x);
  require_fp8(op, {"a", a});
  require_fp8(op, {"b", b});
  require(!(a.dtype() == DType::kF8E5M2 && b.dtype() == DType::kF8E5M2), op,
          "a and b are both fp8_e5m2; one operand must be fp8_e4m3 (no E5M2 x E5M2 GEMM exists)");
  require_factor(op, {"a_scale_inv", a_scale_inv});
  require_factor(op, {"b_scale_inv", b_scale_inv});
  require_compute_float(op, {"out", out});
  require_matrix(op, {"a", a}, "[M, K]");
  require_matrix(op, {"b", b}, "[N, K]");
  require(a.size(1) == b.size(1), op,
          "a " + shape_of(a) + " and b " + shape_of(b) + " must share K (both are K-major)");
  require_shape(op, {"out", out}, Shape{a.size(0), b.size(0)});
  if (bias.defined()) {
    require_same_float(op, {{"out", out}, {"bias", bias}});
    require_numel(op, {"bias", bias}, b.size(0), "one per output column");
  }
  SHARDLM_OPS_ROUTE(fp8_gemm, ctx, out, a, a_scale_inv, b, b_scale_inv, bias, accumulate);
}

}  // namespace shardlm::ops
