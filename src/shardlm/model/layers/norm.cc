#include "shardlm/model/layers/norm.h"

#include "shardlm/ops/ops.h"

namespace shardlm::model {

Norm::Norm(std::string weight_name, std::string bias_name, int64_t hidden, Normalization kind,
           double eps)
    : weight_name_(std::move(weight_name)), bias_name_(std::move(bias_name)), hidden_(hidden),
      kind_(kind), eps_(eps) {}

void Norm::register_parameters(ParameterRegistry& reg) const {
  reg.add({weight_name_, {hidden_}, Split::none(), false, Init::ones()});
  if (kind_ == Normalization::kLayerNorm)
    reg.add({bias_name_, {hidden_}, Split::none(), false, Init::zeros()});
}

void Norm::bind(ParameterRegistry& reg) {
  weight_ = &reg.get(weight_name_);
  bias_ = kind_ == Normalization::kLayerNorm ? &reg.get(bias_name_) : nullptr;
}

void Norm::append_parameters(std::vector<Parameter*>& out) const {
  out.push_back(weight_);
  if (bias_) out.push_back(bias_);
}

void Norm::accumulate_grads(DeviceContext& ctx, const Tensor& grads) const {
  ops::add_inplace(ctx, weight_->compute_grad, dweight_view(grads));
  if (bias_) ops::add_inplace(ctx, bias_->compute_grad, dbias_view(grads));
}

Norm::Saved Norm::allocate_saved(TensorAllocator& alloc, DType dtype, int64_t rows) const {
  Saved s;
  if (kind_ == Normalization::kLayerNorm) s.mean = alloc.allocate(dtype, {rows});
  s.rstd = alloc.allocate(dtype, {rows});
  return s;
}

void Norm::forward(DeviceContext& ctx, Tensor out, const Saved& saved, const Tensor& in) const {
  if (kind_ == Normalization::kLayerNorm)
    ops::layernorm_forward(ctx, out, saved.mean, saved.rstd, in, weight_->compute_value, bias_->compute_value,
                           eps_);
  else
    ops::rmsnorm_forward(ctx, out, saved.rstd, in, weight_->compute_value, eps_);
}

void Norm::backward(DeviceContext& ctx, Tensor din, const Tensor& dout, const Tensor& in,
                    const Saved& saved) const {
  backward(ctx, din, dout, in, saved, weight_->compute_grad,
           bias_ ? bias_->compute_grad : Tensor());
}

void Norm::backward(DeviceContext& ctx, Tensor din, const Tensor& dout, const Tensor& in,
                    const Saved& saved, Tensor dweight, Tensor dbias) const {
  if (kind_ == Normalization::kLayerNorm)
    ops::layernorm_backward(ctx, din, dweight, dbias, dout, in, weight_->compute_value, saved.mean,
                            saved.rstd);
  else
    ops::rmsnorm_backward(ctx, din, dweight, dout, in, weight_->compute_value, saved.rstd);
}

}  // namespace shardlm::model
