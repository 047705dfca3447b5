// Agreement between ranks on a small integer (how many failed, whether any wants to stop): an
// all-reduce of one int32, on the rank's device when it is a GPU (NCCL reduces device memory
// only), on the host otherwise. A null communicator or a group of one returns `value`.
#pragma once

#include <cstdint>

#include "shardlm/dist/communicator.h"
#include "shardlm/tensor/device_context.h"

namespace shardlm::ckpt::detail {

int32_t all_reduce_int(dist::Communicator* comm, DeviceContext& ctx, int32_t value,
                       dist::ReduceOp op);

}  // namespace shardlm::ckpt::detail
