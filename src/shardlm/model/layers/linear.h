// Linear: y[N,OUT] = x[N,IN] @ W[OUT,IN]^T + b[OUT], W and b registered under global names.
// Tensor-parallel column/row variants wrap this with the communication pairs (DESIGN §8.8).
//
//   Linear fc1("decoder.layers.0.mlp.linear_fc1", C, F, /*bias=*/true, Init::normal(0.02));
//   fc1.register_parameters(reg);  reg.finalize(...);  fc1.bind(reg);
//   fc1.forward(ctx, h, x);  fc1.backward(ctx, dx, dh, x);
#pragma once

#include <string>
#include <vector>

#include "shardlm/model/parameter.h"

namespace shardlm::model {

class Linear {
 public:
  // `prefix` names the weight `<prefix>.weight` and the bias `<prefix>.bias`.
  Linear(std::string prefix, int64_t in_features, int64_t out_features, bool bias, Init init);

  void register_parameters(ParameterRegistry& reg) const;
  void bind(ParameterRegistry& reg);
  // Appends the bound parameters (weight, then bias) to `out`.
  void append_parameters(std::vector<Parameter*>& out) const;

  void forward(DeviceContext& ctx, Tensor out, const Tensor& in) const;
  // din may be undefined (no input gradient needed).
  void backward(DeviceContext& ctx, Tensor din, const Tensor& dout, const Tensor& in) const;

  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  const std::string& prefix() const { return prefix_; }

 private:
  std::string prefix_;
  int64_t in_, out_;
  bool has_bias_;
  Init init_;
  Parameter* weight_ = nullptr;
  Parameter* bias_ = nullptr;
};

}  // namespace shardlm::model
