// ops.cc — the op dispatcher: validates every call (shapes, dtypes, devices) and routes it to
// the CPU reference backend (ops/cpu) or, in CUDA builds, to the CUDA backend (ops/cuda) by the
// device of the DeviceContext, which must be the device of every tensor.
//
// Validation lives here, once, so both backends can assume well-formed arguments. Bad input
// throws Error(kInvalidArgument, "<op>: <what is wrong, with shapes>"); a CUDA tensor in a build
// without the CUDA backend, or a dtype a backend cannot compute in, throws kUnsupported.
// Checks that need the data itself (token / target ids in range) are done by the backends.
//
// Shape rules beyond ops.h: row-wise ops (norms, linear, activations, cross-entropy) accept any
// leading dims — rows = numel / last dim — as long as the row counts agree; per-row saved
// statistics (mean, rstd, lse, losses) are checked by element count. Optional tensors are
// undefined Tensor()s: wpe/dwpe, linear bias/din/dweight/dbias, layernorm bias/dbias.
#include "shardlm/ops/ops.h"

#include <cmath>
#include <initializer_list>
#include <string>

#include "shardlm/base/error.h"
#include "shardlm/ops/cpu/cpu_ops.h"

#ifdef SHARDLM_WITH_CUDA
#include "shardlm/ops/cuda/cuda_ops.h"
#endif

namespace shardlm::ops {

namespace {

struct Arg {
  const char* name;
  const Tensor& t;
};

std::string shape_of(const Tensor& t) { return t.defined() ? t.shape().to_string() : "undefined"; }

void require(bool cond, const char* op, const std::string& what) {
  if (!cond) throw Error(ErrorKind::kInvalidArgument, std::string(op) + ": " + what);
}

// All defined tensors must live on the context's device. A CUDA device without the CUDA backend
// compiled in is kUnsupported.
void check_devices(const char* op, const DeviceContext& ctx, std::initializer_list<Arg> args) {
  for (const Arg& a : args) {
    if (!a.t.defined()) continue;
    require(a.t.device() == ctx.device(), op,
            std::string(a.name) + " is on " + a.t.device().to_string() +
                " but the DeviceContext is for " + ctx.device().to_string() +
                "; all tensors of one op must be on the context's device");
  }
#ifndef SHARDLM_WITH_CUDA
  if (ctx.device().is_cuda()) {
    throw Error(ErrorKind::kUnsupported,
                std::string(op) + ": tensors are on " + ctx.device().to_string() +
                    " but this build has no CUDA backend (configure with nvcc available and "
                    "SHARDLM_CUDA=ON)");
  }
#endif
}

void require_defined(const char* op, const Arg& a) {
  require(a.t.defined(), op, std::string(a.name) + " must be defined");
}

// The float tensors of one call share one float dtype (the first argument's).
void require_same_float(const char* op, std::initializer_list<Arg> args) {
  const Arg* first = nullptr;
  for (const Arg& a : args) {
    if (!a.t.defined()) continue;
    require(dtype_is_float(a.t.dtype()), op,
            std::string(a.name) + " must be a float tensor, got " + dtype_name(a.t.dtype()));
    if (first == nullptr) {
      first = &a;
      continue;
    }
    require(a.t.dtype() == first->t.dtype(), op,
            std::string(a.name) + " is " + dtype_name(a.t.dtype()) + " but " + first->name +
                " is " + dtype_name(first->t.dtype()) +
                "; all float tensors of one op share one dtype");
  }
}

void require_int32(const char* op, const Arg& a) {
  require(a.t.dtype() == DType::kI32, op,
          std::string(a.name) + " must be int32, got " + dtype_name(a.t.dtype()));
}

void require_shape(const char* op, const Arg& a, const Shape& expected) {
  require(
      a.t.shape() == expected, op,
      std::string(a.name) + " has shape " + shape_of(a.t) + ", expected " + expected.to_string());
}

void require_numel(const char* op, const Arg& a, int64_t n, const std::string& why) {
  require(a.t.numel() == n, op,
          std::string(a.name) + " has shape " + shape_of(a.t) + " (" + std::to_string(a.t.numel()) +
              " elements), expected " + std::to_string(n) + " elements (" + why + ")");
}

// Last dim of a row-wise tensor (rank >= 1, last dim >= 1).
int64_t last_dim(const char* op, const Arg& a) {
  require(a.t.rank() >= 1 && a.t.size(-1) >= 1, op,
          std::string(a.name) + " must have rank >= 1 and a non-empty last axis, got shape " +
              shape_of(a.t));
  return a.t.size(-1);
}

// `a` has last dim `cols` and `rows` rows (any leading dims).
void require_rows(const char* op, const Arg& a, int64_t rows, int64_t cols, const char* like) {
  require(a.t.rank() >= 1 && a.t.size(-1) == cols && a.t.numel() == rows * cols, op,
          std::string(a.name) + " has shape " + shape_of(a.t) + ", expected " +
              std::to_string(rows) + " rows of " + std::to_string(cols) + " (like " + like + ")");
}

void require_same_numel(const char* op, const Arg& a, const Arg& b) {
  require(a.t.numel() == b.t.numel(), op,
          std::string(a.name) + " " + shape_of(a.t) + " and " + b.name + " " + shape_of(b.t) +
              " must have the same number of elements");
}

void require_probability(const char* op, double p) {
  require(p >= 0.0 && p < 1.0, op,
          "dropout probability must be in [0, 1), got " + std::to_string(p));
}

}  // namespace

namespace {
// Brackets one routed op for the context's OpTimer (if any); the timer sees the backend call
// only, not the validation above it.
class OpTimingScope {
 public:
  OpTimingScope(const DeviceContext& ctx, const char* name) : timer_(ctx.op_timer()), name_(name) {
    if (timer_ != nullptr) timer_->begin(name_);
  }
  ~OpTimingScope() {
    if (timer_ != nullptr) timer_->end(name_);
  }
  OpTimingScope(const OpTimingScope&) = delete;
  OpTimingScope& operator=(const OpTimingScope&) = delete;

 private:
  OpTimer* timer_;
  const char* name_;
};
}  // namespace

// Routes to the backend of ctx's device (validated above to be every tensor's device), timed
// by the context's OpTimer when one is installed.
#ifdef SHARDLM_WITH_CUDA
#define SHARDLM_OPS_ROUTE(name, ...)     \
  const OpTimingScope op_timing_(ctx, #name); \
  return ctx.device().is_cuda() ? cuda::name(__VA_ARGS__) : cpu::name(__VA_ARGS__)
#else
#define SHARDLM_OPS_ROUTE(name, ...)     \
  const OpTimingScope op_timing_(ctx, #name); \
  return cpu::name(__VA_ARGS__)
#endif

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

void accumulate_and_zero(DeviceContext& ctx, Tensor acc, Tensor x) {
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
  SHARDLM_OPS_ROUTE(accumulate_and_zero, ctx, acc, x);
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

// ---- embeddings ----------------------------------------------------------------------------

namespace {
// tokens [B,T] int32, table [V,C]; returns nothing, throws on mismatch.
void check_embedding_common(const char* op, const Tensor& tokens, const Arg& table,
                            const Arg& pos) {
  require_int32(op, {"tokens", tokens});
  require(tokens.rank() == 2, op, "tokens must be [B, T], got " + shape_of(tokens));
  require(table.t.rank() == 2 && table.t.size(0) >= 1, op,
          std::string(table.name) + " must be [V, C] with V >= 1, got " + shape_of(table.t));
  if (pos.t.defined()) {
    require(
        pos.t.rank() == 2 && pos.t.size(1) == table.t.size(1) && pos.t.size(0) >= tokens.size(1),
        op,
        std::string(pos.name) + " must be [P, C] with C = " + std::to_string(table.t.size(1)) +
            " and P >= T = " + std::to_string(tokens.size(1)) + ", got " + shape_of(pos.t));
  }
}
}  // namespace

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
  require_same_float(op, {{"dwte", dwte}, {"dwpe", dwpe}, {"dout", dout}});
  check_embedding_common(op, tokens, {"dwte", dwte}, {"dwpe", dwpe});
  require_shape(op, {"dout", dout}, Shape{tokens.size(0), tokens.size(1), dwte.size(1)});
  SHARDLM_OPS_ROUTE(embedding_backward, ctx, dwte, dwpe, dout, tokens);
}

// ---- normalisation -------------------------------------------------------------------------

namespace {
// in[N,C] with weight [C] (and optional bias [C]); returns N.
int64_t check_norm_input(const char* op, const Tensor& in, const Tensor& weight,
                         const Tensor& bias) {
  const int64_t C = last_dim(op, {"in", in});
  require_shape(op, {"weight", weight}, Shape{C});
  if (bias.defined()) require_shape(op, {"bias", bias}, Shape{C});
  return in.numel() / C;
}
}  // namespace

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

namespace {
// weight [OC, IC] with IC = in's last dim; returns N (rows of in).
int64_t check_linear_input(const char* op, const Tensor& in, const Tensor& weight) {
  const int64_t IC = last_dim(op, {"in", in});
  require(weight.rank() == 2 && weight.size(0) >= 1 && weight.size(1) == IC, op,
          "weight must be [OC, IC] with IC = " + std::to_string(IC) + " (in " + shape_of(in) +
              "), got " + shape_of(weight));
  return in.numel() / IC;
}
}  // namespace

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

namespace {
// in[N,2F] -> returns F after checking the last dim is even and non-empty.
int64_t check_swiglu_input(const char* op, const Tensor& in) {
  const int64_t two_f = last_dim(op, {"in", in});
  require(two_f % 2 == 0, op,
          "in must be [N, 2F] ([a | b] halves), but its last dim is odd: " + shape_of(in));
  return two_f / 2;
}
}  // namespace

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

// ---- fused kernels -------------------------------------------------------------------------

namespace {
// `a` and `b` are the same view (in place) or do not overlap at all.
void require_same_or_disjoint(const char* op, const Arg& a, const Arg& b, bool allow_same) {
  const auto* pa = static_cast<const char*>(a.t.raw());
  const auto* pb = static_cast<const char*>(b.t.raw());
  const bool disjoint = pa + a.t.nbytes() <= pb || pb + b.t.nbytes() <= pa;
  const bool same = pa == pb && a.t.nbytes() == b.t.nbytes();
  require(disjoint || (allow_same && same), op,
          std::string(a.name) + " overlaps " + b.name +
              (allow_same ? "; pass the same tensor (in place) or a disjoint one"
                          : "; they must be disjoint tensors"));
}
}  // namespace

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

void linear_dgelu_backward(DeviceContext& ctx, Tensor dpre, Tensor dbias, const Tensor& dout,
                           const Tensor& weight, const Tensor& pre) {
  constexpr const char* op = "linear_dgelu_backward";
  check_devices(op, ctx,
                {{"dpre", dpre}, {"dbias", dbias}, {"dout", dout}, {"weight", weight}, {"pre", pre}});
  for (const Arg& a : {Arg{"dpre", dpre}, Arg{"dout", dout}, Arg{"weight", weight}, Arg{"pre", pre}})
    require_defined(op, a);
  require_same_float(
      op, {{"pre", pre}, {"dpre", dpre}, {"dout", dout}, {"weight", weight}, {"dbias", dbias}});
  // weight [OC, F] is applied to pre's F columns: check_linear_input's "in" is pre here.
  const int64_t N = check_linear_input(op, pre, weight);
  const int64_t OC = weight.size(0), F = weight.size(1);
  require_rows(op, {"dout", dout}, N, OC, "pre, with OC = weight rows columns");
  require_rows(op, {"dpre", dpre}, N, F, "pre");
  if (dbias.defined()) require_shape(op, {"dbias", dbias}, Shape{F});
  require_same_or_disjoint(op, {"dpre", dpre}, {"pre", pre}, false);
  require_same_or_disjoint(op, {"dpre", dpre}, {"dout", dout}, false);
  require_same_or_disjoint(op, {"dpre", dpre}, {"weight", weight}, false);
  SHARDLM_OPS_ROUTE(linear_dgelu_backward, ctx, dpre, dbias, dout, weight, pre);
}

// ---- attention -----------------------------------------------------------------------------

namespace {
// The saved log-sum-exp may be fp32 whatever the activation dtype (16-bit lse would put a ~1%
// error on every recomputed probability; the CUDA backward then needs no lse recomputation).
void require_lse_dtype(const char* op, const Tensor& lse, const Tensor& qkv) {
  const bool qkv_16bit = qkv.dtype() == DType::kBF16 || qkv.dtype() == DType::kF16;
  require(lse.dtype() == qkv.dtype() || (qkv_16bit && lse.dtype() == DType::kF32), op,
          std::string("lse must have qkv's dtype ") + dtype_name(qkv.dtype()) +
              (qkv_16bit ? " or fp32" : "") + ", got " + dtype_name(lse.dtype()));
}

// qkv [B,T,G*(NH/G+2)*HS]; checks the head shape and out/lse shapes.
void check_attention(const char* op, const Tensor& qkv, const Arg& out, const Tensor& lse,
                     const AttentionShape& s, double dropout_p) {
  const int64_t NH = s.num_heads, G = s.num_query_groups, HS = s.head_dim;
  require(NH >= 1 && G >= 1 && HS >= 1 && NH % G == 0, op,
          "need num_heads >= 1, num_query_groups >= 1 dividing num_heads, head_dim >= 1; got "
          "NH=" +
              std::to_string(NH) + " G=" + std::to_string(G) + " HS=" + std::to_string(HS));
  const int64_t row = G * (NH / G + 2) * HS;
  require(qkv.rank() == 3 && qkv.size(2) == row, op,
          "qkv must be [B, T, G*(NH/G + 2)*HS] = [B, T, " + std::to_string(row) +
              "] for NH=" + std::to_string(NH) + " G=" + std::to_string(G) +
              " HS=" + std::to_string(HS) + ", got " + shape_of(qkv));
  const int64_t B = qkv.size(0), T = qkv.size(1);
  require_shape(op, out, Shape{B, T, NH * HS});
  require_shape(op, {"lse", lse}, Shape{B, NH, T});
  require(s.head_offset >= 0 && s.head_offset + NH <= s.global_num_heads(), op,
          "heads [head_offset, head_offset + NH) = [" + std::to_string(s.head_offset) + ", " +
              std::to_string(s.head_offset + NH) + ") must lie within dropout_num_heads = " +
              std::to_string(s.global_num_heads()));
  require_probability(op, dropout_p);
}
}  // namespace

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

// ---- rotary position embedding -------------------------------------------------------------

namespace {
// cos_sin [P, R/2, 2] in fp32 or fp64 with R >= 2; returns R.
int64_t check_rope_table(const char* op, const Tensor& cos_sin) {
  require(cos_sin.dtype() == DType::kF32 || cos_sin.dtype() == DType::kF64, op,
          std::string("cos_sin must be fp32 or fp64 (the table is computed in double and kept "
                      "at least at fp32 whatever the activation dtype), got ") +
              dtype_name(cos_sin.dtype()));
  require(cos_sin.rank() == 3 && cos_sin.size(0) >= 1 && cos_sin.size(1) >= 1 &&
              cos_sin.size(2) == 2,
          op, "cos_sin must be [P, R/2, 2] with P >= 1 positions and rotary dim R >= 2, got " +
                  shape_of(cos_sin));
  return 2 * cos_sin.size(1);
}

// in [B,T,G*(NH/G+2)*HS], out like in (same tensor or disjoint), table with P >= T, R <= HS.
void check_rope(const char* op, const Arg& out, const Arg& in, const Tensor& cos_sin,
                const AttentionShape& s) {
  require_same_float(op, {in, out});
  const int64_t R = check_rope_table(op, cos_sin);
  const int64_t NH = s.num_heads, G = s.num_query_groups, HS = s.head_dim;
  require(NH >= 1 && G >= 1 && HS >= 1 && NH % G == 0, op,
          "need num_heads >= 1, num_query_groups >= 1 dividing num_heads, head_dim >= 1; got "
          "NH=" + std::to_string(NH) + " G=" + std::to_string(G) + " HS=" + std::to_string(HS));
  const int64_t row = G * (NH / G + 2) * HS;
  require(in.t.rank() == 3 && in.t.size(2) == row, op,
          std::string(in.name) + " must be [B, T, G*(NH/G + 2)*HS] = [B, T, " +
              std::to_string(row) + "] for NH=" + std::to_string(NH) + " G=" + std::to_string(G) +
              " HS=" + std::to_string(HS) + ", got " + shape_of(in.t));
  require_shape(op, out, in.t.shape());
  require(R <= HS, op,
          "rotary dim R = " + std::to_string(R) + " (cos_sin " + shape_of(cos_sin) +
              ") exceeds head_dim " + std::to_string(HS));
  require(cos_sin.size(0) >= in.t.size(1), op,
          "cos_sin covers " + std::to_string(cos_sin.size(0)) + " positions but the sequence has T = " +
              std::to_string(in.t.size(1)) + "; build the table for at least T positions");
  const auto* a = static_cast<const char*>(in.t.raw());
  const auto* b = static_cast<const char*>(out.t.raw());
  const size_t n = in.t.nbytes();
  require(a == b || a + n <= b || b + n <= a, op,
          std::string(out.name) + " partially overlaps " + in.name +
              "; pass the same tensor (in place) or a disjoint one");
}
}  // namespace

void rope_cos_sin(DeviceContext& ctx, Tensor cos_sin, double base) {
  constexpr const char* op = "rope_cos_sin";
  check_devices(op, ctx, {{"cos_sin", cos_sin}});
  require_defined(op, {"cos_sin", cos_sin});
  check_rope_table(op, cos_sin);
  require(base > 0 && std::isfinite(base), op,
          "base must be positive and finite (--rotary-base), got " + std::to_string(base));
  SHARDLM_OPS_ROUTE(rope_cos_sin, ctx, cos_sin, base);
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

// ---- loss ----------------------------------------------------------------------------------

namespace {
// logits [N,V]; targets int32 with N elements; returns N.
int64_t check_cross_entropy(const char* op, const Tensor& logits, const Tensor& targets) {
  const int64_t V = last_dim(op, {"logits", logits});
  const int64_t N = logits.numel() / V;
  require_int32(op, {"targets", targets});
  require_numel(op, {"targets", targets}, N, "one per row of logits " + shape_of(logits));
  return N;
}
}  // namespace

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

namespace {
// wte [VL, C] shard; tokens int32; rows [N, C] (any leading shape) with N = tokens.numel().
void check_vocab_parallel_embedding(const char* op, const Tensor& tokens, const Arg& table,
                                    const Arg& rows, int64_t vocab_start) {
  require_int32(op, {"tokens", tokens});
  require(table.t.rank() == 2, op,
          std::string(table.name) + " must be [vocab shard, C], got " + shape_of(table.t));
  require_rows(op, rows, tokens.numel(), table.t.size(1), table.name);
  require(vocab_start >= 0, op, "vocab_start must be >= 0, got " + std::to_string(vocab_start));
}
// logits [N, VL]; returns N.
int64_t check_vocab_parallel_logits(const char* op, const Tensor& logits) {
  const int64_t VL = last_dim(op, {"logits", logits});
  return logits.numel() / VL;
}
// Per-row statistics are the logits' dtype, or fp32 when the logits are 16-bit (CUDA).
void require_row_stats_dtype(const char* op, const Tensor& logits, const Arg& stats) {
  const DType l = logits.dtype(), d = stats.t.dtype();
  const bool low = l == DType::kBF16 || l == DType::kF16;
  require(d == l || (low && d == DType::kF32), op,
          std::string(stats.name) + " is " + dtype_name(d) + "; per-row tensors must be the " +
              "logits' dtype " + dtype_name(l) + (low ? " or fp32" : ""));
}
}  // namespace

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
  require_same_float(op, {{"dwte", dwte}, {"dout", dout}});
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
  require_same_float(op, {{"row_max", row_max}, {"sum_exp", sum_exp}, {"target_logit", target_logit}});
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
