// GradBuffer: the bucket layout obeys Megatron's rules for every DP size / bucket size / mode
// (property sweep over random parameter sizes), the registry laid out by it initialises every
// parameter exactly as the back-to-back registry, padding stays zero, shards partition buckets.
#include <gtest/gtest.h>

#include <numeric>
#include <random>

#include "shardlm/parallel/grad_buffer.h"
#include "tests/testing/tensors.h"

namespace shardlm::parallel {
namespace {

model::ParameterRegistry random_registry(uint64_t seed, int n_params) {
  std::mt19937_64 g(seed);
  model::ParameterRegistry reg;
  for (int i = 0; i < n_params; ++i) {
    const int64_t rows = 1 + static_cast<int64_t>(g() % 17), cols = 1 + static_cast<int64_t>(g() % 23);
    const bool matrix = g() % 3 != 0;
    reg.add({"p" + std::to_string(i), matrix ? Shape({rows, cols}) : Shape({rows * 3}),
             model::Split::none(), matrix, model::Init::normal(0.5)});
  }
  return reg;
}

// Expert parallelism: the experts' parameters (every third here) get buckets of their own after
// the dense ones, padded for the expert-data-parallel size, and shard over that group; without
// expert_data_parallel_size they share the dense buckets.
TEST(GradBuffer, ExpertParametersGetTheirOwnBucketsForTheirGroup) {
  std::mt19937_64 g(5);
  model::ParameterRegistry reg;
  for (int i = 0; i < 12; ++i) {
    model::ParameterSpec spec{"p" + std::to_string(i), Shape({1 + static_cast<int64_t>(g() % 300)}),
                              model::Split::none(), true, model::Init::normal(0.5)};
    spec.expert = i % 3 == 1;
    reg.add(spec);
  }
  for (bool overlap : {false, true}) {
    SCOPED_TRACE(overlap ? "overlap" : "one bucket per group");
    const GradBuffer buf = GradBuffer::plan(
        reg, {.data_parallel_size = 4, .bucket_size = 500, .overlap_grad_reduce = overlap,
              .use_distributed_optimizer = true, .expert_data_parallel_size = 3});
    bool seen_expert = false;
    int64_t end = 0;
    for (int b = 0; b < buf.num_buckets(); ++b) {
      const Bucket& bk = buf.buckets()[static_cast<size_t>(b)];
      const bool expert = bk.group == BucketGroup::kExpert;
      EXPECT_TRUE(expert || !seen_expert) << "dense bucket " << b << " after an expert bucket";
      seen_expert |= expert;
      EXPECT_EQ(bk.range.begin, end);
      end = bk.range.end;
      EXPECT_EQ(buf.group_size(b), expert ? 3 : 4);
      EXPECT_EQ(bk.range.numel() % (expert ? 384 : 128), 0);  // lcm(group, 128)
      for (size_t i : bk.params) EXPECT_EQ(reg.parameters()[i].spec.expert, expert) << i;
      // The group's shards tile the bucket.
      int64_t at = bk.range.begin;
      for (int r = 0; r < buf.group_size(b); ++r) {
        EXPECT_EQ(buf.shard(b, r).begin, at);
        at = buf.shard(b, r).end;
      }
      EXPECT_EQ(at, bk.range.end);
    }
    EXPECT_TRUE(seen_expert);
    EXPECT_EQ(end, buf.numel());
    if (!overlap) EXPECT_EQ(buf.num_buckets(), 2);
  }
  const GradBuffer shared = GradBuffer::plan(reg, {.data_parallel_size = 4});
  ASSERT_EQ(shared.num_buckets(), 1);
  EXPECT_EQ(shared.buckets()[0].group, BucketGroup::kDense);
  EXPECT_EQ(shared.buckets()[0].params.size(), 12u);
}

TEST(GradBuffer, DefaultBucketSizeIsMegatrons) {
  EXPECT_EQ(default_bucket_size(1), 40'000'000);
  EXPECT_EQ(default_bucket_size(8), 40'000'000);
  EXPECT_EQ(default_bucket_size(64), 64'000'000);
  model::ParameterRegistry reg = random_registry(1, 4);
  EXPECT_EQ(GradBuffer::plan(reg, {.data_parallel_size = 2, .overlap_grad_reduce = true})
                .bucket_size(),
            40'000'000);
  // Without overlap: one bucket whatever --ddp-bucket-size says (Megatron sets it to None).
  const GradBuffer one = GradBuffer::plan(reg, {.data_parallel_size = 2, .bucket_size = 10});
  EXPECT_EQ(one.bucket_size(), 0);
  EXPECT_EQ(one.num_buckets(), 1);
}

TEST(GradBuffer, LayoutFollowsMegatronRulesForEveryConfiguration) {
  for (uint64_t seed : {1u, 2u, 3u}) {
    model::ParameterRegistry reg = random_registry(seed, 13);
    const auto& params = reg.parameters();
    int64_t total = 0;
    for (const auto& p : params) total += p.local_shape.numel();
    for (int dp : {1, 2, 3, 4, 8}) {
      for (int64_t bucket_size : {1, 60, 250, 100000}) {
        for (bool overlap : {false, true}) {
          for (bool shard : {false, true}) {
            SCOPED_TRACE(::testing::Message() << "seed " << seed << " dp " << dp << " bucket "
                                            << bucket_size << " overlap " << overlap
                                            << " distopt " << shard);
            const GradBuffer buf = GradBuffer::plan(
                reg, {dp, bucket_size, overlap, shard});
            const auto& buckets = buf.buckets();
            ASSERT_FALSE(buckets.empty());
            if (!overlap) EXPECT_EQ(buckets.size(), 1u);
            // Buckets tile [0, numel) in order; each parameter lies inside its bucket.
            int64_t expect_begin = 0, unpadded = 0;
            std::vector<int> seen(params.size(), 0);
            size_t expect_param = params.size();  // reverse registration order
            for (int b = 0; b < buf.num_buckets(); ++b) {
              const Bucket& bk = buckets[static_cast<size_t>(b)];
              EXPECT_EQ(bk.range.begin, expect_begin);
              expect_begin = bk.range.end;
              unpadded += bk.numel_unpadded;
              int64_t sizes = 0;
              for (size_t i : bk.params) {
                EXPECT_EQ(i, --expect_param);
                ++seen[i];
                EXPECT_EQ(buf.bucket_of(i), b);
                const int64_t off = buf.offset_of(i), n = params[i].local_shape.numel();
                EXPECT_GE(off, bk.range.begin);
                EXPECT_LE(off + n, bk.range.begin + bk.numel_unpadded);
                if (shard) EXPECT_EQ(off % 64, 0);
                sizes += n;
              }
              // Closed as soon as it reached bucket_size: without its last parameter it was
              // still below (all but the last bucket).
              if (overlap && b + 1 < buf.num_buckets()) {
                EXPECT_GE(bk.numel_unpadded, bucket_size);
                if (bk.params.size() >= 2) {
                  const size_t prev = bk.params[bk.params.size() - 2];
                  EXPECT_LT(buf.offset_of(prev) + params[prev].local_shape.numel() -
                                bk.range.begin,
                            bucket_size);
                }
              }
              if (shard) {
                EXPECT_EQ(bk.range.numel() % std::lcm(dp, 128), 0);
              } else {
                EXPECT_EQ(bk.range.numel(), sizes);  // no padding at all
                EXPECT_EQ(bk.numel_unpadded, sizes);
              }
              // Shards partition the bucket.
              if (shard || dp == 1) {
                int64_t next = bk.range.begin;
                for (int r = 0; r < dp; ++r) {
                  const FlatRange s = buf.shard(b, r);
                  EXPECT_EQ(s.begin, next);
                  EXPECT_EQ(s.numel(), bk.range.numel() / dp);
                  next = s.end;
                }
                EXPECT_EQ(next, bk.range.end);
              }
            }
            EXPECT_EQ(expect_param, 0u);
            EXPECT_EQ(expect_begin, buf.numel());
            EXPECT_EQ(unpadded, buf.numel_unpadded());
            if (!shard) EXPECT_EQ(buf.numel(), total);
            for (int s : seen) EXPECT_EQ(s, 1);
          }
        }
      }
    }
  }
}

TEST(GradBuffer, RegistryInBucketLayoutInitialisesLikeBackToBackAndKeepsPaddingZero) {
  DeviceContext ctx = DeviceContext::cpu();
  model::ParameterRegistry plain = random_registry(7, 9);
  plain.finalize(ctx, DType::kF32, 42);
  model::ParameterRegistry laid = random_registry(7, 9);
  const GradBuffer buf = GradBuffer::plan(laid, {4, 100, true, true});
  buf.apply(laid);
  laid.finalize(ctx, DType::kF32, 42);
  EXPECT_EQ(laid.numel(), buf.numel());
  EXPECT_GT(buf.numel(), buf.numel_unpadded());  // this configuration pads
  std::vector<char> covered(static_cast<size_t>(buf.numel()), 0);
  for (size_t i = 0; i < laid.parameters().size(); ++i) {
    const model::Parameter& p = laid.parameters()[i];
    EXPECT_EQ(p.offset, buf.offset_of(i));
    EXPECT_EQ(testing::rel_error(p.value, plain.get(p.spec.name).value), 0.0) << p.spec.name;
    EXPECT_EQ(p.value.raw(), laid.flat_values().flat_view(p.offset, p.local_shape).raw());
    EXPECT_EQ(p.grad.raw(), laid.flat_grads().flat_view(p.offset, p.local_shape).raw());
    for (int64_t k = 0; k < p.local_shape.numel(); ++k) covered[p.offset + k] = 1;
  }
  const std::vector<double> values = testing::to_vector(laid.flat_values());
  for (size_t k = 0; k < values.size(); ++k)
    if (!covered[k]) EXPECT_EQ(values[k], 0.0) << "padding element " << k;
  // Bucket views are the bucket's slice of the flat buffer.
  for (int b = 0; b < buf.num_buckets(); ++b) {
    const Tensor v = buf.bucket_view(laid.flat_grads(), b);
    EXPECT_EQ(v.numel(), buf.buckets()[b].range.numel());
    EXPECT_EQ(v.raw(), laid.flat_grads().flat_view(buf.buckets()[b].range.begin, Shape({1})).raw());
  }
  EXPECT_NE(buf.describe(laid).find("number of buckets"), std::string::npos);
}

}  // namespace
}  // namespace shardlm::parallel
