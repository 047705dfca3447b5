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
  // Backward: the factor the language-model loss of this micro-batch enters the gradient with
  // (loss scale · CP / micro-batches; GPTModel::backward sets it). Auxiliary losses (MoE load
  // balancing) scale their gradients by it, as Megatron's MoEAuxLossAutoScaler does.
  double loss_grad_scale = 1.0;
  // Forward: where MoE layers add their load-balancing loss for the log (null: not tracked, e.g.
  // evaluation or a recompute pass).
  double* moe_aux_loss = nullptr;
  // The same for the router z-loss (--moe-z-loss-coeff): mean over tokens of logsumexp².
  double* moe_z_loss = nullptr;
  // BERT with the binary head: where the head chunk adds each micro-batch's mean sentence-order
  // loss (a part of the loss forward returns) for the log; null: not tracked.
  double* sop_loss = nullptr;

  DropoutKey dropout_key(uint32_t layer, uint32_t site) const {
    return DropoutKey{seed, step, microbatch, layer, site};
  }
};

}  // namespace shardlm::model
