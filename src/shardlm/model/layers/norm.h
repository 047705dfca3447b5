// Norm: LayerNorm (weight + bias) or RMSNorm (weight only) over the hidden axis, with the
// statistics it saves for backward (mean/rstd or rstd) held by the caller's activation memory.
//
// Parameter names follow Megatron Core's Transformer Engine layer spec, where the norm is fused
// into the next linear: e.g. `decoder.layers.0.self_attention.linear_qkv.layer_norm_weight`.
#pragma once

#include <string>
#include <vector>

#include "shardlm/model/parameter.h"
#include "shardlm/model/transformer_config.h"
#include "shardlm/tensor/arena.h"

namespace shardlm::model {

class Norm {
 public:
  struct Saved {
    Tensor mean;  // [N] (LayerNorm only)
    Tensor rstd;  // [N]
  };

  // weight_name / bias_name are full global names (bias unused for RMSNorm).
  Norm(std::string weight_name, std::string bias_name, int64_t hidden, Normalization kind,
       double eps);

  void register_parameters(ParameterRegistry& reg) const;
  void bind(ParameterRegistry& reg);
  // Appends the bound parameters (weight, then bias for LayerNorm) to `out`.
  void append_parameters(std::vector<Parameter*>& out) const;
  Saved allocate_saved(TensorAllocator& alloc, DType dtype, int64_t rows) const;

  void forward(DeviceContext& ctx, Tensor out, const Saved& saved, const Tensor& in) const;
  void backward(DeviceContext& ctx, Tensor din, const Tensor& dout, const Tensor& in,
                const Saved& saved) const;
  // The same, accumulating the parameter gradients into dweight / dbias (each [hidden]; dbias
  // unused for RMSNorm) instead of the registry's: sequence parallelism sums them over TP first.
  void backward(DeviceContext& ctx, Tensor din, const Tensor& dout, const Tensor& in,
                const Saved& saved, Tensor dweight, Tensor dbias) const;
  bool has_bias() const { return kind_ == Normalization::kLayerNorm; }
  // Elements of [dweight | dbias] (the layout the sequence-parallel reduction uses).
  int64_t grad_numel() const { return has_bias() ? 2 * hidden_ : hidden_; }
  // Registry gradients += grads[0, grad_numel()) laid out [dweight | dbias].
  void accumulate_grads(DeviceContext& ctx, const Tensor& grads) const;
  // Views of a [grad_numel()] buffer as (dweight, dbias) for backward(..., dweight, dbias).
  Tensor dweight_view(const Tensor& grads) const { return grads.flat_view(0, Shape({hidden_})); }
  Tensor dbias_view(const Tensor& grads) const {
    return has_bias() ? grads.flat_view(hidden_, Shape({hidden_})) : Tensor();
  }
  int64_t hidden() const { return hidden_; }

 private:
  std::string weight_name_, bias_name_;
  int64_t hidden_;
  Normalization kind_;
  double eps_;
  Parameter* weight_ = nullptr;
  Parameter* bias_ = nullptr;
};

}  // namespace shardlm::model
