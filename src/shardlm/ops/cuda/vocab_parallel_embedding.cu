// vocab_parallel_embedding.cu — lookup into a vocabulary shard of the word embedding (tensor
// parallelism), forward and backward. Semantics in ops.h; the CPU reference is
// ops/cpu/vocab_parallel_embedding.cc.
//
// Algorithms:
//  forward: grid-stride over the N*C output elements (consecutive threads take consecutive c:
//    coalesced); out[n,c] = wte[tok[n] - start, c] for ids in the shard, else 0. A negative id
//    writes 0 and raises a device flag; the entry point reads it back (one stream sync, as
//    embedding_forward does) and throws kInvalidArgument.
//  backward: dwte[tok[n] - start, :] += dout[n, :] for ids in the shard through
//    sorted_scatter_add.h, as embedding_backward: ids outside [start, start + VL) (other
//    ranks' rows) are skipped; each of the shard's tokens gets the fp32 sum of its rows in row
//    order (chunked for more than 256 rows, as the header states), added once (deterministic);
//    dwte is dout's dtype or, for bf16/fp16 dout, the fp32 master gradient (gradient-accumulation
//    fusion).
#include <algorithm>

#include "shardlm/ops/cuda/common.cuh"
#include "shardlm/ops/cuda/cuda_ops.h"
#include "shardlm/ops/cuda/sorted_scatter_add.h"

namespace shardlm::ops::cuda {
namespace {

// ---- kernels ------------------------------------------------------------------------------------
template <typename T>
__global__ void vocab_parallel_embedding_forward_kernel(T* out, const int32_t* tokens,
                                                        const T* wte, int64_t N, int64_t C,
                                                        int64_t VL, int64_t start,
                                                        uint64_t* bad_token_flag) {
  const int64_t total = N * C, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t n = i / C, c = i % C;
    const int32_t tok = tokens[n];
    if (tok < 0) *bad_token_flag = 1;
    const int64_t row = static_cast<int64_t>(tok) - start;
    out[i] = (row >= 0 && row < VL) ? wte[row * C + c] : float_to<T>(0.0f);
  }
}

}  // namespace

// ---- entry points ------------------------------------------------------------------------------
void vocab_parallel_embedding_forward(DeviceContext& ctx, Tensor out, const Tensor& tokens,
                                      const Tensor& wte, int64_t vocab_start) {
  const char* op = "vocab_parallel_embedding_forward";
  require_on_device(ctx, tokens, op, "tokens");
  require_dtype(tokens, DType::kI32, op, "tokens");
  require_on_device(ctx, out, op, "out");
  require_on_device(ctx, wte, op, "wte");
  require_same_dtype(out, wte, op, "out", "wte");
  const int64_t N = tokens.numel(), VL = wte.size(0), C = wte.numel() / std::max<int64_t>(VL, 1);
  require_numel(out, N * C, op, "out");
  if (N * C == 0) return;
  CudaBackendState& st = cuda_state(ctx);
  CUDA_CHECK(cudaMemsetAsync(st.device_flags(), 0, sizeof(uint64_t), st.stream()));
  dispatch_float(out.dtype(), op, [&]<typename T>() {
    vocab_parallel_embedding_forward_kernel<T>
        <<<grid_stride_blocks(st, N * C, 256), 256, 0, st.stream()>>>(
            static_cast<T*>(out.raw()), static_cast<const int32_t*>(tokens.raw()),
            static_cast<const T*>(wte.raw()), N, C, VL, vocab_start, st.device_flags());
    CUDA_CHECK_LAUNCH();
  });
  CUDA_CHECK(cudaMemcpyAsync(st.host_flags(), st.device_flags(), sizeof(uint64_t),
                             cudaMemcpyDeviceToHost, st.stream()));
  CUDA_CHECK(cudaStreamSynchronize(st.stream()));
  if (st.host_flags()[0] != 0)
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: a token id in tokens " + tokens.shape().to_string() +
                    " is negative; token ids must be in [0, V)");
}

void vocab_parallel_embedding_backward(DeviceContext& ctx, Tensor dwte, const Tensor& dout,
                                       const Tensor& tokens, int64_t vocab_start) {
  const char* op = "vocab_parallel_embedding_backward";
  require_on_device(ctx, tokens, op, "tokens");
  require_dtype(tokens, DType::kI32, op, "tokens");
  require_on_device(ctx, dout, op, "dout");
  require_on_device(ctx, dwte, op, "dwte");  // its dtype: sorted_scatter_add checks
  const int64_t N = tokens.numel(), VL = dwte.size(0),
                C = dwte.numel() / std::max<int64_t>(VL, 1);
  require_numel(dout, N * C, op, "dout");
  if (N * C == 0) return;
  sorted_scatter_add(ctx, dwte, dout, tokens, vocab_start, op);
}

}  // namespace shardlm::ops::cuda
