// cudnn_attention.cc — see cudnn_attention.h. The graphs follow the pattern cuDNN's fused
// flash-attention engines recognise (the one cudnn-frontend's SDPA nodes emit):
//   forward : S = Q·K^T; S *= scale; causal mask (row [+ s_kv - s_q] >= col, else lowest);
//             m = rowmax(S);
//             E = exp(S - m); l = rowsum(E); Stats = m + log(l); P = E / l (bf16); O = P·V
//   backward: D = rowsum(dO ∘ O); S = Q·K^T · scale - Stats; causal mask; E = exp(S) (= P);
//             dV = P^T·dO; dS = (dO·V^T - D) ∘ E · scale; dK = dS^T·Q; dQ = dS·K (fp32 accumulator)
//   With R = NH/G > 1 query heads per group, dK and dV are summed over the group by a reduction.
//   A context-parallel chunk (s_q = rows query rows at position s_kv - s_q against s_kv keys)
//   shifts the mask's row index by + s_kv - s_q, the nodes cudnn-frontend emits for its
//   bottom-right diagonal alignment; the views of cudnn_attention.h select the rows.
#include "shardlm/ops/cuda/cudnn_attention.h"

#include <cuda_runtime.h>

#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "shardlm/base/error.h"
#include "shardlm/ops/cuda/cuda_context.h"

#ifdef SHARDLM_WITH_CUDNN
#include "shardlm/ops/cuda/cudnn_graph.h"
#include "shardlm/ops/cuda/grouped_query_copy.h"
#endif

namespace shardlm::ops::cuda {

const char* attention_kernels_name(AttentionKernels k) {
  switch (k) {
    case AttentionKernels::kAuto: return "auto";
    case AttentionKernels::kOwn: return "own";
    case AttentionKernels::kCudnn: return "cudnn";
  }
  return "?";
}

namespace {

// Why this call is not for cuDNN ("" when it is), before any plan is built.
std::string unsupported_reason(const CudnnAttentionCall& c) {
  if (c.padded)
    return "bidirectional / key-padded attention (BERT) runs on ShardLM's kernels; the cuDNN "
           "graph here is causal";
#ifndef SHARDLM_WITH_CUDNN
  (void)c;
  return "this build has no cuDNN (configure with cuDNN found to enable it)";
#else
  if (c.dtype != DType::kBF16 && c.dtype != DType::kF16)
    return std::string("dtype ") + dtype_name(c.dtype) + " (cuDNN attention needs bf16 or fp16)";
  if (!c.lse_is_f32) return "lse is not fp32 (cuDNN's softmax statistics are fp32)";
  if (c.HS % 8 != 0 || c.HS > 128)
    return "head_dim " + std::to_string(c.HS) + " (cuDNN path needs a multiple of 8, <= 128)";
  if (c.rows % 128 != 0 || c.keys() % 128 != 0) {
    if (c.rows == c.T)
      return "sequence length " + std::to_string(c.T) + " is not a multiple of 128";
    return "chunk of " + std::to_string(c.rows) + " query rows against " +
           std::to_string(c.keys()) + " keys (position + rows): both must be multiples of 128";
  }
  // The views: the chunk's first row of q_src / out / dout / dq / lse.
  const size_t elt = dtype_size(c.dtype), W = static_cast<size_t>(c.G * (c.NH / c.G + 2) * c.HS);
  const auto at = [](const void* base, size_t bytes) -> const void* {
    return base == nullptr ? nullptr : static_cast<const char*>(base) + bytes;
  };
  const size_t row = static_cast<size_t>(c.row), o_row = row * c.NH * c.HS * elt;
  const void* views[] = {at(c.q_src, row * W * elt), c.kv,         at(c.out, o_row),
                         at(c.lse, row * sizeof(float)), at(c.dout, o_row),
                         at(c.dq, row * W * elt), c.dkv};
  for (const void* ptr : views)
    if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) return "a pointer is not 16-byte aligned";
  return "";
#endif
}

}  // namespace

#ifdef SHARDLM_WITH_CUDNN

namespace {

// backward, dtype, B, TQ, T, rows, position, NH, G, HS, dropout p (baked into the RNG node).
using Key = std::tuple<bool, DType, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int64_t, double>;

struct AttentionPlan {
  std::optional<CudnnPlan> plan;
  std::string why_not;  // when plan is empty
  // Uids of the graph's real tensors.
  int64_t q = 0, kt = 0, v = 0, o = 0, stats = 0, scale = 0, lowest = 0;
  int64_t s_kv = 0, s_q = 0;  // the mask's row shift (chunks at position > 0 only)
  int64_t dout = 0, dq = 0, dk = 0, dv = 0, d_scale = 0, softmax_sum = 0, dq_accum = 0;
  int64_t seed = 0, offset = 0, dropout_scale = 0;  // attention dropout only
};

cudnnDataType_t cudnn_type(DType dt) {
  return dt == DType::kF16 ? CUDNN_DATA_HALF : CUDNN_DATA_BFLOAT16;
}

// Dims and strides (in elements) of the strided views: query-side tensors cover the chunk's
// `rows` rows of [B,TQ,...], key-side tensors the `keys` = position + rows rows of kv[B,T,W].
struct Layout {
  int64_t B, T, NH, G, R, HS, W, TQ, rows, position, keys;
  double dropout_p;
  explicit Layout(const CudnnAttentionCall& c)
      : B(c.B), T(c.T), NH(c.NH), G(c.G), R(c.NH / c.G), HS(c.HS),
        W(c.G * (c.NH / c.G + 2) * c.HS), TQ(c.TQ), rows(c.rows), position(c.position),
        keys(c.keys()), dropout_p(c.dropout_p) {}
  // Q as [B,NH,rows,HS]: inside q_src for MHA, else the gathered [B,rows,NH,HS] buffer.
  std::vector<int64_t> q_strides() const {
    if (R == 1) return {TQ * W, 3 * HS, W, 1};
    return {rows * NH * HS, HS, NH * HS, 1};
  }
  // K^T as [B,G,HS,keys] and V as [B,G,keys,HS], inside kv.
  std::vector<int64_t> kt_strides() const { return {T * W, (R + 2) * HS, 1, W}; }
  std::vector<int64_t> kv_strides() const { return {T * W, (R + 2) * HS, W, 1}; }
  std::vector<int64_t> o_strides() const { return {TQ * NH * HS, HS, NH * HS, 1}; }
  // Stats [B,NH,rows,1] inside lse [B,NH,TQ].
  std::vector<int64_t> stats_strides() const { return {NH * TQ, TQ, 1, 1}; }
};

// scores where the query's position (row, + s_kv - s_q when given) >= col (key), `lowest`
// elsewhere.
CudnnTensor causal_mask(CudnnGraph& g, const CudnnTensor& scores, const CudnnTensor& lowest,
                        const std::vector<int64_t>& dims, const CudnnTensor* s_kv = nullptr,
                        const CudnnTensor* s_q = nullptr) {
  CudnnTensor row_index = g.virtual_tensor(dims, CUDNN_DATA_INT32);
  g.gen_index(scores, 2, row_index);
  if (s_kv != nullptr) {
    const CudnnTensor plus_kv = g.virtual_tensor(dims, CUDNN_DATA_INT32);
    g.pointwise(CUDNN_POINTWISE_ADD, row_index, *s_kv, plus_kv, CUDNN_DATA_INT32);
    const CudnnTensor position = g.virtual_tensor(dims, CUDNN_DATA_INT32);
    g.pointwise(CUDNN_POINTWISE_SUB, plus_kv, *s_q, position, CUDNN_DATA_INT32);
    row_index = position;
  }
  const CudnnTensor col_index = g.virtual_tensor(dims, CUDNN_DATA_INT32);
  g.gen_index(scores, 3, col_index);
  const CudnnTensor keep = g.virtual_tensor(dims, CUDNN_DATA_BOOLEAN);
  g.pointwise(CUDNN_POINTWISE_CMP_GE, row_index, col_index, keep, CUDNN_DATA_BOOLEAN);
  const CudnnTensor masked = g.virtual_tensor(dims);
  g.binary_select(scores, lowest, keep, masked);
  return masked;
}

// The mask's shift scalars (int32, by value) for a chunk at position > 0; none otherwise, so the
// whole sequence keeps the plain graph.
struct MaskShift {
  std::optional<CudnnTensor> s_kv, s_q;
  MaskShift(CudnnGraph& g, const Layout& L) {
    if (L.position == 0) return;
    s_kv = g.scalar(CUDNN_DATA_INT32);
    s_q = g.scalar(CUDNN_DATA_INT32);
  }
  const CudnnTensor* kv() const { return s_kv ? &*s_kv : nullptr; }
  const CudnnTensor* q() const { return s_q ? &*s_q : nullptr; }
  void record(AttentionPlan& out) const {
    out.s_kv = s_kv ? s_kv->uid : 0;
    out.s_q = s_q ? s_q->uid : 0;
  }
};

// Attention-probability dropout as cudnn-frontend's SDPA nodes emit it (the pattern the fused
// engines recognise): one Bernoulli(1 - p) mask [B,NH,rows,keys] from cuDNN's Philox generator
// (int64 seed and offset, by value), applied as P ∘ mask · 1/(1-p). The backward graph
// regenerates the same mask from the same seed.
struct DropoutMask {
  std::optional<CudnnTensor> seed, offset, scale, mask;
  DropoutMask(CudnnGraph& g, const Layout& L, const std::vector<int64_t>& score) {
    if (L.dropout_p <= 0.0) return;
    seed = g.scalar(CUDNN_DATA_INT64);
    offset = g.scalar(CUDNN_DATA_INT64);
    scale = g.scalar();
    mask = g.virtual_tensor(score);
    g.rng_bernoulli(1.0 - L.dropout_p, *seed, *offset, *mask);
  }
  bool on() const { return mask.has_value(); }
  // x ∘ mask (fp32)
  CudnnTensor masked(CudnnGraph& g, const CudnnTensor& x, const std::vector<int64_t>& dims) const {
    const CudnnTensor y = g.virtual_tensor(dims);
    g.pointwise(CUDNN_POINTWISE_MUL, x, *mask, y);
    return y;
  }
  // x · 1/(1-p) in `type`
  CudnnTensor scaled(CudnnGraph& g, const CudnnTensor& x, const std::vector<int64_t>& dims,
                     cudnnDataType_t type = CUDNN_DATA_FLOAT) const {
    const CudnnTensor y = g.virtual_tensor(dims, type);
    g.pointwise(CUDNN_POINTWISE_MUL, x, *scale, y);
    return y;
  }
  void record(AttentionPlan& out) const {
    if (!on()) return;
    out.seed = seed->uid;
    out.offset = offset->uid;
    out.dropout_scale = scale->uid;
  }
};

void build_forward(cudnnHandle_t handle, const Layout& L, DType dt, AttentionPlan& out) {
  CudnnGraph g(handle);
  const cudnnDataType_t io = cudnn_type(dt);
  const std::vector<int64_t> score{L.B, L.NH, L.rows, L.keys}, row{L.B, L.NH, L.rows, 1};
  const CudnnTensor q = g.tensor({L.B, L.NH, L.rows, L.HS}, L.q_strides(), io);
  const CudnnTensor kt = g.tensor({L.B, L.G, L.HS, L.keys}, L.kt_strides(), io);
  const CudnnTensor v = g.tensor({L.B, L.G, L.keys, L.HS}, L.kv_strides(), io);
  const CudnnTensor o = g.tensor({L.B, L.NH, L.rows, L.HS}, L.o_strides(), io);
  const CudnnTensor stats = g.tensor(row, L.stats_strides(), CUDNN_DATA_FLOAT);
  const CudnnTensor scale = g.scalar(), lowest = g.scalar();
  const MaskShift shift(g, L);
  const DropoutMask dropout(g, L, score);

  const CudnnTensor s = g.virtual_tensor(score);
  g.matmul(q, kt, s);
  const CudnnTensor s_scaled = g.virtual_tensor(score);
  g.pointwise(CUDNN_POINTWISE_MUL, s, scale, s_scaled);
  const CudnnTensor s_masked = causal_mask(g, s_scaled, lowest, score, shift.kv(), shift.q());
  const CudnnTensor m = g.virtual_tensor(row);
  g.reduction(CUDNN_REDUCE_TENSOR_MAX, s_masked, m);
  const CudnnTensor centred = g.virtual_tensor(score);
  g.pointwise(CUDNN_POINTWISE_SUB, s_masked, m, centred);
  const CudnnTensor e = g.virtual_tensor(score);
  g.pointwise(CUDNN_POINTWISE_EXP, centred, e);
  const CudnnTensor l = g.virtual_tensor(row);
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, e, l);
  const CudnnTensor log_l = g.virtual_tensor(row);
  g.pointwise(CUDNN_POINTWISE_LOG, l, log_l);
  g.pointwise(CUDNN_POINTWISE_ADD, m, log_l, stats);
  const CudnnTensor p = g.virtual_tensor(score, dropout.on() ? CUDNN_DATA_FLOAT : io);
  g.pointwise(CUDNN_POINTWISE_DIV, e, l, p);
  if (dropout.on())  // O = (P ∘ mask · 1/(1-p)) · V
    g.matmul(dropout.scaled(g, dropout.masked(g, p, score), score, io), v, o);
  else
    g.matmul(p, v, o);

  out.plan = g.build_plan(&out.why_not);
  out.q = q.uid;
  out.kt = kt.uid;
  out.v = v.uid;
  out.o = o.uid;
  out.stats = stats.uid;
  out.scale = scale.uid;
  out.lowest = lowest.uid;
  shift.record(out);
  dropout.record(out);
}

void build_backward(cudnnHandle_t handle, const Layout& L, DType dt, AttentionPlan& out) {
  CudnnGraph g(handle);
  const cudnnDataType_t io = cudnn_type(dt);
  const std::vector<int64_t> score{L.B, L.NH, L.rows, L.keys}, row{L.B, L.NH, L.rows, 1},
      head{L.B, L.NH, L.rows, L.HS}, group{L.B, L.G, L.keys, L.HS},
      key_head{L.B, L.NH, L.keys, L.HS};
  // Transposed score layouts for P^T and dS^T: [B,NH,keys,rows] over the same memory order.
  const std::vector<int64_t> score_t{L.B, L.NH, L.keys, L.rows},
      score_t_strides{L.NH * L.rows * L.keys, L.rows * L.keys, 1, L.keys};
  const CudnnTensor q = g.tensor(head, L.q_strides(), io);
  const CudnnTensor kt = g.tensor({L.B, L.G, L.HS, L.keys}, L.kt_strides(), io);
  const CudnnTensor vt = g.tensor({L.B, L.G, L.HS, L.keys}, L.kt_strides(), io);
  const CudnnTensor o = g.tensor(head, L.o_strides(), io);
  const CudnnTensor dout = g.tensor(head, L.o_strides(), io);
  const CudnnTensor stats = g.tensor(row, L.stats_strides(), CUDNN_DATA_FLOAT);
  const CudnnTensor dq = g.tensor(head, L.q_strides(), io);
  const CudnnTensor dk = g.tensor(group, L.kv_strides(), io);
  const CudnnTensor dv = g.tensor(group, L.kv_strides(), io);
  const CudnnTensor softmax_sum = g.tensor(row, packed_strides(row), CUDNN_DATA_FLOAT);
  const CudnnTensor dq_accum = g.tensor(head, packed_strides(head), CUDNN_DATA_FLOAT);
  const CudnnTensor scale = g.scalar(), lowest = g.scalar(), d_scale = g.scalar();
  const MaskShift shift(g, L);
  const DropoutMask dropout(g, L, score);

  // D = rowsum(dO ∘ O) · d_scale (1, or 1 - p with dropout): dS below is scaled by
  // 1/(1-p) as a whole, so dS = P ∘ (dP ∘ mask / (1-p) - D).
  const CudnnTensor dout_o = g.virtual_tensor(
      head, {L.NH * L.rows * L.HS, L.rows * L.HS, L.NH * L.HS, 1}, CUDNN_DATA_FLOAT);
  g.pointwise(CUDNN_POINTWISE_MUL, dout, o, dout_o);
  const CudnnTensor d = g.virtual_tensor(row);
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, dout_o, d);
  g.pointwise(CUDNN_POINTWISE_MUL, d, d_scale, softmax_sum);

  // P = exp(S·scale - Stats) under the causal mask
  const CudnnTensor s = g.virtual_tensor(score);
  g.matmul(q, kt, s);
  const CudnnTensor s_scaled = g.virtual_tensor(score);
  g.pointwise(CUDNN_POINTWISE_MUL, s, scale, s_scaled);
  const CudnnTensor s_centred = g.virtual_tensor(score);
  g.pointwise(CUDNN_POINTWISE_SUB, s_scaled, stats, s_centred);
  const CudnnTensor s_masked = causal_mask(g, s_centred, lowest, score, shift.kv(), shift.q());
  const CudnnTensor p = g.virtual_tensor(score);
  g.pointwise(CUDNN_POINTWISE_EXP, s_masked, p);

  // dV = P^T · dO (summed over the group's query heads when R > 1), P after dropout
  const CudnnTensor p_t = g.virtual_tensor(score_t, score_t_strides, io);
  g.reshape(dropout.on() ? dropout.scaled(g, dropout.masked(g, p, score), score) : p, p_t);
  if (L.R == 1) {
    g.matmul(p_t, dout, dv);
  } else {
    const CudnnTensor dv_heads = g.virtual_tensor(key_head, io);
    g.matmul(p_t, dout, dv_heads);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, dv_heads, dv);
  }

  // dS = (dO · V^T - D) ∘ P · scale; with dropout ((dO · V^T) ∘ mask - D(1-p)) ∘ P / (1-p)
  const CudnnTensor dp = g.virtual_tensor(score);
  g.matmul(dout, vt, dp);
  const CudnnTensor dp_centred = g.virtual_tensor(score);
  g.pointwise(CUDNN_POINTWISE_SUB, dropout.on() ? dropout.masked(g, dp, score) : dp, softmax_sum,
              dp_centred);
  const CudnnTensor dp_p = g.virtual_tensor(score);
  g.pointwise(CUDNN_POINTWISE_MUL, dp_centred, p, dp_p);
  const CudnnTensor ds = g.virtual_tensor(score);
  g.pointwise(CUDNN_POINTWISE_MUL, dropout.on() ? dropout.scaled(g, dp_p, score) : dp_p, scale,
              ds);

  // dK = dS^T · Q
  const CudnnTensor ds_t = g.virtual_tensor(score_t, score_t_strides, io);
  g.reshape(ds, ds_t);
  if (L.R == 1) {
    g.matmul(ds_t, q, dk);
  } else {
    const CudnnTensor dk_heads = g.virtual_tensor(key_head, io);
    g.matmul(ds_t, q, dk_heads);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, dk_heads, dk);
  }

  // dQ = dS · K through the fp32 accumulator
  const std::vector<int64_t> kts = L.kt_strides();
  const CudnnTensor k = g.virtual_tensor(group, {kts[0], kts[1], kts[3], kts[2]},
                                         CUDNN_DATA_FLOAT);
  g.reshape(kt, k);
  g.matmul(ds, k, dq_accum);
  g.pointwise(CUDNN_POINTWISE_IDENTITY, dq_accum, dq);

  out.plan = g.build_plan(&out.why_not);
  out.q = q.uid;
  out.kt = kt.uid;
  out.v = vt.uid;
  out.o = o.uid;
  out.dout = dout.uid;
  out.stats = stats.uid;
  out.dq = dq.uid;
  out.dk = dk.uid;
  out.dv = dv.uid;
  out.softmax_sum = softmax_sum.uid;
  out.dq_accum = dq_accum.uid;
  out.scale = scale.uid;
  out.lowest = lowest.uid;
  out.d_scale = d_scale.uid;
  shift.record(out);
  dropout.record(out);
}

void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw Error(ErrorKind::kInternal, std::string("cuDNN attention: ") + what + " failed: " +
                                          cudaGetErrorString(err));
}

size_t round_up(size_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace

struct CudnnAttentionCache::Impl {
  cudnnHandle_t handle = nullptr;
  std::map<Key, AttentionPlan> plans;
  size_t version = 0;

  ~Impl() {
    plans.clear();
    if (handle != nullptr) cudnnDestroy(handle);
  }

  cudnnHandle_t bound_handle(cudaStream_t stream) {
    if (handle == nullptr) {
      cudnn_check(cudnnCreate(&handle), "cudnnCreate");
      version = cudnnGetVersion();
    }
    cudnn_check(cudnnSetStream(handle, stream), "cudnnSetStream");
    return handle;
  }

  const AttentionPlan& plan(cudnnHandle_t h, bool backward, const CudnnAttentionCall& c) {
    const Key key{backward, c.dtype, c.B,  c.TQ, c.T,         c.rows,
                  c.position, c.NH,   c.G, c.HS, c.dropout_p};
    auto it = plans.find(key);
    if (it != plans.end()) return it->second;
    AttentionPlan p;
    const Layout L(c);
    try {
      if (backward)
        build_backward(h, L, c.dtype, p);
      else
        build_forward(h, L, c.dtype, p);
    } catch (const Error& e) {
      p.plan.reset();
      p.why_not = e.what();
    }
    return plans.emplace(key, std::move(p)).first->second;
  }
};

CudnnAttentionCache::CudnnAttentionCache() : impl_(std::make_unique<Impl>()) {}
CudnnAttentionCache::~CudnnAttentionCache() = default;

namespace {

// The plan for the call, or null (kAuto: caller falls back) / throw (kCudnn).
const AttentionPlan* usable_plan(const DeviceContext& ctx, const CudnnAttentionCall& c,
                                 bool backward, cudnnHandle_t* handle) {
  CudaBackendState& st = cuda_state(ctx);
  const AttentionKernels mode = st.attention_kernels();
  if (mode == AttentionKernels::kOwn) return nullptr;
  const bool chunk = c.q_src != c.kv || c.rows != c.T;
  const char* op = backward ? (chunk ? "attention_chunk_backward" : "attention_backward")
                            : (chunk ? "attention_chunk_forward" : "attention_forward");
  std::string why = unsupported_reason(c);
  const AttentionPlan* plan = nullptr;
  if (why.empty()) {
    CudnnAttentionCache::Impl& cache = st.cudnn_attention().impl();
    *handle = cache.bound_handle(static_cast<cudaStream_t>(st.stream()));
    plan = &cache.plan(*handle, backward, c);
    if (!plan->plan) why = "no cuDNN engine for this graph (" + plan->why_not + ")";
  }
  if (!why.empty()) {
    if (mode == AttentionKernels::kCudnn)
      throw Error(ErrorKind::kUnsupported,
                  std::string(op) + " with attention kernels 'cudnn': " + why +
                      "; use 'auto' to fall back to ShardLM's kernels");
    return nullptr;
  }
  return plan;
}

// Between the query columns of the chunk's rows of q_src (or dq) [B,TQ,W] and a
// [B,rows,NH,HS] buffer (grouped_query_copy.h): one copy when the rows of all sequences are
// contiguous (TQ == rows), else one per sequence.
void copy_queries(const CudnnAttentionCall& c, const void* src, void* dst, bool to_qkv,
                  cudaStream_t stream) {
  const Layout L(c);
  const size_t elt = dtype_size(c.dtype);
  const size_t qkv_seq = static_cast<size_t>(L.TQ * L.W) * elt;      // one sequence of q_src
  const size_t buf_seq = static_cast<size_t>(L.rows * L.NH * L.HS) * elt;
  const size_t qkv_row0 = static_cast<size_t>(c.row * L.W) * elt;
  const int64_t copies = L.TQ == L.rows ? 1 : L.B;
  const int64_t rows = L.TQ == L.rows ? L.B * L.rows : L.rows;
  for (int64_t b = 0; b < copies; ++b) {
    const size_t qkv_at = b * qkv_seq + qkv_row0, buf_at = b * buf_seq;
    const char* from = static_cast<const char*>(src) + (to_qkv ? buf_at : qkv_at);
    char* to = static_cast<char*>(dst) + (to_qkv ? qkv_at : buf_at);
    copy_grouped_queries({rows, L.G, L.R, L.HS, elt}, from, to, to_qkv,
                         reinterpret_cast<CUstream_st*>(stream));
  }
}

// The bindings every plan shares: Q (the chunk's rows of q_src, or the gathered buffer), K^T
// and V (kv's k/v columns), O, Stats, the scalars, and the mask shift for chunks.
struct Views {
  void* q;
  char *kt, *v, *o, *stats;
};
Views views_of(const CudnnAttentionCall& c, void* gathered_q) {
  const Layout L(c);
  const size_t elt = dtype_size(c.dtype);
  const char* kv = static_cast<const char*>(c.kv);
  Views v;
  v.q = gathered_q != nullptr
            ? gathered_q
            : const_cast<char*>(static_cast<const char*>(c.q_src) + c.row * L.W * elt);
  v.kt = const_cast<char*>(kv + L.R * L.HS * elt);
  v.v = const_cast<char*>(kv + (L.R + 1) * L.HS * elt);
  v.o = static_cast<char*>(c.out) + c.row * L.NH * L.HS * elt;
  v.stats = static_cast<char*>(c.lse) + c.row * sizeof(float);
  return v;
}

// The by-value dropout scalars of a plan: cuDNN's seed (the call's, derived from ShardLM's
// dropout key), offset 0 and 1/(1-p).
struct DropoutScalars {
  int64_t seed, offset = 0;
  float scale;
  explicit DropoutScalars(const CudnnAttentionCall& c)
      : seed(static_cast<int64_t>(c.dropout_seed)),
        scale(static_cast<float>(1.0 / (1.0 - c.dropout_p))) {}
  void bind(const AttentionPlan& plan, std::vector<std::pair<int64_t, void*>>& bindings) {
    if (plan.seed == 0) return;
    bindings.push_back({plan.seed, &seed});
    bindings.push_back({plan.offset, &offset});
    bindings.push_back({plan.dropout_scale, &scale});
  }
};

}  // namespace

bool cudnn_attention_forward(const DeviceContext& ctx, const CudnnAttentionCall& c) {
  cudnnHandle_t handle = nullptr;
  const AttentionPlan* plan = usable_plan(ctx, c, /*backward=*/false, &handle);
  if (plan == nullptr) return false;
  CudaBackendState& st = cuda_state(ctx);
  const cudaStream_t stream = static_cast<cudaStream_t>(st.stream());
  const Layout L(c);
  const size_t elt = dtype_size(c.dtype);
  const size_t q_bytes = L.R > 1 ? round_up(L.B * L.rows * L.NH * L.HS * elt) : 0;
  char* scratch = static_cast<char*>(
      st.scratch(q_bytes + static_cast<size_t>(plan->plan->workspace_bytes()) + 256));
  if (L.R > 1) copy_queries(c, c.q_src, scratch, /*to_qkv=*/false, stream);
  const Views v = views_of(c, L.R > 1 ? scratch : nullptr);
  float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.HS)));
  float lowest = std::numeric_limits<float>::lowest();
  int32_t s_kv = static_cast<int32_t>(L.keys), s_q = static_cast<int32_t>(L.rows);
  std::vector<std::pair<int64_t, void*>> bindings = {{plan->q, v.q},
                                                     {plan->kt, v.kt},
                                                     {plan->v, v.v},
                                                     {plan->o, v.o},
                                                     {plan->stats, v.stats},
                                                     {plan->scale, &scale},
                                                     {plan->lowest, &lowest}};
  if (plan->s_kv != 0) {
    bindings.push_back({plan->s_kv, &s_kv});
    bindings.push_back({plan->s_q, &s_q});
  }
  DropoutScalars dropout(c);
  dropout.bind(*plan, bindings);
  plan->plan->execute(handle, bindings, scratch + q_bytes);
  return true;
}

bool cudnn_attention_backward(const DeviceContext& ctx, const CudnnAttentionCall& c) {
  cudnnHandle_t handle = nullptr;
  const AttentionPlan* plan = usable_plan(ctx, c, /*backward=*/true, &handle);
  if (plan == nullptr) return false;
  CudaBackendState& st = cuda_state(ctx);
  const cudaStream_t stream = static_cast<cudaStream_t>(st.stream());
  const Layout L(c);
  const size_t elt = dtype_size(c.dtype);
  const size_t rows = static_cast<size_t>(L.B * L.NH * L.rows);
  const size_t q_bytes = L.R > 1 ? round_up(rows * L.HS * elt) : 0;  // gathered Q, then dQ
  const size_t sum_bytes = round_up(rows * sizeof(float));
  const size_t accum_bytes = round_up(rows * L.HS * sizeof(float));
  char* scratch = static_cast<char*>(st.scratch(2 * q_bytes + sum_bytes + accum_bytes +
                                                plan->plan->workspace_bytes() + 256));
  char* q_buf = scratch;
  char* dq_buf = scratch + q_bytes;
  char* softmax_sum = dq_buf + q_bytes;
  char* dq_accum = softmax_sum + sum_bytes;
  char* workspace = dq_accum + accum_bytes;
  // cuDNN zeroes the dQ accumulator itself from 9.6 on (cudnn-frontend stopped doing it).
  if (st.cudnn_attention().impl().version < 90600)
    cuda_check(cudaMemsetAsync(dq_accum, 0, accum_bytes, stream), "zero dQ accumulator");
  if (L.R > 1) copy_queries(c, c.q_src, q_buf, /*to_qkv=*/false, stream);
  const Views v = views_of(c, L.R > 1 ? q_buf : nullptr);
  void* dq = L.R > 1 ? static_cast<void*>(dq_buf)
                     : static_cast<void*>(static_cast<char*>(c.dq) + c.row * L.W * elt);
  char* dkv = static_cast<char*>(c.dkv);
  float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.HS)));
  float lowest = std::numeric_limits<float>::lowest();
  float d_scale = static_cast<float>(1.0 - c.dropout_p);  // D's factor (build_backward)
  int32_t s_kv = static_cast<int32_t>(L.keys), s_q = static_cast<int32_t>(L.rows);
  char* dout = const_cast<char*>(static_cast<const char*>(c.dout)) + c.row * L.NH * L.HS * elt;
  std::vector<std::pair<int64_t, void*>> bindings = {
      {plan->q, v.q},
      {plan->kt, v.kt},
      {plan->v, v.v},
      {plan->o, v.o},
      {plan->dout, dout},
      {plan->stats, v.stats},
      {plan->dq, dq},
      {plan->dk, dkv + L.R * L.HS * elt},
      {plan->dv, dkv + (L.R + 1) * L.HS * elt},
      {plan->softmax_sum, softmax_sum},
      {plan->dq_accum, dq_accum},
      {plan->scale, &scale},
      {plan->lowest, &lowest},
      {plan->d_scale, &d_scale}};
  if (plan->s_kv != 0) {
    bindings.push_back({plan->s_kv, &s_kv});
    bindings.push_back({plan->s_q, &s_q});
  }
  DropoutScalars dropout(c);
  dropout.bind(*plan, bindings);
  plan->plan->execute(handle, bindings, workspace);
  if (L.R > 1) copy_queries(c, dq_buf, c.dq, /*to_qkv=*/true, stream);
  return true;
}

#else  // !SHARDLM_WITH_CUDNN

struct CudnnAttentionCache::Impl {};
CudnnAttentionCache::CudnnAttentionCache() : impl_(std::make_unique<Impl>()) {}
CudnnAttentionCache::~CudnnAttentionCache() = default;

namespace {
bool refuse(const DeviceContext& ctx, const CudnnAttentionCall& c, const char* op) {
  if (cuda_state(ctx).attention_kernels() == AttentionKernels::kCudnn)
    throw Error(ErrorKind::kUnsupported, std::string(op) + " with attention kernels 'cudnn': " +
                                             unsupported_reason(c));
  return false;
}
}  // namespace

bool cudnn_attention_forward(const DeviceContext& ctx, const CudnnAttentionCall& c) {
  return refuse(ctx, c, "attention_forward");
}
bool cudnn_attention_backward(const DeviceContext& ctx, const CudnnAttentionCall& c) {
  return refuse(ctx, c, "attention_backward");
}

#endif

}  // namespace shardlm::ops::cuda
