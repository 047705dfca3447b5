#include "shardlm/model/layers/linear.h"

#include "shardlm/base/check.h"
#include "shardlm/ops/ops.h"

namespace shardlm::model {

Linear::Linear(std::string prefix, int64_t in_features, int64_t out_features, bool bias, Init init)
    : Linear(std::move(prefix), in_features, out_features, bias, init, ParallelMode::kNone,
             TensorParallel{}) {}

Linear::Linear(std::string prefix, int64_t in_features, int64_t out_features, bool bias, Init init,
               ParallelMode mode, const TensorParallel& tp, int chunks)
    : prefix_(std::move(prefix)), in_(in_features), out_(out_features), in_local_(in_features),
      out_local_(out_features), has_bias_(bias), init_(init),
      mode_(tp.enabled() ? mode : ParallelMode::kNone), tp_(tp), chunks_(chunks) {
  // Divisibility is validated with a user-facing message where the model config is built
  // (TransformerConfig::validate); the registry re-checks when the split is registered.
  if (mode_ == ParallelMode::kColumn) out_local_ = out_ / tp_.size();
  if (mode_ == ParallelMode::kRow) in_local_ = in_ / tp_.size();
}

Linear::Linear(std::string prefix, int64_t in_features, int64_t out_features, bool bias, Init init,
               const TensorParallel& tp, const Split& column_split)
    : Linear(std::move(prefix), in_features, out_features, bias, init,
             column_split.is_split() ? ParallelMode::kColumn : ParallelMode::kNone, tp) {
  if (!column_split.is_split()) return;
  column_split_ = column_split;
  out_local_ = 0;
  for (const SplitSegment& s : column_split.segments(out_features)) out_local_ += s.size;
}

void Linear::register_parameters(ParameterRegistry& reg) const {
  const Split column = column_split_.is_split() ? column_split_ : tp_.split(0, chunks_);
  const Split w = mode_ == ParallelMode::kColumn ? column
                  : mode_ == ParallelMode::kRow  ? tp_.split(1)
                                                 : Split::none();
  const Split b = mode_ == ParallelMode::kColumn ? column : Split::none();
  ParameterSpec weight{prefix_ + ".weight", {out_, in_}, w, true, init_};
  // One weight-gradient GEMM per micro-batch writes its gradient, so it may write the fp32
  // master gradient directly; not with replicated k/v rows, whose gradient is summed over the
  // replicas in the compute gradient (layers/qkv_layout.h).
  bool replicas = false;
  for (const SplitSegment& s : w.runs) replicas = replicas || s.replica;
  weight.fuse_main_grad = !replicas;
  weight.expert = expert_;
  reg.add(weight);
  if (has_bias_) {
    ParameterSpec bias{prefix_ + ".bias", {out_}, b, false, Init::zeros()};
    bias.expert = expert_;
    reg.add(bias);
  }
}

void Linear::bind(ParameterRegistry& reg) {
  weight_ = &reg.get(prefix_ + ".weight");
  bias_ = has_bias_ ? &reg.get(prefix_ + ".bias") : nullptr;
}

void Linear::append_parameters(std::vector<Parameter*>& out) const {
  out.push_back(weight_);
  if (bias_) out.push_back(bias_);
}

const Fp8Workspace& Linear::workspace(const Fp8Workspace* fp8) const {
  SHARDLM_REQUIRE(fp8 != nullptr && fp8->defined(), ErrorKind::kInternal,
                  "Linear " + prefix_ + " runs in fp8 but its caller passed no Fp8Workspace");
  return *fp8;
}

void Linear::forward(DeviceContext& ctx, Tensor out, const Tensor& in,
                     const Fp8Workspace* fp8) const {
  // Row-parallel: the partial sums of all ranks are added up afterwards; the bias once.
  const bool add_bias = bias_ && (mode_ != ParallelMode::kRow || tp_.rank() == 0);
  const Tensor bias = add_bias ? bias_->compute_value : Tensor();
  if (fp8_)
    fp8_->forward(ctx, workspace(fp8), out, in, weight_->compute_value, bias);
  else
    ops::linear_forward(ctx, out, in, weight_->compute_value, bias);
}

void Linear::forward_gelu(DeviceContext& ctx, Tensor out, Tensor pre, const Tensor& in,
                          const Fp8Workspace* fp8) const {
  // Row-parallel outputs are partial sums: GELU must wait until they are summed.
  SHARDLM_CHECK(mode_ != ParallelMode::kRow);
  if (fp8_) {
    fp8_->forward(ctx, workspace(fp8), pre, in, weight_->compute_value,
                  bias_ ? bias_->compute_value : Tensor());
    ops::gelu_forward(ctx, out, pre);
    return;
  }
  ops::linear_gelu_forward(ctx, out, pre, in, weight_->compute_value,
                           bias_ ? bias_->compute_value : Tensor());
}

void Linear::backward_from_gelu(DeviceContext& ctx, Tensor din, Tensor dpre, const Tensor& dout,
                                const Tensor& pre, const Tensor& in,
                                const Fp8Workspace* fp8) const {
  ops::gelu_backward_bias_grad(ctx, dpre, bias_ ? bias_->compute_grad : Tensor(), dout, pre);
  backward_gemms(ctx, din, Tensor(), dpre, in, fp8);
}

void Linear::backward(DeviceContext& ctx, Tensor din, const Tensor& dout, const Tensor& in,
                      const Fp8Workspace* fp8) const {
  backward_gemms(ctx, din, bias_ ? bias_->compute_grad : Tensor(), dout, in, fp8);
}

void Linear::backward_gemms(DeviceContext& ctx, Tensor din, Tensor dbias, const Tensor& dout,
                            const Tensor& in, const Fp8Workspace* fp8) const {
  if (fp8_) {
    // The bias gradient from the 16-bit dout; then the fp8 GEMMs.
    if (dbias.defined())
      ops::linear_backward(ctx, Tensor(), Tensor(), dbias, dout, in, weight_->compute_value);
    if (!weight_->main_grad_fused) {
      fp8_->backward(ctx, workspace(fp8), din, weight_->compute_grad, /*accumulate=*/true, dout,
                     in, weight_->compute_value);
      return;
    }
    const Parameter::FusedMainGrad main = weight_->take_fused_main_grad();
    fp8_->backward(ctx, workspace(fp8), din, main.grad, main.accumulate, dout, in,
                   weight_->compute_value);
    return;
  }
  if (!weight_->main_grad_fused) {
    ops::linear_backward(ctx, din, weight_->compute_grad, dbias, dout, in, weight_->compute_value);
    return;
  }
  // Gradient-accumulation fusion: the weight gradient goes straight into the fp32 master
  // gradient (assigned by the step's first micro-batch, added by the others).
  ops::linear_backward(ctx, din, Tensor(), dbias, dout, in, weight_->compute_value);
  const Parameter::FusedMainGrad main = weight_->take_fused_main_grad();
  ops::linear_weight_grad(ctx, main.grad, dout, in, main.accumulate);
}

}  // namespace shardlm::model
