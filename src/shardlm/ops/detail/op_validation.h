// op_validation.h — the checks every op dispatcher file (ops/*_ops.cc) shares, and the routing
// macro. Each ops.h entry point validates its call here, once (shapes, dtypes, devices), and routes
// it to the CPU reference backend (ops/cpu) or, in CUDA builds, to the CUDA backend (ops/cuda) by
// the device of the DeviceContext, which must be the device of every tensor.
//
// Bad input throws Error(kInvalidArgument, "<op>: <what is wrong, with shapes>"); a CUDA tensor in
// a build without the CUDA backend, or a dtype a backend cannot compute in, throws kUnsupported.
// Checks that need the data itself (token / target ids in range) are done by the backends.
//
// Shape rules beyond ops.h: row-wise ops (norms, linear, activations, cross-entropy) accept any
// leading dims — rows = numel / last dim — as long as the row counts agree; per-row saved
// statistics (mean, rstd, lse, losses) are checked by element count. Optional tensors are
// undefined Tensor()s: wpe/dwpe, linear bias/din/dweight/dbias, layernorm bias/dbias, the MoE
// gathers' scale/weights.
#pragma once

#include <cmath>
#include <initializer_list>
#include <string>

#include "shardlm/base/error.h"
#include "shardlm/ops/cpu/cpu_ops.h"
#include "shardlm/ops/ops.h"

#ifdef SHARDLM_WITH_CUDA
#include "shardlm/ops/cuda/cuda_ops.h"
#endif

namespace shardlm::ops::detail {


struct Arg {
  const char* name;
  const Tensor& t;
};

inline std::string shape_of(const Tensor& t) {
  return t.defined() ? t.shape().to_string() : "undefined";
}

inline void require(bool cond, const char* op, const std::string& what) {
  if (!cond) throw Error(ErrorKind::kInvalidArgument, std::string(op) + ": " + what);
}

// All defined tensors must live on the context's device. A CUDA device without the CUDA backend
// compiled in is kUnsupported.
inline void check_devices(const char* op, const DeviceContext& ctx,
                          std::initializer_list<Arg> args) {
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

inline void require_defined(const char* op, const Arg& a) {
  require(a.t.defined(), op, std::string(a.name) + " must be defined");
}

// The float tensors of one call share one float dtype (the first argument's).
inline void require_same_float(const char* op, std::initializer_list<Arg> args) {
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

// A parameter gradient computed from `from`-dtype activations (`from_what`): the same dtype, or
// the wider master dtype gradient-accumulation fusion writes (fp32 for bf16/fp16, fp64 for fp32).
inline void require_same_or_wider_grad(const char* op, const Arg& grad, DType from,
                                       const char* from_what) {
  const DType g = grad.t.dtype();
  const bool wider = (g == DType::kF32 && (from == DType::kBF16 || from == DType::kF16)) ||
                     (g == DType::kF64 && from == DType::kF32);
  require(g == from || wider, op,
          std::string(grad.name) + " is " + dtype_name(g) + " for " + dtype_name(from) + " " +
              from_what + "; it must be " + dtype_name(from) +
              " or the wider master dtype (fp32 for bf16/fp16, fp64 for fp32)");
}

inline void require_int32(const char* op, const Arg& a) {
  require(a.t.dtype() == DType::kI32, op,
          std::string(a.name) + " must be int32, got " + dtype_name(a.t.dtype()));
}

inline void require_shape(const char* op, const Arg& a, const Shape& expected) {
  require(
      a.t.shape() == expected, op,
      std::string(a.name) + " has shape " + shape_of(a.t) + ", expected " + expected.to_string());
}

inline void require_numel(const char* op, const Arg& a, int64_t n, const std::string& why) {
  require(a.t.numel() == n, op,
          std::string(a.name) + " has shape " + shape_of(a.t) + " (" + std::to_string(a.t.numel()) +
              " elements), expected " + std::to_string(n) + " elements (" + why + ")");
}

// Last dim of a row-wise tensor (rank >= 1, last dim >= 1).
inline int64_t last_dim(const char* op, const Arg& a) {
  require(a.t.rank() >= 1 && a.t.size(-1) >= 1, op,
          std::string(a.name) + " must have rank >= 1 and a non-empty last axis, got shape " +
              shape_of(a.t));
  return a.t.size(-1);
}

// `a` has last dim `cols` and `rows` rows (any leading dims).
inline void require_rows(const char* op, const Arg& a, int64_t rows, int64_t cols,
                         const char* like) {
  require(a.t.rank() >= 1 && a.t.size(-1) == cols && a.t.numel() == rows * cols, op,
          std::string(a.name) + " has shape " + shape_of(a.t) + ", expected " +
              std::to_string(rows) + " rows of " + std::to_string(cols) + " (like " + like + ")");
}

inline void require_same_numel(const char* op, const Arg& a, const Arg& b) {
  require(a.t.numel() == b.t.numel(), op,
          std::string(a.name) + " " + shape_of(a.t) + " and " + b.name + " " + shape_of(b.t) +
              " must have the same number of elements");
}

inline void require_probability(const char* op, double p) {
  require(p >= 0.0 && p < 1.0, op,
          "dropout probability must be in [0, 1), got " + std::to_string(p));
}


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

// ---- checks of one op family, shared where families overlap ----------------------------

// embeddings
// tokens [B,T] int32, table [V,C]; returns nothing, throws on mismatch.
inline void check_embedding_common(const char* op, const Tensor& tokens, const Arg& table,
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
// normalisation
// in[N,C] with weight [C] (and optional bias [C]); returns N.
inline int64_t check_norm_input(const char* op, const Tensor& in, const Tensor& weight,
                         const Tensor& bias) {
  const int64_t C = last_dim(op, {"in", in});
  require_shape(op, {"weight", weight}, Shape{C});
  if (bias.defined()) require_shape(op, {"bias", bias}, Shape{C});
  return in.numel() / C;
}
// linear
// weight [OC, IC] with IC = in's last dim; returns N (rows of in).
inline int64_t check_linear_input(const char* op, const Tensor& in, const Tensor& weight) {
  const int64_t IC = last_dim(op, {"in", in});
  require(weight.rank() == 2 && weight.size(0) >= 1 && weight.size(1) == IC, op,
          "weight must be [OC, IC] with IC = " + std::to_string(IC) + " (in " + shape_of(in) +
              "), got " + shape_of(weight));
  return in.numel() / IC;
}
// activations
// in[N,2F] -> returns F after checking the last dim is even and non-empty.
inline int64_t check_swiglu_input(const char* op, const Tensor& in) {
  const int64_t two_f = last_dim(op, {"in", in});
  require(two_f % 2 == 0, op,
          "in must be [N, 2F] ([a | b] halves), but its last dim is odd: " + shape_of(in));
  return two_f / 2;
}
// fused kernels
// `a` and `b` are the same view (in place) or do not overlap at all.
inline void require_same_or_disjoint(const char* op, const Arg& a, const Arg& b, bool allow_same) {
  const auto* pa = static_cast<const char*>(a.t.raw());
  const auto* pb = static_cast<const char*>(b.t.raw());
  const bool disjoint = pa + a.t.nbytes() <= pb || pb + b.t.nbytes() <= pa;
  const bool same = pa == pb && a.t.nbytes() == b.t.nbytes();
  require(disjoint || (allow_same && same), op,
          std::string(a.name) + " overlaps " + b.name +
              (allow_same ? "; pass the same tensor (in place) or a disjoint one"
                          : "; they must be disjoint tensors"));
}
// attention
// The saved log-sum-exp may be fp32 whatever the activation dtype (16-bit lse would put a ~1%
// error on every recomputed probability; the CUDA backward then needs no lse recomputation).
inline void require_lse_dtype(const char* op, const Tensor& lse, const Tensor& qkv) {
  const bool qkv_16bit = qkv.dtype() == DType::kBF16 || qkv.dtype() == DType::kF16;
  require(lse.dtype() == qkv.dtype() || (qkv_16bit && lse.dtype() == DType::kF32), op,
          std::string("lse must have qkv's dtype ") + dtype_name(qkv.dtype()) +
              (qkv_16bit ? " or fp32" : "") + ", got " + dtype_name(lse.dtype()));
}

// The head shape (NH, G dividing NH, HS all positive); returns the fused-QKV row width
// W = G*(NH/G+2)*HS.
inline int64_t check_attention_heads(const char* op, const AttentionShape& s) {
  const int64_t NH = s.num_heads, G = s.num_query_groups, HS = s.head_dim;
  require(NH >= 1 && G >= 1 && HS >= 1 && NH % G == 0, op,
          "need num_heads >= 1, num_query_groups >= 1 dividing num_heads, head_dim >= 1; got "
          "NH=" +
              std::to_string(NH) + " G=" + std::to_string(G) + " HS=" + std::to_string(HS));
  require(s.head_offset >= 0 && s.head_offset + NH <= s.global_num_heads(), op,
          "heads [head_offset, head_offset + NH) = [" + std::to_string(s.head_offset) + ", " +
              std::to_string(s.head_offset + NH) + ") must lie within dropout_num_heads = " +
              std::to_string(s.global_num_heads()));
  return G * (NH / G + 2) * HS;
}

// `a` is a fused-QKV tensor [B, T, W] of the shape's row width W.
inline void require_fused_qkv(const char* op, const Arg& a, const AttentionShape& s, int64_t W) {
  require(a.t.rank() == 3 && a.t.size(2) == W, op,
          std::string(a.name) + " must be [B, T, G*(NH/G + 2)*HS] = [B, T, " + std::to_string(W) +
              "] for NH=" + std::to_string(s.num_heads) + " G=" +
              std::to_string(s.num_query_groups) + " HS=" + std::to_string(s.head_dim) +
              ", got " + shape_of(a.t));
}

// AttentionShape::key_lengths, when given: int32 [B] on the device of `like` (the values are
// the backends' to check: they are data).
inline void require_key_lengths(const char* op, const AttentionShape& s, int64_t B,
                                const Arg& like) {
  if (!s.key_lengths.defined()) return;
  require(s.key_lengths.dtype() == DType::kI32 && s.key_lengths.numel() == B, op,
          "AttentionShape::key_lengths must be int32 [B] = [" + std::to_string(B) + "], got " +
              std::string(dtype_name(s.key_lengths.dtype())) + " " + shape_of(s.key_lengths));
  require(s.key_lengths.device() == like.t.device(), op,
          std::string("AttentionShape::key_lengths must be on ") + like.name + "'s device");
}

// qkv [B,T,G*(NH/G+2)*HS]; checks the head shape and out/lse shapes.
inline void check_attention(const char* op, const Tensor& qkv, const Arg& out, const Tensor& lse,
                     const AttentionShape& s, double dropout_p) {
  const int64_t W = check_attention_heads(op, s);
  require_fused_qkv(op, {"qkv", qkv}, s, W);
  const int64_t B = qkv.size(0), T = qkv.size(1);
  require_shape(op, out, Shape{B, T, s.num_heads * s.head_dim});
  require_shape(op, {"lse", lse}, Shape{B, s.num_heads, T});
  require_probability(op, dropout_p);
  require_key_lengths(op, s, B, {"qkv", qkv});
}

// Context-parallel chunk: q_src [B,TQ,W] and kv [B,T,W] of one batch and row width, out
// [B,TQ,NH*HS], lse [B,NH,TQ], and the chunk inside both: rows [row, row + rows) of q_src at
// global positions [position, position + rows) of kv.
inline void check_attention_chunk(const char* op, const Tensor& q_src, const Tensor& kv,
                                  const Arg& out, const Tensor& lse, const AttentionShape& s,
                                  const AttentionChunk& c, double dropout_p) {
  const int64_t W = check_attention_heads(op, s);
  require_fused_qkv(op, {"q_src", q_src}, s, W);
  require_fused_qkv(op, {"kv", kv}, s, W);
  const int64_t B = q_src.size(0), TQ = q_src.size(1), T = kv.size(1);
  require(kv.size(0) == B, op,
          "kv " + shape_of(kv) + " and q_src " + shape_of(q_src) +
              " must have the same batch size B");
  require_shape(op, out, Shape{B, TQ, s.num_heads * s.head_dim});
  require_shape(op, {"lse", lse}, Shape{B, s.num_heads, TQ});
  require(c.rows >= 1, op, "chunk.rows must be >= 1, got " + std::to_string(c.rows));
  require(c.row >= 0 && c.row + c.rows <= TQ, op,
          "chunk rows [row, row + rows) = [" + std::to_string(c.row) + ", " +
              std::to_string(c.row + c.rows) + ") must lie within q_src's TQ = " +
              std::to_string(TQ) + " rows");
  require(c.position >= 0 && c.position + c.rows <= T, op,
          "chunk positions [position, position + rows) = [" + std::to_string(c.position) + ", " +
              std::to_string(c.position + c.rows) + ") must lie within kv's T = " +
              std::to_string(T) + " positions");
  require_probability(op, dropout_p);
  require(s.causal && !s.key_lengths.defined(), op,
          "context-parallel chunks are causal without key padding (AttentionShape::causal = "
          "true, no key_lengths): bidirectional / padded attention runs on the whole sequence");
}
// Cross-attention: q [B,TQ,NH*HS] and kv [B,TK,G*2*HS] of one batch, out [B,TQ,NH*HS], lse
// [B,NH,TQ]; unmasked except for key padding.
inline void check_cross_attention(const char* op, const Tensor& q, const Tensor& kv,
                                  const Arg& out, const Tensor& lse, const AttentionShape& s,
                                  double dropout_p) {
  check_attention_heads(op, s);
  const int64_t NH = s.num_heads, G = s.num_query_groups, HS = s.head_dim;
  const std::string heads = " for NH=" + std::to_string(NH) + " G=" + std::to_string(G) +
                            " HS=" + std::to_string(HS) + ", got ";
  require(q.rank() == 3 && q.size(2) == NH * HS, op,
          "q must be [B, TQ, NH*HS] = [B, TQ, " + std::to_string(NH * HS) + "]" + heads +
              shape_of(q));
  require(kv.rank() == 3 && kv.size(2) == G * 2 * HS, op,
          "kv must be [B, TK, G*2*HS] = [B, TK, " + std::to_string(G * 2 * HS) +
              "] (each group's [k | v])" + heads + shape_of(kv));
  const int64_t B = q.size(0), TQ = q.size(1);
  require(kv.size(0) == B, op,
          "kv " + shape_of(kv) + " and q " + shape_of(q) + " must have the same batch size B");
  require(kv.size(1) >= 1, op,
          "kv " + shape_of(kv) + " has no keys; every query needs at least one (TK >= 1)");
  require_shape(op, out, Shape{B, TQ, NH * HS});
  require_shape(op, {"lse", lse}, Shape{B, NH, TQ});
  require_probability(op, dropout_p);
  require(!s.causal, op,
          "cross-attention is unmasked except for key padding: set AttentionShape::causal = "
          "false (decoder queries see every encoder key; key_lengths masks the padding)");
  require_key_lengths(op, s, B, {"q", q});
}
// rotary position embedding
// cos_sin [P, R/2, 2] in fp32 or fp64 with R >= 2; returns R.
inline int64_t check_rope_table(const char* op, const Tensor& cos_sin) {
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
inline void check_rope(const char* op, const Arg& out, const Arg& in, const Tensor& cos_sin,
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
          "cos_sin covers " + std::to_string(cos_sin.size(0)) +
              " positions but the sequence has T = " + std::to_string(in.t.size(1)) +
              "; build the table for at least T positions");
  const auto* a = static_cast<const char*>(in.t.raw());
  const auto* b = static_cast<const char*>(out.t.raw());
  const size_t n = in.t.nbytes();
  require(a == b || a + n <= b || b + n <= a, op,
          std::string(out.name) + " partially overlaps " + in.name +
              "; pass the same tensor (in place) or a disjoint one");
}
// loss
// logits [N,V]; targets int32 with N elements; returns N.
inline int64_t check_cross_entropy(const char* op, const Tensor& logits, const Tensor& targets) {
  const int64_t V = last_dim(op, {"logits", logits});
  const int64_t N = logits.numel() / V;
  require_int32(op, {"targets", targets});
  require_numel(op, {"targets", targets}, N, "one per row of logits " + shape_of(logits));
  return N;
}
// vocab-parallel embedding and loss
// wte [VL, C] shard; tokens int32; rows [N, C] (any leading shape) with N = tokens.numel().
inline void check_vocab_parallel_embedding(const char* op, const Tensor& tokens, const Arg& table,
                                    const Arg& rows, int64_t vocab_start) {
  require_int32(op, {"tokens", tokens});
  require(table.t.rank() == 2, op,
          std::string(table.name) + " must be [vocab shard, C], got " + shape_of(table.t));
  require_rows(op, rows, tokens.numel(), table.t.size(1), table.name);
  require(vocab_start >= 0, op, "vocab_start must be >= 0, got " + std::to_string(vocab_start));
}
// logits [N, VL]; returns N.
inline int64_t check_vocab_parallel_logits(const char* op, const Tensor& logits) {
  const int64_t VL = last_dim(op, {"logits", logits});
  return logits.numel() / VL;
}
// Per-row statistics are the logits' dtype, or fp32 when the logits are 16-bit (CUDA).
inline void require_row_stats_dtype(const char* op, const Tensor& logits, const Arg& stats) {
  const DType l = logits.dtype(), d = stats.t.dtype();
  const bool low = l == DType::kBF16 || l == DType::kF16;
  require(d == l || (low && d == DType::kF32), op,
          std::string(stats.name) + " is " + dtype_name(d) + "; per-row tensors must be the " +
              "logits' dtype " + dtype_name(l) + (low ? " or fp32" : ""));
}

// mixture of experts
// `a` is a matrix; `form` names its axes for the message ("[N, H]").
inline void require_matrix(const char* op, const Arg& a, const char* form) {
  require(a.t.rank() == 2, op,
          std::string(a.name) + " must be a matrix " + form + ", got shape " + shape_of(a.t));
}
// A side tensor of the MoE ops (probs, dprobs, sums, weights, scale, dweights) is fp32 whatever
// the dtype of the rows it goes with (`of`), or fp64 when those are fp64.
inline void require_moe_side_dtype(const char* op, const Arg& a, const Arg& of) {
  const DType d = a.t.dtype(), rows = of.t.dtype();
  const bool f64 = rows == DType::kF64;
  const std::string allowed =
      f64 ? "fp32 or fp64" : std::string("fp32 (fp64 only with fp64 ") + of.name + ")";
  require(d == DType::kF32 || (f64 && d == DType::kF64), op,
          std::string(a.name) + " is " + dtype_name(d) + " for " + dtype_name(rows) + " " +
              of.name + "; it must be " + allowed);
}
// Router logits [N, E] with E >= 1 experts, a float dtype; returns E.
inline int64_t check_router_logits(const char* op, const Tensor& logits) {
  require_same_float(op, {{"logits", logits}});
  require(logits.rank() == 2 && logits.size(1) >= 1, op,
          "logits must be [N, E] with E >= 1 experts, got shape " + shape_of(logits));
  return logits.size(1);
}
inline void require_router_k(const char* op, int64_t k, const Tensor& logits) {
  require(k >= 1 && k <= logits.size(1), op,
          "k = " + std::to_string(k) + " experts per token must be in [1, E] = [1, " +
              std::to_string(logits.size(1)) + "] for logits " + shape_of(logits) +
              "; route each token to at least one and at most E experts");
}

}  // namespace shardlm::ops::detail

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

