#include "shardlm/ckpt/detail/agree.h"

#include "shardlm/ops/ops.h"

namespace shardlm::ckpt::detail {

int32_t all_reduce_int(dist::Communicator* comm, DeviceContext& ctx, int32_t value,
                       dist::ReduceOp op) {
  if (comm == nullptr || comm->size() == 1) return value;
  OwnedTensor host = OwnedTensor::empty(DType::kI32, {1});
  host.view().data<int32_t>()[0] = value;
  if (ctx.device().is_cpu()) {
    comm->all_reduce(host.view(), op);
  } else {
    OwnedTensor dev = OwnedTensor::empty(DType::kI32, {1}, ctx.device());
    ops::copy(ctx, dev.view(), host.view());
    comm->all_reduce(dev.view(), op);
    ops::copy(ctx, host.view(), dev.view());
  }
  return host.view().data<int32_t>()[0];
}

}  // namespace shardlm::ckpt::detail
