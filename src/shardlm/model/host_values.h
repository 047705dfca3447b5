// host_values: a small tensor's elements on the host as doubles, from any device and float
// dtype. The models reduce their per-token and per-sequence losses on the host with it (N or B
// values per micro-batch: cheap next to the model, and summed in double in a fixed order).
#pragma once

#include <vector>

#include "shardlm/tensor/device_context.h"
#include "shardlm/tensor/tensor.h"

namespace shardlm::model {

std::vector<double> host_values(DeviceContext& ctx, const Tensor& t);

}  // namespace shardlm::model
