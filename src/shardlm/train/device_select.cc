#include "shardlm/train/device_select.h"

#include "shardlm/base/error.h"

#ifdef SHARDLM_WITH_CUDA
#include "shardlm/ops/cuda/cuda_context.h"
#endif

namespace shardlm::train {

DeviceContext select_device(const std::string& requested, int gpu_index) {
  if (requested == "cpu") return DeviceContext::cpu();
  const int gpus = cuda_device_count();
  if (requested == "cuda") {
    if (!cuda_backend_compiled())
      throw Error(ErrorKind::kInvalidConfig,
                  "--device cuda: this build has no CUDA backend (nvcc was not found when it was "
                  "configured); rebuild on a machine with the CUDA toolkit or use --device cpu");
    if (gpus <= gpu_index)
      throw Error(ErrorKind::kInvalidConfig,
                  "--device cuda: " + std::to_string(gpus) + " GPU(s) visible, need index " +
                      std::to_string(gpu_index) +
                      "; check CUDA_VISIBLE_DEVICES or use --device cpu");
    return DeviceContext(Device::cuda(gpu_index));
  }
  // auto
  if (gpus > gpu_index) return DeviceContext(Device::cuda(gpu_index));
  return DeviceContext::cpu();
}

void initialize_backend(DeviceContext& ctx) {
  if (ctx.device().is_cpu()) return;
#ifdef SHARDLM_WITH_CUDA
  ops::cuda::init_cuda_backend(ctx);
#endif
}

void set_attention_backend(DeviceContext& ctx, const std::string& backend) {
  if (ctx.device().is_cpu()) return;
#ifdef SHARDLM_WITH_CUDA
  using ops::cuda::AttentionKernels;
  ops::cuda::cuda_state(ctx).set_attention_kernels(backend == "fused"   ? AttentionKernels::kCudnn
                                                   : backend == "flash" ? AttentionKernels::kOwn
                                                                        : AttentionKernels::kAuto);
#else
  (void)backend;
#endif
}

}  // namespace shardlm::train
