#include "shardlm/model/host_values.h"

#include "shardlm/ops/ops.h"

namespace shardlm::model {

std::vector<double> host_values(DeviceContext& ctx, const Tensor& t) {
  const int64_t n = t.numel();
  DeviceContext host = DeviceContext::cpu();
  OwnedTensor f64 = OwnedTensor::empty(DType::kF64, {n});
  if (t.device().is_cpu()) {
    ops::copy(host, f64.view(), t.reshape({n}));
  } else {
    OwnedTensor staged = OwnedTensor::empty(t.dtype(), {n});  // same dtype across devices
    ops::copy(ctx, staged.view(), t.reshape({n}));
    ops::copy(host, f64.view(), staged.view());
  }
  const double* p = f64.view().data<double>();
  return std::vector<double>(p, p + n);
}

}  // namespace shardlm::model
