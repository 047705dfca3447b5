#include "shardlm/tensor/tensor.h"

#include <cstring>

#ifdef SHARDLM_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace shardlm {

Tensor Tensor::reshape(const Shape& shape) const {
  SHARDLM_REQUIRE(shape.numel() == numel(), ErrorKind::kInvalidArgument,
                  "cannot reshape " + shape_.to_string() + " to " + shape.to_string());
  return Tensor(data_, dtype_, shape, device_);
}

Tensor Tensor::slice(int64_t begin, int64_t end) const {
  SHARDLM_CHECK(rank() >= 1);
  SHARDLM_CHECK(0 <= begin && begin <= end && end <= shape_[0]);
  std::vector<int64_t> dims = shape_.dims();
  const int64_t row = dims[0] == 0 ? 0 : numel() / dims[0];
  dims[0] = end - begin;
  return Tensor(static_cast<char*>(data_) + begin * row * dtype_size(dtype_), dtype_,
                Shape(dims), device_);
}

Tensor Tensor::flat_view(int64_t offset, const Shape& shape) const {
  SHARDLM_CHECK(offset >= 0 && offset + shape.numel() <= numel());
  return Tensor(static_cast<char*>(data_) + offset * dtype_size(dtype_), dtype_, shape, device_);
}

OwnedTensor OwnedTensor::empty(DType dtype, const Shape& shape, Device device) {
  OwnedTensor t;
  t.storage_ = Storage(device, static_cast<size_t>(shape.numel()) * dtype_size(dtype));
  t.view_ = Tensor(t.storage_.data(), dtype, shape, device);
  return t;
}

OwnedTensor OwnedTensor::empty_pinned(DType dtype, const Shape& shape) {
  OwnedTensor t;
  t.storage_ = Storage::pinned_host(static_cast<size_t>(shape.numel()) * dtype_size(dtype));
  t.view_ = Tensor(t.storage_.data(), dtype, shape, Device::cpu());
  return t;
}

OwnedTensor OwnedTensor::zeros(DType dtype, const Shape& shape, Device device) {
  OwnedTensor t = empty(dtype, shape, device);
  if (t.view_.nbytes() == 0) return t;
  if (device.is_cpu()) {
    std::memset(t.view_.raw(), 0, t.view_.nbytes());
  } else {
#ifdef SHARDLM_WITH_CUDA
    // The memset runs on the legacy default stream, which the ops' non-blocking streams do not
    // wait for: finish it here so no kernel queued next can run before (or under) it.
    if (cudaMemset(t.view_.raw(), 0, t.view_.nbytes()) != cudaSuccess ||
        cudaDeviceSynchronize() != cudaSuccess)
      throw Error(ErrorKind::kInternal, std::string("zero-filling a device tensor failed: ") +
                                            cudaGetErrorString(cudaGetLastError()));
#endif
  }
  return t;
}

}  // namespace shardlm
