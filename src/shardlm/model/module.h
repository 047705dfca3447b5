// Shared pieces of every module: the per-micro-batch StepContext (device + the identity used to
// key dropout masks), and the explicit forward/backward contract.
//
// Module contract (DESIGN §2.3, §8.7): a module registers its parameters with global names,
// binds to them after ParameterRegistry::finalize(), describes the activations it saves through
// a TensorAllocator (planned once, allocated once), and implements forward and backward.
// backward ACCUMULATES parameter gradients and ASSIGNS the input gradient.
#pragma once

#include <cstdint>

#include "shardlm/tensor/device_context.h"
#include "shardlm/tensor/philox.h"

namespace shardlm::model {

struct StepContext {
  DeviceContext& device;
  uint64_t seed = 0;
  uint32_t step = 0;        // optimizer iteration (0-based)
  uint32_t microbatch = 0;  // index within the iteration
  bool training = true;     // false: dropout off (evaluation)

  DropoutKey dropout_key(uint32_t layer, uint32_t site) const {
    return DropoutKey{seed, step, microbatch, layer, site};
  }
};

}  // namespace shardlm::model
