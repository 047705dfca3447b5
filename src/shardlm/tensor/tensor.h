// Tensor: a non-owning, contiguous, row-major view (pointer + dtype + shape + device).
// OwnedTensor: a move-only Storage with its full-extent Tensor view.
//
// Views are cheap value types; whoever made the Storage (an Arena, a flat parameter buffer, an
// OwnedTensor) keeps it alive. Ops take and return views and never allocate.
//
//   OwnedTensor x = OwnedTensor::empty(DType::kF32, {B, T, C}, Device::cpu());
//   Tensor row = x.view().slice(0, 1);          // first batch element, shape [1, T, C]
//   float* p = x.view().data<float>();          // checks dtype and device
#pragma once

#include <cstdint>

#include "shardlm/base/check.h"
#include "shardlm/tensor/device.h"
#include "shardlm/tensor/dtype.h"
#include "shardlm/tensor/shape.h"
#include "shardlm/tensor/storage.h"

namespace shardlm {

class Tensor {
 public:
  Tensor() = default;
  Tensor(void* data, DType dtype, Shape shape, Device device)
      : data_(data), dtype_(dtype), shape_(shape), device_(device) {}

  bool defined() const { return data_ != nullptr || shape_.rank() > 0; }
  void* raw() const { return data_; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  Device device() const { return device_; }
  int64_t numel() const { return shape_.numel(); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  int64_t size(int axis) const { return shape_[axis]; }
  int rank() const { return shape_.rank(); }

  // Typed pointer; checks that T matches the dtype (host-side code only dereferences CPU data).
  template <typename T>
  T* data() const {
    SHARDLM_CHECK(DTypeOf<T>::value == dtype_);
    return static_cast<T*>(data_);
  }

  // Same bytes, new shape with the same numel.
  Tensor reshape(const Shape& shape) const;
  // Rows [begin, end) along axis 0.
  Tensor slice(int64_t begin, int64_t end) const;
  // A flat range of elements [offset, offset + shape.numel()) viewed with `shape`.
  Tensor flat_view(int64_t offset, const Shape& shape) const;

 private:
  void* data_ = nullptr;
  DType dtype_ = DType::kF32;
  Shape shape_{};
  Device device_{};
};

class OwnedTensor {
 public:
  OwnedTensor() = default;
  static OwnedTensor empty(DType dtype, const Shape& shape, Device device = Device::cpu());
  static OwnedTensor zeros(DType dtype, const Shape& shape, Device device = Device::cpu());
  // Uninitialised host tensor in page-locked memory (Storage::pinned_host).
  static OwnedTensor empty_pinned(DType dtype, const Shape& shape);
  bool pinned() const { return storage_.pinned(); }

  const Tensor& view() const { return view_; }
  operator const Tensor&() const { return view_; }  // NOLINT: views are what ops take

 private:
  Storage storage_;
  Tensor view_;
};

}  // namespace shardlm
