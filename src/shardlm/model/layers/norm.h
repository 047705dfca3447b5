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

 private:
  std::string weight_name_, bias_name_;
  int64_t hidden_;
  Normalization kind_;
  double eps_;
  Parameter* weight_ = nullptr;
  Parameter* bias_ = nullptr;
};

}  // namespace shardlm::model
