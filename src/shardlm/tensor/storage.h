// Storage: a move-only owner of one allocation on one device (256-byte aligned host memory, or
// cudaMalloc'd device memory in CUDA builds). Everything else that touches bytes is a view.
//
//   Storage s(Device::cpu(), 1 << 20);   // throws Error(kOutOfMemory) naming the size
//   void* p = s.data();                   // freed when s is destroyed
//   Storage h = Storage::pinned_host(n);  // page-locked host memory (plain host without a GPU)
#pragma once

#include <cstddef>

#include "shardlm/tensor/device.h"

namespace shardlm {

class Storage {
 public:
  Storage() = default;
  Storage(Device device, size_t bytes);
  // Host memory the GPU copies into at full bus speed (cudaHostAlloc): for staging buffers
  // that are reused, since pinning costs far more than a plain allocation. Ordinary host
  // memory in builds without CUDA or on machines without a GPU.
  static Storage pinned_host(size_t bytes);
  ~Storage();
  Storage(Storage&& other) noexcept;
  Storage& operator=(Storage&& other) noexcept;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }
  bool pinned() const { return pinned_; }

 private:
  void release();

  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_{};
  bool pinned_ = false;  // host memory from cudaHostAlloc (freed with cudaFreeHost)
};

}  // namespace shardlm
