#include "tests/testing/cuda_tensors.h"

#include <gtest/gtest.h>

#include <cmath>
#include <sstream>
#include <vector>

#include "shardlm/base/error.h"
#include "tests/testing/tensors.h"

#ifdef SHARDLM_WITH_CUDA
#include <cuda_runtime.h>

#include "shardlm/ops/cuda/cuda_context.h"
#endif

namespace shardlm::testing {

#ifdef SHARDLM_WITH_CUDA
namespace {
void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw Error(ErrorKind::kInternal,
                std::string("test helper: ") + what + " failed: " + cudaGetErrorString(err));
}
}  // namespace

bool cuda_device_available() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

DeviceContext make_cuda_context(int index) {
  DeviceContext ctx(Device::cuda(index));
  ops::cuda::init_cuda_backend(ctx);
  return ctx;
}

OwnedTensor to_device(const Tensor& host, DType dtype) {
  const OwnedTensor converted = host.dtype() == dtype ? clone(host) : convert(host, dtype);
  OwnedTensor dev = OwnedTensor::empty(dtype, host.shape(), Device::cuda(0));
  check(cudaMemcpy(dev.view().raw(), converted.view().raw(), dev.view().nbytes(),
                   cudaMemcpyHostToDevice),
        "cudaMemcpy H2D");
  // Pageable H2D copies may return before the DMA lands; ops run on a non-blocking stream.
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize after H2D");
  return dev;
}

OwnedTensor to_host(const DeviceContext& ctx, const Tensor& device) {
  ops::cuda::synchronize(ctx);
  OwnedTensor host = OwnedTensor::empty(device.dtype(), device.shape(), Device::cpu());
  check(cudaMemcpy(host.view().raw(), device.raw(), device.nbytes(), cudaMemcpyDeviceToHost),
        "cudaMemcpy D2H");
  return host;
}

OwnedTensor poisoned_device(DType dtype, const Shape& shape) {
  OwnedTensor dev = OwnedTensor::empty(dtype, shape, Device::cuda(0));
  check(cudaMemset(dev.view().raw(), 0xFF, dev.view().nbytes()), "cudaMemset poison");
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize after poison");
  return dev;
}
#else
bool cuda_device_available() { return false; }
[[noreturn]] static void no_cuda() {
  throw Error(ErrorKind::kUnsupported, "GPU test helpers need a CUDA build");
}
DeviceContext make_cuda_context(int) { no_cuda(); }
OwnedTensor to_device(const Tensor&, DType) { no_cuda(); }
OwnedTensor to_host(const DeviceContext&, const Tensor&) { no_cuda(); }
OwnedTensor poisoned_device(DType, const Shape&) { no_cuda(); }
#endif

OwnedTensor round_to(const Tensor& host, DType dtype) {
  return convert(convert(host, dtype), DType::kF32);
}

double tolerance_for(DType dtype) {
  switch (dtype) {
    case DType::kF32: return 2e-5;
    case DType::kBF16: return 1e-2;
    case DType::kF16: return 3e-3;
    default: return 1e-12;
  }
}

void expect_matches_reference(const std::string& what, const DeviceContext& ctx,
                              const Tensor& device, const Tensor& reference, DType dtype,
                              double slack) {
  const OwnedTensor host = to_host(ctx, device);
  const std::vector<double> got = to_vector(host), want = to_vector(reference);
  ASSERT_EQ(got.size(), want.size()) << what << ": element counts differ";
  const double err = rel_error(got, want), tol = tolerance_for(dtype) * slack;
  std::ostringstream first_bad;
  for (size_t i = 0; i < got.size(); ++i) {
    const double scale = std::fabs(want[i]) + 1e-3;
    if (!std::isfinite(got[i]) || std::fabs(got[i] - want[i]) > 50 * tol * scale) {
      first_bad << " first suspicious element [" << i << "]: gpu " << got[i] << " vs cpu "
                << want[i] << (std::isfinite(got[i]) ? "" : " (not finite: unwritten?)");
      break;
    }
  }
  EXPECT_LT(err, tol) << what << " (" << dtype_name(dtype) << ", shape "
                      << reference.shape().to_string() << "): relative error " << err
                      << " exceeds tolerance " << tol << "." << first_bad.str();
}

}  // namespace shardlm::testing
