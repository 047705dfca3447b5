// adamw.cu — one fused AdamW step over a flat fp32 range (params, grads, exp_avg, exp_avg_sq),
// the math of apex FusedAdam with adam_w_mode (Megatron's optimizer):
//   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   p -= lr * ( (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps) + wd * p )
//
// Algorithm: the flat buffer is already "multi-tensor" (every parameter of a bucket is one
// range), so one grid-stride loop of float4 accesses (4 loads + 3 stores of 16 bytes per
// 4 elements; 28 bytes/element is the floor) covers it with one launch; a scalar loop takes
// misaligned ranges and the tail.
#include <cmath>

#include "shardlm/ops/cuda/common.cuh"
#include "shardlm/ops/cuda/cuda_ops.h"

namespace shardlm::ops::cuda {
namespace {

struct AdamWConstants {
  float lr, beta1, beta2, eps, weight_decay;
  float bias_correction1, bias_correction2;  // 1 - beta^step
};

// ---- kernels ------------------------------------------------------------------------------------
__device__ __forceinline__ void adamw_element(float& p, float g, float& m, float& v,
                                              const AdamWConstants& k) {
  m = k.beta1 * m + (1.0f - k.beta1) * g;
  v = k.beta2 * v + (1.0f - k.beta2) * g * g;
  const float m_hat = m / k.bias_correction1;
  const float v_hat = v / k.bias_correction2;
  p -= k.lr * (m_hat / (sqrtf(v_hat) + k.eps) + k.weight_decay * p);
}

template <bool kVector>
__global__ void adamw_kernel(float* params, const float* grads, float* exp_avg,
                             float* exp_avg_sq, int64_t n, AdamWConstants k) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t scalar_begin = 0;
  if constexpr (kVector) {
    const int64_t nvec = n / 4;
    for (int64_t i = tid; i < nvec; i += stride) {
      float4 p = reinterpret_cast<float4*>(params)[i];
      const float4 g = reinterpret_cast<const float4*>(grads)[i];
      float4 m = reinterpret_cast<float4*>(exp_avg)[i];
      float4 v = reinterpret_cast<float4*>(exp_avg_sq)[i];
      adamw_element(p.x, g.x, m.x, v.x, k);
      adamw_element(p.y, g.y, m.y, v.y, k);
      adamw_element(p.z, g.z, m.z, v.z, k);
      adamw_element(p.w, g.w, m.w, v.w, k);
      reinterpret_cast<float4*>(params)[i] = p;
      reinterpret_cast<float4*>(exp_avg)[i] = m;
      reinterpret_cast<float4*>(exp_avg_sq)[i] = v;
    }
    scalar_begin = nvec * 4;
  }
  for (int64_t i = scalar_begin + tid; i < n; i += stride)
    adamw_element(params[i], grads[i], exp_avg[i], exp_avg_sq[i], k);
}

}  // namespace

// ---- entry point -------------------------------------------------------------------------------
void adamw_step(DeviceContext& ctx, Tensor params, const Tensor& grads, Tensor exp_avg,
                Tensor exp_avg_sq, const AdamWParams& hp) {
  const char* op = "adamw_step";
  require_on_device(ctx, params, op, "params");
  require_on_device(ctx, grads, op, "grads");
  require_on_device(ctx, exp_avg, op, "exp_avg");
  require_on_device(ctx, exp_avg_sq, op, "exp_avg_sq");
  require_dtype(params, DType::kF32, op, "params");
  require_dtype(grads, DType::kF32, op, "grads");
  require_dtype(exp_avg, DType::kF32, op, "exp_avg");
  require_dtype(exp_avg_sq, DType::kF32, op, "exp_avg_sq");
  const int64_t n = params.numel();
  require_numel(grads, n, op, "grads");
  require_numel(exp_avg, n, op, "exp_avg");
  require_numel(exp_avg_sq, n, op, "exp_avg_sq");
  if (hp.step < 1)
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: step must be >= 1, got " + std::to_string(hp.step));
  if (n == 0) return;
  const CudaBackendState& st = cuda_state(ctx);
  const AdamWConstants k{
      static_cast<float>(hp.lr),
      static_cast<float>(hp.beta1),
      static_cast<float>(hp.beta2),
      static_cast<float>(hp.eps),
      static_cast<float>(hp.weight_decay),
      static_cast<float>(1.0 - std::pow(hp.beta1, static_cast<double>(hp.step))),
      static_cast<float>(1.0 - std::pow(hp.beta2, static_cast<double>(hp.step)))};
  float* p = static_cast<float*>(params.raw());
  const float* g = static_cast<const float*>(grads.raw());
  float* m = static_cast<float*>(exp_avg.raw());
  float* v = static_cast<float*>(exp_avg_sq.raw());
  const bool vector = aligned16(p) && aligned16(g) && aligned16(m) && aligned16(v);
  const unsigned int blocks = grid_stride_blocks(st, vector ? (n + 3) / 4 : n, 256);
  if (vector)
    adamw_kernel<true><<<blocks, 256, 0, st.stream()>>>(p, g, m, v, n, k);
  else
    adamw_kernel<false><<<blocks, 256, 0, st.stream()>>>(p, g, m, v, n, k);
  CUDA_CHECK_LAUNCH();
}

}  // namespace shardlm::ops::cuda
