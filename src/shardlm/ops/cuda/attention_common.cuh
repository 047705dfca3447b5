// attention_common.cuh — pieces shared by the attention kernels: the fused-QKV geometry
// (Megatron GQA layout from ops.h) and cross-attention's separate q and kv layouts, the kernel
// parameter block, Hopper/Ampere warp-level tensor-core primitives (mma.sync m16n8k16, ldmatrix,
// cp.async), and the attention-dropout mask at position ((b*NH + h)*TQ' + i)*T + j, i the global
// query position of TQ' (T for self-attention, TQ for cross-attention) (philox.cuh,
// bit-identical to the CPU).
//
// Fragment layouts used throughout (PTX ISA, mma.m16n8k16 with 16-bit inputs; lane = 4*gid+tid4):
//   A (16x16, row-major): regs {r0,r1,r2,r3} = rows {gid, gid+8, gid, gid+8},
//                         cols {2*tid4.., 2*tid4.., 8+2*tid4.., 8+2*tid4..} (2 elements each)
//   B (16x8, k-major):    regs {r0,r1} = k {2*tid4.., 8+2*tid4..}, n = gid
//   C (16x8, fp32):       {c0,c1} = row gid, cols 2*tid4+{0,1}; {c2,c3} = row gid+8
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "shardlm/ops/cuda/common.cuh"
#include "shardlm/ops/cuda/philox.cuh"

namespace shardlm::ops::cuda {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Everything the attention kernels need, by value (one struct for forward and backward).
// The kernels compute one query chunk against keys and values: rows [q_row0, q_row0 + rows) of
// q_src at global positions [q_pos0, q_pos0 + rows) against keys [0, keys()) of kv (fewer with
// key padding: valid_keys). Two layouts (ops.h):
//   self-attention (fused QKV): q_src [B, TQ, W] and kv [B, T, W], W = G*(R+2)*HS, keys
//     [0, q_pos0 + rows) (causal); the whole sequence is q_src = kv = qkv, TQ = rows = T,
//     q_row0 = q_pos0 = 0 (and dq = dkv = dqkv);
//   cross-attention (cross = true): q_src = q [B, TQ, NH*HS] and kv [B, T = TK, G*2*HS] (each
//     group's [k | v]), every query row against all TK keys: never causal, rows = TQ, q_row0 =
//     q_pos0 = 0.
// The kernels take the layout as a template parameter (kCross = cross) and read the geometry
// through the accessors below, so the self-attention instances compute exactly what they did
// before cross-attention existed, with the same register budgets.
struct AttentionParams {
  const void* q_src = nullptr;  // [B, TQ, q_stride]: query rows (q columns read)
  const void* kv = nullptr;     // [B, T, kv_stride]: keys and values (k and v columns read)
  void* out = nullptr;          // [B, TQ, NH*HS] forward output (backward: saved output)
  const void* dout = nullptr;   // [B, TQ, NH*HS]
  void* dq = nullptr;           // like q_src: q columns of the chunk rows written
  void* dkv = nullptr;          // like kv: k/v columns of rows [0, keys()) written
  void* lse = nullptr;          // [B, NH, TQ] (dtype lse_is_f32 ? fp32 : T)
  bool lse_is_f32 = false;
  bool cross = false;           // cross-attention's layout (the kernels' kCross)
  float* delta = nullptr;       // backward scratch [B*NH*rows]: D_i = dO_i . O_i
  float* lse_log2 = nullptr;    // backward scratch [B*NH*rows]: lse_i * log2(e), fp32-exact
  int64_t B = 0, T = 0, NH = 0, G = 0, R = 0, HS = 0, W = 0;  // T: kv's rows; W: fused width
  int64_t TQ = 0, q_row0 = 0, rows = 0, q_pos0 = 0;  // the query chunk (AttentionChunk)
  float scale = 0, scale_log2 = 0;  // 1/sqrt(HS), and times log2(e)
  DropoutStream dropout;
  float keep_scale = 1.0f;          // 1/(1-p)

  // Row strides (elements) of q_src / dq and of kv / dkv.
  template <bool kCross>
  __host__ __device__ int64_t q_stride() const { return kCross ? NH * HS : W; }
  template <bool kCross>
  __host__ __device__ int64_t kv_stride() const { return kCross ? G * 2 * HS : W; }
  // Keys taking part (before padding).
  template <bool kCross>
  __host__ __device__ int64_t keys() const { return kCross ? T : q_pos0 + rows; }
  int64_t host_keys() const { return cross ? keys<true>() : keys<false>(); }
  // The mask (AttentionShape): causal, and/or key padding. Chunks are always causal without
  // padding; the whole sequence may be bidirectional (keys() = T then too); cross-attention is
  // never causal.
  bool causal = true;
  const int32_t* key_lengths = nullptr;  // [B] on the device, or null
  bool padded() const { return !causal || key_lengths != nullptr; }
  // Keys of sequence b that take part: [0, valid_keys(b)).
  template <bool kCross>
  __device__ int64_t valid_keys(int64_t b) const {
    const int64_t n = keys<kCross>();
    return key_lengths != nullptr && key_lengths[b] < n ? key_lengths[b] : n;
  }
  // Whether key j is masked for the query at global position i (valid: valid_keys(b)).
  __host__ __device__ bool masked(int64_t i, int64_t j, int64_t valid) const {
    return (causal && j > i) || j >= valid;
  }
  // Column offsets of query head h and of its group's k and v inside a q_src / kv row.
  template <bool kCross>
  __host__ __device__ int64_t q_col(int64_t h) const {
    return kCross ? h * HS : (h / R) * (R + 2) * HS + (h % R) * HS;
  }
  template <bool kCross>
  __host__ __device__ int64_t k_col_of_group(int64_t g) const {
    return kCross ? g * 2 * HS : g * (R + 2) * HS + R * HS;
  }
  template <bool kCross>
  __host__ __device__ int64_t v_col_of_group(int64_t g) const {
    return k_col_of_group<kCross>(g) + HS;
  }
  // Tensor parallelism: global head count and this shard's first head (AttentionShape), so the
  // dropout position uses global head indices; i is the global query position (of T for
  // self-attention, of TQ for cross-attention), j the key (of T, kv's length).
  int64_t dropout_NH = 0, head_offset = 0;
  template <bool kCross>
  __host__ __device__ uint64_t dropout_position(int64_t b, int64_t h, int64_t i, int64_t j) const {
    const uint64_t queries = kCross ? TQ : T;
    return ((static_cast<uint64_t>(b) * dropout_NH + head_offset + h) * queries + i) * T + j;
  }
};

// lse stored in its own dtype (fp32, or the tensors' 16-bit dtype).
template <typename T>
__device__ __forceinline__ float load_lse(const AttentionParams& p, int64_t idx) {
  return p.lse_is_f32 ? static_cast<const float*>(p.lse)[idx]
                      : load_as_float(static_cast<const T*>(p.lse)[idx]);
}
template <typename T>
__device__ __forceinline__ void store_lse(const AttentionParams& p, int64_t idx, float v) {
  if (p.lse_is_f32)
    static_cast<float*>(p.lse)[idx] = v;
  else
    static_cast<T*>(p.lse)[idx] = float_to<T>(v);
}

// Dropout multipliers (0 or 1/(1-p)) of positions pos and pos + 1 (one Philox call when both
// fall in one block of 4).
__device__ __forceinline__ float2 dropout_pair(const AttentionParams& p, uint64_t pos) {
  const uint4 bits = p.dropout.bits_for_group(pos / 4);
  const float m0 = p.dropout.dropped(uint4_word(bits, pos % 4)) ? 0.0f : p.keep_scale;
  float m1;
  if (pos % 4 != 3) {
    m1 = p.dropout.dropped(uint4_word(bits, (pos + 1) % 4)) ? 0.0f : p.keep_scale;
  } else {
    const uint4 next = p.dropout.bits_for_group((pos + 1) / 4);
    m1 = p.dropout.dropped(next.x) ? 0.0f : p.keep_scale;
  }
  return make_float2(m0, m1);
}
__device__ __forceinline__ float dropout_single(const AttentionParams& p, uint64_t pos) {
  const uint4 bits = p.dropout.bits_for_group(pos / 4);
  return p.dropout.dropped(uint4_word(bits, pos % 4)) ? 0.0f : p.keep_scale;
}

// ---- tensor-core primitives (16-bit inputs, fp32 accumulators) ---------------------------------
template <typename T>
__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], uint32_t b0,
                                          uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(p)));
}
// 16-byte async copy global -> shared; zero-fills the 16 bytes when !valid.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(smem)),
               "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// Two fp32 values -> one register of two 16-bit values (first in the low half).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  } else {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
}

// Copies rows [row0, row0 + kRows) x columns [col, col + HS) of a [T, row_stride] matrix into a
// shared tile with row pitch kPitch elements, zero-filling rows >= T. All threads take part.
template <typename T, int kRows, int HS, int kPitch, int kThreads>
__device__ __forceinline__ void load_tile_async(T* tile, const T* base, int64_t row_stride,
                                                int64_t col, int64_t row0, int64_t T_len) {
  constexpr int kChunksPerRow = HS * static_cast<int>(sizeof(T)) / 16;
  constexpr int kChunks = kRows * kChunksPerRow;
#pragma unroll
  for (int c = threadIdx.x; c < kChunks; c += kThreads) {
    const int r = c / kChunksPerRow, k = c % kChunksPerRow;
    const int64_t row = row0 + r;
    const bool valid = row < T_len;
    const T* src = base + (valid ? row : 0) * row_stride + col + k * (16 / sizeof(T));
    cp_async_16(tile + r * kPitch + k * (16 / sizeof(T)), src, valid);
  }
}

}  // namespace shardlm::ops::cuda
