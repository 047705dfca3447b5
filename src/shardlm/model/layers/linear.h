// Linear: y[N,OUT] = x[N,IN] @ W[OUT,IN]^T + b[OUT], W and b registered under global names.
//
// Tensor parallelism (Megatron's ColumnParallelLinear / RowParallelLinear, without the
// communication: the caller applies the region boundaries of model/tensor_parallel.h):
//  - kColumn: W and b split along OUT (optionally in `chunks`, see Split); the rank computes
//    its slice of the output features from the full input.
//  - kRow: W split along IN; b replicated. The rank computes a partial sum of the full output
//    from its slice of the input features; the bias is added on TP rank 0 only, so the TP sum
//    holds it once. Backward: every rank gets the full output gradient, so every rank computes
//    the same (complete) bias gradient.
// in_features() / out_features() are the rank's LOCAL sizes.
//
//   Linear fc1("decoder.layers.0.mlp.linear_fc1", C, F, /*bias=*/true, Init::normal(0.02));
//   fc1.register_parameters(reg);  reg.finalize(...);  fc1.bind(reg);
//   fc1.forward(ctx, h, x);  fc1.backward(ctx, dx, dh, x);
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "shardlm/model/fp8_linear.h"
#include "shardlm/model/parameter.h"
#include "shardlm/model/tensor_parallel.h"

namespace shardlm::model {

enum class ParallelMode { kNone, kColumn, kRow };

class Linear {
 public:
  // `prefix` names the weight `<prefix>.weight` and the bias `<prefix>.bias`.
  Linear(std::string prefix, int64_t in_features, int64_t out_features, bool bias, Init init);
  // in_features / out_features are the GLOBAL sizes; mode kNone or TP = 1 is the plain layer.
  Linear(std::string prefix, int64_t in_features, int64_t out_features, bool bias, Init init,
         ParallelMode mode, const TensorParallel& tp, int chunks = 1);
  // Column-parallel with an explicit split of the output rows (weight and bias), e.g. the
  // fused QKV with replicated query groups (layers/qkv_layout.h). Split::none(): plain layer.
  Linear(std::string prefix, int64_t in_features, int64_t out_features, bool bias, Init init,
         const TensorParallel& tp, const Split& column_split);

  // Registers the parameters as a mixture-of-experts expert's (ParameterSpec::expert).
  void mark_expert() { expert_ = true; }

  // Runs the GEMMs in fp8 (model/fp8_linear.h): forward and backward then need a workspace.
  void enable_fp8(Fp8Linear fp8) { fp8_ = std::move(fp8); }
  bool fp8() const { return fp8_.has_value(); }

  void register_parameters(ParameterRegistry& reg) const;
  void bind(ParameterRegistry& reg);
  // Appends the bound parameters (weight, then bias) to `out`.
  void append_parameters(std::vector<Parameter*>& out) const;

  // fp8: the workspace for an fp8 linear (ignored otherwise; required when fp8()).
  void forward(DeviceContext& ctx, Tensor out, const Tensor& in,
               const Fp8Workspace* fp8 = nullptr) const;
  // din may be undefined (no input gradient needed).
  void backward(DeviceContext& ctx, Tensor din, const Tensor& dout, const Tensor& in,
                const Fp8Workspace* fp8 = nullptr) const;
  // The linear followed by GELU (not row-parallel): out = gelu(pre), pre = in @ W^T + b, one
  // cuBLASLt GEMM with the GELU epilogue on CUDA in bf16/fp16 (ops::linear_gelu_forward); in
  // fp8 the GEMM with the bias, then the GELU.
  void forward_gelu(DeviceContext& ctx, Tensor out, Tensor pre, const Tensor& in,
                    const Fp8Workspace* fp8 = nullptr) const;
  // Its backward from dout = d(gelu output): dpre (scratch, [N, out]) and the bias gradient in
  // one pass, then the GEMMs for din and the weight gradient.
  void backward_from_gelu(DeviceContext& ctx, Tensor din, Tensor dpre, const Tensor& dout,
                          const Tensor& pre, const Tensor& in,
                          const Fp8Workspace* fp8 = nullptr) const;

  int64_t in_features() const { return in_local_; }
  int64_t out_features() const { return out_local_; }
  const std::string& prefix() const { return prefix_; }

 private:
  std::string prefix_;
  int64_t in_, out_;              // global
  int64_t in_local_, out_local_;  // this rank's
  bool has_bias_;
  Init init_;
  ParallelMode mode_ = ParallelMode::kNone;
  TensorParallel tp_;
  int chunks_ = 1;
  bool expert_ = false;
  Split column_split_;  // explicit column split (is_split() only from that constructor)
  // din and dbias through linear_backward, the weight gradient into the compute gradient or,
  // with gradient-accumulation fusion, the master gradient (parameter.h).
  void backward_gemms(DeviceContext& ctx, Tensor din, Tensor dbias, const Tensor& dout,
                      const Tensor& in, const Fp8Workspace* fp8) const;
  const Fp8Workspace& workspace(const Fp8Workspace* fp8) const;
  std::optional<Fp8Linear> fp8_;

  Parameter* weight_ = nullptr;
  Parameter* bias_ = nullptr;
};

}  // namespace shardlm::model
