#include "shardlm/tensor/shape.h"

#include "shardlm/base/check.h"

namespace shardlm {

Shape::Shape(std::initializer_list<int64_t> dims) : Shape(std::vector<int64_t>(dims)) {}

Shape::Shape(const std::vector<int64_t>& dims) {
  SHARDLM_REQUIRE(static_cast<int>(dims.size()) <= kMaxRank, ErrorKind::kInvalidArgument,
                  "shape has " + std::to_string(dims.size()) + " dimensions; at most 8 allowed");
  for (int64_t d : dims) {
    SHARDLM_REQUIRE(d >= 0, ErrorKind::kInvalidArgument,
                    "shape dimension " + std::to_string(d) + " is negative");
  }
  rank_ = static_cast<int>(dims.size());
  for (int i = 0; i < rank_; ++i) dims_[i] = dims[i];
}

int64_t Shape::operator[](int axis) const {
  if (axis < 0) axis += rank_;
  SHARDLM_CHECK(axis >= 0 && axis < rank_);
  return dims_[axis];
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < rank_; ++i) n *= dims_[i];
  return n;
}

std::string Shape::to_string() const {
  std::string s = "[";
  for (int i = 0; i < rank_; ++i) {
    if (i) s += ", ";
    s += std::to_string(dims_[i]);
  }
  return s + "]";
}

bool Shape::operator==(const Shape& other) const {
  if (rank_ != other.rank_) return false;
  for (int i = 0; i < rank_; ++i)
    if (dims_[i] != other.dims_[i]) return false;
  return true;
}

}  // namespace shardlm
