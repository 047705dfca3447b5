#include "shardlm/ckpt/sharded_tensor.h"

#include <algorithm>
#include <cstring>

#include "shardlm/base/check.h"

namespace shardlm::ckpt {

ShardRegion ShardRegion::whole(const Shape& global_shape) {
  ShardRegion r;
  r.offsets.assign(static_cast<size_t>(global_shape.rank()), 0);
  r.extents = global_shape.dims();
  return r;
}

int64_t ShardRegion::box_numel() const {
  int64_t n = 1;
  for (int64_t e : extents) n *= e;
  return n;
}

int64_t ShardRegion::numel() const {
  return flat_end < 0 ? box_numel() - flat_begin : flat_end - flat_begin;
}

void ShardRegion::validate(const Shape& global_shape, const std::string& what) const {
  bool ok = static_cast<int>(offsets.size()) == global_shape.rank() &&
            extents.size() == offsets.size();
  for (size_t a = 0; ok && a < offsets.size(); ++a)
    ok = offsets[a] >= 0 && extents[a] >= 0 &&
         offsets[a] + extents[a] <= global_shape[static_cast<int>(a)];
  const int64_t end = flat_end < 0 ? box_numel() : flat_end;
  ok = ok && flat_begin >= 0 && flat_begin <= end && end <= box_numel();
  SHARDLM_REQUIRE(ok, ErrorKind::kInvalidArgument,
                  what + ": shard " + to_string() + " does not fit the global shape " +
                      global_shape.to_string());
}

std::string ShardRegion::to_string() const {
  std::string s = "[";
  for (size_t a = 0; a < offsets.size(); ++a) {
    if (a) s += ", ";
    s += std::to_string(offsets[a]) + ":" + std::to_string(offsets[a] + extents[a]);
  }
  s += "]";
  if (!is_whole_box())
    s += " flat [" + std::to_string(flat_begin) + ", " +
         std::to_string(flat_end < 0 ? box_numel() : flat_end) + ")";
  return s;
}

ShardRegion region_of(const model::Parameter& param) {
  ShardRegion r = ShardRegion::whole(param.spec.global_shape);
  const model::Split& split = param.spec.split;
  if (split.is_split()) {
    SHARDLM_CHECK_EQ(split.segments(param.spec.global_shape[split.tp_dim]).size(), size_t{1});
    const size_t d = static_cast<size_t>(split.tp_dim);
    const int64_t block = param.local_shape[split.tp_dim];
    r.offsets[d] = split.tp_rank * block;
    r.extents[d] = block;
  }
  SHARDLM_CHECK_EQ(r.box_numel(), param.local_shape.numel());
  return r;
}

std::vector<ParameterPiece> pieces_of(const model::Parameter& param, int64_t flat_begin,
                                      int64_t flat_end) {
  const int64_t n = param.local_shape.numel();
  if (flat_end < 0) flat_end = n;
  SHARDLM_CHECK(0 <= flat_begin && flat_begin <= flat_end && flat_end <= n);
  const model::Split& split = param.spec.split;
  std::vector<ParameterPiece> out;
  auto add = [&](int64_t begin, int64_t end, ShardRegion region, bool replica) {
    const int64_t lo = std::max(begin, flat_begin), hi = std::min(end, flat_end);
    if (lo >= hi) return;
    if (hi - lo != end - begin) region = narrowed(region, lo - begin, hi - begin);
    out.push_back({lo, hi, std::move(region), replica});
  };
  if (!split.is_split()) {
    add(0, n, ShardRegion::whole(param.spec.global_shape), false);
    return out;
  }
  const int d = split.tp_dim;
  const std::vector<model::SplitSegment> segments = split.segments(param.spec.global_shape[d]);
  // Several runs are contiguous locally only as rows of the leading axis.
  SHARDLM_CHECK(segments.size() == 1 || d == 0);
  const int64_t row = param.local_shape[0] > 0 ? n / param.local_shape[0] : 0;  // d == 0
  int64_t local = 0;
  for (const model::SplitSegment& seg : segments) {
    ShardRegion r = ShardRegion::whole(param.spec.global_shape);
    r.offsets[static_cast<size_t>(d)] = seg.begin;
    r.extents[static_cast<size_t>(d)] = seg.size;
    const int64_t begin = segments.size() == 1 ? 0 : local * row;
    const int64_t end = segments.size() == 1 ? n : (local + seg.size) * row;
    add(begin, end, std::move(r), seg.replica);
    local += seg.size;
  }
  return out;
}

ShardRegion narrowed(const ShardRegion& region, int64_t flat_begin, int64_t flat_end) {
  SHARDLM_CHECK(region.is_whole_box());
  SHARDLM_CHECK(0 <= flat_begin && flat_begin <= flat_end && flat_end <= region.box_numel());
  ShardRegion r = region;
  r.flat_begin = flat_begin;
  r.flat_end = flat_end;
  return r;
}

int64_t copy_overlap(const ShardRegion& dst, std::byte* dst_data, const ShardRegion& src,
                     const std::byte* src_data, size_t elem_size) {
  const size_t rank = dst.offsets.size();
  SHARDLM_CHECK_EQ(rank, src.offsets.size());
  // Scalars: one element, in both or neither.
  if (rank == 0) {
    const bool in_dst = dst.numel() > 0, in_src = src.numel() > 0;
    if (in_dst && in_src && dst_data != nullptr) std::memcpy(dst_data, src_data, elem_size);
    return in_dst && in_src ? 1 : 0;
  }
  // Intersection of the boxes.
  std::vector<int64_t> lo(rank), hi(rank);
  for (size_t a = 0; a < rank; ++a) {
    lo[a] = std::max(dst.offsets[a], src.offsets[a]);
    hi[a] = std::min(dst.offsets[a] + dst.extents[a], src.offsets[a] + src.extents[a]);
    if (lo[a] >= hi[a]) return 0;
  }
  const int64_t dst_end = dst.flat_end < 0 ? dst.box_numel() : dst.flat_end;
  const int64_t src_end = src.flat_end < 0 ? src.box_numel() : src.flat_end;
  // Row-major flat position of a global coordinate inside a box.
  auto flat_in = [rank](const ShardRegion& r, const std::vector<int64_t>& coord) {
    int64_t pos = 0;
    for (size_t a = 0; a < rank; ++a) pos = pos * r.extents[a] + (coord[a] - r.offsets[a]);
    return pos;
  };
  const int64_t row = hi[rank - 1] - lo[rank - 1];
  std::vector<int64_t> coord(lo);
  int64_t copied = 0;
  while (true) {
    // One contiguous run along the last axis, clipped to both flat ranges.
    const int64_t pd = flat_in(dst, coord), ps = flat_in(src, coord);
    int64_t begin = std::max<int64_t>({0, dst.flat_begin - pd, src.flat_begin - ps});
    int64_t end = std::min<int64_t>({row, dst_end - pd, src_end - ps});
    if (begin < end && dst_data != nullptr) {
      std::memcpy(dst_data + static_cast<size_t>(pd + begin - dst.flat_begin) * elem_size,
                  src_data + static_cast<size_t>(ps + begin - src.flat_begin) * elem_size,
                  static_cast<size_t>(end - begin) * elem_size);
    }
    if (begin < end) copied += end - begin;
    // Next row: increment the coordinate over all axes but the last.
    int a = static_cast<int>(rank) - 2;
    for (; a >= 0; --a) {
      if (++coord[a] < hi[a]) break;
      coord[a] = lo[a];
    }
    if (a < 0) break;
  }
  return copied;
}

}  // namespace shardlm::ckpt
