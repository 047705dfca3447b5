// rope.cc — CPU rotary position embedding (RoPE): the cos/sin table, and the rotation of the q
// and k heads of a fused QKV activation, forward (by +θ) and backward (by -θ, the transpose).
//
//   inv_freq_i = base^(-2i/R) (or rescaled: rope_frequencies.h),  θ(t, i) = t * inv_freq_i,  i < R/2
//   (table: double, rounded once)
//   pair (a, b) -> (a cos θ - b sin θ,  b cos θ + a sin θ)          (backward: sin -> -sin)
//   rotate-half pairs (x[i], x[i + R/2]); interleaved pairs (x[2i], x[2i+1]).
//
// Row layout (Megatron grouped QKV, as attention_forward): per query group g, NH/G q heads, one
// k head, one v head, each HS wide. Heads at slot < NH/G + 1 of a group are rotated; the v head
// and dims >= R are copied (out-of-place) or left alone (in place). Arithmetic in double.
#include <cmath>

#include "shardlm/ops/cpu/cpu_ops.h"
#include "shardlm/ops/cpu/detail/float_dispatch.h"

namespace shardlm::ops::cpu {

namespace {

template <typename T>
void rope_cos_sin_impl(T* table, int64_t P, int64_t R, const RopeFrequencies& freq) {
  const int64_t half = R / 2;
  for (int64_t i = 0; i < half; ++i) {
    const double inv_freq = rope_inv_freq(freq, i, R);
    for (int64_t t = 0; t < P; ++t) {
      const double theta = static_cast<double>(t) * inv_freq;
      table[(t * half + i) * 2 + 0] = static_cast<T>(std::cos(theta));
      table[(t * half + i) * 2 + 1] = static_cast<T>(std::sin(theta));
    }
  }
}

// T: activation type; U: table type. sign = +1 forward, -1 backward.
template <typename T, typename U>
void rope_rotate_impl(T* out, const T* in, const U* table, int64_t rows, int64_t seq,
                      const AttentionShape& s, int64_t R, bool interleaved, double sign) {
  const int64_t HS = s.head_dim, G = s.num_query_groups, heads_per_group = s.num_heads / G;
  const int64_t group_width = (heads_per_group + 2) * HS, row_width = G * group_width;
  const int64_t half = R / 2;
  const bool in_place = out == in;
  for (int64_t n = 0; n < rows; ++n) {
    const int64_t t = n % seq;  // rows are (b, t) with t fastest
    const U* cs = table + t * half * 2;
    const T* x_row = in + n * row_width;
    T* y_row = out + n * row_width;
    if (!in_place)
      for (int64_t c = 0; c < row_width; ++c) y_row[c] = x_row[c];
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t slot = 0; slot <= heads_per_group; ++slot) {  // q heads, then the k head
        const T* x = x_row + g * group_width + slot * HS;
        T* y = y_row + g * group_width + slot * HS;
        for (int64_t i = 0; i < half; ++i) {
          const int64_t ia = interleaved ? 2 * i : i;
          const int64_t ib = interleaved ? 2 * i + 1 : i + half;
          const double c = static_cast<double>(cs[2 * i]);
          const double sn = sign * static_cast<double>(cs[2 * i + 1]);
          const double a = static_cast<double>(x[ia]), b = static_cast<double>(x[ib]);
          y[ia] = static_cast<T>(a * c - b * sn);
          y[ib] = static_cast<T>(b * c + a * sn);
        }
      }
    }
  }
}

void rope_rotate(const char* op, Tensor out, const Tensor& in, const Tensor& cos_sin,
                 const AttentionShape& shape, bool interleaved, double sign) {
  const int64_t rows = in.size(0) * in.size(1), seq = in.size(1), R = 2 * cos_sin.size(1);
  detail::dispatch_float(in.dtype(), op, [&](auto zero) {
    using T = decltype(zero);
    detail::dispatch_float(cos_sin.dtype(), op, [&](auto table_zero) {
      using U = decltype(table_zero);
      rope_rotate_impl<T, U>(out.data<T>(), in.data<T>(), cos_sin.data<U>(), rows, seq, shape,
                             R, interleaved, sign);
    });
  });
}

}  // namespace

void rope_cos_sin(DeviceContext&, Tensor cos_sin, const RopeFrequencies& freq) {
  detail::dispatch_float(cos_sin.dtype(), "rope_cos_sin", [&](auto zero) {
    using T = decltype(zero);
    rope_cos_sin_impl<T>(cos_sin.data<T>(), cos_sin.size(0), 2 * cos_sin.size(1), freq);
  });
}

void rope_forward(DeviceContext&, Tensor out, const Tensor& in, const Tensor& cos_sin,
                  const AttentionShape& shape, bool interleaved) {
  rope_rotate("rope_forward", out, in, cos_sin, shape, interleaved, +1.0);
}

void rope_backward(DeviceContext&, Tensor din, const Tensor& dout, const Tensor& cos_sin,
                   const AttentionShape& shape, bool interleaved) {
  rope_rotate("rope_backward", din, dout, cos_sin, shape, interleaved, -1.0);
}

}  // namespace shardlm::ops::cpu
