// Picks the device a run trains on (--device auto|cpu|cuda) and attaches the backend state.
// auto = the GPU when this build has the CUDA backend and a GPU is visible, else the CPU.
#pragma once

#include <string>

#include "shardlm/tensor/device_context.h"

namespace shardlm::train {

// Throws Error(kInvalidConfig) for --device cuda without a usable GPU, naming why.
// gpu_index: the visible GPU to take (a multi-process rank's comes from dist/gpu_binding.h).
DeviceContext select_device(const std::string& requested, int gpu_index = 0);
// Creates backend state (CUDA stream, cuBLASLt handle) for CUDA contexts; no-op on the CPU.
void initialize_backend(DeviceContext& ctx);
// --attention-backend auto | fused | flash (validated by TrainConfig) for a CUDA context; no-op
// on the CPU.
void set_attention_backend(DeviceContext& ctx, const std::string& backend);

}  // namespace shardlm::train
