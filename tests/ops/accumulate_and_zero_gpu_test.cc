// GPU test of accumulate_and_zero (fp32 acc += x, x = 0; x fp32/bf16/fp16) against the CPU
// backend: the sum is the same fp32 add on both, so the results must be the same bits. Sizes are
// not multiples of the vector width and views start at offsets that exercise the scalar head,
// the vector body, the tail and the scalar-only path (acc and x misaligned relative to each
// other); the elements around each view are poisoned (0xFF bytes, NaN) and must stay so.
#include <cstring>
#include <vector>

#include "tests/ops/gpu_test_common.h"

namespace shardlm {
namespace {

using testing::random_tensor;
using testing::to_host;
using testing::to_vector;

class AccumulateAndZeroGpuTest : public GpuOpTest {};
SHARDLM_GPU_DTYPES(AccumulateAndZeroGpuTest);

// A host buffer of `total` elements: 0xFF bytes except `values` at [offset, offset + n).
OwnedTensor poisoned_around(DType dtype, int64_t total, int64_t offset, const Tensor& values) {
  OwnedTensor t = OwnedTensor::empty(dtype, {total});
  std::memset(t.view().raw(), 0xFF, t.view().nbytes());
  DeviceContext host = DeviceContext::cpu();
  ops::copy(host, t.view().flat_view(offset, {values.numel()}), values);
  return t;
}

OwnedTensor upload(DeviceContext& gpu, const Tensor& host) {
  OwnedTensor dev = OwnedTensor::empty(host.dtype(), host.shape(), gpu.device());
  ops::copy(gpu, dev, host);  // same dtype: a byte copy
  return dev;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

TEST_P(AccumulateAndZeroGpuTest, MatchesCpuBitForBit) {
  struct Offsets {
    int64_t acc, x;
  };
  for (bool assign : {false, true})
  for (int64_t n : {1, 7, 13, 4099, 100003}) {
    for (Offsets off : {Offsets{0, 0}, Offsets{1, 1}, Offsets{3, 3}, Offsets{5, 5},
                        Offsets{1, 2}}) {
      SCOPED_TRACE("n=" + std::to_string(n) + " offsets acc " + std::to_string(off.acc) + " x " +
                   std::to_string(off.x) + (assign ? " assign" : " accumulate"));
      const int64_t total = n + 16;
      // Two magnitudes interleaved so the fp32 add rounds.
      std::vector<double> xv = to_vector(random_tensor(DType::kF64, {n}, 41 + n));
      for (int64_t i = 0; i < n; ++i) xv[i] *= i % 2 ? 1e-3 : 10.0;
      const OwnedTensor x_values = testing::from_vector(dtype(), {n}, xv);
      const OwnedTensor acc_values = random_tensor(DType::kF32, {n}, 42 + n);
      OwnedTensor acc_ref = poisoned_around(DType::kF32, total, off.acc, acc_values);
      OwnedTensor x_ref = poisoned_around(dtype(), total, off.x, x_values);
      OwnedTensor acc_dev = upload(gpu(), acc_ref), x_dev = upload(gpu(), x_ref);

      ops::accumulate_and_zero(gpu(), acc_dev.view().flat_view(off.acc, {n}),
                               x_dev.view().flat_view(off.x, {n}), assign);
      ops::cpu::accumulate_and_zero(cpu_, acc_ref.view().flat_view(off.acc, {n}),
                                    x_ref.view().flat_view(off.x, {n}), assign);
      if (assign)  // the CPU's assign is copy()'s conversion
        EXPECT_EQ(to_vector(acc_ref.view().flat_view(off.acc, {n})), to_vector(x_values));
      // Whole buffers: the views equal the CPU's, the poisoned neighbours are untouched.
      EXPECT_TRUE(same_bytes(to_host(gpu(), acc_dev), acc_ref)) << "acc differs from the CPU";
      EXPECT_TRUE(same_bytes(to_host(gpu(), x_dev), x_ref)) << "x differs from the CPU";
      // Not vacuous: the CPU result zeroed x and changed acc.
      const std::vector<double> x_after = to_vector(x_ref.view().flat_view(off.x, {n}));
      EXPECT_EQ(x_after, std::vector<double>(static_cast<size_t>(n), 0.0));
      EXPECT_NE(to_vector(acc_ref.view().flat_view(off.acc, {n})), to_vector(acc_values));
    }
  }
}

TEST(AccumulateAndZeroGpuArgs, RejectsNonFp32Acc) {
  if (!testing::cuda_device_available()) GTEST_SKIP() << "no CUDA device visible";
  DeviceContext gpu = testing::make_cuda_context();
  OwnedTensor x = testing::to_device(random_tensor(DType::kF32, {64}, 90), DType::kBF16);
  OwnedTensor acc = testing::to_device(random_tensor(DType::kF32, {64}, 91), DType::kBF16);
  EXPECT_SHARDLM_ERROR(ops::cuda::accumulate_and_zero(gpu, acc, x, false), ErrorKind::kInvalidArgument,
                       "expected fp32");
}

}  // namespace
}  // namespace shardlm
