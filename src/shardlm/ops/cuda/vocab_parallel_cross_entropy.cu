// vocab_parallel_cross_entropy.cu — cross-entropy over a vocabulary shard of the logits (tensor
// parallelism), in the steps ops.h describes (the model all-reduces between them). The CPU
// reference is ops/cpu/vocab_parallel_cross_entropy.cc.
//
// Per-row statistics (row_max, sum_exp, target_logit, lse, losses, dlosses) are one dtype S:
// the logits' dtype, or fp32 when the logits are bf16/fp16 (what the model uses: a bf16 lse
// would put a ~1% error on every probability in backward, and unlike the single-rank op the
// shard cannot recompute the global lse from its own row).
//
// Algorithms (one 256-thread block per row n of logits[N,VL]; math in fp32):
//  max:      block max over the row.
//  partials: block sum of exp(x - row_max[n]); thread 0 picks the target logit if in the shard.
//  loss:     elementwise over N.
//  backward: dlogits[n,v] = dlosses[n] * (exp(x - lse[n]) - [v + start == t_n]).
#include <cmath>

#include "shardlm/ops/cuda/common.cuh"
#include "shardlm/ops/cuda/cuda_ops.h"

namespace shardlm::ops::cuda {
namespace {

constexpr int kThreads = 256;

// ---- kernels ------------------------------------------------------------------------------------
template <typename T, typename S>
__global__ void __launch_bounds__(kThreads)
    row_max_kernel(S* row_max, const T* logits, int64_t VL) {
  __shared__ float scratch[32];
  const T* row = logits + static_cast<int64_t>(blockIdx.x) * VL;
  float m = -INFINITY;
  for (int64_t v = threadIdx.x; v < VL; v += blockDim.x) m = fmaxf(m, load_as_float(row[v]));
  m = block_max(m, scratch);
  if (threadIdx.x == 0) row_max[blockIdx.x] = float_to<S>(m);
}

template <typename T, typename S>
__global__ void __launch_bounds__(kThreads)
    partials_kernel(S* sum_exp, S* target_logit, const T* logits, const int32_t* targets,
                    const S* row_max, int64_t VL, int64_t start) {
  __shared__ float scratch[32];
  const int64_t n = blockIdx.x;
  const T* row = logits + n * VL;
  const float m = load_as_float(row_max[n]);
  float s = 0.0f;
  for (int64_t v = threadIdx.x; v < VL; v += blockDim.x) s += __expf(load_as_float(row[v]) - m);
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) {
    const int64_t local = static_cast<int64_t>(targets[n]) - start;
    sum_exp[n] = float_to<S>(s);
    target_logit[n] = float_to<S>((local >= 0 && local < VL) ? load_as_float(row[local]) : 0.0f);
  }
}

template <typename S>
__global__ void loss_kernel(S* losses, S* lse, const S* row_max, const S* sum_exp,
                            const S* target_logit, int64_t N) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < N;
       n += stride) {
    const float L = load_as_float(row_max[n]) + logf(load_as_float(sum_exp[n]));
    lse[n] = float_to<S>(L);
    losses[n] = float_to<S>(L - load_as_float(target_logit[n]));
  }
}

template <typename T, typename S>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(T* dlogits, const S* dlosses, const T* logits, const int32_t* targets,
                    const S* lse, int64_t VL, int64_t start) {
  const int64_t n = blockIdx.x;
  const T* row = logits + n * VL;
  T* drow = dlogits + n * VL;
  const float L = load_as_float(lse[n]), dl = load_as_float(dlosses[n]);
  const int64_t local = static_cast<int64_t>(targets[n]) - start;
  for (int64_t v = threadIdx.x; v < VL; v += blockDim.x) {
    const float p = __expf(load_as_float(row[v]) - L);
    drow[v] = float_to<T>(dl * (p - (v == local ? 1.0f : 0.0f)));
  }
}

// Calls fn.template operator()<T, S>() for the logits dtype T and the per-row dtype S
// (= T, or float with 16-bit T; anything else throws kInvalidArgument).
template <typename Fn>
void dispatch_logits_stats(const Tensor& logits, const Tensor& stats, const char* op, Fn&& fn) {
  dispatch_float(logits.dtype(), op, [&]<typename T>() {
    if (stats.dtype() == logits.dtype()) {
      fn.template operator()<T, T>();
    } else if (stats.dtype() == DType::kF32) {
      fn.template operator()<T, float>();
    } else {
      throw Error(ErrorKind::kInvalidArgument,
                  std::string(op) + " on CUDA: per-row tensors are " + dtype_name(stats.dtype()) +
                      "; they must be the logits' dtype " + dtype_name(logits.dtype()) +
                      " or fp32");
    }
  });
}

void check_logits(const DeviceContext& ctx, const Tensor& logits, const char* op, int64_t& N,
                  int64_t& VL) {
  require_on_device(ctx, logits, op, "logits");
  VL = logits.size(logits.rank() - 1);
  N = VL == 0 ? 0 : logits.numel() / VL;
  require_rows_fit_grid(N, op);
}

void check_row_tensor(const DeviceContext& ctx, const Tensor& t, const Tensor& like, int64_t N,
                      const char* op, const char* name) {
  require_on_device(ctx, t, op, name);
  require_same_dtype(t, like, op, name, "the other per-row tensors");
  require_numel(t, N, op, name);
}

void check_targets(const DeviceContext& ctx, const Tensor& targets, int64_t N, const char* op) {
  require_on_device(ctx, targets, op, "targets");
  require_dtype(targets, DType::kI32, op, "targets");
  require_numel(targets, N, op, "targets");
}

}  // namespace

// ---- entry points ------------------------------------------------------------------------------
void vocab_parallel_cross_entropy_max(DeviceContext& ctx, Tensor row_max, const Tensor& logits) {
  const char* op = "vocab_parallel_cross_entropy_max";
  int64_t N = 0, VL = 0;
  check_logits(ctx, logits, op, N, VL);
  check_row_tensor(ctx, row_max, row_max, N, op, "row_max");
  if (N == 0) return;
  const CudaBackendState& st = cuda_state(ctx);
  dispatch_logits_stats(logits, row_max, op, [&]<typename T, typename S>() {
    row_max_kernel<T, S><<<static_cast<unsigned int>(N), kThreads, 0, st.stream()>>>(
        static_cast<S*>(row_max.raw()), static_cast<const T*>(logits.raw()), VL);
    CUDA_CHECK_LAUNCH();
  });
}

void vocab_parallel_cross_entropy_partials(DeviceContext& ctx, Tensor sum_exp,
                                           Tensor target_logit, const Tensor& logits,
                                           const Tensor& targets, const Tensor& row_max,
                                           int64_t vocab_start) {
  const char* op = "vocab_parallel_cross_entropy_partials";
  int64_t N = 0, VL = 0;
  check_logits(ctx, logits, op, N, VL);
  check_targets(ctx, targets, N, op);
  check_row_tensor(ctx, row_max, row_max, N, op, "row_max");
  check_row_tensor(ctx, sum_exp, row_max, N, op, "sum_exp");
  check_row_tensor(ctx, target_logit, row_max, N, op, "target_logit");
  if (N == 0) return;
  const CudaBackendState& st = cuda_state(ctx);
  dispatch_logits_stats(logits, row_max, op, [&]<typename T, typename S>() {
    partials_kernel<T, S><<<static_cast<unsigned int>(N), kThreads, 0, st.stream()>>>(
        static_cast<S*>(sum_exp.raw()), static_cast<S*>(target_logit.raw()),
        static_cast<const T*>(logits.raw()), static_cast<const int32_t*>(targets.raw()),
        static_cast<const S*>(row_max.raw()), VL, vocab_start);
    CUDA_CHECK_LAUNCH();
  });
}

void vocab_parallel_cross_entropy_loss(DeviceContext& ctx, Tensor losses, Tensor lse,
                                       const Tensor& row_max, const Tensor& sum_exp,
                                       const Tensor& target_logit) {
  const char* op = "vocab_parallel_cross_entropy_loss";
  const int64_t N = losses.numel();
  check_row_tensor(ctx, losses, losses, N, op, "losses");
  check_row_tensor(ctx, lse, losses, N, op, "lse");
  check_row_tensor(ctx, row_max, losses, N, op, "row_max");
  check_row_tensor(ctx, sum_exp, losses, N, op, "sum_exp");
  check_row_tensor(ctx, target_logit, losses, N, op, "target_logit");
  if (N == 0) return;
  const CudaBackendState& st = cuda_state(ctx);
  dispatch_float(losses.dtype(), op, [&]<typename S>() {
    loss_kernel<S><<<grid_stride_blocks(st, N, 256), 256, 0, st.stream()>>>(
        static_cast<S*>(losses.raw()), static_cast<S*>(lse.raw()),
        static_cast<const S*>(row_max.raw()), static_cast<const S*>(sum_exp.raw()),
        static_cast<const S*>(target_logit.raw()), N);
    CUDA_CHECK_LAUNCH();
  });
}

void vocab_parallel_cross_entropy_backward(DeviceContext& ctx, Tensor dlogits,
                                           const Tensor& dlosses, const Tensor& logits,
                                           const Tensor& targets, const Tensor& lse,
                                           int64_t vocab_start) {
  const char* op = "vocab_parallel_cross_entropy_backward";
  int64_t N = 0, VL = 0;
  check_logits(ctx, logits, op, N, VL);
  check_targets(ctx, targets, N, op);
  require_on_device(ctx, dlogits, op, "dlogits");
  require_same_dtype(logits, dlogits, op, "logits", "dlogits");
  require_numel(dlogits, logits.numel(), op, "dlogits");
  check_row_tensor(ctx, lse, lse, N, op, "lse");
  check_row_tensor(ctx, dlosses, lse, N, op, "dlosses");
  if (N == 0) return;
  const CudaBackendState& st = cuda_state(ctx);
  dispatch_logits_stats(logits, lse, op, [&]<typename T, typename S>() {
    backward_kernel<T, S><<<static_cast<unsigned int>(N), kThreads, 0, st.stream()>>>(
        static_cast<T*>(dlogits.raw()), static_cast<const S*>(dlosses.raw()),
        static_cast<const T*>(logits.raw()), static_cast<const int32_t*>(targets.raw()),
        static_cast<const S*>(lse.raw()), VL, vocab_start);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace shardlm::ops::cuda
