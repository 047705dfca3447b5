#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "shardlm/tensor/arena.h"
#include "shardlm/tensor/dtype.h"
#include "shardlm/tensor/philox.h"
#include "shardlm/tensor/tensor.h"

namespace shardlm {
namespace {

TEST(DType, SizesAndNames) {
  EXPECT_EQ(dtype_size(DType::kF64), 8u);
  EXPECT_EQ(dtype_size(DType::kBF16), 2u);
  EXPECT_EQ(dtype_size(DType::kF8E4M3), 1u);
  EXPECT_EQ(dtype_from_name("bf16"), DType::kBF16);
  EXPECT_THROW(dtype_from_name("fp7"), Error);
}

TEST(DType, Bf16RoundTripAndRounding) {
  EXPECT_EQ(bf16_bits_to_float(float_to_bf16_bits(1.0f)), 1.0f);
  // 1 + 2^-8 is exactly halfway between bf16 1.0 and 1.0078125: ties to even -> 1.0.
  EXPECT_EQ(bf16_bits_to_float(float_to_bf16_bits(1.0f + 0x1p-8f)), 1.0f);
  EXPECT_EQ(bf16_bits_to_float(float_to_bf16_bits(1.0f + 0x1p-8f + 0x1p-12f)), 1.0078125f);
  EXPECT_TRUE(std::isnan(bf16_bits_to_float(float_to_bf16_bits(NAN))));
}

TEST(DType, Fp16RoundTripAndSpecials) {
  for (float f : {0.0f, 1.0f, -2.5f, 65504.0f, 0x1p-24f, 0x1p-14f, 3.140625f})
    EXPECT_EQ(fp16_bits_to_float(float_to_fp16_bits(f)), f) << f;
  EXPECT_TRUE(std::isinf(fp16_bits_to_float(float_to_fp16_bits(70000.0f))));
  EXPECT_TRUE(std::isnan(fp16_bits_to_float(float_to_fp16_bits(NAN))));
  EXPECT_EQ(float_to_fp16_bits(1.0f + 0x1p-11f), 0x3c00);  // tie to even
  EXPECT_EQ(float_to_fp16_bits(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01);
}

TEST(Shape, NumelAndErrors) {
  Shape s{2, 3, 5};
  EXPECT_EQ(s.numel(), 30);
  EXPECT_EQ(s[-1], 5);
  EXPECT_EQ(s.to_string(), "[2, 3, 5]");
  EXPECT_THROW(Shape({1, -1}), Error);
}

TEST(Tensor, SliceReshapeFlatView) {
  OwnedTensor t = OwnedTensor::zeros(DType::kF32, {4, 3});
  for (int i = 0; i < 12; ++i) t.view().data<float>()[i] = static_cast<float>(i);
  Tensor rows = t.view().slice(1, 3);
  EXPECT_EQ(rows.shape(), Shape({2, 3}));
  EXPECT_EQ(rows.data<float>()[0], 3.0f);
  EXPECT_EQ(t.view().reshape({12}).data<float>()[11], 11.0f);
  EXPECT_EQ(t.view().flat_view(5, {2}).data<float>()[1], 6.0f);
  EXPECT_THROW(t.view().reshape({5}), Error);
  EXPECT_THROW(t.view().data<double>(), Error);  // dtype mismatch is an internal error
}

TEST(Arena, AllocatesAlignedViewsAndReportsOverflow) {
  ArenaPlan plan;
  plan.add(DType::kF32, {3});
  plan.add(DType::kF64, {10});
  Arena arena(Device::cpu(), plan.bytes(), "test");
  Tensor a = arena.allocate(DType::kF32, {3});
  Tensor b = arena.allocate(DType::kF64, {10});
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.raw()) % kArenaAlignment, 0u);
  EXPECT_NE(a.raw(), b.raw());
  try {
    arena.allocate(DType::kF32, {1});
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kOutOfMemory);
    EXPECT_NE(std::string(e.what()).find("test"), std::string::npos);
  }
  arena.reset();
  EXPECT_EQ(arena.allocate(DType::kF32, {3}).raw(), a.raw());
}

TEST(Philox, KnownAnswerVector) {
  // Random123's published known-answer test for philox4x32-10: counter = key = all ones.
  const PhiloxCounter out = philox4x32({0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
                                       {0xffffffffu, 0xffffffffu});
  EXPECT_EQ(out[0], 0x408f276du);
  EXPECT_EQ(out[1], 0x41c83b0eu);
  EXPECT_EQ(out[2], 0xa20bc7c6u);
  EXPECT_EQ(out[3], 0x6d5451fdu);
  const PhiloxCounter zero = philox4x32({0, 0, 0, 0}, {0, 0});
  EXPECT_EQ(zero[0], 0x6627e8d5u);
  EXPECT_EQ(zero[1], 0xe169c58du);
  EXPECT_EQ(zero[2], 0xbc57ac4cu);
  EXPECT_EQ(zero[3], 0x9b00dbd8u);
}

TEST(Philox, InitNormalIsPureAndStandard) {
  EXPECT_EQ(init_normal(1, "a.weight", 17), init_normal(1, "a.weight", 17));
  EXPECT_NE(init_normal(1, "a.weight", 17), init_normal(1, "b.weight", 17));
  EXPECT_NE(init_normal(1, "a.weight", 17), init_normal(2, "a.weight", 17));
  double sum = 0, sq = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const double x = init_normal(42, "stats", i);
    sum += x;
    sq += x * x;
  }
  EXPECT_NEAR(sum / n, 0.0, 0.01);
  EXPECT_NEAR(sq / n, 1.0, 0.01);
}

TEST(Philox, DropoutUniformDependsOnEveryKeyField) {
  DropoutKey k{7, 3, 1, 2, kDropoutMlpOutput};
  const double base = dropout_uniform(k, 99);
  EXPECT_GT(base, 0.0);
  EXPECT_LE(base, 1.0);
  std::set<double> seen{base};
  DropoutKey v = k; v.seed = 8; seen.insert(dropout_uniform(v, 99));
  v = k; v.step = 4; seen.insert(dropout_uniform(v, 99));
  v = k; v.microbatch = 2; seen.insert(dropout_uniform(v, 99));
  v = k; v.layer = 3; seen.insert(dropout_uniform(v, 99));
  v = k; v.site = kDropoutAttentionProbs; seen.insert(dropout_uniform(v, 99));
  seen.insert(dropout_uniform(k, 100));
  EXPECT_EQ(seen.size(), 7u);
}

}  // namespace
}  // namespace shardlm
