#include "shardlm/model/families/gpt_model.h"

#include <algorithm>

#include "shardlm/ops/ops.h"
#include "shardlm/tensor/arena.h"

namespace shardlm::model {

namespace {
constexpr char kWordEmbeddings[] = "embedding.word_embeddings.weight";
constexpr char kPositionEmbeddings[] = "embedding.position_embeddings.weight";
constexpr char kOutputLayer[] = "output_layer.weight";

// The loss of a micro-batch is reduced on the host: N values, cheap next to the model.
double masked_sum_on_host(DeviceContext& ctx, const Tensor& losses, const Tensor& mask) {
  const int64_t n = losses.numel();
  DeviceContext host = DeviceContext::cpu();
  auto to_host_f64 = [&](const Tensor& t) {
    OwnedTensor f64 = OwnedTensor::empty(DType::kF64, {n});
    if (t.device().is_cpu()) {
      ops::copy(host, f64.view(), t.reshape({n}));
    } else {
      OwnedTensor staged = OwnedTensor::empty(t.dtype(), {n});  // same dtype across devices
      ops::copy(ctx, staged.view(), t.reshape({n}));
      ops::copy(host, f64.view(), staged.view());
    }
    return f64;
  };
  const OwnedTensor l = to_host_f64(losses), m = to_host_f64(mask);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += l.view().data<double>()[i] * m.view().data<double>()[i];
  return s;
}
}  // namespace

GPTModel::GPTModel(const TransformerConfig& cfg)
    : cfg_(cfg),
      final_norm_("decoder.final_layernorm.weight", "decoder.final_layernorm.bias",
                  cfg.hidden_size, cfg.normalization, cfg.norm_epsilon) {
  cfg_.validate();
  for (int64_t i = 0; i < cfg_.num_layers; ++i) layers_.emplace_back(cfg_, i);
}

void GPTModel::register_parameters(ParameterRegistry& reg) const {
  const int64_t V = cfg_.padded_vocab_size(), C = cfg_.hidden_size;
  reg.add({kWordEmbeddings, {V, C}, Split::none(), true, Init::normal(cfg_.init_method_std)});
  if (cfg_.position_embedding == PositionEmbedding::kLearnedAbsolute)
    reg.add({kPositionEmbeddings, {cfg_.max_positions(), C}, Split::none(), true,
             Init::normal(cfg_.init_method_std)});
  for (const TransformerLayer& layer : layers_) layer.register_parameters(reg);
  final_norm_.register_parameters(reg);
  if (cfg_.untie_embeddings_and_output_weights)
    reg.add({kOutputLayer, {V, C}, Split::none(), true, Init::normal(cfg_.init_method_std)});
}

void GPTModel::bind(ParameterRegistry& reg) {
  word_embeddings_ = &reg.get(kWordEmbeddings);
  position_embeddings_ = cfg_.position_embedding == PositionEmbedding::kLearnedAbsolute
                             ? &reg.get(kPositionEmbeddings)
                             : nullptr;
  for (TransformerLayer& layer : layers_) layer.bind(reg);
  final_norm_.bind(reg);
  output_layer_ = cfg_.untie_embeddings_and_output_weights ? &reg.get(kOutputLayer) : nullptr;
}

size_t GPTModel::plan_activation_bytes(DType dtype, int64_t micro_batch) const {
  ArenaPlan plan;
  GPTModel probe(cfg_);  // allocate into a copy so planning never disturbs our views
  probe.allocate_activations(plan, dtype, micro_batch);
  return plan.bytes();
}

void GPTModel::allocate_activations(TensorAllocator& alloc, DType dtype, int64_t micro_batch) {
  const int64_t N = micro_batch * cfg_.seq_length, C = cfg_.hidden_size;
  const int64_t V = cfg_.padded_vocab_size();
  micro_batch_ = micro_batch;
  Activations a;
  a.embedding = alloc.allocate(dtype, {N, C});
  for (int64_t l = 0; l <= cfg_.num_layers; ++l) a.residual.push_back(alloc.allocate(dtype, {N, C}));
  for (const TransformerLayer& layer : layers_)
    a.layers.push_back(layer.allocate_saved(alloc, dtype, micro_batch));
  a.scratch = TransformerLayer::allocate_scratch(cfg_, alloc, dtype, micro_batch);
  a.final_norm = alloc.allocate(dtype, {N, C});
  a.final_norm_saved = final_norm_.allocate_saved(alloc, dtype, N);
  a.logits = alloc.allocate(dtype, {N, V});
  a.lse = alloc.allocate(dtype, {N});
  a.losses = alloc.allocate(dtype, {N});
  a.dlosses = alloc.allocate(dtype, {N});
  a.dlogits = alloc.allocate(dtype, {N, V});
  a.dresidual0 = alloc.allocate(dtype, {N, C});
  a.dresidual1 = alloc.allocate(dtype, {N, C});
  acts_ = std::move(a);
}

Tensor GPTModel::output_weight() const {
  return output_layer_ ? output_layer_->compute_value : word_embeddings_->compute_value;
}
Tensor GPTModel::output_weight_grad() const {
  return output_layer_ ? output_layer_->compute_grad : word_embeddings_->compute_grad;
}

void GPTModel::report_grads_ready(std::span<Parameter* const> params) const {
  if (grad_ready_ && !params.empty()) grad_ready_(params);
}

double GPTModel::forward(StepContext& step, const Batch& batch) {
  DeviceContext& ctx = step.device;
  const int64_t B = micro_batch_, T = cfg_.seq_length, N = B * T, C = cfg_.hidden_size;
  SHARDLM_REQUIRE(batch.tokens.shape() == Shape({B, T}) && batch.targets.shape() == Shape({B, T}),
                  ErrorKind::kInvalidArgument,
                  "GPT forward: tokens " + batch.tokens.shape().to_string() + " and targets " +
                      batch.targets.shape().to_string() + " must be [micro-batch, seq-length] = " +
                      Shape({B, T}).to_string());
  SHARDLM_REQUIRE(batch.mask_sum > 0, ErrorKind::kInvalidArgument,
                  "GPT forward: the loss mask of this micro-batch is all zero");
  Activations& a = acts_;
  ops::embedding_forward(ctx, a.embedding.reshape({B, T, C}), batch.tokens,
                         word_embeddings_->compute_value,
                         position_embeddings_ ? position_embeddings_->compute_value : Tensor());
  ops::dropout_forward(ctx, a.residual[0], a.embedding, step.training ? cfg_.hidden_dropout : 0.0,
                       step.dropout_key(0, kDropoutEmbedding), 0);
  for (size_t l = 0; l < layers_.size(); ++l)
    layers_[l].forward(step, a.residual[l + 1], a.residual[l], a.layers[l], a.scratch);
  final_norm_.forward(ctx, a.final_norm, a.final_norm_saved, a.residual.back());
  ops::linear_forward(ctx, a.logits, a.final_norm, output_weight(), Tensor());
  ops::cross_entropy_forward(ctx, a.losses, a.lse, a.logits, batch.targets.reshape({N}));
  return masked_sum_on_host(ctx, a.losses, batch.loss_mask.reshape({N})) / batch.mask_sum;
}

void GPTModel::backward(StepContext& step, const Batch& batch, double loss_scale) {
  DeviceContext& ctx = step.device;
  const int64_t B = micro_batch_, T = cfg_.seq_length, N = B * T, C = cfg_.hidden_size;
  Activations& a = acts_;
  // d(sum(l*m)/mask_sum * scale)/dl = m * scale / mask_sum
  ops::copy(ctx, a.dlosses, batch.loss_mask.reshape({N}));
  ops::scale_inplace(ctx, a.dlosses, loss_scale / batch.mask_sum);
  ops::cross_entropy_backward(ctx, a.dlogits, a.dlosses, a.logits, batch.targets.reshape({N}),
                              a.lse);
  ops::linear_backward(ctx, a.scratch.c0, output_weight_grad(), Tensor(), a.dlogits, a.final_norm,
                       output_weight());
  if (output_layer_) report_grads_ready({&output_layer_, 1});
  Tensor dres = a.dresidual0, dnext = a.dresidual1;
  final_norm_.backward(ctx, dres, a.scratch.c0, a.residual.back(), a.final_norm_saved);
  std::vector<Parameter*> ready;
  final_norm_.append_parameters(ready);
  std::reverse(ready.begin(), ready.end());
  report_grads_ready(ready);
  for (size_t l = layers_.size(); l-- > 0;) {
    layers_[l].backward(step, dnext, dres, a.residual[l], a.layers[l], a.scratch);
    std::swap(dres, dnext);
    ready = layers_[l].parameters();
    std::reverse(ready.begin(), ready.end());
    report_grads_ready(ready);
  }
  ops::dropout_backward(ctx, a.scratch.c0, dres, step.training ? cfg_.hidden_dropout : 0.0,
                        step.dropout_key(0, kDropoutEmbedding), 0);
  ops::embedding_backward(ctx, word_embeddings_->compute_grad,
                          position_embeddings_ ? position_embeddings_->compute_grad : Tensor(),
                          a.scratch.c0.reshape({B, T, C}), batch.tokens);
  if (position_embeddings_) report_grads_ready({&position_embeddings_, 1});
  report_grads_ready({&word_embeddings_, 1});
}

}  // namespace shardlm::model
