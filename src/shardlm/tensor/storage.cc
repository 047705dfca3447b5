#include "shardlm/tensor/storage.h"

#include <cstdlib>
#include <string>
#include <utility>

#include "shardlm/base/error.h"

#ifdef SHARDLM_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace shardlm {

namespace {
constexpr size_t kAlignment = 256;  // matches kArenaAlignment

std::string human_bytes(size_t bytes) {
  const double gib = static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0);
  return std::to_string(bytes) + " bytes (" + std::to_string(gib) + " GiB)";
}
}  // namespace

bool cuda_backend_compiled() {
#ifdef SHARDLM_WITH_CUDA
  return true;
#else
  return false;
#endif
}

int cuda_device_count() {
#ifdef SHARDLM_WITH_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // no driver / no device: not an error for CPU runs
    return 0;
  }
  return count;
#else
  return 0;
#endif
}

std::string cuda_device_uuid(int index) {
#ifdef SHARDLM_WITH_CUDA
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, index) != cudaSuccess) {
    cudaGetLastError();
    return "";
  }
  // 8-4-4-4-12 hex groups after "GPU-", as nvidia-smi -L.
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out = "GPU-";
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out += '-';
    const auto byte = static_cast<unsigned char>(prop.uuid.bytes[i]);
    out += kHex[byte >> 4];
    out += kHex[byte & 15];
  }
  return out;
#else
  (void)index;
  return "";
#endif
}

Storage::Storage(Device device, size_t bytes) : bytes_(bytes), device_(device) {
  if (bytes == 0) return;
  if (device.is_cpu()) {
    const size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    data_ = std::aligned_alloc(kAlignment, rounded);
    if (!data_)
      throw Error(ErrorKind::kOutOfMemory,
                  "host allocation of " + human_bytes(bytes) +
                      " failed; reduce --micro-batch-size or the model size");
    return;
  }
#ifdef SHARDLM_WITH_CUDA
  if (cudaSetDevice(device.index) != cudaSuccess ||
      cudaMalloc(&data_, bytes) != cudaSuccess) {
    cudaGetLastError();
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    data_ = nullptr;
    throw Error(ErrorKind::kOutOfMemory,
                "GPU " + device.to_string() + " could not allocate " + human_bytes(bytes) +
                    " (free: " + human_bytes(free_bytes) +
                    "); reduce --micro-batch-size, enable --recompute-granularity, or use more "
                    "tensor/pipeline parallelism");
  }
  // Tests (ctest -L gpu sets it) fill new device memory with 0xFF bytes (NaN in every float
  // dtype): fresh cudaMalloc pages usually read as zero, which hides reads of memory no kernel
  // wrote until a later allocation in the same process recycles dirty memory.
  if (const char* poison = std::getenv("SHARDLM_POISON_DEVICE_MEMORY");
      poison != nullptr && poison[0] == '1') {
    if (cudaMemset(data_, 0xFF, bytes) != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess)
      throw Error(ErrorKind::kInternal, "poisoning a new device allocation failed: " +
                                            std::string(cudaGetErrorString(cudaGetLastError())));
  }
#else
  throw Error(ErrorKind::kUnsupported,
              "a CUDA tensor was requested but this build has no CUDA backend; rebuild where "
              "nvcc is available or run with --device cpu");
#endif
}

Storage Storage::pinned_host(size_t bytes) {
#ifdef SHARDLM_WITH_CUDA
  if (bytes > 0 && cuda_device_count() > 0) {
    Storage s;
    if (cudaHostAlloc(&s.data_, bytes, cudaHostAllocDefault) != cudaSuccess) {
      cudaGetLastError();
      throw Error(ErrorKind::kOutOfMemory,
                  "pinned host allocation of " + human_bytes(bytes) +
                      " failed; free host memory or save checkpoints less often");
    }
    s.bytes_ = bytes;
    s.device_ = Device::cpu();
    s.pinned_ = true;
    return s;
  }
#endif
  return Storage(Device::cpu(), bytes);
}

Storage::~Storage() { release(); }

Storage::Storage(Storage&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)),
      device_(other.device_),
      pinned_(std::exchange(other.pinned_, false)) {}

Storage& Storage::operator=(Storage&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    device_ = other.device_;
    pinned_ = std::exchange(other.pinned_, false);
  }
  return *this;
}

void Storage::release() {
  if (!data_) return;
  if (pinned_) {
#ifdef SHARDLM_WITH_CUDA
    cudaFreeHost(data_);
#endif
  } else if (device_.is_cpu()) {
    std::free(data_);
  } else {
#ifdef SHARDLM_WITH_CUDA
    cudaFree(data_);
#endif
  }
  data_ = nullptr;
  bytes_ = 0;
  pinned_ = false;
}

}  // namespace shardlm
