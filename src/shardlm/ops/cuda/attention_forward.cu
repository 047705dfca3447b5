// attention_forward.cu — grouped-query attention forward, flash-attention style, causal or
// (BERT) bidirectional with key padding (AttentionParams::masked, a kernel variant of its own):
// the T x T score matrix is never materialised; saves lse[B,NH,T] for the backward.
// attention_chunk_forward (context parallelism) runs the same kernels on one query chunk:
// chunk rows of q_src at global positions position + i against keys [0, position + rows) of
// kv (AttentionParams); the whole sequence is the chunk {0, T, 0} of q_src = kv = qkv, with the
// same grids. Masks, tile skipping and dropout positions use the global query position.
// cross_attention_forward (T5) runs the padded variant on q [B,TQ,NH*HS] against kv
// [B,TK,G*2*HS] (AttentionParams' layout accessors, kCross), never on cuDNN.
//
// Algorithms:
//  tensor-core path (bf16/fp16, HS = 64 or 128): FlashAttention-2. One block of 4 warps per
//    (64 query rows, b, h); each warp owns 16 consecutive query rows (forward_m_tiles) with Q held
//    as mma A-fragments, and skips key tiles wholly above its rows. Key/value
//    tiles of 64 rows stream through shared memory with cp.async double buffering (row pitch
//    HS + 8 elements, so ldmatrix is free of bank conflicts). Per tile: S = Q K^T on
//    mma.m16n8k16 (fp32 accumulate), causal mask on the diagonal tile only, online softmax in the
//    log2 domain (running max m, running sum l per row, rescaling O by 2^(m_old - m_new)), then
//    O += P V with P re-packed from the S accumulators into A-fragments (no shared-memory trip).
//    Blocks run heaviest-first (last query block first) to balance the causal triangle; a
//    block reads the key tiles up to its last row's position.
//    FLOPs: 2 * B * NH * T^2 * HS (causal half of 4 B NH T^2 HS).
//  row-wise path (fp32, other head dims up to 256, misaligned views): one warp per query row,
//    HS/32 dims per lane, exact expf; keys streamed from L2. Correct, slow: the reference-grade
//    path for tests and unusual shapes.
// Attention dropout multiplies P by the Philox mask at ((b*NH + h)*T + i)*T + j (cross-attention:
// ((b*NH + h)*TQ + i)*TK + j) after l is accumulated (dropout acts on normalised probabilities).
#include <cmath>

#include "shardlm/ops/cuda/attention_common.cuh"
#include "shardlm/ops/cuda/attention_shape.h"
#include "shardlm/ops/cuda/cuda_ops.h"

namespace shardlm::ops::cuda {
namespace {

constexpr int kTileRows = 64;   // key rows per K/V tile
constexpr int kMmaThreads = 128;

// Query m-tiles (16 rows each) per warp. Two would let each K/V fragment read from shared
// memory feed twice the mma work, but measured on H100 (HS 64, T 1024) it ran 13% slower
// (222 registers: 2 blocks/SM instead of 3), and HS 128 would not fit in 255 registers; so one.
template <int HS>
constexpr int forward_m_tiles() {
  return 1;
}
template <int HS>
constexpr int forward_query_rows() {
  return 4 * 16 * forward_m_tiles<HS>();
}
template <int HS>
constexpr int forward_smem_bytes() {
  return (forward_query_rows<HS>() + 4 * kTileRows) * (HS + 8) * 2;  // Q + 2x(K, V)
}

// Blocks per SM the register budget must allow (ptxas otherwise spends registers freely). At HS
// 64 shared memory admits 4 blocks (46 KB each): without dropout the kernel fits 128 registers
// (the chunk arithmetic of context parallelism had taken it to 141: 3 blocks, 11% slower on
// H100), with dropout 170 (3 blocks). At HS 128 shared memory admits 2 (87 KB).
template <int HS, bool kDropout>
constexpr int forward_min_blocks() {
  return HS == 64 ? (kDropout ? 3 : 4) : 2;
}

// ---- kernels ------------------------------------------------------------------------------------
// kPadding: the general mask (bidirectional and/or key padding, AttentionParams::masked);
// false: the causal mask alone, the GPT path, which keeps its register budget. kCross:
// cross-attention's layout (AttentionParams; always with kPadding).
template <typename T, int HS, bool kDropout, bool kPadding, bool kCross>
__global__ void __launch_bounds__(kMmaThreads, (forward_min_blocks<HS, kDropout>()))
    attention_forward_mma_kernel(const AttentionParams p) {
  // Row strides of q_src and kv in this layout.
  const int64_t q_stride = p.q_stride<kCross>(), kv_stride = p.kv_stride<kCross>();
  constexpr int kPitch = HS + 8, kM = forward_m_tiles<HS>(), kBr = forward_query_rows<HS>();
  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);          // [kBr][kPitch]
  T* sK = sQ + kBr * kPitch;                   // [2][64][kPitch]
  T* sV = sK + 2 * kTileRows * kPitch;         // [2][64][kPitch]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gid = lane / 4, tid4 = lane % 4;
  const int64_t qb = gridDim.x - 1 - blockIdx.x;  // heaviest (longest causal rows) first
  const int64_t b = blockIdx.y / p.NH, h = blockIdx.y % p.NH, g = h / p.R;
  const T* q_src = static_cast<const T*>(p.q_src) + b * p.TQ * q_stride;
  const T* kv = static_cast<const T*>(p.kv) + b * p.T * kv_stride;
  const int64_t n_keys = kPadding ? p.valid_keys<kCross>(b) : p.keys<kCross>();
  // q0: the block's first chunk row; pos0: its global position (what the mask compares).
  const int64_t q0 = qb * kBr, pos0 = p.q_pos0 + q0;
  const int64_t k_col = p.k_col_of_group<kCross>(g), v_col = p.v_col_of_group<kCross>(g);
  const int warp_row0 = warp * 16 * kM;  // this warp's rows: q0 + warp_row0 + [0, 16 kM)

  load_tile_async<T, kBr, HS, kPitch, kMmaThreads>(sQ, q_src, q_stride, p.q_col<kCross>(h),
                                                   p.q_row0 + q0, p.q_row0 + p.rows);
  load_tile_async<T, kTileRows, HS, kPitch, kMmaThreads>(sK, kv, kv_stride, k_col, 0, n_keys);
  load_tile_async<T, kTileRows, HS, kPitch, kMmaThreads>(sV, kv, kv_stride, v_col, 0, n_keys);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();

  uint32_t qf[kM][HS / 16][4];  // this warp's query rows as A-fragments
#pragma unroll
  for (int mt = 0; mt < kM; ++mt)
#pragma unroll
    for (int kk = 0; kk < HS / 16; ++kk)
      ldmatrix_x4(qf[mt][kk], sQ + (warp_row0 + mt * 16 + (lane % 8) + ((lane / 8) % 2) * 8) *
                                       kPitch + kk * 16 + (lane / 16) * 8);

  float o[kM][HS / 8][4];
  float row_max[kM][2], row_sum[kM][2];
  int64_t rows[kM][2];  // global position of accumulator rows gid and gid + 8 of each m-tile
#pragma unroll
  for (int mt = 0; mt < kM; ++mt) {
#pragma unroll
    for (int dn = 0; dn < HS / 8; ++dn) o[mt][dn][0] = o[mt][dn][1] = o[mt][dn][2] = o[mt][dn][3] = 0.0f;
    row_max[mt][0] = row_max[mt][1] = -INFINITY;
    row_sum[mt][0] = row_sum[mt][1] = 0.0f;
    rows[mt][0] = pos0 + warp_row0 + mt * 16 + gid;
    rows[mt][1] = rows[mt][0] + 8;
  }
  const int64_t warp_last_row = pos0 + warp_row0 + 16 * kM - 1;

  // Key tiles up to the block's last valid row (keys <= its position).
  const int64_t last_row = q0 + kBr < p.rows ? q0 + kBr - 1 : p.rows - 1;
  int64_t n_tiles = (p.q_pos0 + last_row) / kTileRows + 1;
  if constexpr (kPadding) {  // tiles holding valid keys (all of them when bidirectional)
    const int64_t valid_tiles = (n_keys + kTileRows - 1) / kTileRows;
    n_tiles = p.causal && n_tiles < valid_tiles ? n_tiles : valid_tiles;
  }
  for (int64_t jt = 0; jt < n_tiles; ++jt) {
    const int buf = static_cast<int>(jt & 1);
    if (jt + 1 < n_tiles) {
      const int nb = buf ^ 1;
      load_tile_async<T, kTileRows, HS, kPitch, kMmaThreads>(
          sK + nb * kTileRows * kPitch, kv, kv_stride, k_col, (jt + 1) * kTileRows, n_keys);
      load_tile_async<T, kTileRows, HS, kPitch, kMmaThreads>(
          sV + nb * kTileRows * kPitch, kv, kv_stride, v_col, (jt + 1) * kTileRows, n_keys);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int64_t key0 = jt * kTileRows;
    // Warp-uniform: a tile entirely above this warp's rows is fully masked; skip its math.
    if ((kPadding && !p.causal) || key0 <= warp_last_row) {
      const T* k_tile = sK + buf * kTileRows * kPitch;
      const T* v_tile = sV + buf * kTileRows * kPitch;

      // S = Q K^T: 16 x 64 per m-tile, as 8 n-tiles of 8 keys.
      float s[kM][8][4];
#pragma unroll
      for (int mt = 0; mt < kM; ++mt)
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.0f;
#pragma unroll
      for (int np = 0; np < 4; ++np) {
#pragma unroll
        for (int kk = 0; kk < HS / 16; ++kk) {
          uint32_t kb[4];
          ldmatrix_x4(kb, k_tile + (np * 16 + (lane % 8) + (lane / 16) * 8) * kPitch + kk * 16 +
                              ((lane / 8) % 2) * 8);
#pragma unroll
          for (int mt = 0; mt < kM; ++mt) {
            mma_16816<T>(s[mt][2 * np], qf[mt][kk], kb[0], kb[1]);
            mma_16816<T>(s[mt][2 * np + 1], qf[mt][kk], kb[2], kb[3]);
          }
        }
      }

      // Scale into the log2 domain, mask tiles that reach the diagonal, online softmax.
      const bool needs_mask =
          kPadding ? (p.causal && key0 + kTileRows - 1 > pos0 + warp_row0) ||
                         key0 + kTileRows > n_keys
                   : key0 + kTileRows - 1 > pos0 + warp_row0;
#pragma unroll
      for (int mt = 0; mt < kM; ++mt) {
        float tile_max[2] = {row_max[mt][0], row_max[mt][1]};
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float x = s[mt][nt][e] * p.scale_log2;
            const int64_t j = key0 + nt * 8 + tid4 * 2 + (e & 1);
            if (needs_mask && (kPadding ? p.masked(rows[mt][e / 2], j, n_keys)
                                        : j > rows[mt][e / 2]))
              x = -INFINITY;
            s[mt][nt][e] = x;
            tile_max[e / 2] = fmaxf(tile_max[e / 2], x);
          }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
          tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
          const float correction = exp2f(row_max[mt][r] - tile_max[r]);
          row_max[mt][r] = tile_max[r];
          row_sum[mt][r] *= correction;
#pragma unroll
          for (int dn = 0; dn < HS / 8; ++dn) {
            o[mt][dn][2 * r] *= correction;
            o[mt][dn][2 * r + 1] *= correction;
          }
        }
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float pe = exp2f(s[mt][nt][e] - row_max[mt][e / 2]);
            row_sum[mt][e / 2] += pe;
            s[mt][nt][e] = pe;
          }
          if constexpr (kDropout) {
            const int64_t j = key0 + nt * 8 + tid4 * 2;
            const float2 m0 = dropout_pair(p, p.dropout_position<kCross>(b, h, rows[mt][0], j));
            const float2 m1 = dropout_pair(p, p.dropout_position<kCross>(b, h, rows[mt][1], j));
            s[mt][nt][0] *= m0.x;
            s[mt][nt][1] *= m0.y;
            s[mt][nt][2] *= m1.x;
            s[mt][nt][3] *= m1.y;
          }
        }
      }

      // O += P V: P from the S accumulators (2 n-tiles = one 16-key A-fragment).
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        uint32_t pa[kM][4];
#pragma unroll
        for (int mt = 0; mt < kM; ++mt) {
          pa[mt][0] = pack2<T>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
          pa[mt][1] = pack2<T>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
          pa[mt][2] = pack2<T>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
          pa[mt][3] = pack2<T>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
        }
#pragma unroll
        for (int dp = 0; dp < HS / 16; ++dp) {
          uint32_t vb[4];
          ldmatrix_x4_trans(vb, v_tile + (kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * kPitch +
                                    dp * 16 + (lane / 16) * 8);
#pragma unroll
          for (int mt = 0; mt < kM; ++mt) {
            mma_16816<T>(o[mt][2 * dp], pa[mt], vb[0], vb[1]);
            mma_16816<T>(o[mt][2 * dp + 1], pa[mt], vb[2], vb[3]);
          }
        }
      }
    }
    __syncthreads();  // everyone is done with buf before the next prefetch overwrites it
  }

  // Normalise and store O and lse (rows of the chunk only).
  const int64_t out_stride = p.NH * p.HS;
  T* out = static_cast<T*>(p.out) + (b * p.TQ + p.q_row0) * out_stride + h * HS;
#pragma unroll
  for (int mt = 0; mt < kM; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      row_sum[mt][r] += __shfl_xor_sync(0xffffffffu, row_sum[mt][r], 1);
      row_sum[mt][r] += __shfl_xor_sync(0xffffffffu, row_sum[mt][r], 2);
    }
    const float inv0 = 1.0f / row_sum[mt][0], inv1 = 1.0f / row_sum[mt][1];
    const int64_t i0 = rows[mt][0] - p.q_pos0, i1 = i0 + 8;  // chunk rows
#pragma unroll
    for (int dn = 0; dn < HS / 8; ++dn) {
      const int d = dn * 8 + tid4 * 2;
      if (i0 < p.rows)
        *reinterpret_cast<uint32_t*>(out + i0 * out_stride + d) =
            pack2<T>(o[mt][dn][0] * inv0, o[mt][dn][1] * inv0);
      if (i1 < p.rows)
        *reinterpret_cast<uint32_t*>(out + i1 * out_stride + d) =
            pack2<T>(o[mt][dn][2] * inv1, o[mt][dn][3] * inv1);
    }
    if (tid4 == 0) {
      const int64_t base = (b * p.NH + h) * p.TQ + p.q_row0;
      if (i0 < p.rows)
        store_lse<T>(p, base + i0, (row_max[mt][0] + log2f(row_sum[mt][0])) * kLn2);
      if (i1 < p.rows)
        store_lse<T>(p, base + i1, (row_max[mt][1] + log2f(row_sum[mt][1])) * kLn2);
    }
  }
}

// One warp per query row (b, h, chunk row c at position i); lane holds dims lane + 32k.
template <typename T, bool kDropout, bool kCross>
__global__ void attention_forward_rowwise_kernel(const AttentionParams p) {
  // Row strides of q_src and kv in this layout.
  const int64_t q_stride = p.q_stride<kCross>(), kv_stride = p.kv_stride<kCross>();
  const int lane = threadIdx.x;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (row >= p.B * p.NH * p.rows) return;
  const int64_t c = row % p.rows, bh = row / p.rows, h = bh % p.NH, b = bh / p.NH, g = h / p.R;
  const int64_t i = p.q_pos0 + c, qi = p.q_row0 + c;  // global position, q_src row
  const T* kv = static_cast<const T*>(p.kv) + b * p.T * kv_stride;
  const T* q = static_cast<const T*>(p.q_src) + (b * p.TQ + qi) * q_stride + p.q_col<kCross>(h);
  const int64_t k_col = p.k_col_of_group<kCross>(g), v_col = p.v_col_of_group<kCross>(g);
  float qv[kRowwiseMaxPerLane], acc[kRowwiseMaxPerLane];
#pragma unroll
  for (int k = 0; k < kRowwiseMaxPerLane; ++k) {
    const int d = lane + 32 * k;
    qv[k] = d < p.HS ? load_as_float(q[d]) : 0.0f;
    acc[k] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  const int64_t valid = p.valid_keys<kCross>(b);
  const int64_t key_end = p.causal && i + 1 < valid ? i + 1 : valid;
  for (int64_t j = 0; j < key_end; ++j) {
    const T* kr = kv + j * kv_stride + k_col;
    const T* vr = kv + j * kv_stride + v_col;
    float dot = 0.0f;
#pragma unroll
    for (int k = 0; k < kRowwiseMaxPerLane; ++k) {
      const int d = lane + 32 * k;
      if (d < p.HS) dot += qv[k] * load_as_float(kr[d]);
    }
    const float s = warp_sum(dot) * p.scale;
    const float m_new = fmaxf(m, s);
    const float correction = expf(m - m_new);
    const float pj = expf(s - m_new);
    l = l * correction + pj;
    const float w = kDropout ? pj * dropout_single(p, p.dropout_position<kCross>(b, h, i, j)) : pj;
#pragma unroll
    for (int k = 0; k < kRowwiseMaxPerLane; ++k) {
      const int d = lane + 32 * k;
      acc[k] = acc[k] * correction + (d < p.HS ? w * load_as_float(vr[d]) : 0.0f);
    }
    m = m_new;
  }
  T* out = static_cast<T*>(p.out) + (b * p.TQ + qi) * p.NH * p.HS + h * p.HS;
#pragma unroll
  for (int k = 0; k < kRowwiseMaxPerLane; ++k) {
    const int d = lane + 32 * k;
    if (d < p.HS) out[d] = float_to<T>(acc[k] / l);
  }
  if (lane == 0) store_lse<T>(p, bh * p.TQ + qi, m + logf(l));
}

// ---- launchers --------------------------------------------------------------------------------
template <typename T, int HS, bool kDropout>
void launch_forward_mma(const CudaBackendState& st, const AttentionParams& p) {
  constexpr int kSmem = forward_smem_bytes<HS>();
  auto kernel = p.cross      ? attention_forward_mma_kernel<T, HS, kDropout, true, true>
                : p.padded() ? attention_forward_mma_kernel<T, HS, kDropout, true, false>
                             : attention_forward_mma_kernel<T, HS, kDropout, false, false>;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  const dim3 grid(ceil_div_u(p.rows, forward_query_rows<HS>()),
                  static_cast<unsigned int>(p.B * p.NH));
  kernel<<<grid, kMmaThreads, kSmem, st.stream()>>>(p);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void launch_forward(const CudaBackendState& st, const AttentionParams& p, bool tensor_cores,
                    bool dropout) {
  if constexpr (!std::is_same_v<T, float>) {
    if (tensor_cores) {
      if (p.HS == 64)
        dropout ? launch_forward_mma<T, 64, true>(st, p) : launch_forward_mma<T, 64, false>(st, p);
      else
        dropout ? launch_forward_mma<T, 128, true>(st, p)
                : launch_forward_mma<T, 128, false>(st, p);
      return;
    }
  }
  const dim3 block(32, 8);
  const unsigned int blocks = ceil_div_u(p.B * p.NH * p.rows, 8);
  auto kernel = dropout ? (p.cross ? attention_forward_rowwise_kernel<T, true, true>
                                   : attention_forward_rowwise_kernel<T, true, false>)
                        : (p.cross ? attention_forward_rowwise_kernel<T, false, true>
                                   : attention_forward_rowwise_kernel<T, false, false>);
  kernel<<<blocks, block, 0, st.stream()>>>(p);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

// ---- entry points ------------------------------------------------------------------------------
namespace {

// ShardLM's tensor-core or row-wise kernels.
void run_own_forward(DeviceContext& ctx, const AttentionParams& p, DType dtype, double dropout_p,
                     const char* op) {
  const bool tensor_cores = attention_uses_tensor_cores(dtype, p.HS, {p.q_src, p.kv, p.out});
  if (!tensor_cores) require_rowwise_head_dim(p.HS, op);
  require_rows_fit_grid(p.B * p.NH, op);
  const CudaBackendState& st = cuda_state(ctx);
  dispatch_float(dtype, op, [&]<typename T>() {
    launch_forward<T>(st, p, tensor_cores, dropout_p > 0.0);
  });
}

// Self-attention: cuDNN when it takes the call, else ShardLM's kernels.
void run_forward(DeviceContext& ctx, const AttentionParams& p, DType dtype, double dropout_p,
                 const char* op) {
  if (p.B * p.rows == 0) return;
  if (cudnn_attention_forward(ctx, cudnn_attention_call(p, dtype, dropout_p))) return;
  run_own_forward(ctx, p, dtype, dropout_p, op);
}

}  // namespace

void attention_forward(DeviceContext& ctx, Tensor out, Tensor lse, const Tensor& qkv,
                       const AttentionShape& shape, double dropout_p, const DropoutKey& key) {
  const char* op = "attention_forward";
  const AttentionParams p =
      make_attention_params(ctx, qkv, out, lse, shape, dropout_p, key, op);
  run_forward(ctx, p, qkv.dtype(), dropout_p, op);
}

void attention_chunk_forward(DeviceContext& ctx, Tensor out, Tensor lse, const Tensor& q_src,
                             const Tensor& kv, const AttentionShape& shape,
                             const AttentionChunk& chunk, double dropout_p, const DropoutKey& key) {
  const char* op = "attention_chunk_forward";
  const AttentionParams p =
      make_attention_chunk_params(ctx, q_src, kv, out, lse, shape, chunk, dropout_p, key, op);
  run_forward(ctx, p, kv.dtype(), dropout_p, op);
}

// ShardLM's kernels only: the cuDNN graph is causal self-attention on the fused-QKV layout.
void cross_attention_forward(DeviceContext& ctx, Tensor out, Tensor lse, const Tensor& q,
                             const Tensor& kv, const AttentionShape& shape, double dropout_p,
                             const DropoutKey& key) {
  const char* op = "cross_attention_forward";
  const AttentionParams p =
      make_cross_attention_params(ctx, q, kv, out, lse, shape, dropout_p, key, op);
  if (p.B * p.rows == 0) return;
  run_own_forward(ctx, p, kv.dtype(), dropout_p, op);
}

}  // namespace shardlm::ops::cuda
