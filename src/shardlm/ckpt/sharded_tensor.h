// ShardedTensor: one rank's piece of a global tensor, described so that any other layout can
// find the elements it needs (Megatron Core's dist_checkpointing ShardedTensor, simplified).
//
// A shard is a box of the global tensor, [offsets, offsets + extents) per axis (a tensor-
// parallel shard of a Split parameter is the full tensor with one axis cut to this rank's
// block), optionally narrowed to a flat range [flat_begin, flat_end) of the box's row-major
// elements (a distributed-optimizer shard cuts the flat buffer at arbitrary element
// boundaries). Resharding is then one generic operation, copy_overlap: copy the elements two
// regions of the same global tensor have in common. It walks the boxes' intersection row by row
// (the last axis is contiguous in both), clipping each row to both flat ranges.
//
// Thread contract: value types; copy_overlap is pure.
//
//   ShardRegion mine = region_of(reg.get("decoder.layers.0.mlp.linear_fc1.weight"));
//   int64_t n = copy_overlap(mine, dst_bytes, saved, src_bytes, sizeof(float));
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "shardlm/model/parameter.h"
#include "shardlm/tensor/tensor.h"

namespace shardlm::ckpt {

struct ShardRegion {
  std::vector<int64_t> offsets;  // per axis, in the global tensor
  std::vector<int64_t> extents;  // per axis (the box's shape)
  int64_t flat_begin = 0;        // flat range of the box's row-major elements;
  int64_t flat_end = -1;         // -1: the whole box

  static ShardRegion whole(const Shape& global_shape);
  int64_t box_numel() const;
  int64_t numel() const;  // elements in this shard
  bool is_whole_box() const { return flat_begin == 0 && (flat_end < 0 || flat_end == box_numel()); }
  // Throws Error(kInvalidArgument) naming `what` if the region does not fit `global_shape`.
  void validate(const Shape& global_shape, const std::string& what) const;
  std::string to_string() const;  // "[0:4, 8:16] flat [0, 32)"
};

// The region of the global tensor that a registry parameter's local shard covers (from its
// Split: the split axis cut to block tp_rank of tp_size; everything else whole). Only for a
// shard that is one box (one Split segment); pieces_of handles every split.
ShardRegion region_of(const model::Parameter& param);

// A part of a parameter's local shard that is one box of the global tensor: one run of the
// split axis (model::Split::segments: a SwiGLU chunk, the q heads or the replicated k/v of the
// fused QKV), optionally narrowed to a flat range.
struct ParameterPiece {
  int64_t local_begin = 0, local_end = 0;  // flat range of the parameter's local elements
  ShardRegion region;                       // where those elements lie in the global tensor
  bool replica = false;  // another TP rank holds the same elements and writes them
};
// The pieces of the local elements [flat_begin, flat_end) of `param` (flat_end < 0: to the end),
// in local order; empty pieces are left out.
std::vector<ParameterPiece> pieces_of(const model::Parameter& param, int64_t flat_begin = 0,
                                      int64_t flat_end = -1);

// The same parameter region narrowed to [flat_begin, flat_end) of its local elements (a
// distributed-optimizer shard of the parameter).
ShardRegion narrowed(const ShardRegion& region, int64_t flat_begin, int64_t flat_end);

// Copies the elements `dst` and `src` (regions of one global tensor) have in common from
// src_data to dst_data (both laid out as their region's elements in row-major order, each
// element elem_size bytes). Returns the number of elements copied. With dst_data == nullptr
// nothing is copied (and src_data is not read): the count of common elements.
int64_t copy_overlap(const ShardRegion& dst, std::byte* dst_data, const ShardRegion& src,
                     const std::byte* src_data, size_t elem_size);

// One tensor shard as a rank saves or loads it.
struct ShardedTensor {
  std::string key;     // global key ("model/<parameter name>", see format.h)
  Shape global_shape;
  ShardRegion region;
  Tensor data;         // this shard's elements (host or device), region.numel() of them
  // Saving: false when another rank writes the same elements (a replica); loading: ignored.
  bool write = true;
};

}  // namespace shardlm::ckpt
