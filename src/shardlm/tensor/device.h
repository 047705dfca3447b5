// Device: where a tensor's bytes live. Value type.
#pragma once

#include <string>

namespace shardlm {

enum class DeviceType { kCPU, kCUDA };

struct Device {
  DeviceType type = DeviceType::kCPU;
  int index = 0;

  static Device cpu() { return {DeviceType::kCPU, 0}; }
  static Device cuda(int index) { return {DeviceType::kCUDA, index}; }
  bool is_cpu() const { return type == DeviceType::kCPU; }
  bool is_cuda() const { return type == DeviceType::kCUDA; }
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string to_string() const {
    return is_cpu() ? "cpu" : "cuda:" + std::to_string(index);
  }
};

// True when this build was compiled with the CUDA backend.
bool cuda_backend_compiled();
// Number of CUDA devices visible to this process (0 without the CUDA backend or a driver).
int cuda_device_count();
// The visible device's UUID (cudaDeviceProp::uuid, written as nvidia-smi writes GPU UUIDs:
// "GPU-8c1e…"); empty without the CUDA backend or when the driver cannot say.
std::string cuda_device_uuid(int index);

}  // namespace shardlm
