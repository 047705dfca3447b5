// stubs_not_yet_implemented.cc — temporary definitions of the CUDA ops that are not written
// yet, so the dispatcher links. Each throws Error(kUnsupported). Removed op by op as the
// real .cu files land; this file is deleted when the backend is complete.
#include "shardlm/base/error.h"
#include "shardlm/ops/cuda/cuda_ops.h"

namespace shardlm::ops::cuda {
namespace {
[[noreturn]] void not_implemented(const char* op) {
  throw Error(ErrorKind::kUnsupported, std::string(op) + " on CUDA is not implemented yet");
}
}  // namespace

void embedding_forward(DeviceContext&, Tensor, const Tensor&, const Tensor&, const Tensor&) {
  not_implemented("embedding_forward");
}
void embedding_backward(DeviceContext&, Tensor, Tensor, const Tensor&, const Tensor&) {
  not_implemented("embedding_backward");
}
void layernorm_forward(DeviceContext&, Tensor, Tensor, Tensor, const Tensor&, const Tensor&,
                       const Tensor&, double) {
  not_implemented("layernorm_forward");
}
void layernorm_backward(DeviceContext&, Tensor, Tensor, Tensor, const Tensor&, const Tensor&,
                        const Tensor&, const Tensor&, const Tensor&) {
  not_implemented("layernorm_backward");
}
void rmsnorm_forward(DeviceContext&, Tensor, Tensor, const Tensor&, const Tensor&, double) {
  not_implemented("rmsnorm_forward");
}
void rmsnorm_backward(DeviceContext&, Tensor, Tensor, const Tensor&, const Tensor&,
                      const Tensor&, const Tensor&) {
  not_implemented("rmsnorm_backward");
}
void linear_forward(DeviceContext&, Tensor, const Tensor&, const Tensor&, const Tensor&) {
  not_implemented("linear_forward");
}
void linear_backward(DeviceContext&, Tensor, Tensor, Tensor, const Tensor&, const Tensor&,
                     const Tensor&) {
  not_implemented("linear_backward");
}
void attention_forward(DeviceContext&, Tensor, Tensor, const Tensor&, const AttentionShape&,
                       double, const DropoutKey&) {
  not_implemented("attention_forward");
}
void attention_backward(DeviceContext&, Tensor, const Tensor&, const Tensor&, const Tensor&,
                        const Tensor&, const AttentionShape&, double, const DropoutKey&) {
  not_implemented("attention_backward");
}
void cross_entropy_forward(DeviceContext&, Tensor, Tensor, const Tensor&, const Tensor&) {
  not_implemented("cross_entropy_forward");
}
void cross_entropy_backward(DeviceContext&, Tensor, const Tensor&, const Tensor&, const Tensor&,
                            const Tensor&) {
  not_implemented("cross_entropy_backward");
}
void adamw_step(DeviceContext&, Tensor, const Tensor&, Tensor, Tensor, const AdamWParams&) {
  not_implemented("adamw_step");
}

}  // namespace shardlm::ops::cuda
