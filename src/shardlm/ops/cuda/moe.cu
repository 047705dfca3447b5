// moe.cu — mixture-of-experts ops on CUDA: the top-k router (plain and pre-softmax) forward and
// backward, the auxiliary-loss score sums and backward, and the row gathers of token dispatch /
// combine. Semantics in ops.h ("mixture of experts"); the CPU reference is ops/cpu/moe.cc.
// Rows are fp32/bf16/fp16, side tensors (probs, weights, scale, sums, dweights) fp32; all math
// is fp32. No atomics: every output element is written by one thread, in a fixed order.
//
// Algorithms:
//  router ops (E <= 1024): one warp per token, grid-stride over the tokens. Lane l owns experts
//    l, l + 32, ..., l + 32 (kJ - 1), kJ = E / 32 rounded up to a power of two (a template
//    parameter, so a lane's logits, selection bits and gradient sums stay in registers). The
//    row softmax is a warp max, then a warp sum of exp(x - max) (xor butterflies: every lane
//    holds the same bits).
//    forward: k rounds of a warp arg-max over (key, expert) with key = logit (NaN as -inf),
//      larger key first, then lower expert: a strict total order, so every lane gets the same
//      winner and ties go to the lower expert. The winner's owner marks it taken. Round i writes
//      indices[n, i] and exp(x - ref) into probs[n, i] (lane i % 32), and a last pass by the same
//      lanes divides by the denominator: ref / denominator are the row's max and sum of exps
//      (pre-softmax) or the first winner's logit and the sum of the rounds' exps in round order
//      (top-k).
//    backward: the k (index, dprob) pairs are read in order by the whole warp; the owner of each
//      index adds dprob to its ds and 1 to its count. With p the softmax (of all E, or of the
//      listed experts with their counts) and dot = warp sum of ds * p, dlogits = p (ds - dot)
//      (pre-softmax) or p (ds - count * dot) (top-k; 0 for experts not listed), one store each.
//    score sums: a block of 8 warps takes rows blockIdx.x * 8 + w, stepping by gridDim.x * 8;
//      each lane sums its experts' probabilities in registers, the 8 warps are folded in order
//      in shared memory into partial[block][E] (context scratch), and a second kernel adds the
//      blocks' partials in order. The grid depends only on N (kScoreRowsPerBlock rows per
//      block, at most kScoreMaxBlocks blocks), not on the device's SM count: the sums are the same
//      bits on every run.
//    aux-loss backward: per row p and dot = warp sum of w * p; dlogits += p (w - dot), read and
//      rounded once.
//  gathers: grid-stride over (row, chunk) pairs, a chunk being 16 bytes (4 fp32, 8 bf16/fp16)
//    when H and every base pointer allow, else one element (consecutive threads take
//    consecutive chunks of a row: coalesced).
//    gather_rows: out chunk = in chunk * scale (or a copy: exact).
//    gather_sum_rows: the k terms added in fp32 in order, rounded once.
//    gathered_row_dot: one warp per (n, i); lanes stride over the chunks of the two rows, then a
//      warp sum (fixed order).
//  Bad index values are data the kernels cannot report without a host sync: a router index
//  outside [0, E) is ignored by backward; a gather_rows index outside [0, N) writes a zero row;
//  a slot outside [0, M) adds nothing (gather_sum_rows) or gives 0 (gathered_row_dot). Nothing
//  is read out of bounds.
#include <climits>
#include <cmath>
#include <string>

#include "shardlm/ops/cuda/common.cuh"
#include "shardlm/ops/cuda/cuda_ops.h"

namespace shardlm::ops::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kThreads = 32 * kWarpsPerBlock;
constexpr int kMaxExperts = 1024;  // 32 lanes x 32 experts a lane
constexpr int64_t kScoreRowsPerBlock = 64;
constexpr int64_t kScoreMaxBlocks = 1024;

// ---- router: per-warp row pieces ----------------------------------------------------------------
// This lane's logits x[j] = row[j * 32 + lane] (-inf past E).
template <typename T, int kJ>
__device__ __forceinline__ void load_router_row(const T* row, int E, float (&x)[kJ]) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int j = 0; j < kJ; ++j) {
    const int e = j * 32 + lane;
    x[j] = e < E ? load_as_float(row[e]) : -INFINITY;
  }
}

// Softmax over the whole row: {max, sum of exp(x - max)}, the same bits in every lane.
template <int kJ>
__device__ __forceinline__ float2 row_softmax(const float (&x)[kJ], int E) {
  const int lane = threadIdx.x & 31;
  float m = -INFINITY;
#pragma unroll
  for (int j = 0; j < kJ; ++j)
    if (j * 32 + lane < E) m = fmaxf(m, x[j]);
  m = warp_max(m);
  float s = 0.0f;
#pragma unroll
  for (int j = 0; j < kJ; ++j)
    if (j * 32 + lane < E) s += expf(x[j] - m);
  return make_float2(m, warp_sum(s));
}

// The softmax's vector-Jacobian product for this lane's experts: with p_e = exp(x_e - sm.x) /
// sm.y and dot = sum_e v_e p_e over the experts with c_e > 0 (a warp sum),
//   dx[e] (+)= p_e (v_e - c_e dot) where c_e > 0, else 0.
// c_e = 1 everywhere: the full softmax; c_e = how often e is listed: the softmax over a listed
// subset (top-k). kAccumulate adds to dx (read and rounded once), else assigns.
template <typename T, int kJ, bool kAccumulate>
__device__ __forceinline__ void softmax_grad(T* dx, const float (&x)[kJ], float2 sm,
                                             const float (&v)[kJ], const float (&c)[kJ], int E) {
  const int lane = threadIdx.x & 31;
  float dot = 0.0f;
#pragma unroll
  for (int j = 0; j < kJ; ++j)
    if (c[j] > 0.0f && j * 32 + lane < E) dot += v[j] * (expf(x[j] - sm.x) / sm.y);
  dot = warp_sum(dot);
#pragma unroll
  for (int j = 0; j < kJ; ++j) {
    const int e = j * 32 + lane;
    if (e >= E) continue;
    const float g = c[j] > 0.0f ? expf(x[j] - sm.x) / sm.y * (v[j] - c[j] * dot) : 0.0f;
    dx[e] = float_to<T>(kAccumulate ? load_as_float(dx[e]) + g : g);
  }
}

// (key, expert) ranks before (other_key, other_expert): larger key, then lower expert.
__device__ __forceinline__ bool ranks_before(float key, int e, float other_key, int other_e) {
  return key > other_key || (key == other_key && e < other_e);
}

// The warp's index of its first warp in the grid and the grid's warp count.
__device__ __forceinline__ int64_t first_warp() {
  return static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
}
__device__ __forceinline__ int64_t grid_warps() {
  return static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
}

// ---- router kernels -----------------------------------------------------------------------------
template <typename T, int kJ>
__global__ void __launch_bounds__(kThreads)
    router_forward_kernel(float* probs, int32_t* indices, const T* logits, int64_t N, int E, int k,
                          bool pre_softmax) {
  const int lane = threadIdx.x & 31;
  for (int64_t n = first_warp(); n < N; n += grid_warps()) {
    float x[kJ];
    load_router_row<T, kJ>(logits + n * E, E, x);
    float ref = 0.0f, denom = 0.0f;
    if (pre_softmax) {
      const float2 sm = row_softmax<kJ>(x, E);
      ref = sm.x;
      denom = sm.y;
    }
    float* p = probs + n * k;
    int32_t* idx = indices + n * k;
    uint32_t taken = 0;
    for (int i = 0; i < k; ++i) {
      float best = -INFINITY, best_x = 0.0f;
      int best_e = INT_MAX;  // "none": any expert, even one with key -inf, ranks before it
#pragma unroll
      for (int j = 0; j < kJ; ++j) {
        const int e = j * 32 + lane;
        const float key = isnan(x[j]) ? -INFINITY : x[j];
        if (e < E && ((taken >> j) & 1u) == 0 && ranks_before(key, e, best, best_e)) {
          best = key;
          best_e = e;
          best_x = x[j];
        }
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        const float other = __shfl_xor_sync(0xffffffffu, best, o);
        const int other_e = __shfl_xor_sync(0xffffffffu, best_e, o);
        const float other_x = __shfl_xor_sync(0xffffffffu, best_x, o);
        if (ranks_before(other, other_e, best, best_e)) {
          best = other;
          best_e = other_e;
          best_x = other_x;
        }
      }
#pragma unroll
      for (int j = 0; j < kJ; ++j)
        if (best_e == j * 32 + lane) taken |= 1u << j;
      if (!pre_softmax && i == 0) ref = best_x;
      const float ex = expf(best_x - ref);
      if (!pre_softmax) denom += ex;
      if (lane == (i & 31)) {
        idx[i] = best_e;
        p[i] = ex;
      }
    }
    for (int i = lane; i < k; i += 32) p[i] = p[i] / denom;  // this lane wrote p[i] above
  }
}

template <typename T, int kJ>
__global__ void __launch_bounds__(kThreads)
    router_backward_kernel(T* dlogits, const float* dprobs, const T* logits, const int32_t* indices,
                           int64_t N, int E, int k, bool pre_softmax) {
  const int lane = threadIdx.x & 31;
  for (int64_t n = first_warp(); n < N; n += grid_warps()) {
    float x[kJ], ds[kJ], count[kJ];
    load_router_row<T, kJ>(logits + n * E, E, x);
#pragma unroll
    for (int j = 0; j < kJ; ++j) ds[j] = count[j] = 0.0f;
    for (int i = 0; i < k; ++i) {
      const int e = indices[n * k + i];  // the same address in every lane: one broadcast load
      const float dp = dprobs[n * k + i];
      if (e < 0 || e >= E) continue;  // not forward's: ignored (ops.h)
#pragma unroll
      for (int j = 0; j < kJ; ++j) {
        if (e == j * 32 + lane) {
          ds[j] += dp;
          count[j] += 1.0f;
        }
      }
    }
    float2 sm;
    if (pre_softmax) {
      sm = row_softmax<kJ>(x, E);
    } else {  // softmax over the listed experts, each counted as often as it is listed
      float m = -INFINITY;
#pragma unroll
      for (int j = 0; j < kJ; ++j)
        if (count[j] > 0.0f) m = fmaxf(m, x[j]);
      m = warp_max(m);
      float s = 0.0f;
#pragma unroll
      for (int j = 0; j < kJ; ++j)
        if (count[j] > 0.0f) s += count[j] * expf(x[j] - m);
      sm = make_float2(m, warp_sum(s));
    }
    if (pre_softmax) {
#pragma unroll
      for (int j = 0; j < kJ; ++j) count[j] = 1.0f;  // every expert in the softmax, once
    }
    softmax_grad<T, kJ, false>(dlogits + n * E, x, sm, ds, count, E);
  }
}

// partial[blockIdx.x][e] = sum over the block's rows of softmax(row)[e].
template <typename T, int kJ>
__global__ void __launch_bounds__(kThreads)
    score_partials_kernel(float* partial, const T* logits, int64_t N, int E) {
  __shared__ float fold[kWarpsPerBlock][kJ * 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float acc[kJ];
#pragma unroll
  for (int j = 0; j < kJ; ++j) acc[j] = 0.0f;
  for (int64_t n = first_warp(); n < N; n += grid_warps()) {
    float x[kJ];
    load_router_row<T, kJ>(logits + n * E, E, x);
    const float2 sm = row_softmax<kJ>(x, E);
#pragma unroll
    for (int j = 0; j < kJ; ++j)
      if (j * 32 + lane < E) acc[j] += expf(x[j] - sm.x) / sm.y;
  }
#pragma unroll
  for (int j = 0; j < kJ; ++j) fold[warp][j * 32 + lane] = acc[j];
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarpsPerBlock; ++w) total += fold[w][e];
    partial[static_cast<int64_t>(blockIdx.x) * E + e] = total;
  }
}

// sums[e] = sum over blocks b, in order, of partial[b][e].
__global__ void score_sums_finalize_kernel(float* sums, const float* partial, int blocks, int E) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= E) return;
  float total = 0.0f;
  for (int b = 0; b < blocks; ++b) total += partial[static_cast<int64_t>(b) * E + e];
  sums[e] = total;
}

template <typename T, int kJ>
__global__ void __launch_bounds__(kThreads)
    aux_loss_backward_kernel(T* dlogits, const T* logits, const float* weights, int64_t N, int E) {
  const int lane = threadIdx.x & 31;
  float w[kJ], ones[kJ];
#pragma unroll
  for (int j = 0; j < kJ; ++j) {
    w[j] = j * 32 + lane < E ? weights[j * 32 + lane] : 0.0f;
    ones[j] = 1.0f;
  }
  for (int64_t n = first_warp(); n < N; n += grid_warps()) {
    float x[kJ];
    load_router_row<T, kJ>(logits + n * E, E, x);
    const float2 sm = row_softmax<kJ>(x, E);
    softmax_grad<T, kJ, true>(dlogits + n * E, x, sm, w, ones, E);
  }
}

// The router z-loss: lse[n] = logsumexp(logits[n, :]) (lse non-null), and with dlogits non-null
// dlogits[n, e] += scale * 2 * lse[n] * softmax(logits[n, :])[e].
template <typename T, int kJ>
__global__ void __launch_bounds__(kThreads)
    logsumexp_kernel(float* lse, T* dlogits, const T* logits, float scale, int64_t N, int E) {
  const int lane = threadIdx.x & 31;
  for (int64_t n = first_warp(); n < N; n += grid_warps()) {
    float x[kJ];
    load_router_row<T, kJ>(logits + n * E, E, x);
    const float2 sm = row_softmax<kJ>(x, E);
    const float l = sm.x + logf(sm.y);
    if (lse != nullptr && lane == 0) lse[n] = l;
    if (dlogits == nullptr) continue;
    T* dx = dlogits + n * E;
#pragma unroll
    for (int j = 0; j < kJ; ++j) {
      const int e = j * 32 + lane;
      if (e < E)
        dx[e] = float_to<T>(load_as_float(dx[e]) + scale * 2.0f * l * (expf(x[j] - sm.x) / sm.y));
    }
  }
}

// ---- gather kernels -----------------------------------------------------------------------------
// out[m, :] = in[index[m], :] * scale[m] (scale null: copy); rows of H = chunks * kW elements.
template <typename T, int kW>
__global__ void gather_rows_kernel(T* out, const T* in, const int32_t* index, const float* scale,
                                   int64_t M, int64_t N, int64_t H) {
  const int64_t chunks = H / kW, total = M * chunks;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < total;
       c += stride) {
    const int64_t m = c / chunks, h = (c % chunks) * kW;
    const int32_t r = index[m];
    float v[kW];
    if (r >= 0 && r < N) {
      load_chunk<kW>(in + static_cast<int64_t>(r) * H + h, v);
      if (scale != nullptr) {
        const float s = scale[m];
#pragma unroll
        for (int w = 0; w < kW; ++w) v[w] *= s;
      }
    } else {
#pragma unroll
      for (int w = 0; w < kW; ++w) v[w] = 0.0f;
    }
    store_chunk<kW>(out + m * H + h, v);
  }
}

// out[n, :] = sum_i weights[n, i] * in[slots[n, i], :] (weights null: 1), in i order, fp32.
template <typename T, int kW>
__global__ void gather_sum_rows_kernel(T* out, const T* in, const int32_t* slots,
                                       const float* weights, int64_t N, int64_t M, int k,
                                       int64_t H) {
  const int64_t chunks = H / kW, total = N * chunks;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < total;
       c += stride) {
    const int64_t n = c / chunks, h = (c % chunks) * kW;
    float acc[kW];
#pragma unroll
    for (int w = 0; w < kW; ++w) acc[w] = 0.0f;
    for (int i = 0; i < k; ++i) {
      const int32_t s = slots[n * k + i];
      if (s < 0 || s >= M) continue;
      const float weight = weights != nullptr ? weights[n * k + i] : 1.0f;
      float v[kW];
      load_chunk<kW>(in + static_cast<int64_t>(s) * H + h, v);
#pragma unroll
      for (int w = 0; w < kW; ++w) acc[w] += weight * v[w];
    }
    store_chunk<kW>(out + n * H + h, acc);
  }
}

// dweights[q] = dot(dout[q / k, :], in[slots[q], :]) for the N * k pairs q; one warp per pair.
template <typename T, int kW>
__global__ void __launch_bounds__(kThreads)
    gathered_row_dot_kernel(float* dweights, const T* dout, const T* in, const int32_t* slots,
                            int64_t pairs, int k, int64_t M, int64_t H) {
  const int lane = threadIdx.x & 31;
  const int64_t chunks = H / kW;
  for (int64_t q = first_warp(); q < pairs; q += grid_warps()) {
    const int32_t s = slots[q];
    float acc = 0.0f;
    if (s >= 0 && s < M) {
      const T* d = dout + (q / k) * H;
      const T* r = in + static_cast<int64_t>(s) * H;
      for (int64_t c = lane; c < chunks; c += 32) {
        float a[kW], b[kW];
        load_chunk<kW>(d + c * kW, a);
        load_chunk<kW>(r + c * kW, b);
#pragma unroll
        for (int w = 0; w < kW; ++w) acc += a[w] * b[w];
      }
    }
    acc = warp_sum(acc);
    if (lane == 0) dweights[q] = acc;
  }
}

// ---- launch helpers -----------------------------------------------------------------------------
// Calls fn.template operator()<kJ>() with the fewest experts per lane (a power of two) for E.
template <typename Fn>
void dispatch_experts_per_lane(int64_t E, Fn&& fn) {
  if (E <= 32) return fn.template operator()<1>();
  if (E <= 64) return fn.template operator()<2>();
  if (E <= 128) return fn.template operator()<4>();
  if (E <= 256) return fn.template operator()<8>();
  if (E <= 512) return fn.template operator()<16>();
  return fn.template operator()<32>();
}

// Calls fn.template operator()<T, kJ>() for the logits' dtype and E.
template <typename Fn>
void dispatch_router(DType dtype, int64_t E, const char* op, Fn&& fn) {
  dispatch_float(dtype, op, [&]<typename T>() {
    dispatch_experts_per_lane(E, [&]<int kJ>() { fn.template operator()<T, kJ>(); });
  });
}

// Calls fn.template operator()<T, kW>() for the rows' dtype with kW = one 16-byte chunk when H
// and every row pointer allow, else kW = 1.
template <typename Fn>
void dispatch_rows(DType dtype, int64_t H, std::initializer_list<const void*> rows, const char* op,
                   Fn&& fn) {
  dispatch_float(dtype, op, [&]<typename T>() {
    constexpr int kVec = Vec16<T>::kSize;
    bool vector = H % kVec == 0;
    for (const void* p : rows) vector = vector && aligned16(p);
    if (vector)
      fn.template operator()<T, kVec>();
    else
      fn.template operator()<T, 1>();
  });
}

// Blocks of kThreads for one warp per item.
unsigned int warp_item_blocks(const CudaBackendState& st, int64_t items) {
  return grid_stride_blocks(st, items * 32, kThreads);
}

// ---- argument checks ----------------------------------------------------------------------------
// require_on_device for a tensor that may be empty (an empty tensor has no storage to check).
void require_usable(const DeviceContext& ctx, const Tensor& t, const char* op, const char* name) {
  if (t.numel() > 0) require_on_device(ctx, t, op, name);
}

// An fp32 side tensor (probs, weights, scale, sums, dweights) of `numel` elements.
void require_side(const DeviceContext& ctx, const Tensor& t, int64_t numel, const char* op,
                  const char* name) {
  require_usable(ctx, t, op, name);
  require_dtype(t, DType::kF32, op, name);
  require_numel(t, numel, op, name);
}

// An int32 index tensor of `numel` elements.
void require_ids(const DeviceContext& ctx, const Tensor& t, int64_t numel, const char* op,
                 const char* name) {
  require_usable(ctx, t, op, name);
  require_dtype(t, DType::kI32, op, name);
  require_numel(t, numel, op, name);
}

// Router logits [N, E] on the device with 1 <= E <= kMaxExperts.
void check_router_logits(const DeviceContext& ctx, const Tensor& logits, const char* op) {
  require_usable(ctx, logits, op, "logits");
  if (logits.rank() != 2 || logits.size(1) < 1 || logits.size(1) > kMaxExperts)
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: logits " + logits.shape().to_string() +
                    " must be [N, E] with 1 <= E <= " + std::to_string(kMaxExperts) +
                    " experts (the router kernels hold a token's logits in one warp's "
                    "registers); use at most 1024 experts or run the router on the CPU");
}

// dlogits like logits.
void check_router_grad(const DeviceContext& ctx, const Tensor& dlogits, const Tensor& logits,
                       const char* op) {
  require_usable(ctx, dlogits, op, "dlogits");
  require_same_dtype(logits, dlogits, op, "logits", "dlogits");
  require_numel(dlogits, logits.numel(), op, "dlogits");
}

// in [rows, H] on the device, same dtype as `other` (out or dout).
void check_row_matrix(const DeviceContext& ctx, const Tensor& in, const Tensor& other,
                      const char* op, const char* other_name) {
  require_usable(ctx, in, op, "in");
  require_usable(ctx, other, op, other_name);
  require_same_dtype(other, in, op, other_name, "in");
  if (in.rank() != 2)
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: in must be [rows, H], got " + in.shape().to_string());
}

// The sizes of a gather through slots [N, k] from in [M, H], with rows [N, H] (out or dout).
struct SlotGather {
  int64_t N, k, M, H;
};
SlotGather check_slot_gather(const DeviceContext& ctx, const Tensor& in, const Tensor& rows,
                             const char* rows_name, const Tensor& slots, const char* op) {
  check_row_matrix(ctx, in, rows, op, rows_name);
  if (slots.rank() != 2)
    throw Error(
        ErrorKind::kInvalidArgument,
        std::string(op) + " on CUDA: slots must be [N, k], got " + slots.shape().to_string());
  require_ids(ctx, slots, slots.numel(), op, "slots");
  const SlotGather g{slots.size(0), slots.size(1), in.size(0), in.size(1)};
  require_numel(rows, g.N * g.H, op, rows_name);
  return g;
}

}  // namespace

// ---- entry points ------------------------------------------------------------------------------
void moe_topk_router_forward(DeviceContext& ctx, Tensor probs, Tensor indices, const Tensor& logits,
                             int64_t k, bool pre_softmax) {
  const char* op = "moe_topk_router_forward";
  check_router_logits(ctx, logits, op);
  const int64_t N = logits.size(0), E = logits.size(1);
  if (k < 1 || k > E)
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: k = " + std::to_string(k) + " must be in [1, E]");
  require_side(ctx, probs, N * k, op, "probs");
  require_ids(ctx, indices, N * k, op, "indices");
  if (N == 0) return;
  const CudaBackendState& st = cuda_state(ctx);
  dispatch_router(logits.dtype(), E, op, [&]<typename T, int kJ>() {
    router_forward_kernel<T, kJ><<<warp_item_blocks(st, N), kThreads, 0, st.stream()>>>(
        static_cast<float*>(probs.raw()), static_cast<int32_t*>(indices.raw()),
        static_cast<const T*>(logits.raw()), N, static_cast<int>(E), static_cast<int>(k),
        pre_softmax);
    CUDA_CHECK_LAUNCH();
  });
}

void moe_topk_router_backward(DeviceContext& ctx, Tensor dlogits, const Tensor& dprobs,
                              const Tensor& logits, const Tensor& indices, bool pre_softmax) {
  const char* op = "moe_topk_router_backward";
  check_router_logits(ctx, logits, op);
  const int64_t N = logits.size(0), E = logits.size(1);
  const int64_t k = indices.rank() == 2 ? indices.size(1) : 0;
  require_ids(ctx, indices, N * k, op, "indices");
  require_side(ctx, dprobs, N * k, op, "dprobs");
  check_router_grad(ctx, dlogits, logits, op);
  if (N == 0) return;
  const CudaBackendState& st = cuda_state(ctx);
  dispatch_router(logits.dtype(), E, op, [&]<typename T, int kJ>() {
    router_backward_kernel<T, kJ><<<warp_item_blocks(st, N), kThreads, 0, st.stream()>>>(
        static_cast<T*>(dlogits.raw()), static_cast<const float*>(dprobs.raw()),
        static_cast<const T*>(logits.raw()), static_cast<const int32_t*>(indices.raw()), N,
        static_cast<int>(E), static_cast<int>(k), pre_softmax);
    CUDA_CHECK_LAUNCH();
  });
}

void moe_router_score_sums(DeviceContext& ctx, Tensor sums, const Tensor& logits) {
  const char* op = "moe_router_score_sums";
  check_router_logits(ctx, logits, op);
  const int64_t N = logits.size(0), E = logits.size(1);
  require_side(ctx, sums, E, op, "sums");
  CudaBackendState& st = cuda_state(ctx);
  if (N == 0) {  // the empty sum: still assigned
    CUDA_CHECK(cudaMemsetAsync(sums.raw(), 0, sums.nbytes(), st.stream()));
    return;
  }
  const int blocks = static_cast<int>(
      std::min<int64_t>(kScoreMaxBlocks, (N + kScoreRowsPerBlock - 1) / kScoreRowsPerBlock));
  float* partial = static_cast<float*>(st.scratch(sizeof(float) * blocks * E));
  dispatch_router(logits.dtype(), E, op, [&]<typename T, int kJ>() {
    score_partials_kernel<T, kJ><<<blocks, kThreads, 0, st.stream()>>>(
        partial, static_cast<const T*>(logits.raw()), N, static_cast<int>(E));
    CUDA_CHECK_LAUNCH();
  });
  score_sums_finalize_kernel<<<ceil_div_u(E, 256), 256, 0, st.stream()>>>(
      static_cast<float*>(sums.raw()), partial, blocks, static_cast<int>(E));
  CUDA_CHECK_LAUNCH();
}

void moe_aux_loss_backward(DeviceContext& ctx, Tensor dlogits, const Tensor& logits,
                           const Tensor& weights) {
  const char* op = "moe_aux_loss_backward";
  check_router_logits(ctx, logits, op);
  const int64_t N = logits.size(0), E = logits.size(1);
  require_side(ctx, weights, E, op, "weights");
  check_router_grad(ctx, dlogits, logits, op);
  if (N == 0) return;
  const CudaBackendState& st = cuda_state(ctx);
  dispatch_router(logits.dtype(), E, op, [&]<typename T, int kJ>() {
    aux_loss_backward_kernel<T, kJ><<<warp_item_blocks(st, N), kThreads, 0, st.stream()>>>(
        static_cast<T*>(dlogits.raw()), static_cast<const T*>(logits.raw()),
        static_cast<const float*>(weights.raw()), N, static_cast<int>(E));
    CUDA_CHECK_LAUNCH();
  });
}

void moe_router_logsumexp(DeviceContext& ctx, Tensor lse, const Tensor& logits) {
  const char* op = "moe_router_logsumexp";
  check_router_logits(ctx, logits, op);
  const int64_t N = logits.size(0), E = logits.size(1);
  require_side(ctx, lse, N, op, "lse");
  if (N == 0) return;
  const CudaBackendState& st = cuda_state(ctx);
  dispatch_router(logits.dtype(), E, op, [&]<typename T, int kJ>() {
    logsumexp_kernel<T, kJ><<<warp_item_blocks(st, N), kThreads, 0, st.stream()>>>(
        static_cast<float*>(lse.raw()), nullptr, static_cast<const T*>(logits.raw()), 0.0f, N,
        static_cast<int>(E));
    CUDA_CHECK_LAUNCH();
  });
}

void moe_z_loss_backward(DeviceContext& ctx, Tensor dlogits, const Tensor& logits, double scale) {
  const char* op = "moe_z_loss_backward";
  check_router_logits(ctx, logits, op);
  const int64_t N = logits.size(0), E = logits.size(1);
  check_router_grad(ctx, dlogits, logits, op);
  if (N == 0) return;
  const CudaBackendState& st = cuda_state(ctx);
  dispatch_router(logits.dtype(), E, op, [&]<typename T, int kJ>() {
    logsumexp_kernel<T, kJ><<<warp_item_blocks(st, N), kThreads, 0, st.stream()>>>(
        nullptr, static_cast<T*>(dlogits.raw()), static_cast<const T*>(logits.raw()),
        static_cast<float>(scale), N, static_cast<int>(E));
    CUDA_CHECK_LAUNCH();
  });
}

void gather_rows(DeviceContext& ctx, Tensor out, const Tensor& in, const Tensor& index,
                 const Tensor& scale) {
  const char* op = "gather_rows";
  check_row_matrix(ctx, in, out, op, "out");
  const int64_t N = in.size(0), H = in.size(1), M = index.numel();
  require_ids(ctx, index, M, op, "index");
  require_numel(out, M * H, op, "out");
  if (scale.defined()) require_side(ctx, scale, M, op, "scale");
  if (M * H == 0) return;
  const CudaBackendState& st = cuda_state(ctx);
  dispatch_rows(in.dtype(), H, {in.raw(), out.raw()}, op, [&]<typename T, int kW>() {
    gather_rows_kernel<T, kW><<<grid_stride_blocks(st, M * H / kW, 256), 256, 0, st.stream()>>>(
        static_cast<T*>(out.raw()), static_cast<const T*>(in.raw()),
        static_cast<const int32_t*>(index.raw()),
        scale.defined() ? static_cast<const float*>(scale.raw()) : nullptr, M, N, H);
    CUDA_CHECK_LAUNCH();
  });
}

void gather_sum_rows(DeviceContext& ctx, Tensor out, const Tensor& in, const Tensor& slots,
                     const Tensor& weights) {
  const char* op = "gather_sum_rows";
  const SlotGather g = check_slot_gather(ctx, in, out, "out", slots, op);
  if (weights.defined()) require_side(ctx, weights, g.N * g.k, op, "weights");
  if (g.N * g.H == 0) return;
  const CudaBackendState& st = cuda_state(ctx);
  dispatch_rows(in.dtype(), g.H, {in.raw(), out.raw()}, op, [&]<typename T, int kW>() {
    gather_sum_rows_kernel<T, kW>
        <<<grid_stride_blocks(st, g.N * g.H / kW, 256), 256, 0, st.stream()>>>(
            static_cast<T*>(out.raw()), static_cast<const T*>(in.raw()),
            static_cast<const int32_t*>(slots.raw()),
            weights.defined() ? static_cast<const float*>(weights.raw()) : nullptr, g.N, g.M,
            static_cast<int>(g.k), g.H);
    CUDA_CHECK_LAUNCH();
  });
}

void gathered_row_dot(DeviceContext& ctx, Tensor dweights, const Tensor& dout, const Tensor& in,
                      const Tensor& slots) {
  const char* op = "gathered_row_dot";
  const SlotGather g = check_slot_gather(ctx, in, dout, "dout", slots, op);
  require_side(ctx, dweights, g.N * g.k, op, "dweights");
  if (g.N * g.k == 0) return;
  const CudaBackendState& st = cuda_state(ctx);
  dispatch_rows(in.dtype(), g.H, {in.raw(), dout.raw()}, op, [&]<typename T, int kW>() {
    gathered_row_dot_kernel<T, kW><<<warp_item_blocks(st, g.N * g.k), kThreads, 0, st.stream()>>>(
        static_cast<float*>(dweights.raw()), static_cast<const T*>(dout.raw()),
        static_cast<const T*>(in.raw()), static_cast<const int32_t*>(slots.raw()), g.N * g.k,
        static_cast<int>(g.k), g.M, g.H);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace shardlm::ops::cuda
