// GPTModel: Megatron's GPT — embedding (word + learned absolute positions) → dropout →
// pre-norm TransformerLayers → final norm → output layer (tied to the word embedding unless
// untie_embeddings_and_output_weights) → softmax cross-entropy with a loss mask.
//
// Explicit forward/backward for one micro-batch at a time. Activations live in one arena
// planned from the config (plan_activation_bytes) and allocated once.
//
//   GPTModel model(cfg);
//   ParameterRegistry reg;  model.register_parameters(reg);
//   reg.finalize(ctx, DType::kF32, seed);  model.bind(reg);
//   Arena acts(Device::cpu(), model.plan_activation_bytes(DType::kF32, mbs), "activations");
//   model.allocate_activations(acts, DType::kF32, mbs);
//   double loss = model.forward(step, batch);      // masked mean over this micro-batch
//   model.backward(step, 1.0 / num_microbatches);  // grads += d(loss * scale)
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "shardlm/model/layers/linear.h"
#include "shardlm/model/layers/norm.h"
#include "shardlm/model/layers/transformer_layer.h"
#include "shardlm/model/module.h"
#include "shardlm/model/transformer_config.h"

namespace shardlm::model {

// One micro-batch on the model's device. tokens/targets int32 [B,T]; loss_mask [B,T] in the
// model dtype; mask_sum = sum(loss_mask) (> 0), computed by whoever built the batch.
struct Batch {
  Tensor tokens;
  Tensor targets;
  Tensor loss_mask;
  double mask_sum = 0;
};

class GPTModel {
 public:
  explicit GPTModel(const TransformerConfig& cfg);

  void register_parameters(ParameterRegistry& reg) const;
  void bind(ParameterRegistry& reg);

  size_t plan_activation_bytes(DType dtype, int64_t micro_batch) const;
  void allocate_activations(TensorAllocator& alloc, DType dtype, int64_t micro_batch);

  // Returns sum(loss_i * mask_i) / mask_sum for this micro-batch; keeps activations.
  double forward(StepContext& step, const Batch& batch);
  // Accumulates gradients of (loss * loss_scale) into the registry's gradient buffer.
  void backward(StepContext& step, const Batch& batch, double loss_scale);

  // Gradient-ready hook (data-parallel overlap): backward calls cb with exactly the parameters
  // whose gradient (compute_grad) for this micro-batch is complete, as soon as they are: the
  // output layer (untied) and final norm first, then each transformer layer's parameters after
  // its backward (last layer first), then the position embedding, and the word embedding last
  // (when tied it also receives the output layer's gradient). Every parameter is reported
  // exactly once per backward, in the reverse of registration order. With tensor/sequence
  // parallelism a parameter is reported after any TP all-reduce of its gradient. Empty cb: none.
  using GradReadyCallback = std::function<void(std::span<Parameter* const>)>;
  void set_grad_ready_callback(GradReadyCallback cb) { grad_ready_ = std::move(cb); }

  const TransformerConfig& config() const { return cfg_; }
  // Per-token losses of the last forward, [B*T] (for tests and evaluation).
  const Tensor& token_losses() const { return acts_.losses; }
  const Tensor& logits() const { return acts_.logits; }

 private:
  struct Activations {
    std::vector<Tensor> residual;  // L+1 × [N, C]; residual[0] = embedding output
    Tensor embedding;              // [N, C] before dropout
    std::vector<TransformerLayer::Saved> layers;
    TransformerLayer::Scratch scratch;
    Tensor final_norm;             // [N, C]
    Norm::Saved final_norm_saved;
    Tensor logits;                 // [N, V]
    Tensor lse;                    // [N]
    Tensor losses;                 // [N]
    Tensor dlosses;                // [N]
    Tensor dlogits;                // [N, V]
    Tensor dresidual0, dresidual1; // [N, C] ping-pong residual-stream gradients
  };

  Tensor output_weight() const;
  void report_grads_ready(std::span<Parameter* const> params) const;
  Tensor output_weight_grad() const;

  TransformerConfig cfg_;
  std::vector<TransformerLayer> layers_;
  Norm final_norm_;
  Parameter* word_embeddings_ = nullptr;
  Parameter* position_embeddings_ = nullptr;
  Parameter* output_layer_ = nullptr;
  Activations acts_;
  int64_t micro_batch_ = 0;
  GradReadyCallback grad_ready_;
};

}  // namespace shardlm::model
