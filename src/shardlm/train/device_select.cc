#include "shardlm/train/device_select.h"

#include "shardlm/base/error.h"

#ifdef SHARDLM_WITH_CUDA
#include "shardlm/ops/cuda/cuda_context.h"
#endif

namespace shardlm::train {

DeviceContext select_device(const std::string& requested, int local_rank) {
  if (requested == "cpu") return DeviceContext::cpu();
  const int gpus = cuda_device_count();
  if (requested == "cuda") {
    if (!cuda_backend_compiled())
      throw Error(ErrorKind::kInvalidConfig,
                  "--device cuda: this build has no CUDA backend (nvcc was not found when it was "
                  "configured); rebuild on a machine with the CUDA toolkit or use --device cpu");
    if (gpus <= local_rank)
      throw Error(ErrorKind::kInvalidConfig,
                  "--device cuda: " + std::to_string(gpus) + " GPU(s) visible, need index " +
                      std::to_string(local_rank) +
                      " (one GPU per local rank); check CUDA_VISIBLE_DEVICES, start fewer ranks "
                      "per node, or use --device cpu" +
                      (gpus > 0 ? std::string(" (or --distributed-backend gloo to let ranks share "
                                              "GPUs; slow: collectives go through host memory)")
                                : std::string()));
    return DeviceContext(Device::cuda(local_rank));
  }
  // auto
  if (gpus > local_rank) return DeviceContext(Device::cuda(local_rank));
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
