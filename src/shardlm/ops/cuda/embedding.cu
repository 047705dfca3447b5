// embedding.cu — token (+ learned position) embedding, forward and backward.
//
// Algorithms:
//  forward: grid-stride over the N*C output elements, out[n,c] = wte[tok[n],c] + wpe[n%T,c]
//    (consecutive threads take consecutive c: coalesced). A token outside [0,V) writes 0 and
//    raises a device flag; the entry point reads the flag back (one stream sync) and throws
//    kInvalidArgument, as the CPU backend does.
//  backward: dwte[tok[n], :] += dout[n, :] through sorted_scatter_add.h: a stable radix sort of
//    (token, row) groups each token's rows in row order; each token's rows are summed in fp32 in
//    that order (in chunks of 256 rows, then the chunk sums, for a token with more rows: the
//    header states the order) and added to dwte once (one rounding to dwte's dtype), so the
//    result is deterministic and a token seen k times is not rounded k times. dwte is dout's
//    dtype or, for bf16/fp16 dout, the fp32 master gradient (gradient-accumulation fusion). Ids
//    outside [0,V) (forward refused them) are skipped. dwpe[t, c] += sum_b dout[b, t, c] is one
//    thread per (t, c) looping over b (deterministic, fp32 sum), in dout's dtype.
#include "shardlm/ops/cuda/common.cuh"
#include "shardlm/ops/cuda/cuda_ops.h"
#include "shardlm/ops/cuda/sorted_scatter_add.h"

namespace shardlm::ops::cuda {
namespace {

// ---- kernels ------------------------------------------------------------------------------------
// out[N,C]; tokens[N] (N = B*T, row n has position n % T); wte[V,C]; wpe[P,C] or null.
template <typename T>
__global__ void embedding_forward_kernel(T* out, const int32_t* tokens, const T* wte,
                                         const T* wpe, int64_t N, int64_t T_len, int64_t C,
                                         int64_t V, uint64_t* bad_token_flag) {
  const int64_t total = N * C, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t n = i / C, c = i % C;
    const int32_t tok = tokens[n];
    if (tok < 0 || tok >= V) {
      *bad_token_flag = 1;
      out[i] = float_to<T>(0.0f);
      continue;
    }
    float v = load_as_float(wte[static_cast<int64_t>(tok) * C + c]);
    if (wpe != nullptr) v += load_as_float(wpe[(n % T_len) * C + c]);
    out[i] = float_to<T>(v);
  }
}

// dwpe[t, c] += sum_b dout[b, t, c]; one thread per (t, c) of the first T rows of dwpe.
template <typename T>
__global__ void embedding_position_backward_kernel(T* dwpe, const T* dout, int64_t B,
                                                   int64_t T_len, int64_t C) {
  const int64_t total = T_len * C, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    float sum = 0.0f;
    for (int64_t b = 0; b < B; ++b) sum += load_as_float(dout[b * total + i]);
    dwpe[i] = float_to<T>(load_as_float(dwpe[i]) + sum);
  }
}

void check_tokens(const DeviceContext& ctx, const Tensor& tokens, const char* op) {
  require_on_device(ctx, tokens, op, "tokens");
  require_dtype(tokens, DType::kI32, op, "tokens");
  if (tokens.rank() != 2)
    throw Error(ErrorKind::kInvalidArgument, std::string(op) + " on CUDA: tokens must be [B,T], got " +
                                                 tokens.shape().to_string());
}

}  // namespace

// ---- entry points ------------------------------------------------------------------------------
void embedding_forward(DeviceContext& ctx, Tensor out, const Tensor& tokens, const Tensor& wte,
                       const Tensor& wpe) {
  const char* op = "embedding_forward";
  check_tokens(ctx, tokens, op);
  require_on_device(ctx, out, op, "out");
  require_on_device(ctx, wte, op, "wte");
  require_same_dtype(out, wte, op, "out", "wte");
  const int64_t B = tokens.size(0), T_len = tokens.size(1), N = B * T_len;
  const int64_t V = wte.size(0), C = wte.numel() / std::max<int64_t>(V, 1);
  require_numel(out, N * C, op, "out");
  const bool has_wpe = wpe.defined();
  if (has_wpe) {
    require_on_device(ctx, wpe, op, "wpe");
    require_same_dtype(out, wpe, op, "out", "wpe");
    if (wpe.rank() != 2 || wpe.size(1) != C || wpe.size(0) < T_len)
      throw Error(ErrorKind::kInvalidArgument,
                  std::string(op) + " on CUDA: wpe " + wpe.shape().to_string() +
                      " must be [P, " + std::to_string(C) + "] with P >= T = " +
                      std::to_string(T_len));
  }
  if (N * C == 0) return;
  CudaBackendState& st = cuda_state(ctx);
  CUDA_CHECK(cudaMemsetAsync(st.device_flags(), 0, sizeof(uint64_t), st.stream()));
  dispatch_float(out.dtype(), op, [&]<typename T>() {
    embedding_forward_kernel<T><<<grid_stride_blocks(st, N * C, 256), 256, 0, st.stream()>>>(
        static_cast<T*>(out.raw()), static_cast<const int32_t*>(tokens.raw()),
        static_cast<const T*>(wte.raw()), has_wpe ? static_cast<const T*>(wpe.raw()) : nullptr,
        N, T_len, C, V, st.device_flags());
    CUDA_CHECK_LAUNCH();
  });
  CUDA_CHECK(cudaMemcpyAsync(st.host_flags(), st.device_flags(), sizeof(uint64_t),
                             cudaMemcpyDeviceToHost, st.stream()));
  CUDA_CHECK(cudaStreamSynchronize(st.stream()));
  if (st.host_flags()[0] != 0)
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: a token id in tokens " + tokens.shape().to_string() +
                    " is outside [0, " + std::to_string(V) +
                    "); check the tokenizer's vocabulary size against --padded-vocab-size");
}

void embedding_backward(DeviceContext& ctx, Tensor dwte, Tensor dwpe, const Tensor& dout,
                        const Tensor& tokens) {
  const char* op = "embedding_backward";
  check_tokens(ctx, tokens, op);
  require_on_device(ctx, dout, op, "dout");
  require_on_device(ctx, dwte, op, "dwte");  // its dtype: sorted_scatter_add checks
  const int64_t B = tokens.size(0), T_len = tokens.size(1), N = B * T_len;
  const int64_t V = dwte.size(0), C = dwte.numel() / std::max<int64_t>(V, 1);
  require_numel(dout, N * C, op, "dout");
  const bool has_wpe = dwpe.defined();
  if (has_wpe) {
    require_on_device(ctx, dwpe, op, "dwpe");
    require_same_dtype(dout, dwpe, op, "dout", "dwpe");
    if (dwpe.rank() != 2 || dwpe.size(1) != C || dwpe.size(0) < T_len)
      throw Error(ErrorKind::kInvalidArgument,
                  std::string(op) + " on CUDA: dwpe " + dwpe.shape().to_string() +
                      " must be [P, " + std::to_string(C) + "] with P >= T = " +
                      std::to_string(T_len));
  }
  if (N * C == 0) return;
  sorted_scatter_add(ctx, dwte, dout, tokens, /*row_start=*/0, op);
  if (!has_wpe) return;
  const CudaBackendState& st = cuda_state(ctx);
  dispatch_float(dout.dtype(), op, [&]<typename T>() {
    embedding_position_backward_kernel<T><<<grid_stride_blocks(st, T_len * C, 256), 256, 0,
                                            st.stream()>>>(
        static_cast<T*>(dwpe.raw()), static_cast<const T*>(dout.raw()), B, T_len, C);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace shardlm::ops::cuda
