// embedding.cc — CPU token + position embedding lookup and its backward (scatter-add into the
// table gradients, which accumulate as parameter gradients do).
//
// Shapes (validated by the ops/*_ops.cc dispatchers): tokens int32 [B,T], wte [V,C], wpe [P,C]
// (P >= T) or undefined, out / dout [B,T,C]. Token ids are data, so their range is checked here.
// Backward adds the rows in row order, each in dwte's dtype: deterministic, and with a wider
// dwte (the fp64 master gradient for fp32 dout; fp32 for bf16/fp16 dout) each row is converted
// exactly and added, as the fold of a compute gradient into the master gradient adds.
#include <string>

#include "shardlm/ops/cpu/cpu_ops.h"
#include "shardlm/ops/cpu/detail/float_dispatch.h"
#include "shardlm/ops/cpu/detail/storage_float.h"

namespace shardlm::ops::cpu {

namespace {

// Throws kInvalidArgument naming the first token id outside [0, V) and where it is.
void check_token_ids(const char* op, const Tensor& tokens, int64_t V) {
  const int32_t* tok = tokens.data<int32_t>();
  const int64_t T = tokens.size(1);
  for (int64_t i = 0; i < tokens.numel(); ++i) {
    if (tok[i] < 0 || tok[i] >= V) {
      throw Error(
          ErrorKind::kInvalidArgument,
          std::string(op) + ": token id " + std::to_string(tok[i]) + " at [" +
              std::to_string(i / T) + ", " + std::to_string(i % T) +
              "] is outside the vocabulary [0, " + std::to_string(V) +
              "); check the tokenizer / --vocab-size (padded vocab V = " + std::to_string(V) + ")");
    }
  }
}

template <typename T>
void embedding_forward_impl(T* out, const int32_t* tokens, const T* wte, const T* wpe, int64_t B,
                            int64_t Tn, int64_t C) {
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < Tn; ++t) {
      T* o = out + (b * Tn + t) * C;
      const T* w = wte + static_cast<int64_t>(tokens[b * Tn + t]) * C;
      if (wpe != nullptr) {
        const T* pe = wpe + t * C;
        for (int64_t c = 0; c < C; ++c) o[c] = w[c] + pe[c];
      } else {
        for (int64_t c = 0; c < C; ++c) o[c] = w[c];
      }
    }
  }
}

// dwpe[t] += dout[b, t] over b, in dout's dtype.
template <typename T>
void position_backward_impl(T* dwpe, const T* dout, int64_t B, int64_t Tn, int64_t C) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < Tn; ++t) {
      const T* d = dout + (b * Tn + t) * C;
      T* pe = dwpe + t * C;
      for (int64_t c = 0; c < C; ++c) pe[c] += d[c];
    }
}

}  // namespace

void embedding_forward(DeviceContext&, Tensor out, const Tensor& tokens, const Tensor& wte,
                       const Tensor& wpe) {
  detail::dispatch_float(wte.dtype(), "embedding_forward", [&](auto zero) {
    using T = decltype(zero);
    check_token_ids("embedding_forward", tokens, wte.size(0));
    embedding_forward_impl<T>(out.data<T>(), tokens.data<int32_t>(), wte.data<T>(),
                              wpe.defined() ? wpe.data<T>() : nullptr, tokens.size(0),
                              tokens.size(1), wte.size(1));
  });
}

void embedding_backward(DeviceContext& ctx, Tensor dwte, Tensor dwpe, const Tensor& dout,
                        const Tensor& tokens) {
  constexpr const char* op = "embedding_backward";
  // Refuse before writing anything: dwpe is computed in dout's dtype (fp32/fp64 only).
  const bool computes = dout.dtype() == DType::kF32 || dout.dtype() == DType::kF64;
  if (!detail::is_storage_float(dout.dtype()) || (dwpe.defined() && !computes))
    detail::throw_unsupported_dtype(op, dout.dtype());
  const int64_t B = tokens.size(0), Tn = tokens.size(1), C = dwte.size(1);
  if (dwte.dtype() != DType::kF32 && dwte.dtype() != DType::kF64)
    detail::throw_unsupported_dtype(op, dwte.dtype());
  check_token_ids(op, tokens, dwte.size(0));
  // The whole table is this rank's shard: the vocab-parallel scatter-add from row 0.
  vocab_parallel_embedding_backward(ctx, dwte, dout, tokens, /*vocab_start=*/0);
  if (!dwpe.defined()) return;
  detail::dispatch_float(dout.dtype(), op, [&](auto zero) {
    using T = decltype(zero);
    position_backward_impl<T>(dwpe.data<T>(), dout.data<T>(), B, Tn, C);
  });
}

}  // namespace shardlm::ops::cpu
