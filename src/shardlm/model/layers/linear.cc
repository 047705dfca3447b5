#include "shardlm/model/layers/linear.h"

#include "shardlm/ops/ops.h"

namespace shardlm::model {

Linear::Linear(std::string prefix, int64_t in_features, int64_t out_features, bool bias, Init init)
    : prefix_(std::move(prefix)), in_(in_features), out_(out_features), has_bias_(bias),
      init_(init) {}

void Linear::register_parameters(ParameterRegistry& reg) const {
  reg.add({prefix_ + ".weight", {out_, in_}, Split::none(), true, init_});
  if (has_bias_) reg.add({prefix_ + ".bias", {out_}, Split::none(), false, Init::zeros()});
}

void Linear::bind(ParameterRegistry& reg) {
  weight_ = &reg.get(prefix_ + ".weight");
  bias_ = has_bias_ ? &reg.get(prefix_ + ".bias") : nullptr;
}

void Linear::append_parameters(std::vector<Parameter*>& out) const {
  out.push_back(weight_);
  if (bias_) out.push_back(bias_);
}

void Linear::forward(DeviceContext& ctx, Tensor out, const Tensor& in) const {
  ops::linear_forward(ctx, out, in, weight_->compute_value, bias_ ? bias_->compute_value : Tensor());
}

void Linear::backward(DeviceContext& ctx, Tensor din, const Tensor& dout, const Tensor& in) const {
  ops::linear_backward(ctx, din, weight_->compute_grad, bias_ ? bias_->compute_grad : Tensor(), dout, in,
                       weight_->compute_value);
}

}  // namespace shardlm::model
