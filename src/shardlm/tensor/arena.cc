#include "shardlm/tensor/arena.h"

#include <algorithm>

namespace shardlm {

Arena::Arena(Device device, size_t capacity_bytes, std::string name)
    : storage_(device, capacity_bytes), name_(std::move(name)) {}

Tensor Arena::allocate(DType dtype, const Shape& shape) {
  const size_t need = arena_aligned_bytes(dtype, shape);
  if (used_ + need > storage_.bytes()) {
    throw Error(ErrorKind::kOutOfMemory,
                "arena '" + name_ + "' needs " + std::to_string(used_ + need) +
                    " bytes but was planned with " + std::to_string(storage_.bytes()) +
                    " (allocating " + shape.to_string() + " " + dtype_name(dtype) + ")");
  }
  Tensor t(static_cast<char*>(storage_.data()) + used_, dtype, shape, storage_.device());
  used_ += need;
  high_water_ = std::max(high_water_, used_);
  return t;
}

}  // namespace shardlm
