// accumulate_and_zero.cu — acc (fp32) += convert(x), then x = 0, in one kernel pass: the
// mixed-precision fold of a micro-batch's bf16/fp16 compute gradients into the fp32 main
// gradients (ParameterRegistry::accumulate_compute_grads). assign: acc = convert(x) (the step's
// first fold), acc not read.
//
// Replaces copy-to-fp32-scratch + add_inplace + fill(0): 3 passes and a scratch buffer become one
// pass of 2 + 4 + 4 + 2 bytes per bf16 element (read x, read and write acc, write x), with the
// same bits — the converted value is added in fp32 exactly as add_inplace adds it.
//
// Algorithm: a grid-stride loop moves 16 bytes of x (8 bf16/fp16 or 4 fp32 elements) and the
// matching 32 or 16 bytes of acc per iteration, after a scalar head that brings both pointers
// to 16-byte alignment (parameter views start at any element); the head and the tail share one
// scalar grid-stride loop. Pointers that no head can align together take the scalar loop only.
#include "shardlm/ops/cuda/common.cuh"
#include "shardlm/ops/cuda/cuda_ops.h"

namespace shardlm::ops::cuda {
namespace {

// ---- kernels ------------------------------------------------------------------------------------
// Elements [head, head + nvec * kW) in 16-byte vectors of x; the rest one by one.
template <typename TX>
__global__ void accumulate_and_zero_kernel(float* __restrict__ acc, TX* __restrict__ x,
                                           int64_t n, int64_t head, int64_t nvec, bool assign) {
  constexpr int kW = Vec16<TX>::kSize;  // elements of x per 16 bytes: 4 (fp32) or 8 (bf16/fp16)
  static_assert(kW % 4 == 0, "acc is accessed as whole float4s");
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  float* acc_v = acc + head;
  TX* x_v = x + head;
  for (int64_t v = tid; v < nvec; v += stride) {
    const Vec16<TX> cx = reinterpret_cast<const Vec16<TX>*>(x_v)[v];
    float4* a = reinterpret_cast<float4*>(acc_v + v * kW);
#pragma unroll
    for (int q = 0; q < kW / 4; ++q) {
      float4 r = make_float4(load_as_float(cx.v[4 * q + 0]), load_as_float(cx.v[4 * q + 1]),
                             load_as_float(cx.v[4 * q + 2]), load_as_float(cx.v[4 * q + 3]));
      if (!assign) {  // acc + x, as add_inplace adds (fp32 addition commutes exactly)
        const float4 s = a[q];
        r = make_float4(s.x + r.x, s.y + r.y, s.z + r.z, s.w + r.w);
      }
      a[q] = r;
    }
    reinterpret_cast<uint4*>(x_v)[v] = make_uint4(0u, 0u, 0u, 0u);  // +0 in every dtype
  }
  const int64_t vector_end = head + nvec * kW, scalar = n - nvec * kW;
  for (int64_t j = tid; j < scalar; j += stride) {
    const int64_t i = j < head ? j : vector_end + (j - head);
    acc[i] = assign ? load_as_float(x[i]) : acc[i] + load_as_float(x[i]);
    x[i] = float_to<TX>(0.0f);
  }
}

// ---- launcher -----------------------------------------------------------------------------------
template <typename TX>
void launch_accumulate_and_zero(const CudaBackendState& st, float* acc, TX* x, int64_t n,
                                bool assign) {
  constexpr int kThreads = 256, kW = Vec16<TX>::kSize;
  const int h = vector_head(kW, {{acc, sizeof(float), 16}, {x, sizeof(TX), 16}});
  const int64_t head = h < 0 ? 0 : std::min<int64_t>(h, n);
  const int64_t nvec = h < 0 ? 0 : (n - head) / kW;
  const int64_t work = nvec + (n - nvec * kW);
  const unsigned int blocks = grid_stride_blocks(st, work, kThreads);
  accumulate_and_zero_kernel<TX><<<blocks, kThreads, 0, st.stream()>>>(acc, x, n, head, nvec,
                                                                      assign);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

// ---- entry point -------------------------------------------------------------------------------
void accumulate_and_zero(DeviceContext& ctx, Tensor acc, Tensor x, bool assign) {
  const char* op = "accumulate_and_zero";
  require_on_device(ctx, acc, op, "acc");
  require_on_device(ctx, x, op, "x");
  require_dtype(acc, DType::kF32, op, "acc");
  const int64_t n = acc.numel();
  require_numel(x, n, op, "x");
  const CudaBackendState& st = cuda_state(ctx);
  if (n == 0) return;
  dispatch_float(x.dtype(), op, [&]<typename TX>() {
    launch_accumulate_and_zero<TX>(st, static_cast<float*>(acc.raw()), static_cast<TX*>(x.raw()),
                                   n, assign);
  });
}

}  // namespace shardlm::ops::cuda
