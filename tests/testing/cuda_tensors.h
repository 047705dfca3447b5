// GPU test helpers: a CUDA DeviceContext with the backend attached, host <-> device copies with
// dtype conversion on the host, NaN-poisoned device outputs, per-dtype tolerances, and a
// whole-tensor comparison against a CPU reference that names the op, dtype and error.
//
// Only meaningful in CUDA builds (SHARDLM_WITH_CUDA); the declarations exist in every build so
// tests/testing/ compiles everywhere, and the definitions throw kUnsupported without CUDA.
//
//   DeviceContext ctx = make_cuda_context();
//   OwnedTensor x = random_tensor(DType::kF32, {N, C}, 1);
//   OwnedTensor x_dev = to_device(x, DType::kBF16);            // rounded to bf16 on the host
//   OwnedTensor x_ref = round_to(x, DType::kBF16);              // same values, fp32, for cpu::
//   OwnedTensor y_dev = poisoned_device(DType::kBF16, {N, C});  // every byte 0xFF (NaN)
//   ops::gelu_forward(ctx, y_dev, x_dev);
//   expect_matches_reference("gelu_forward out", ctx, y_dev, y_ref, DType::kBF16);
#pragma once

#include <string>

#include "shardlm/tensor/device_context.h"
#include "shardlm/tensor/tensor.h"

namespace shardlm::testing {

// True when this build has the CUDA backend and at least one device is visible.
bool cuda_device_available();

// DeviceContext on cuda:index with ops::cuda::init_cuda_backend applied.
DeviceContext make_cuda_context(int index = 0);

// Device copy of a host tensor, converted on the host to `dtype` (int tensors: keep the dtype by
// passing t.dtype()). Synchronous.
OwnedTensor to_device(const Tensor& host, DType dtype);
// Host copy (same dtype) of a device tensor, after waiting for ctx's op stream.
OwnedTensor to_host(const DeviceContext& ctx, const Tensor& device);
// A device tensor whose bytes are all 0xFF: NaN in fp32/bf16/fp16, so any element an op fails to
// write makes the comparison fail.
OwnedTensor poisoned_device(DType dtype, const Shape& shape);
// fp32 host tensor holding x's values rounded to `dtype` (the exact inputs a dtype run sees).
OwnedTensor round_to(const Tensor& host, DType dtype);

// Relative-error tolerance over a whole tensor for results computed in `dtype` (DESIGN §4).
double tolerance_for(DType dtype);

// Copies `device` back and EXPECTs rel_error(device, reference) < tolerance_for(dtype) * slack,
// printing what, dtype, the error, the tolerance and the first mismatching element.
void expect_matches_reference(const std::string& what, const DeviceContext& ctx,
                              const Tensor& device, const Tensor& reference, DType dtype,
                              double slack = 1.0);

}  // namespace shardlm::testing
