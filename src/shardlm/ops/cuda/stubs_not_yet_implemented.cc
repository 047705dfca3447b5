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

void attention_backward(DeviceContext&, Tensor, const Tensor&, const Tensor&, const Tensor&,
                        const Tensor&, const AttentionShape&, double, const DropoutKey&) {
  not_implemented("attention_backward");
}

}  // namespace shardlm::ops::cuda
