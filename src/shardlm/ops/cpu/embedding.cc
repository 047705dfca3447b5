// embedding.cc — CPU token + position embedding lookup and its backward (scatter-add into the
// table gradients, which accumulate as parameter gradients do).
//
// Shapes (validated by the ops/*_ops.cc dispatchers): tokens int32 [B,T], wte [V,C], wpe [P,C]
// (P >= T) or undefined, out / dout [B,T,C]. Token ids are data, so their range is checked here.
#include <string>

#include "shardlm/ops/cpu/cpu_ops.h"
#include "shardlm/ops/cpu/detail/float_dispatch.h"

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

template <typename T>
void embedding_backward_impl(T* dwte, T* dwpe, const T* dout, const int32_t* tokens, int64_t B,
                             int64_t Tn, int64_t C) {
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < Tn; ++t) {
      const T* d = dout + (b * Tn + t) * C;
      T* w = dwte + static_cast<int64_t>(tokens[b * Tn + t]) * C;
      for (int64_t c = 0; c < C; ++c) w[c] += d[c];
      if (dwpe != nullptr) {
        T* pe = dwpe + t * C;
        for (int64_t c = 0; c < C; ++c) pe[c] += d[c];
      }
    }
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

void embedding_backward(DeviceContext&, Tensor dwte, Tensor dwpe, const Tensor& dout,
                        const Tensor& tokens) {
  detail::dispatch_float(dwte.dtype(), "embedding_backward", [&](auto zero) {
    using T = decltype(zero);
    check_token_ids("embedding_backward", tokens, dwte.size(0));
    embedding_backward_impl<T>(dwte.data<T>(), dwpe.defined() ? dwpe.data<T>() : nullptr,
                               dout.data<T>(), tokens.data<int32_t>(), tokens.size(0),
                               tokens.size(1), dwte.size(1));
  });
}

}  // namespace shardlm::ops::cpu
