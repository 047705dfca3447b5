// init_normal.cu — parameter initialisation on the GPU, bit-identical to the CPU: the same
// Philox block per global index (philox.cuh) and the same Box-Muller arithmetic
// (tensor/normal_math.h: correctly rounded operations only), so a model initialised here equals
// the one the CPU backend initialises, and no host buffer or host-to-device copy is needed
// (1.3B parameters: ~0.1 s instead of ~12 s on the host).
#include "shardlm/ops/cuda/common.cuh"
#include "shardlm/ops/cuda/cuda_ops.h"
#include "shardlm/ops/cuda/philox.cuh"
#include "shardlm/tensor/normal_math.h"

namespace shardlm::ops::cuda {
namespace {

template <typename T>
__global__ void init_normal_kernel(T* out, int64_t n, uint32_t key0, uint32_t key1,
                                   double stddev, ShardIndexMap map) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const uint64_t g = static_cast<uint64_t>(map.global_index(i));
    const uint4 w = philox4x32_device(
        make_uint4(static_cast<uint32_t>(g), static_cast<uint32_t>(g >> 32), 0u, 0u), key0, key1);
    // uniform_open0 (philox.h): exact in double.
    const double u1 = (static_cast<double>(w.x) + 1.0) * 0x1p-32;
    const double u2 = (static_cast<double>(w.y) + 1.0) * 0x1p-32;
    out[i] = static_cast<T>(__dmul_rn(stddev, normal_math::box_muller(u1, u2)));
  }
}

}  // namespace

void init_normal(DeviceContext& ctx, Tensor out, const PhiloxKey& key, double stddev,
                 const ShardIndexMap& map) {
  require_on_device(ctx, out, "init_normal", "out");
  const CudaBackendState& st = cuda_state(ctx);
  const int64_t n = out.numel();
  if (n == 0) return;
  const unsigned int blocks = grid_stride_blocks(st, n, 256);
  if (out.dtype() == DType::kF64) {
    init_normal_kernel<double><<<blocks, 256, 0, st.stream()>>>(
        static_cast<double*>(out.raw()), n, key[0], key[1], stddev, map);
  } else if (out.dtype() == DType::kF32) {
    init_normal_kernel<float><<<blocks, 256, 0, st.stream()>>>(
        static_cast<float*>(out.raw()), n, key[0], key[1], stddev, map);
  } else {
    throw Error(ErrorKind::kInvalidArgument,
                std::string("init_normal on CUDA: out must be fp32 or fp64, got ") +
                    dtype_name(out.dtype()));
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace shardlm::ops::cuda
