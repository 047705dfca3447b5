// Where element i of a tensor-parallel shard sits in its global tensor, as plain arithmetic the
// CPU and the CUDA kernels share (parameter initialisation keys every element by its global
// index, so any layout starts from the same values).
//
// The shard is viewed as [outer, local_extent, inner] around its split axis; local coordinate d
// on that axis is global (d / block) * chunk + block_offset + d % block — model::Split's layout
// (the axis cut into chunks, each chunk into TP blocks, this rank's block of every chunk). The
// default map is the identity (an unsplit parameter).
//
//   ShardIndexMap m = param.index_map();   // from the parameter's Split
//   int64_t g = m.global_index(i);
#pragma once

#include <cstdint>

#include "shardlm/base/host_device.h"

namespace shardlm {

struct ShardIndexMap {
  int64_t local_extent = 1;  // the split axis: this shard's extent
  int64_t global_extent = 1; // ... and the global one
  int64_t inner = 1;         // elements per step along the split axis (product of later dims)
  int64_t chunk = 1;         // global extent of one chunk
  int64_t block = 1;         // this rank's extent within each chunk
  int64_t block_offset = 0;  // this rank's block start within each chunk

  SHARDLM_HOST_DEVICE int64_t global_index(int64_t i) const {
    const int64_t row = local_extent * inner;
    const int64_t outer = i / row, rest = i % row, d = rest / inner, in = rest % inner;
    const int64_t gd = (d / block) * chunk + block_offset + d % block;
    return (outer * global_extent + gd) * inner + in;
  }
};

}  // namespace shardlm
