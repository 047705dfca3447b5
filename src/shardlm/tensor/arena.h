// Arena: one Storage, carved into tensor views by a bump pointer. Memory is planned first
// (ArenaPlan adds up the sizes), then allocated once for the lifetime class (parameters,
// activations, workspace), then handed out as views. reset() recycles the whole arena.
//
// Not thread-safe: each rank owns its arenas.
//
//   ArenaPlan plan;  plan.add(DType::kF32, {B, T, C});  plan.add(DType::kF32, {B, T});
//   Arena arena(Device::cpu(), plan.bytes(), "activations");
//   Tensor x = arena.allocate(DType::kF32, {B, T, C});   // 256-byte aligned view
#pragma once

#include <cstddef>
#include <string>

#include "shardlm/tensor/storage.h"
#include "shardlm/tensor/tensor.h"

namespace shardlm {

constexpr size_t kArenaAlignment = 256;

inline size_t arena_aligned_bytes(DType dtype, const Shape& shape) {
  const size_t bytes = static_cast<size_t>(shape.numel()) * dtype_size(dtype);
  return (bytes + kArenaAlignment - 1) / kArenaAlignment * kArenaAlignment;
}

// Something tensors are carved from. Modules describe their memory once through this interface;
// run against an ArenaPlan it only adds up sizes, run against an Arena it hands out views. That
// keeps the plan and the allocation from ever disagreeing.
class TensorAllocator {
 public:
  virtual ~TensorAllocator() = default;
  virtual Tensor allocate(DType dtype, const Shape& shape) = 0;
};

class ArenaPlan : public TensorAllocator {
 public:
  // Records the size; returns a shape-only view with no data (planning pass).
  Tensor allocate(DType dtype, const Shape& shape) override {
    add(dtype, shape);
    return Tensor(nullptr, dtype, shape, Device::cpu());
  }
  void add(DType dtype, const Shape& shape) { bytes_ += arena_aligned_bytes(dtype, shape); }
  void add_bytes(size_t bytes) {
    bytes_ += (bytes + kArenaAlignment - 1) / kArenaAlignment * kArenaAlignment;
  }
  size_t bytes() const { return bytes_; }

 private:
  size_t bytes_ = 0;
};

class Arena : public TensorAllocator {
 public:
  Arena() = default;
  Arena(Device device, size_t capacity_bytes, std::string name);

  // A view of `shape`; throws Error(kOutOfMemory) naming the arena, needed and capacity bytes.
  Tensor allocate(DType dtype, const Shape& shape) override;
  void reset() { used_ = 0; }

  size_t used() const { return used_; }
  size_t capacity() const { return storage_.bytes(); }
  size_t high_water() const { return high_water_; }
  Device device() const { return storage_.device(); }

 private:
  Storage storage_;
  size_t used_ = 0;
  size_t high_water_ = 0;
  std::string name_;
};

}  // namespace shardlm
