#include "shardlm/model/families/bert_heads.h"

#include "shardlm/model/host_values.h"
#include "shardlm/ops/ops.h"

namespace shardlm::model {

namespace {
constexpr char kOutputBias[] = "output_layer.bias";
}  // namespace

BertHeads::BertHeads(const TransformerConfig& cfg, const TensorParallel& tp)
    : cfg_(cfg),
      tp_(tp),
      lm_dense_("lm_head.dense", cfg.hidden_size, cfg.hidden_size, /*bias=*/true,
                Init::normal(cfg.init_method_std)),
      lm_norm_("lm_head.layer_norm.weight", "lm_head.layer_norm.bias", cfg.hidden_size,
               cfg.normalization, cfg.norm_epsilon),
      pooler_("pooler.dense", cfg.hidden_size, cfg.hidden_size, /*bias=*/true,
              Init::normal(cfg.init_method_std)),
      binary_head_("binary_head", cfg.hidden_size, 2, /*bias=*/true,
                   Init::normal(cfg.init_method_std)) {}

void BertHeads::register_parameters(ParameterRegistry& reg) const {
  lm_dense_.register_parameters(reg);
  lm_norm_.register_parameters(reg);
  reg.add({kOutputBias, {cfg_.padded_vocab_size()}, tp_.split(0), false, Init::zeros()});
  if (!cfg_.has_binary_head()) return;
  pooler_.register_parameters(reg);
  binary_head_.register_parameters(reg);
}

void BertHeads::bind(ParameterRegistry& reg) {
  lm_dense_.bind(reg);
  lm_norm_.bind(reg);
  output_bias_ = &reg.get(kOutputBias);
  if (!cfg_.has_binary_head()) return;
  pooler_.bind(reg);
  binary_head_.bind(reg);
}

std::vector<Parameter*> BertHeads::lm_parameters() const {
  std::vector<Parameter*> out;
  lm_dense_.append_parameters(out);
  lm_norm_.append_parameters(out);
  out.push_back(output_bias_);
  return out;
}

std::vector<Parameter*> BertHeads::binary_parameters() const {
  std::vector<Parameter*> out;
  if (!cfg_.has_binary_head()) return out;
  pooler_.append_parameters(out);
  binary_head_.append_parameters(out);
  return out;
}

BertHeads::Saved BertHeads::allocate_saved(TensorAllocator& alloc, DType dtype, int64_t batch,
                                           int64_t rows) const {
  const int64_t C = cfg_.hidden_size;
  Saved s;
  s.pre = alloc.allocate(dtype, {rows, C});
  s.act = alloc.allocate(dtype, {rows, C});
  s.norm = lm_norm_.allocate_saved(alloc, dtype, rows);
  if (cfg_.has_binary_head()) {
    s.cls = alloc.allocate(dtype, {batch, C});
    s.pooled = alloc.allocate(dtype, {batch, C});
    s.sop_logits = alloc.allocate(dtype, {batch, 2});
    s.sop_lse = alloc.allocate(dtype, {batch});
    s.sop_losses = alloc.allocate(dtype, {batch});
  }
  return s;
}

BertHeads::Scratch BertHeads::allocate_scratch(TensorAllocator& alloc, DType dtype, int64_t batch,
                                               int64_t rows) const {
  const int64_t C = cfg_.hidden_size;
  Scratch s;
  s.d0 = alloc.allocate(dtype, {rows, C});
  s.d1 = alloc.allocate(dtype, {rows, C});
  if (cfg_.has_binary_head()) {
    s.dcls = alloc.allocate(dtype, {batch, C});
    s.dpooled = alloc.allocate(dtype, {batch, C});
    s.dsop_logits = alloc.allocate(dtype, {batch, 2});
    s.dsop = alloc.allocate(dtype, {batch});
  }
  return s;
}

void BertHeads::lm_transform_forward(DeviceContext& ctx, Tensor out, const Tensor& x,
                                     const Saved& s) const {
  lm_dense_.forward_gelu(ctx, s.act, s.pre, x);
  lm_norm_.forward(ctx, out, s.norm, s.act);
}

void BertHeads::lm_transform_backward(DeviceContext& ctx, Tensor dx, const Tensor& dout,
                                      const Tensor& x, const Saved& s,
                                      const Scratch& scratch) const {
  lm_norm_.backward(ctx, scratch.d0, dout, s.act, s.norm);
  lm_dense_.backward_from_gelu(ctx, dx, scratch.d1, scratch.d0, s.pre, x);
}

double BertHeads::binary_forward(DeviceContext& ctx, const Tensor& x, int64_t batch, int64_t seq,
                                 const Tensor& sentence_order, const Saved& s) const {
  const int64_t C = cfg_.hidden_size;
  for (int64_t b = 0; b < batch; ++b)
    ops::copy(ctx, s.cls.flat_view(b * C, Shape({1, C})), x.flat_view(b * seq * C, Shape({1, C})));
  pooler_.forward(ctx, s.pooled, s.cls);
  ops::tanh_forward(ctx, s.pooled, s.pooled);
  binary_head_.forward(ctx, s.sop_logits, s.pooled);
  ops::cross_entropy_forward(ctx, s.sop_losses, s.sop_lse, s.sop_logits,
                             sentence_order.reshape({batch}));
  double sum = 0;
  for (double v : host_values(ctx, s.sop_losses)) sum += v;
  return sum;
}

void BertHeads::binary_backward(DeviceContext& ctx, const Scratch& scratch, int64_t batch,
                                const Tensor& sentence_order, double scale,
                                const Saved& s) const {
  ops::fill(ctx, scratch.dsop, scale);
  ops::cross_entropy_backward(ctx, scratch.dsop_logits, scratch.dsop, s.sop_logits,
                              sentence_order.reshape({batch}), s.sop_lse);
  binary_head_.backward(ctx, scratch.dpooled, scratch.dsop_logits, s.pooled);
  ops::tanh_backward(ctx, scratch.dpooled, scratch.dpooled, s.pooled);
  pooler_.backward(ctx, scratch.dcls, scratch.dpooled, s.cls);
}

void BertHeads::add_first_token_grads(DeviceContext& ctx, const Tensor& dx, int64_t batch,
                                      int64_t seq, const Scratch& scratch) const {
  const int64_t C = cfg_.hidden_size;
  for (int64_t b = 0; b < batch; ++b)
    ops::add_inplace(ctx, dx.flat_view(b * seq * C, Shape({1, C})),
                     scratch.dcls.flat_view(b * C, Shape({1, C})));
}

}  // namespace shardlm::model
