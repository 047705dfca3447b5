// adamw.cu — one fused AdamW step over a flat fp32 range (params, grads, exp_avg, exp_avg_sq),
// the math of apex FusedAdam with adam_w_mode (Megatron's optimizer):
//   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   p -= lr * ( (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps) + wd * p )
// and, when given the mixed-precision compute copy (bf16/fp16/fp32), c = convert(p) in the same
// pass: the separate fp32 -> bf16 copy of every parameter after the step disappears.
//
// Algorithm: the flat buffer is already "multi-tensor" (every parameter of a bucket is one
// range), so one grid-stride loop of float4 accesses (4 loads + 3 stores of 16 bytes per
// 4 elements; 28 bytes/element is the floor, +2 with a bf16 compute copy) covers it with one
// launch, after a scalar head that aligns the pointers; the head and the tail share a scalar
// loop, which takes everything when no head aligns all pointers (views at different offsets).
#include <cmath>
#include <type_traits>

#include "shardlm/ops/cuda/common.cuh"
#include "shardlm/ops/cuda/cuda_ops.h"

namespace shardlm::ops::cuda {
namespace {

struct AdamWConstants {
  float lr, beta1, beta2, eps, weight_decay;
  float bias_correction1, bias_correction2;  // 1 - beta^step
  float grad_scale;  // g * grad_scale rounded as scale_inplace's ScaleOp (x1: exact)
};

// ---- kernels ------------------------------------------------------------------------------------
// Every operation explicitly rounded (fmaf, __fmul_rn, __fadd_rn, IEEE / and sqrt): nvcc may
// otherwise contract a*b + c into an fma differently in the float4 loop and the scalar loop, and
// the same parameter would get different bits depending on its alignment (measured on an H200:
// a misaligned compute-copy view took the scalar path and changed the fp32 parameters).
__device__ __forceinline__ void adamw_element(float& p, float g, float& m, float& v,
                                              const AdamWConstants& k) {
  g = __fmul_rn(g, k.grad_scale);
  m = fmaf(k.beta1, m, __fmul_rn(1.0f - k.beta1, g));
  v = fmaf(k.beta2, v, __fmul_rn(__fmul_rn(1.0f - k.beta2, g), g));
  const float m_hat = __fdiv_rn(m, k.bias_correction1);
  const float v_hat = __fdiv_rn(v, k.bias_correction2);
  const float step = fmaf(k.weight_decay, p, __fdiv_rn(m_hat, __fadd_rn(__fsqrt_rn(v_hat), k.eps)));
  p = fmaf(-k.lr, step, p);
}

// Four consecutive compute-copy elements: one 16-byte (fp32) or 8-byte (bf16/fp16) store.
template <typename T>
struct alignas(4 * sizeof(T)) Quad {
  T v[4];
};

// TC: the compute copy's element type, void for none. Elements [head, head + 4 * nvec) in
// float4 vectors, the others one by one.
template <typename TC>
__global__ void adamw_kernel(float* __restrict__ params, const float* __restrict__ grads,
                             float* __restrict__ exp_avg, float* __restrict__ exp_avg_sq,
                             TC* __restrict__ compute, int64_t n, int64_t head, int64_t nvec,
                             AdamWConstants k) {
  constexpr bool kCompute = !std::is_void_v<TC>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t vi = tid; vi < nvec; vi += stride) {
    const int64_t i = head + 4 * vi;
    float4 p = *reinterpret_cast<float4*>(params + i);
    const float4 g = *reinterpret_cast<const float4*>(grads + i);
    float4 m = *reinterpret_cast<float4*>(exp_avg + i);
    float4 v = *reinterpret_cast<float4*>(exp_avg_sq + i);
    adamw_element(p.x, g.x, m.x, v.x, k);
    adamw_element(p.y, g.y, m.y, v.y, k);
    adamw_element(p.z, g.z, m.z, v.z, k);
    adamw_element(p.w, g.w, m.w, v.w, k);
    *reinterpret_cast<float4*>(params + i) = p;
    *reinterpret_cast<float4*>(exp_avg + i) = m;
    *reinterpret_cast<float4*>(exp_avg_sq + i) = v;
    if constexpr (kCompute) {
      Quad<TC> c;
      c.v[0] = float_to<TC>(p.x);
      c.v[1] = float_to<TC>(p.y);
      c.v[2] = float_to<TC>(p.z);
      c.v[3] = float_to<TC>(p.w);
      *reinterpret_cast<Quad<TC>*>(compute + i) = c;
    }
  }
  const int64_t vector_end = head + 4 * nvec, scalar = n - 4 * nvec;
  for (int64_t j = tid; j < scalar; j += stride) {
    const int64_t i = j < head ? j : vector_end + (j - head);
    float p = params[i], m = exp_avg[i], v = exp_avg_sq[i];
    adamw_element(p, grads[i], m, v, k);
    params[i] = p;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    if constexpr (kCompute) compute[i] = float_to<TC>(p);
  }
}

// ---- launcher -----------------------------------------------------------------------------------
template <typename TC>
constexpr int compute_element_bytes() {
  if constexpr (std::is_void_v<TC>)
    return 1;  // no compute copy: its (null) operand is skipped by vector_head
  else
    return static_cast<int>(sizeof(TC));
}

template <typename TC>
void launch_adamw(const CudaBackendState& st, float* p, const float* g, float* m, float* v,
                  TC* c, int64_t n, const AdamWConstants& k) {
  constexpr int kThreads = 256;
  constexpr int kComputeBytes = compute_element_bytes<TC>();
  const int h = vector_head(4, {{p, 4, 16},
                                {g, 4, 16},
                                {m, 4, 16},
                                {v, 4, 16},
                                {c, kComputeBytes, 4 * kComputeBytes}});
  const int64_t head = h < 0 ? 0 : std::min<int64_t>(h, n);
  const int64_t nvec = h < 0 ? 0 : (n - head) / 4;
  const unsigned int blocks = grid_stride_blocks(st, nvec + (n - 4 * nvec), kThreads);
  adamw_kernel<TC><<<blocks, kThreads, 0, st.stream()>>>(p, g, m, v, c, n, head, nvec, k);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

// ---- entry point -------------------------------------------------------------------------------
void adamw_step(DeviceContext& ctx, Tensor params, const Tensor& grads, Tensor exp_avg,
                Tensor exp_avg_sq, const AdamWParams& hp, Tensor compute_params) {
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
  if (compute_params.defined()) {
    require_on_device(ctx, compute_params, op, "compute_params");
    require_numel(compute_params, n, op, "compute_params");
  }
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
      static_cast<float>(1.0 - std::pow(hp.beta2, static_cast<double>(hp.step))),
      static_cast<float>(hp.grad_scale)};
  float* p = static_cast<float*>(params.raw());
  const float* g = static_cast<const float*>(grads.raw());
  float* m = static_cast<float*>(exp_avg.raw());
  float* v = static_cast<float*>(exp_avg_sq.raw());
  if (!compute_params.defined()) return launch_adamw<void>(st, p, g, m, v, nullptr, n, k);
  dispatch_float(compute_params.dtype(), op, [&]<typename TC>() {
    launch_adamw<TC>(st, p, g, m, v, static_cast<TC*>(compute_params.raw()), n, k);
  });
}

}  // namespace shardlm::ops::cuda
