// Tests of accumulate_and_zero on the CPU: for every main-gradient dtype (fp32, fp64) and every
// compute-gradient dtype, acc += convert(x) equals copy-to-acc's-dtype + add_inplace bit for bit
// (the sequence it replaces in ParameterRegistry), over two accumulations and on views at an
// offset whose neighbours must stay untouched; x is zero afterwards; argument validation.
#include <gtest/gtest.h>

#include <cstring>

#include "shardlm/ops/ops.h"
#include "tests/testing/op_checks.h"
#include "tests/testing/tensors.h"

namespace shardlm {
namespace {

using testing::clone;
using testing::convert;
using testing::from_vector;
using testing::random_tensor;
using testing::to_vector;

// Index of the first element whose bytes differ, or -1 when a and b are the same bits.
int64_t first_bit_difference(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.dtype(), b.dtype());
  EXPECT_EQ(a.numel(), b.numel());
  const size_t esize = dtype_size(a.dtype());
  for (int64_t i = 0; i < a.numel(); ++i)
    if (std::memcmp(static_cast<const char*>(a.raw()) + i * esize,
                    static_cast<const char*>(b.raw()) + i * esize, esize) != 0)
      return i;
  return -1;
}

bool all_zero_bytes(const Tensor& t) {
  const auto* p = static_cast<const unsigned char*>(t.raw());
  for (size_t i = 0; i < t.nbytes(); ++i)
    if (p[i] != 0) return false;
  return true;
}

struct Case {
  DType acc, x;
};

class AccumulateAndZero : public ::testing::TestWithParam<Case> {};

TEST_P(AccumulateAndZero, EqualsCopyThenAddBitForBitAndZeroesX) {
  const Case c = GetParam();
  DeviceContext ctx = DeviceContext::cpu();
  // A view [offset, offset + n) inside larger buffers: the elements around it must not change.
  const int64_t n = 1001, offset = 3, total = n + 8;
  OwnedTensor acc = convert(random_tensor(DType::kF64, {total}, 11), c.acc);
  OwnedTensor expected = clone(acc);
  for (uint64_t round = 0; round < 2; ++round) {  // two micro-batches
    // Gradients over several binades, so rounding in the add matters.
    std::vector<double> xv = to_vector(random_tensor(DType::kF64, {total}, 20 + round));
    for (int64_t i = 0; i < total; ++i) xv[i] *= i % 3 == 0 ? 1e2 : i % 3 == 1 ? 1.0 : 1e-3;
    OwnedTensor x = from_vector(c.x, {total}, xv);
    const OwnedTensor x_before = clone(x);
    // The sequence accumulate_and_zero replaces: convert into a buffer of acc's dtype, add.
    OwnedTensor converted = OwnedTensor::empty(c.acc, {n});
    ops::copy(ctx, converted, x.view().flat_view(offset, {n}));
    ops::add_inplace(ctx, expected.view().flat_view(offset, {n}), converted);

    ops::accumulate_and_zero(ctx, acc.view().flat_view(offset, {n}),
                             x.view().flat_view(offset, {n}));
    EXPECT_EQ(first_bit_difference(acc, expected), -1) << "round " << round;
    EXPECT_TRUE(all_zero_bytes(x.view().flat_view(offset, {n}))) << "x is not +0 everywhere";
    // Outside the view x is untouched.
    EXPECT_EQ(first_bit_difference(x.view().flat_view(0, {offset}),
                                   x_before.view().flat_view(0, {offset})),
              -1);
    EXPECT_EQ(first_bit_difference(x.view().flat_view(offset + n, {total - offset - n}),
                                   x_before.view().flat_view(offset + n, {total - offset - n})),
              -1);
  }
}

TEST_P(AccumulateAndZero, AssignEqualsCopyBitForBitAndZeroesX) {
  const Case c = GetParam();
  DeviceContext ctx = DeviceContext::cpu();
  const int64_t n = 1001, offset = 3, total = n + 8;
  OwnedTensor acc = convert(random_tensor(DType::kF64, {total}, 12), c.acc);  // stale values
  OwnedTensor expected = clone(acc);
  std::vector<double> xv = to_vector(random_tensor(DType::kF64, {total}, 30));
  for (int64_t i = 0; i < total; ++i) xv[i] *= i % 3 == 0 ? 1e2 : i % 3 == 1 ? 1.0 : 1e-3;
  OwnedTensor x = from_vector(c.x, {total}, xv);
  ops::copy(ctx, expected.view().flat_view(offset, {n}), x.view().flat_view(offset, {n}));
  ops::accumulate_and_zero(ctx, acc.view().flat_view(offset, {n}), x.view().flat_view(offset, {n}),
                           /*assign=*/true);
  EXPECT_EQ(first_bit_difference(acc, expected), -1);  // the view copied, its neighbours kept
  EXPECT_TRUE(all_zero_bytes(x.view().flat_view(offset, {n}))) << "x is not +0 everywhere";
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  return std::string(dtype_name(info.param.acc)) + "_from_" + dtype_name(info.param.x);
}

INSTANTIATE_TEST_SUITE_P(AllDTypes, AccumulateAndZero,
                         ::testing::Values(Case{DType::kF32, DType::kBF16},
                                           Case{DType::kF32, DType::kF16},
                                           Case{DType::kF32, DType::kF32},
                                           Case{DType::kF32, DType::kF64},
                                           Case{DType::kF64, DType::kBF16},
                                           Case{DType::kF64, DType::kF16},
                                           Case{DType::kF64, DType::kF32},
                                           Case{DType::kF64, DType::kF64}),
                         case_name);

TEST(AccumulateAndZeroArgs, EmptyIsANoOp) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor acc = random_tensor(DType::kF32, {4}, 1), x = random_tensor(DType::kBF16, {4}, 2);
  ops::accumulate_and_zero(ctx, acc.view().flat_view(0, {0}), x.view().flat_view(0, {0}));
  EXPECT_FALSE(all_zero_bytes(x.view()));
}

TEST(AccumulateAndZeroArgs, BadArguments) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor acc = random_tensor(DType::kF32, {8}, 1), x = random_tensor(DType::kBF16, {8}, 2);
  OwnedTensor short_x = random_tensor(DType::kBF16, {7}, 3);
  EXPECT_SHARDLM_ERROR(ops::accumulate_and_zero(ctx, acc, short_x), ErrorKind::kInvalidArgument,
                       "same number of elements");
  OwnedTensor acc16 = random_tensor(DType::kBF16, {8}, 4);
  EXPECT_SHARDLM_ERROR(ops::accumulate_and_zero(ctx, acc16, x), ErrorKind::kInvalidArgument,
                       "acc must be fp32 or fp64");
  OwnedTensor ints = OwnedTensor::zeros(DType::kI32, {8});
  EXPECT_SHARDLM_ERROR(ops::accumulate_and_zero(ctx, acc, ints), ErrorKind::kInvalidArgument,
                       "x must be fp32, bf16, fp16 or fp64");
  EXPECT_SHARDLM_ERROR(ops::accumulate_and_zero(ctx, acc, Tensor()), ErrorKind::kInvalidArgument,
                       "x must be defined");
  EXPECT_SHARDLM_ERROR(ops::accumulate_and_zero(ctx, acc, acc), ErrorKind::kInvalidArgument,
                       "different buffers");
}

}  // namespace
}  // namespace shardlm
