// vocab_parallel_embedding.cc — CPU lookup into a vocabulary shard of the word embedding and its
// backward (tensor parallelism: Megatron's VocabParallelEmbedding before its all-reduce).
//
//   out[n,:] = wte[tokens[n] - vocab_start, :]  if vocab_start <= tokens[n] < vocab_start + VL
//            = 0                                 otherwise
//   dwte[tokens[n] - vocab_start, :] += dout[n, :]  for ids in the shard
//
// Shapes (validated by the ops/*_ops.cc dispatchers): tokens int32 with N elements, wte [VL, C],
// out / dout N*C.
// Negative ids are data errors, checked here; the upper bound belongs to the caller.
// Backward adds the rows in row order, each in dwte's dtype, which may be wider than dout's (the
// master gradient: fp64 for fp32 dout, fp32 for bf16/fp16 dout), as embedding.cc.
#include <string>

#include "shardlm/ops/cpu/cpu_ops.h"
#include "shardlm/ops/cpu/detail/float_dispatch.h"
#include "shardlm/ops/cpu/detail/storage_float.h"

namespace shardlm::ops::cpu {

namespace {

void check_non_negative(const char* op, const Tensor& tokens) {
  const int32_t* tok = tokens.data<int32_t>();
  for (int64_t i = 0; i < tokens.numel(); ++i)
    if (tok[i] < 0)
      throw Error(ErrorKind::kInvalidArgument,
                  std::string(op) + ": token id " + std::to_string(tok[i]) + " at flat index " +
                      std::to_string(i) + " is negative; token ids must be in [0, V)");
}

template <typename T>
void forward_impl(T* out, const int32_t* tokens, const T* wte, int64_t N, int64_t VL, int64_t C,
                  int64_t vocab_start) {
  for (int64_t n = 0; n < N; ++n) {
    T* o = out + n * C;
    const int64_t row = static_cast<int64_t>(tokens[n]) - vocab_start;
    if (row >= 0 && row < VL) {
      const T* w = wte + row * C;
      for (int64_t c = 0; c < C; ++c) o[c] = w[c];
    } else {
      for (int64_t c = 0; c < C; ++c) o[c] = T(0);
    }
  }
}

// dout is G or a narrower storage dtype (converted exactly, added in G).
template <typename G>
void backward_impl(G* dwte, DType dout_dtype, const void* dout, const int32_t* tokens, int64_t N,
                   int64_t VL, int64_t C, int64_t vocab_start) {
  const bool same = dout_dtype == DTypeOf<G>::value;
  for (int64_t n = 0; n < N; ++n) {
    const int64_t row = static_cast<int64_t>(tokens[n]) - vocab_start;
    if (row < 0 || row >= VL) continue;
    G* w = dwte + row * C;
    if (same) {
      const G* d = static_cast<const G*>(dout) + n * C;
      for (int64_t c = 0; c < C; ++c) w[c] += d[c];
    } else {
      for (int64_t c = 0; c < C; ++c)
        w[c] += static_cast<G>(detail::load_as_double(dout_dtype, dout, n * C + c));
    }
  }
}

}  // namespace

void vocab_parallel_embedding_forward(DeviceContext&, Tensor out, const Tensor& tokens,
                                      const Tensor& wte, int64_t vocab_start) {
  constexpr const char* op = "vocab_parallel_embedding_forward";
  detail::dispatch_float(wte.dtype(), op, [&](auto zero) {
    using T = decltype(zero);
    check_non_negative(op, tokens);
    forward_impl<T>(out.data<T>(), tokens.data<int32_t>(), wte.data<T>(), tokens.numel(),
                    wte.size(0), wte.size(1), vocab_start);
  });
}

void vocab_parallel_embedding_backward(DeviceContext&, Tensor dwte, const Tensor& dout,
                                       const Tensor& tokens, int64_t vocab_start) {
  constexpr const char* op = "vocab_parallel_embedding_backward";
  if (!detail::is_storage_float(dout.dtype())) detail::throw_unsupported_dtype(op, dout.dtype());
  detail::dispatch_float(dwte.dtype(), op, [&](auto zero) {
    using G = decltype(zero);
    check_non_negative(op, tokens);
    backward_impl<G>(dwte.data<G>(), dout.dtype(), dout.raw(), tokens.data<int32_t>(),
                     tokens.numel(), dwte.size(0), dwte.size(1), vocab_start);
  });
}

}  // namespace shardlm::ops::cpu
