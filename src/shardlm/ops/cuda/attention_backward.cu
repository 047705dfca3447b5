// attention_backward.cu — grouped-query attention backward (causal, or bidirectional with key
// padding as the forward), flash-attention style:
// probabilities are recomputed tile by tile from Q, K and the row log-sum-exp; nothing T x T is
// stored. dqkv is assigned (q slots by the first kernel, k/v slots by the second).
// attention_chunk_backward (context parallelism) runs the same kernels on one query chunk of
// q_src against kv: the first kernel assigns the q columns of the chunk's rows of dq, the
// second the k/v columns of keys [0, position + rows) of dkv (this chunk's contribution); the
// whole sequence is the chunk {0, T, 0} with dq = dkv = dqkv, on the same grids.
// cross_attention_backward (T5) runs the padded variant on q [B,TQ,NH*HS] and kv [B,TK,G*2*HS]
// (AttentionParams' layout accessors, kCross): dq of all TQ rows, dkv of all TK keys (keys
// past key_lengths get zeros), never on cuDNN.
//
// Math (M = dropout multiplier 0 or 1/(1-p), P = softmax probabilities, s = 1/sqrt(HS)):
//   D_i = dO_i . O_i        dP_ij = M_ij (dO_i . V_j)        dS_ij = P_ij (dP_ij - D_i)
//   dQ_i = s sum_j dS_ij K_j    dK_j = s sum_{h in group, i} dS_ij Q_i    dV_j = sum P_ij M_ij dO_i
//
// Algorithms — two kernels, no atomics, deterministic:
//  1. dQ kernel, one block per (64 query rows, b, h): computes D_i (and, when the saved lse is
//     16-bit, recomputes lse exactly with one extra Q K^T sweep, since a bf16 lse would put a
//     ~1% error on every probability), writes both to the context scratch as fp32, then streams
//     K/V tiles (cp.async double buffer) and accumulates dQ: S = Q K^T, P, dP = dO V^T, dS,
//     dQ += dS K, all on mma.m16n8k16 with fp32 accumulators.
//  2. dK/dV kernel, one block per (64 keys, b, group): 4 warps x 16 keys keep dK, dV in
//     registers and stream (query tile, head of the group) pairs, from the first query tile
//     whose positions reach the block's keys: S^T = K Q^T, P^T from the
//     scratch lse, dV += P^T dO, dP^T = V dO^T, dS^T, dK += dS^T Q. GQA's sum over the heads of
//     a group happens in registers.
//  Row-wise fallback (fp32, other head dims <= 256, misaligned views): the same two passes with
//  one warp per query row / key row and exact fp32 math.
#include <cmath>

#include "shardlm/ops/cuda/attention_common.cuh"
#include "shardlm/ops/cuda/attention_shape.h"
#include "shardlm/ops/cuda/cuda_ops.h"

namespace shardlm::ops::cuda {
namespace {

constexpr int kTile = 64;  // query rows per dQ block; key rows per dK/dV block; key tile
constexpr int kMmaThreads = 128;

template <int HS>
constexpr int dq_smem_bytes() {
  return 6 * kTile * (HS + 8) * 2 + 2 * kTile * 4;  // Q, dO, 2xK, 2xV, lse, D
}
// Blocks per SM the dQ kernel's register budget must allow (ptxas otherwise spends registers
// freely, and small changes elsewhere in the file move its choice). At HS 64 shared memory admits
// 4 blocks (56 KB each) and every variant fits 168 registers: 3 blocks; at HS 128 (101 KB) 2.
template <int HS>
constexpr int dq_min_blocks() {
  return HS == 64 ? 3 : 2;
}
template <int HS>
constexpr int dkdv_query_tile() {
  return HS <= 64 ? 64 : 32;  // keeps S^T and dP^T small next to the dK/dV accumulators
}
template <int HS>
constexpr int dkdv_smem_bytes() {
  constexpr int kBr = dkdv_query_tile<HS>();
  return (2 * kTile + 4 * kBr) * (HS + 8) * 2 + 4 * kBr * 4;  // K, V, 2xQ, 2xdO, 2xlse, 2xD
}

// ---- kernels: tensor-core path ------------------------------------------------------------------
// A-fragment of rows [row0, row0+16) x cols [col0, col0+16) of a shared tile.
template <typename T>
__device__ __forceinline__ void load_a_fragment(uint32_t a[4], const T* tile, int pitch, int row0,
                                                int col0) {
  const int lane = threadIdx.x % 32;
  ldmatrix_x4(a, tile + (row0 + (lane % 8) + ((lane / 8) % 2) * 8) * pitch + col0 + (lane / 16) * 8);
}
// B-fragments of two n-tiles (rows n0..n0+15 of the tile as n, cols k0..k0+15 as k).
template <typename T>
__device__ __forceinline__ void load_b_rows(uint32_t b[4], const T* tile, int pitch, int n0,
                                            int k0) {
  const int lane = threadIdx.x % 32;
  ldmatrix_x4(b, tile + (n0 + (lane % 8) + (lane / 16) * 8) * pitch + k0 + ((lane / 8) % 2) * 8);
}
// B-fragments of two n-tiles with the tile's rows as k (k0..k0+15) and cols as n (n0..n0+15).
template <typename T>
__device__ __forceinline__ void load_b_cols(uint32_t b[4], const T* tile, int pitch, int k0,
                                            int n0) {
  const int lane = threadIdx.x % 32;
  ldmatrix_x4_trans(b, tile + (k0 + (lane % 8) + ((lane / 8) % 2) * 8) * pitch + n0 + (lane / 16) * 8);
}

// kPadding: the general mask (AttentionParams::masked); false: causal only (GPT's variant).
// kCross: cross-attention's layout (AttentionParams; always with kPadding).
template <typename T, int HS, bool kDropout, bool kRecomputeLse, bool kPadding, bool kCross>
__global__ void __launch_bounds__(kMmaThreads, (dq_min_blocks<HS>()))
    attention_backward_dq_mma_kernel(const AttentionParams p) {
  constexpr int kPitch = HS + 8;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);   // [64][kPitch]
  T* sdO = sQ + kTile * kPitch;         // [64][kPitch]
  T* sK = sdO + kTile * kPitch;         // [2][64][kPitch]
  T* sV = sK + 2 * kTile * kPitch;      // [2][64][kPitch]
  float* sL = reinterpret_cast<float*>(sV + 2 * kTile * kPitch);  // [64] lse * log2(e)
  float* sD = sL + kTile;                                          // [64]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gid = lane / 4, tid4 = lane % 4;
  const int64_t qb = gridDim.x - 1 - blockIdx.x;
  const int64_t b = blockIdx.y / p.NH, h = blockIdx.y % p.NH, g = h / p.R;
  // q0: the block's first chunk row; scratch rows are chunk rows (bh * rows + row).
  const int64_t bh = b * p.NH + h, q0 = qb * kTile, o_stride = p.NH * p.HS;
  const T* q_src = static_cast<const T*>(p.q_src) + b * p.TQ * p.q_stride<kCross>();
  const T* kv = static_cast<const T*>(p.kv) + b * p.T * p.kv_stride<kCross>();
  const T* dout = static_cast<const T*>(p.dout) + b * p.TQ * o_stride;
  const T* out = static_cast<const T*>(p.out) + b * p.TQ * o_stride;
  const int64_t k_col = p.k_col_of_group<kCross>(g), v_col = p.v_col_of_group<kCross>(g);
  const int64_t n_keys = kPadding ? p.valid_keys<kCross>(b) : p.keys<kCross>();
  const int64_t row_end = p.q_row0 + p.rows;

  load_tile_async<T, kTile, HS, kPitch, kMmaThreads>(sQ, q_src, p.q_stride<kCross>(),
                                                     p.q_col<kCross>(h), p.q_row0 + q0, row_end);
  load_tile_async<T, kTile, HS, kPitch, kMmaThreads>(sdO, dout, o_stride, h * HS, p.q_row0 + q0,
                                                     row_end);
  cp_async_commit();

  // D_i = dO_i . O_i: two threads per row, half the head dims each.
  {
    const int row = threadIdx.x / 2, half = threadIdx.x % 2;
    const int64_t i = q0 + row;
    float d = 0.0f;
    if (i < p.rows) {
      const T* o_row = out + (p.q_row0 + i) * o_stride + h * HS + half * (HS / 2);
      const T* do_row = dout + (p.q_row0 + i) * o_stride + h * HS + half * (HS / 2);
      for (int k = 0; k < HS / 2; k += Vec16<T>::kSize) {
        const Vec16<T> a = *reinterpret_cast<const Vec16<T>*>(o_row + k);
        const Vec16<T> c = *reinterpret_cast<const Vec16<T>*>(do_row + k);
#pragma unroll
        for (int e = 0; e < Vec16<T>::kSize; ++e) d += load_as_float(a.v[e]) * load_as_float(c.v[e]);
      }
    }
    d += __shfl_xor_sync(0xffffffffu, d, 1);
    if (half == 0) {
      sD[row] = d;
      if (i < p.rows) p.delta[bh * p.rows + i] = d;
      if constexpr (!kRecomputeLse) {
        const float l = i < p.rows ? load_lse<T>(p, bh * p.TQ + p.q_row0 + i) * kLog2e : 0.0f;
        sL[row] = l;
        if (i < p.rows) p.lse_log2[bh * p.rows + i] = l;
      }
    }
  }
  // Chunk rows of accumulator rows gid and gid + 8, and their global positions (the mask's).
  const int64_t c0 = q0 + warp * 16 + gid, c1 = c0 + 8;
  const int64_t i0 = p.q_pos0 + c0, i1 = i0 + 8;
  // Key tiles up to the block's last valid row.
  const int64_t last_row = q0 + kTile < p.rows ? q0 + kTile - 1 : p.rows - 1;
  int64_t n_tiles = (p.q_pos0 + last_row) / kTile + 1;
  if constexpr (kPadding) {  // tiles holding valid keys (all of them when bidirectional)
    const int64_t valid_tiles = (n_keys + kTile - 1) / kTile;
    n_tiles = p.causal && n_tiles < valid_tiles ? n_tiles : valid_tiles;
  }

  if constexpr (kRecomputeLse) {
    // One Q K^T sweep for the exact row max / sum (the saved 16-bit lse is too coarse).
    cp_async_wait<0>();
    __syncthreads();
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
    for (int64_t jt = 0; jt < n_tiles; ++jt) {
      load_tile_async<T, kTile, HS, kPitch, kMmaThreads>(sK, kv, p.kv_stride<kCross>(), k_col,
                                                         jt * kTile, n_keys);
      cp_async_commit();
      cp_async_wait<0>();
      __syncthreads();
      float s[8][4] = {};
#pragma unroll
      for (int kk = 0; kk < HS / 16; ++kk) {
        uint32_t qa[4];
        load_a_fragment(qa, sQ, kPitch, warp * 16, kk * 16);
#pragma unroll
        for (int np = 0; np < 4; ++np) {
          uint32_t kb[4];
          load_b_rows(kb, sK, kPitch, np * 16, kk * 16);
          mma_16816<T>(s[2 * np], qa, kb[0], kb[1]);
          mma_16816<T>(s[2 * np + 1], qa, kb[2], kb[3]);
        }
      }
      float tile_max[2] = {row_max[0], row_max[1]};
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t j = jt * kTile + nt * 8 + tid4 * 2 + (e & 1);
          float x = s[nt][e] * p.scale_log2;
          if (kPadding ? p.masked(e < 2 ? i0 : i1, j, n_keys) : j > (e < 2 ? i0 : i1))
            x = -INFINITY;
          s[nt][e] = x;
          tile_max[e / 2] = fmaxf(tile_max[e / 2], x);
        }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
        tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
        row_sum[r] *= exp2f(row_max[r] - tile_max[r]);
        row_max[r] = tile_max[r];
      }
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) row_sum[e / 2] += exp2f(s[nt][e] - row_max[e / 2]);
      __syncthreads();  // sK is reloaded next iteration
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 1);
      row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 2);
    }
    if (tid4 == 0) {
      const float l0 = row_max[0] + log2f(row_sum[0]), l1 = row_max[1] + log2f(row_sum[1]);
      sL[warp * 16 + gid] = l0;
      sL[warp * 16 + gid + 8] = l1;
      if (c0 < p.rows) p.lse_log2[bh * p.rows + c0] = l0;
      if (c1 < p.rows) p.lse_log2[bh * p.rows + c1] = l1;
    }
  }

  load_tile_async<T, kTile, HS, kPitch, kMmaThreads>(sK, kv, p.kv_stride<kCross>(), k_col, 0,
                                                     n_keys);
  load_tile_async<T, kTile, HS, kPitch, kMmaThreads>(sV, kv, p.kv_stride<kCross>(), v_col, 0,
                                                     n_keys);
  cp_async_commit();

  float dq[HS / 8][4] = {};
  for (int64_t jt = 0; jt < n_tiles; ++jt) {
    const int buf = static_cast<int>(jt & 1);
    if (jt + 1 < n_tiles) {
      const int nb = buf ^ 1;
      load_tile_async<T, kTile, HS, kPitch, kMmaThreads>(sK + nb * kTile * kPitch, kv,
                                                         p.kv_stride<kCross>(), k_col,
                                                         (jt + 1) * kTile, n_keys);
      load_tile_async<T, kTile, HS, kPitch, kMmaThreads>(sV + nb * kTile * kPitch, kv,
                                                         p.kv_stride<kCross>(), v_col,
                                                         (jt + 1) * kTile, n_keys);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* k_tile = sK + buf * kTile * kPitch;
    const T* v_tile = sV + buf * kTile * kPitch;

    float s[8][4] = {}, dp[8][4] = {};
#pragma unroll
    for (int kk = 0; kk < HS / 16; ++kk) {
      uint32_t qa[4], da[4];
      load_a_fragment(qa, sQ, kPitch, warp * 16, kk * 16);
      load_a_fragment(da, sdO, kPitch, warp * 16, kk * 16);
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t kb[4], vb[4];
        load_b_rows(kb, k_tile, kPitch, np * 16, kk * 16);
        mma_16816<T>(s[2 * np], qa, kb[0], kb[1]);
        mma_16816<T>(s[2 * np + 1], qa, kb[2], kb[3]);
        load_b_rows(vb, v_tile, kPitch, np * 16, kk * 16);
        mma_16816<T>(dp[2 * np], da, vb[0], vb[1]);
        mma_16816<T>(dp[2 * np + 1], da, vb[2], vb[3]);
      }
    }
    const float L0 = sL[warp * 16 + gid], L1 = sL[warp * 16 + gid + 8];
    const float D0 = sD[warp * 16 + gid], D1 = sD[warp * 16 + gid + 8];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      const int64_t j = jt * kTile + nt * 8 + tid4 * 2;
      float2 m0 = make_float2(1.0f, 1.0f), m1 = m0;
      if constexpr (kDropout) {
        m0 = dropout_pair(p, p.dropout_position<kCross>(b, h, i0, j));
        m1 = dropout_pair(p, p.dropout_position<kCross>(b, h, i1, j));
      }
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const bool row1 = e >= 2;
        const int64_t jj = j + (e & 1);
        const bool off = kPadding ? p.masked(row1 ? i1 : i0, jj, n_keys) : jj > (row1 ? i1 : i0);
        const float pr = off ? 0.0f
                             : exp2f(s[nt][e] * p.scale_log2 - (row1 ? L1 : L0));
        const float mask = row1 ? ((e & 1) ? m1.y : m1.x) : ((e & 1) ? m0.y : m0.x);
        s[nt][e] = pr * (dp[nt][e] * mask - (row1 ? D1 : D0));  // dS
      }
    }
    // dQ += dS K
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const uint32_t sa[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]),
                              pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                              pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dn = 0; dn < HS / 16; ++dn) {
        uint32_t kb[4];
        load_b_cols(kb, k_tile, kPitch, kk * 16, dn * 16);
        mma_16816<T>(dq[2 * dn], sa, kb[0], kb[1]);
        mma_16816<T>(dq[2 * dn + 1], sa, kb[2], kb[3]);
      }
    }
    __syncthreads();
  }

  T* dq_rows =
      static_cast<T*>(p.dq) + (b * p.TQ + p.q_row0) * p.q_stride<kCross>() + p.q_col<kCross>(h);
#pragma unroll
  for (int dn = 0; dn < HS / 8; ++dn) {
    const int d = dn * 8 + tid4 * 2;
    if (c0 < p.rows)
      *reinterpret_cast<uint32_t*>(dq_rows + c0 * p.q_stride<kCross>() + d) =
          pack2<T>(dq[dn][0] * p.scale, dq[dn][1] * p.scale);
    if (c1 < p.rows)
      *reinterpret_cast<uint32_t*>(dq_rows + c1 * p.q_stride<kCross>() + d) =
          pack2<T>(dq[dn][2] * p.scale, dq[dn][3] * p.scale);
  }
}

template <typename T, int HS, bool kDropout, bool kPadding, bool kCross>
__global__ void __launch_bounds__(kMmaThreads)
    attention_backward_dkdv_mma_kernel(const AttentionParams p) {
  constexpr int kPitch = HS + 8, kBr = dkdv_query_tile<HS>();
  extern __shared__ __align__(16) unsigned char smem[];
  T* sK = reinterpret_cast<T*>(smem);   // [64][kPitch]
  T* sV = sK + kTile * kPitch;          // [64][kPitch]
  T* sQ = sV + kTile * kPitch;          // [2][kBr][kPitch]
  T* sdO = sQ + 2 * kBr * kPitch;       // [2][kBr][kPitch]
  float* sL = reinterpret_cast<float*>(sdO + 2 * kBr * kPitch);  // [2][kBr]
  float* sD = sL + 2 * kBr;                                       // [2][kBr]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gid = lane / 4, tid4 = lane % 4;
  const int64_t key_block = blockIdx.x;  // block 0 (earliest keys) has the most work: first
  const int64_t b = blockIdx.y / p.G, g = blockIdx.y % p.G;
  const int64_t k0 = key_block * kTile, o_stride = p.NH * p.HS;
  const T* q_src = static_cast<const T*>(p.q_src) + b * p.TQ * p.q_stride<kCross>();
  const T* kv = static_cast<const T*>(p.kv) + b * p.T * p.kv_stride<kCross>();
  const T* dout = static_cast<const T*>(p.dout) + b * p.TQ * o_stride;
  const int64_t k_col = p.k_col_of_group<kCross>(g), v_col = p.v_col_of_group<kCross>(g);
  const int64_t n_keys = p.keys<kCross>(), row_end = p.q_row0 + p.rows;

  load_tile_async<T, kTile, HS, kPitch, kMmaThreads>(sK, kv, p.kv_stride<kCross>(), k_col, k0,
                                                     n_keys);
  load_tile_async<T, kTile, HS, kPitch, kMmaThreads>(sV, kv, p.kv_stride<kCross>(), v_col, k0,
                                                     n_keys);

  // Query tiles (of chunk rows) from the first whose positions reach key k0 (all of them when
  // bidirectional). Keys past the padding get zero gradients: no iterations.
  const int64_t valid = kPadding ? p.valid_keys<kCross>(b) : n_keys;
  const int64_t first_qt = kPadding && !p.causal ? 0 : (k0 > p.q_pos0 ? k0 - p.q_pos0 : 0) / kBr;
  const int64_t n_qt = (p.rows + kBr - 1) / kBr;
  const int64_t per_head = n_qt - first_qt, n_iters = k0 < valid ? p.R * per_head : 0;
  // Issues the loads of iteration `it` (head r = it / per_head, query tile qt) into buffer nb.
  const auto issue = [&](int64_t it, int nb) {
    const int64_t h = g * p.R + it / per_head, qt = first_qt + it % per_head;
    load_tile_async<T, kBr, HS, kPitch, kMmaThreads>(sQ + nb * kBr * kPitch, q_src,
                                                     p.q_stride<kCross>(), p.q_col<kCross>(h),
                                                     p.q_row0 + qt * kBr, row_end);
    load_tile_async<T, kBr, HS, kPitch, kMmaThreads>(sdO + nb * kBr * kPitch, dout, o_stride,
                                                     h * HS, p.q_row0 + qt * kBr, row_end);
    for (int r = threadIdx.x; r < kBr; r += kMmaThreads) {
      const int64_t i = qt * kBr + r, idx = (b * p.NH + h) * p.rows + i;
      sL[nb * kBr + r] = i < p.rows ? p.lse_log2[idx] : 0.0f;
      sD[nb * kBr + r] = i < p.rows ? p.delta[idx] : 0.0f;
    }
  };
  if (n_iters > 0) issue(0, 0);
  cp_async_commit();
  // Keys past the padding (no iterations): drain the K/V loads before the block writes zeros
  // and exits, so no asynchronous copy is left in flight.
  if (n_iters == 0) cp_async_wait<0>();

  float dk[HS / 8][4] = {}, dv[HS / 8][4] = {};
  const int64_t j0 = k0 + warp * 16 + gid, j1 = j0 + 8;
  for (int64_t it = 0; it < n_iters; ++it) {
    const int buf = static_cast<int>(it & 1);
    if (it + 1 < n_iters) {
      issue(it + 1, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int64_t h = g * p.R + it / per_head, q_base = (first_qt + it % per_head) * kBr;
    const T* q_tile = sQ + buf * kBr * kPitch;
    const T* do_tile = sdO + buf * kBr * kPitch;
    const float* L = sL + buf * kBr;
    const float* D = sD + buf * kBr;

    // S^T = K Q^T and dP^T = V dO^T: 16 keys x kBr queries per warp.
    float st[kBr / 8][4] = {}, dpt[kBr / 8][4] = {};
#pragma unroll
    for (int kk = 0; kk < HS / 16; ++kk) {
      uint32_t ka[4], va[4];
      load_a_fragment(ka, sK, kPitch, warp * 16, kk * 16);
      load_a_fragment(va, sV, kPitch, warp * 16, kk * 16);
#pragma unroll
      for (int np = 0; np < kBr / 16; ++np) {
        uint32_t qb4[4], db4[4];
        load_b_rows(qb4, q_tile, kPitch, np * 16, kk * 16);
        mma_16816<T>(st[2 * np], ka, qb4[0], qb4[1]);
        mma_16816<T>(st[2 * np + 1], ka, qb4[2], qb4[3]);
        load_b_rows(db4, do_tile, kPitch, np * 16, kk * 16);
        mma_16816<T>(dpt[2 * np], va, db4[0], db4[1]);
        mma_16816<T>(dpt[2 * np + 1], va, db4[2], db4[3]);
      }
    }
    // P^T (masked, dropped) into st; dS^T into dpt.
#pragma unroll
    for (int nt = 0; nt < kBr / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = nt * 8 + tid4 * 2 + (e & 1);
        const int64_t c = q_base + col, i = p.q_pos0 + c, j = e < 2 ? j0 : j1;  // row, position
        const bool off = (kPadding ? p.masked(i, j, valid) : i < j) || c >= p.rows;
        const float pr = off ? 0.0f : exp2f(st[nt][e] * p.scale_log2 - L[col]);
        float mask = 1.0f;
        if constexpr (kDropout)
          if (pr != 0.0f) mask = dropout_single(p, p.dropout_position<kCross>(b, h, i, j));
        st[nt][e] = pr * mask;                             // for dV
        dpt[nt][e] = pr * (dpt[nt][e] * mask - D[col]);    // dS^T
      }
    }
    // dV += (P^T o M) dO ; dK += dS^T Q  (k = queries of the tile)
#pragma unroll
    for (int kk = 0; kk < kBr / 16; ++kk) {
      const uint32_t pa[4] = {pack2<T>(st[2 * kk][0], st[2 * kk][1]),
                              pack2<T>(st[2 * kk][2], st[2 * kk][3]),
                              pack2<T>(st[2 * kk + 1][0], st[2 * kk + 1][1]),
                              pack2<T>(st[2 * kk + 1][2], st[2 * kk + 1][3])};
      const uint32_t sa[4] = {pack2<T>(dpt[2 * kk][0], dpt[2 * kk][1]),
                              pack2<T>(dpt[2 * kk][2], dpt[2 * kk][3]),
                              pack2<T>(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]),
                              pack2<T>(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3])};
#pragma unroll
      for (int dn = 0; dn < HS / 16; ++dn) {
        uint32_t ob[4], qb4[4];
        load_b_cols(ob, do_tile, kPitch, kk * 16, dn * 16);
        mma_16816<T>(dv[2 * dn], pa, ob[0], ob[1]);
        mma_16816<T>(dv[2 * dn + 1], pa, ob[2], ob[3]);
        load_b_cols(qb4, q_tile, kPitch, kk * 16, dn * 16);
        mma_16816<T>(dk[2 * dn], sa, qb4[0], qb4[1]);
        mma_16816<T>(dk[2 * dn + 1], sa, qb4[2], qb4[3]);
      }
    }
    __syncthreads();
  }

  // Every key row of the block is assigned, padded ones included (zeros: no iterations).
  T* dkv = static_cast<T*>(p.dkv) + b * p.T * p.kv_stride<kCross>();
#pragma unroll
  for (int dn = 0; dn < HS / 8; ++dn) {
    const int d = dn * 8 + tid4 * 2;
    if (j0 < n_keys) {
      *reinterpret_cast<uint32_t*>(dkv + j0 * p.kv_stride<kCross>() + k_col + d) =
          pack2<T>(dk[dn][0] * p.scale, dk[dn][1] * p.scale);
      *reinterpret_cast<uint32_t*>(dkv + j0 * p.kv_stride<kCross>() + v_col + d) =
          pack2<T>(dv[dn][0], dv[dn][1]);
    }
    if (j1 < n_keys) {
      *reinterpret_cast<uint32_t*>(dkv + j1 * p.kv_stride<kCross>() + k_col + d) =
          pack2<T>(dk[dn][2] * p.scale, dk[dn][3] * p.scale);
      *reinterpret_cast<uint32_t*>(dkv + j1 * p.kv_stride<kCross>() + v_col + d) =
          pack2<T>(dv[dn][2], dv[dn][3]);
    }
  }
}

// ---- kernels: row-wise fallback ------------------------------------------------------------------
// One warp per query row (b, h, chunk row c at position i): D_i, exact lse (recomputed unless
// saved in fp32), dQ_i.
template <typename T, bool kDropout, bool kCross>
__global__ void attention_backward_dq_rowwise_kernel(const AttentionParams p) {
  const int lane = threadIdx.x;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (row >= p.B * p.NH * p.rows) return;
  const int64_t c = row % p.rows, bh = row / p.rows, h = bh % p.NH, b = bh / p.NH, g = h / p.R;
  const int64_t i = p.q_pos0 + c, qi = b * p.TQ + p.q_row0 + c;  // position, q_src row (with b)
  const int64_t o_stride = p.NH * p.HS;
  const T* kv = static_cast<const T*>(p.kv) + b * p.T * p.kv_stride<kCross>();
  const T* q = static_cast<const T*>(p.q_src) + qi * p.q_stride<kCross>() + p.q_col<kCross>(h);
  const T* o = static_cast<const T*>(p.out) + qi * o_stride + h * p.HS;
  const T* dO = static_cast<const T*>(p.dout) + qi * o_stride + h * p.HS;
  const int64_t k_col = p.k_col_of_group<kCross>(g), v_col = p.v_col_of_group<kCross>(g);
  float qv[kRowwiseMaxPerLane], dov[kRowwiseMaxPerLane], dq[kRowwiseMaxPerLane];
  float dsum = 0.0f;
#pragma unroll
  for (int k = 0; k < kRowwiseMaxPerLane; ++k) {
    const int d = lane + 32 * k;
    const bool in = d < p.HS;
    qv[k] = in ? load_as_float(q[d]) : 0.0f;
    dov[k] = in ? load_as_float(dO[d]) : 0.0f;
    dsum += in ? dov[k] * load_as_float(o[d]) : 0.0f;
    dq[k] = 0.0f;
  }
  const float D = warp_sum(dsum);
  const int64_t valid = p.valid_keys<kCross>(b);
  const int64_t key_end = p.causal && i + 1 < valid ? i + 1 : valid;
  const auto score = [&](int64_t j) {  // q_i . k_j * scale
    const T* kr = kv + j * p.kv_stride<kCross>() + k_col;
    float dot = 0.0f;
#pragma unroll
    for (int k = 0; k < kRowwiseMaxPerLane; ++k) {
      const int d = lane + 32 * k;
      if (d < p.HS) dot += qv[k] * load_as_float(kr[d]);
    }
    return warp_sum(dot) * p.scale;
  };
  float lse;
  if (p.lse_is_f32) {
    lse = static_cast<const float*>(p.lse)[bh * p.TQ + p.q_row0 + c];
  } else {
    float m = -INFINITY, l = 0.0f;
    for (int64_t j = 0; j < key_end; ++j) {
      const float s = score(j), m_new = fmaxf(m, s);
      l = l * expf(m - m_new) + expf(s - m_new);
      m = m_new;
    }
    lse = m + logf(l);
  }
  if (lane == 0) {
    p.delta[bh * p.rows + c] = D;
    p.lse_log2[bh * p.rows + c] = lse * kLog2e;
  }
  for (int64_t j = 0; j < key_end; ++j) {
    const T* kr = kv + j * p.kv_stride<kCross>() + k_col;
    const T* vr = kv + j * p.kv_stride<kCross>() + v_col;
    const float pr = expf(score(j) - lse);
    float dot = 0.0f;
#pragma unroll
    for (int k = 0; k < kRowwiseMaxPerLane; ++k) {
      const int d = lane + 32 * k;
      if (d < p.HS) dot += dov[k] * load_as_float(vr[d]);
    }
    const float mask = kDropout ? dropout_single(p, p.dropout_position<kCross>(b, h, i, j)) : 1.0f;
    const float ds = pr * (warp_sum(dot) * mask - D);
#pragma unroll
    for (int k = 0; k < kRowwiseMaxPerLane; ++k) {
      const int d = lane + 32 * k;
      if (d < p.HS) dq[k] += ds * load_as_float(kr[d]);
    }
  }
  T* dq_row = static_cast<T*>(p.dq) + qi * p.q_stride<kCross>() + p.q_col<kCross>(h);
#pragma unroll
  for (int k = 0; k < kRowwiseMaxPerLane; ++k) {
    const int d = lane + 32 * k;
    if (d < p.HS) dq_row[d] = float_to<T>(dq[k] * p.scale);
  }
}

// One warp per key row (b, g, j < keys()): dK_j, dV_j summed over the heads of group g and the
// chunk rows at positions i >= j (every chunk row when not causal; none for a padded key, which
// gets zeros).
template <typename T, bool kDropout, bool kCross>
__global__ void attention_backward_dkdv_rowwise_kernel(const AttentionParams p) {
  const int lane = threadIdx.x;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  const int64_t n_keys = p.keys<kCross>();
  if (row >= p.B * p.G * n_keys) return;
  const int64_t j = row % n_keys, bg = row / n_keys, g = bg % p.G, b = bg / p.G;
  const int64_t o_stride = p.NH * p.HS;
  const T* kv = static_cast<const T*>(p.kv) + b * p.T * p.kv_stride<kCross>();
  const int64_t k_col = p.k_col_of_group<kCross>(g), v_col = p.v_col_of_group<kCross>(g);
  float k_reg[kRowwiseMaxPerLane], vv[kRowwiseMaxPerLane], dk[kRowwiseMaxPerLane],
      dv[kRowwiseMaxPerLane];
#pragma unroll
  for (int k = 0; k < kRowwiseMaxPerLane; ++k) {
    const int d = lane + 32 * k;
    const bool in = d < p.HS;
    k_reg[k] = in ? load_as_float(kv[j * p.kv_stride<kCross>() + k_col + d]) : 0.0f;
    vv[k] = in ? load_as_float(kv[j * p.kv_stride<kCross>() + v_col + d]) : 0.0f;
    dk[k] = dv[k] = 0.0f;
  }
  // Query positions that see key j: from j (causal) or all; none when j is padding. The chunk
  // ends at q_pos0 + rows (= keys() for self-attention; cross-attention's TQ and TK differ).
  const int64_t i_begin = !p.causal ? p.q_pos0 : (j > p.q_pos0 ? j : p.q_pos0);
  const int64_t i_end = j < p.valid_keys<kCross>(b) ? p.q_pos0 + p.rows : i_begin;
  for (int64_t r = 0; r < p.R; ++r) {
    const int64_t h = g * p.R + r, bh = b * p.NH + h;
    for (int64_t i = i_begin; i < i_end; ++i) {  // positions
      const int64_t c = i - p.q_pos0, qi = b * p.TQ + p.q_row0 + c;   // chunk row, q_src row
      const T* q = static_cast<const T*>(p.q_src) + qi * p.q_stride<kCross>() + p.q_col<kCross>(h);
      const T* dO = static_cast<const T*>(p.dout) + qi * o_stride + h * p.HS;
      float qk = 0.0f, dov = 0.0f;
#pragma unroll
      for (int k = 0; k < kRowwiseMaxPerLane; ++k) {
        const int d = lane + 32 * k;
        if (d < p.HS) {
          qk += load_as_float(q[d]) * k_reg[k];
          dov += load_as_float(dO[d]) * vv[k];
        }
      }
      const float s = warp_sum(qk) * p.scale;
      const float pr = expf(s - p.lse_log2[bh * p.rows + c] * kLn2);
      const float mask =
          kDropout ? dropout_single(p, p.dropout_position<kCross>(b, h, i, j)) : 1.0f;
      const float ds = pr * (warp_sum(dov) * mask - p.delta[bh * p.rows + c]);
#pragma unroll
      for (int k = 0; k < kRowwiseMaxPerLane; ++k) {
        const int d = lane + 32 * k;
        if (d < p.HS) {
          dv[k] += pr * mask * load_as_float(dO[d]);
          dk[k] += ds * load_as_float(q[d]);
        }
      }
    }
  }
  T* dkv = static_cast<T*>(p.dkv) + (b * p.T + j) * p.kv_stride<kCross>();
#pragma unroll
  for (int k = 0; k < kRowwiseMaxPerLane; ++k) {
    const int d = lane + 32 * k;
    if (d < p.HS) {
      dkv[k_col + d] = float_to<T>(dk[k] * p.scale);
      dkv[v_col + d] = float_to<T>(dv[k]);
    }
  }
}

// ---- launchers --------------------------------------------------------------------------------
// The dQ kernel instance of a call: cross-attention's layout, the general mask or the causal
// mask alone (kRecomputeLse: the saved lse is 16-bit).
template <typename T, int HS, bool kDropout, bool kRecomputeLse>
auto dq_mma_kernel_for(const AttentionParams& p) {
  if (p.cross)
    return attention_backward_dq_mma_kernel<T, HS, kDropout, kRecomputeLse, true, true>;
  if (p.padded())
    return attention_backward_dq_mma_kernel<T, HS, kDropout, kRecomputeLse, true, false>;
  return attention_backward_dq_mma_kernel<T, HS, kDropout, kRecomputeLse, false, false>;
}

template <typename T, int HS, bool kDropout>
void launch_backward_mma(const CudaBackendState& st, const AttentionParams& p) {
  const unsigned int bh = static_cast<unsigned int>(p.B * p.NH);
  const unsigned int bg = static_cast<unsigned int>(p.B * p.G);
  {
    constexpr int kSmem = dq_smem_bytes<HS>();
    auto kernel = p.lse_is_f32 ? dq_mma_kernel_for<T, HS, kDropout, false>(p)
                               : dq_mma_kernel_for<T, HS, kDropout, true>(p);
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
    kernel<<<dim3(ceil_div_u(p.rows, kTile), bh), kMmaThreads, kSmem, st.stream()>>>(p);
    CUDA_CHECK_LAUNCH();
  }
  {
    constexpr int kSmem = dkdv_smem_bytes<HS>();
    auto kernel = p.cross      ? attention_backward_dkdv_mma_kernel<T, HS, kDropout, true, true>
                  : p.padded() ? attention_backward_dkdv_mma_kernel<T, HS, kDropout, true, false>
                               : attention_backward_dkdv_mma_kernel<T, HS, kDropout, false, false>;
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
    kernel<<<dim3(ceil_div_u(p.host_keys(), kTile), bg), kMmaThreads, kSmem, st.stream()>>>(p);
    CUDA_CHECK_LAUNCH();
  }
}

template <typename T, bool kDropout, bool kCross>
void launch_backward_rowwise(const CudaBackendState& st, const AttentionParams& p) {
  const dim3 block(32, 8);
  attention_backward_dq_rowwise_kernel<T, kDropout, kCross>
      <<<ceil_div_u(p.B * p.NH * p.rows, 8), block, 0, st.stream()>>>(p);
  CUDA_CHECK_LAUNCH();
  attention_backward_dkdv_rowwise_kernel<T, kDropout, kCross>
      <<<ceil_div_u(p.B * p.G * p.keys<kCross>(), 8), block, 0, st.stream()>>>(p);
  CUDA_CHECK_LAUNCH();
}

template <typename T, bool kDropout>
void launch_backward_rowwise(const CudaBackendState& st, const AttentionParams& p) {
  p.cross ? launch_backward_rowwise<T, kDropout, true>(st, p)
          : launch_backward_rowwise<T, kDropout, false>(st, p);
}

template <typename T>
void launch_backward(const CudaBackendState& st, const AttentionParams& p, bool tensor_cores,
                     bool dropout) {
  if constexpr (!std::is_same_v<T, float>) {
    if (tensor_cores) {
      if (p.HS == 64)
        dropout ? launch_backward_mma<T, 64, true>(st, p) : launch_backward_mma<T, 64, false>(st, p);
      else
        dropout ? launch_backward_mma<T, 128, true>(st, p)
                : launch_backward_mma<T, 128, false>(st, p);
      return;
    }
  }
  dropout ? launch_backward_rowwise<T, true>(st, p) : launch_backward_rowwise<T, false>(st, p);
}

}  // namespace

// ---- entry points ------------------------------------------------------------------------------
namespace {

// cuDNN (when allowed and it takes the call), else the tensor-core or row-wise kernels. p
// carries the checked geometry; dq and dkv may be one tensor (the whole-sequence op: disjoint
// columns).
void run_backward(DeviceContext& ctx, AttentionParams p, DType dtype, const Tensor& dout,
                  const Tensor& dq, const Tensor& dkv, double dropout_p, const char* op,
                  bool allow_cudnn = true) {
  require_on_device(ctx, dq, op, "dq");
  require_on_device(ctx, dkv, op, "dkv");
  require_on_device(ctx, dout, op, "dout");
  require_same_dtype(dkv, dq, op, "dkv", "dq");
  require_same_dtype(dkv, dout, op, "dkv", "dout");
  if (dq.dtype() != dtype)
    throw Error(ErrorKind::kInvalidArgument, std::string(op) + " on CUDA: gradients are " +
                                                 dtype_name(dq.dtype()) + ", inputs " +
                                                 dtype_name(dtype));
  const int64_t q_stride = p.cross ? p.q_stride<true>() : p.q_stride<false>();
  const int64_t kv_stride = p.cross ? p.kv_stride<true>() : p.kv_stride<false>();
  require_numel(dq, p.B * p.TQ * q_stride, op, "dq");
  require_numel(dkv, p.B * p.T * kv_stride, op, "dkv");
  require_numel(dout, p.B * p.TQ * p.NH * p.HS, op, "dout");
  if (p.B * p.rows == 0) return;
  if (allow_cudnn &&
      cudnn_attention_backward(
          ctx, cudnn_attention_call(p, dtype, dropout_p, dout.raw(), dq.raw(), dkv.raw())))
    return;
  const bool tensor_cores = attention_uses_tensor_cores(
      dtype, p.HS, {p.q_src, p.kv, p.out, dout.raw(), dq.raw(), dkv.raw()});
  if (!tensor_cores) require_rowwise_head_dim(p.HS, op);
  const int64_t rows = p.B * p.NH * p.rows;
  require_rows_fit_grid(rows, op);
  CudaBackendState& st = cuda_state(ctx);
  float* scratch = static_cast<float*>(st.scratch(2 * rows * sizeof(float)));
  p.dout = dout.raw();
  p.dq = dq.raw();
  p.dkv = dkv.raw();
  p.delta = scratch;
  p.lse_log2 = scratch + rows;
  dispatch_float(dtype, op, [&]<typename T>() {
    launch_backward<T>(st, p, tensor_cores, dropout_p > 0.0);
  });
}

}  // namespace

void attention_backward(DeviceContext& ctx, Tensor dqkv, const Tensor& dout, const Tensor& qkv,
                        const Tensor& out, const Tensor& lse, const AttentionShape& shape,
                        double dropout_p, const DropoutKey& key) {
  const char* op = "attention_backward";
  const AttentionParams p = make_attention_params(ctx, qkv, out, lse, shape, dropout_p, key, op);
  run_backward(ctx, p, qkv.dtype(), dout, dqkv, dqkv, dropout_p, op);
}

void attention_chunk_backward(DeviceContext& ctx, Tensor dq, Tensor dkv, const Tensor& dout,
                              const Tensor& q_src, const Tensor& kv, const Tensor& out,
                              const Tensor& lse, const AttentionShape& shape,
                              const AttentionChunk& chunk, double dropout_p,
                              const DropoutKey& key) {
  const char* op = "attention_chunk_backward";
  const AttentionParams p =
      make_attention_chunk_params(ctx, q_src, kv, out, lse, shape, chunk, dropout_p, key, op);
  run_backward(ctx, p, kv.dtype(), dout, dq, dkv, dropout_p, op);
}

// ShardLM's kernels only (the cuDNN graph is causal self-attention). dq and dkv are disjoint
// tensors; every row of both is assigned (the dK/dV kernels cover all TK keys).
void cross_attention_backward(DeviceContext& ctx, Tensor dq, Tensor dkv, const Tensor& dout,
                              const Tensor& q, const Tensor& kv, const Tensor& out,
                              const Tensor& lse, const AttentionShape& shape, double dropout_p,
                              const DropoutKey& key) {
  const char* op = "cross_attention_backward";
  const AttentionParams p =
      make_cross_attention_params(ctx, q, kv, out, lse, shape, dropout_p, key, op);
  run_backward(ctx, p, kv.dtype(), dout, dq, dkv, dropout_p, op, /*allow_cudnn=*/false);
}

}  // namespace shardlm::ops::cuda
