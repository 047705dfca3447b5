// attention_forward.cu — causal grouped-query self-attention forward, flash-attention style:
// the T x T score matrix is never materialised; saves lse[B,NH,T] for the backward.
//
// Algorithms:
//  tensor-core path (bf16/fp16, HS = 64 or 128): FlashAttention-2. One block of 4 warps per
//    (64 query rows, b, h); each warp owns 16 query rows with Q held as mma A-fragments. Key/value
//    tiles of 64 rows stream through shared memory with cp.async double buffering (row pitch
//    HS + 8 elements, so ldmatrix is free of bank conflicts). Per tile: S = Q K^T on
//    mma.m16n8k16 (fp32 accumulate), causal mask on the diagonal tile only, online softmax in the
//    log2 domain (running max m, running sum l per row, rescaling O by 2^(m_old - m_new)), then
//    O += P V with P re-packed from the S accumulators into A-fragments (no shared-memory trip).
//    Blocks run heaviest-first (last query block first) to balance the causal triangle.
//    FLOPs: 2 * B * NH * T^2 * HS (causal half of 4 B NH T^2 HS).
//  row-wise path (fp32, other head dims up to 256, misaligned views): one warp per query row,
//    HS/32 dims per lane, exact expf; keys streamed from L2. Correct, slow: the reference-grade
//    path for tests and unusual shapes.
// Attention dropout multiplies P by the Philox mask at ((b*NH + h)*T + i)*T + j after l is
// accumulated (dropout acts on normalised probabilities).
#include <cmath>

#include "shardlm/ops/cuda/attention_common.cuh"
#include "shardlm/ops/cuda/attention_shape.h"
#include "shardlm/ops/cuda/cuda_ops.h"

namespace shardlm::ops::cuda {
namespace {

constexpr int kTileRows = 64;   // query rows per block = key rows per tile
constexpr int kMmaThreads = 128;

template <int HS>
constexpr int forward_smem_bytes() {
  return (kTileRows + 4 * kTileRows) * (HS + 8) * 2;  // Q + double-buffered K and V
}

// ---- kernels ------------------------------------------------------------------------------------
template <typename T, int HS, bool kDropout>
__global__ void __launch_bounds__(kMmaThreads)
    attention_forward_mma_kernel(const AttentionParams p) {
  constexpr int kPitch = HS + 8;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);          // [64][kPitch]
  T* sK = sQ + kTileRows * kPitch;             // [2][64][kPitch]
  T* sV = sK + 2 * kTileRows * kPitch;         // [2][64][kPitch]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gid = lane / 4, tid4 = lane % 4;
  const int64_t qb = gridDim.x - 1 - blockIdx.x;  // heaviest (longest causal row) first
  const int64_t b = blockIdx.y / p.NH, h = blockIdx.y % p.NH, g = h / p.R;
  const T* qkv = static_cast<const T*>(p.qkv) + b * p.T * p.W;
  const int64_t q0 = qb * kTileRows, k_col = p.k_col_of_group(g), v_col = p.v_col_of_group(g);

  load_tile_async<T, kTileRows, HS, kPitch, kMmaThreads>(sQ, qkv, p.W, p.q_col(h), q0, p.T);
  load_tile_async<T, kTileRows, HS, kPitch, kMmaThreads>(sK, qkv, p.W, k_col, 0, p.T);
  load_tile_async<T, kTileRows, HS, kPitch, kMmaThreads>(sV, qkv, p.W, v_col, 0, p.T);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();

  uint32_t qf[HS / 16][4];  // this warp's 16 query rows as A-fragments
#pragma unroll
  for (int kk = 0; kk < HS / 16; ++kk)
    ldmatrix_x4(qf[kk], sQ + (warp * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * kPitch + kk * 16 +
                            (lane / 16) * 8);

  float o[HS / 8][4];
#pragma unroll
  for (int dn = 0; dn < HS / 8; ++dn) o[dn][0] = o[dn][1] = o[dn][2] = o[dn][3] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
  const int64_t i0 = q0 + warp * 16 + gid, i1 = i0 + 8;

  const int64_t n_tiles = qb + 1;
  for (int64_t jt = 0; jt < n_tiles; ++jt) {
    const int buf = static_cast<int>(jt & 1);
    if (jt + 1 < n_tiles) {
      const int nb = buf ^ 1;
      load_tile_async<T, kTileRows, HS, kPitch, kMmaThreads>(sK + nb * kTileRows * kPitch, qkv,
                                                             p.W, k_col, (jt + 1) * kTileRows, p.T);
      load_tile_async<T, kTileRows, HS, kPitch, kMmaThreads>(sV + nb * kTileRows * kPitch, qkv,
                                                             p.W, v_col, (jt + 1) * kTileRows, p.T);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* k_tile = sK + buf * kTileRows * kPitch;
    const T* v_tile = sV + buf * kTileRows * kPitch;

    // S = Q K^T: 16 x 64 per warp, as 8 n-tiles of 8 keys.
    float s[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int np = 0; np < 4; ++np) {
#pragma unroll
      for (int kk = 0; kk < HS / 16; ++kk) {
        uint32_t kb[4];
        ldmatrix_x4(kb, k_tile + (np * 16 + (lane % 8) + (lane / 16) * 8) * kPitch + kk * 16 +
                            ((lane / 8) % 2) * 8);
        mma_16816<T>(s[2 * np], qf[kk], kb[0], kb[1]);
        mma_16816<T>(s[2 * np + 1], qf[kk], kb[2], kb[3]);
      }
    }

    // Scale into the log2 domain, mask the diagonal tile, update the running max.
    const bool diagonal = jt == qb;
    float tile_max[2] = {row_max[0], row_max[1]};
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[nt][e] * p.scale_log2;
        const int64_t j = jt * kTileRows + nt * 8 + tid4 * 2 + (e & 1);
        if (diagonal && j > (e < 2 ? i0 : i1)) x = -INFINITY;
        s[nt][e] = x;
        tile_max[e / 2] = fmaxf(tile_max[e / 2], x);
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
      tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
      const float correction = exp2f(row_max[r] - tile_max[r]);
      row_max[r] = tile_max[r];
      row_sum[r] *= correction;
#pragma unroll
      for (int dn = 0; dn < HS / 8; ++dn) {
        o[dn][2 * r] *= correction;
        o[dn][2 * r + 1] *= correction;
      }
    }
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float pe = exp2f(s[nt][e] - row_max[e / 2]);
        row_sum[e / 2] += pe;
        s[nt][e] = pe;
      }
      if constexpr (kDropout) {
        const int64_t j = jt * kTileRows + nt * 8 + tid4 * 2;
        const float2 m0 = dropout_pair(p, p.dropout_position(b, h, i0, j));
        const float2 m1 = dropout_pair(p, p.dropout_position(b, h, i1, j));
        s[nt][0] *= m0.x;
        s[nt][1] *= m0.y;
        s[nt][2] *= m1.x;
        s[nt][3] *= m1.y;
      }
    }

    // O += P V: P from the S accumulators (2 n-tiles = one 16-key A-fragment).
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const uint32_t pa[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]),
                              pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                              pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < HS / 16; ++dp) {
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, v_tile + (kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * kPitch +
                                  dp * 16 + (lane / 16) * 8);
        mma_16816<T>(o[2 * dp], pa, vb[0], vb[1]);
        mma_16816<T>(o[2 * dp + 1], pa, vb[2], vb[3]);
      }
    }
    __syncthreads();  // everyone is done with buf before the next prefetch overwrites it
  }

  // Normalise and store O and lse.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 1);
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 2);
  }
  const float inv0 = 1.0f / row_sum[0], inv1 = 1.0f / row_sum[1];
  const int64_t out_stride = p.NH * p.HS;
  T* out = static_cast<T*>(p.out) + b * p.T * out_stride + h * HS;
#pragma unroll
  for (int dn = 0; dn < HS / 8; ++dn) {
    const int d = dn * 8 + tid4 * 2;
    if (i0 < p.T)
      *reinterpret_cast<uint32_t*>(out + i0 * out_stride + d) =
          pack2<T>(o[dn][0] * inv0, o[dn][1] * inv0);
    if (i1 < p.T)
      *reinterpret_cast<uint32_t*>(out + i1 * out_stride + d) =
          pack2<T>(o[dn][2] * inv1, o[dn][3] * inv1);
  }
  if (tid4 == 0) {
    const int64_t base = (b * p.NH + h) * p.T;
    if (i0 < p.T) store_lse<T>(p, base + i0, (row_max[0] + log2f(row_sum[0])) * kLn2);
    if (i1 < p.T) store_lse<T>(p, base + i1, (row_max[1] + log2f(row_sum[1])) * kLn2);
  }
}

// One warp per query row (b, h, i); lane holds dims lane + 32k.
template <typename T, bool kDropout>
__global__ void attention_forward_rowwise_kernel(const AttentionParams p) {
  const int lane = threadIdx.x;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (row >= p.B * p.NH * p.T) return;
  const int64_t i = row % p.T, bh = row / p.T, h = bh % p.NH, b = bh / p.NH, g = h / p.R;
  const T* qkv = static_cast<const T*>(p.qkv) + b * p.T * p.W;
  const T* q = qkv + i * p.W + p.q_col(h);
  const int64_t k_col = p.k_col_of_group(g), v_col = p.v_col_of_group(g);
  float qv[kRowwiseMaxPerLane], acc[kRowwiseMaxPerLane];
#pragma unroll
  for (int k = 0; k < kRowwiseMaxPerLane; ++k) {
    const int d = lane + 32 * k;
    qv[k] = d < p.HS ? load_as_float(q[d]) : 0.0f;
    acc[k] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int64_t j = 0; j <= i; ++j) {
    const T* kr = qkv + j * p.W + k_col;
    const T* vr = qkv + j * p.W + v_col;
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
    const float w = kDropout ? pj * dropout_single(p, p.dropout_position(b, h, i, j)) : pj;
#pragma unroll
    for (int k = 0; k < kRowwiseMaxPerLane; ++k) {
      const int d = lane + 32 * k;
      acc[k] = acc[k] * correction + (d < p.HS ? w * load_as_float(vr[d]) : 0.0f);
    }
    m = m_new;
  }
  T* out = static_cast<T*>(p.out) + (b * p.T + i) * p.NH * p.HS + h * p.HS;
#pragma unroll
  for (int k = 0; k < kRowwiseMaxPerLane; ++k) {
    const int d = lane + 32 * k;
    if (d < p.HS) out[d] = float_to<T>(acc[k] / l);
  }
  if (lane == 0) store_lse<T>(p, bh * p.T + i, m + logf(l));
}

// ---- launchers --------------------------------------------------------------------------------
template <typename T, int HS, bool kDropout>
void launch_forward_mma(const CudaBackendState& st, const AttentionParams& p) {
  constexpr int kSmem = forward_smem_bytes<HS>();
  auto kernel = attention_forward_mma_kernel<T, HS, kDropout>;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  const dim3 grid(ceil_div_u(p.T, kTileRows), static_cast<unsigned int>(p.B * p.NH));
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
  const unsigned int blocks = ceil_div_u(p.B * p.NH * p.T, 8);
  if (dropout)
    attention_forward_rowwise_kernel<T, true><<<blocks, block, 0, st.stream()>>>(p);
  else
    attention_forward_rowwise_kernel<T, false><<<blocks, block, 0, st.stream()>>>(p);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

// ---- entry point -------------------------------------------------------------------------------
void attention_forward(DeviceContext& ctx, Tensor out, Tensor lse, const Tensor& qkv,
                       const AttentionShape& shape, double dropout_p, const DropoutKey& key) {
  const char* op = "attention_forward";
  const AttentionParams p =
      make_attention_params(ctx, qkv, out, lse, shape, dropout_p, key, op);
  if (p.B * p.T == 0) return;
  const bool tensor_cores =
      attention_uses_tensor_cores(qkv.dtype(), p.HS, {qkv.raw(), out.raw()});
  if (!tensor_cores) require_rowwise_head_dim(p.HS, op);
  require_rows_fit_grid(p.B * p.NH, op);
  const CudaBackendState& st = cuda_state(ctx);
  dispatch_float(qkv.dtype(), op, [&]<typename T>() {
    launch_forward<T>(st, p, tensor_cores, dropout_p > 0.0);
  });
}

}  // namespace shardlm::ops::cuda
