// Shared setup of the GPU op tests (tests/ops/*_gpu_test.cc): a fixture parameterised by the
// compute dtype that skips when no CUDA device is visible, and the CPU context for references.
//
// Each test: draw random inputs (never zeros) in fp32, round them to the dtype under test, run
// the op on the GPU through ops:: (the dispatcher) on poisoned outputs, run cpu:: in fp32 on the
// same rounded values, and compare whole tensors with the dtype's tolerance.
#pragma once

#include <gtest/gtest.h>

#include "shardlm/ops/cpu/cpu_ops.h"
#include "shardlm/ops/cuda/cuda_ops.h"
#include "shardlm/ops/ops.h"
#include "tests/testing/cuda_tensors.h"
#include "tests/testing/op_checks.h"
#include "tests/testing/tensors.h"

namespace shardlm {

class GpuOpTest : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    if (!testing::cuda_device_available()) GTEST_SKIP() << "no CUDA device visible";
    gpu_ = std::make_unique<DeviceContext>(testing::make_cuda_context());
  }
  DType dtype() const { return GetParam(); }
  DeviceContext& gpu() { return *gpu_; }
  DeviceContext cpu_ = DeviceContext::cpu();

 private:
  std::unique_ptr<DeviceContext> gpu_;
};

inline std::string dtype_param_name(const ::testing::TestParamInfo<DType>& info) {
  return dtype_name(info.param);
}

#define SHARDLM_GPU_DTYPES(Fixture)                                                            \
  INSTANTIATE_TEST_SUITE_P(AllFloatDTypes, Fixture,                                            \
                           ::testing::Values(DType::kF32, DType::kBF16, DType::kF16),           \
                           ::shardlm::dtype_param_name)

}  // namespace shardlm
