// DistributedOptimizer vs plain AdamW: DP ranks (threads) holding the same reduced gradients
// update only their shards and all-gather; after several steps every rank's parameters equal a
// single unsharded AdamW's (fp64, so any indexing slip shows), weight decay is applied per
// parameter flag even where a shard boundary cuts a parameter, padding stays zero, and each
// rank holds 1/DP of the Adam state.
#include <gtest/gtest.h>

#include "shardlm/dist/thread_communicator.h"
#include "shardlm/ops/ops.h"
#include "shardlm/optim/distributed_optimizer.h"
#include "shardlm/parallel/grad_buffer.h"
#include "tests/testing/tensors.h"

namespace shardlm::optim {
namespace {

using namespace std::chrono_literals;

void add_params(model::ParameterRegistry& reg) {
  const int64_t sizes[] = {301, 7, 64, 129, 1, 250, 33};
  for (int i = 0; i < 7; ++i)
    reg.add({"w" + std::to_string(i), Shape({sizes[i]}), model::Split::none(), i % 3 != 1,
             model::Init::normal(0.3)});
}

// Gradient of parameter `name` at step s (same on every rank: what the reduction produced).
OwnedTensor grad_of(const model::Parameter& p, int s) {
  return testing::random_tensor(DType::kF64, p.local_shape,
                                17 * s + std::hash<std::string>()(p.spec.name) % 1000);
}

const AdamWConfig kCfg{0.9, 0.95, 1e-8, 0.1};
const double kLr[] = {1e-2, 5e-3, 2e-2, 1e-3};

TEST(DistributedOptimizer, MatchesPlainAdamWOnEveryRank) {
  DeviceContext ctx = DeviceContext::cpu();
  model::ParameterRegistry ref;
  add_params(ref);
  ref.finalize(ctx, DType::kF64, 9);
  AdamW plain(ref, kCfg);
  for (int s = 0; s < 4; ++s) {
    for (auto& p : ref.parameters()) ops::copy(ctx, p.grad, grad_of(p, s).view());
    plain.step(ctx, kLr[s]);
  }
  for (int dp : {1, 2, 4}) {
    for (int64_t bucket_size : {int64_t{200}, int64_t{1} << 30}) {
      SCOPED_TRACE(::testing::Message() << "dp " << dp << " bucket " << bucket_size);
      dist::ThreadWorld world(dp, {.timeout = 20s});
      dist::rethrow_first_error(world.run([&](dist::Communicator& comm) {
        DeviceContext rctx = DeviceContext::cpu();
        model::ParameterRegistry reg;
        add_params(reg);
        const parallel::GradBuffer buf =
            parallel::GradBuffer::plan(reg, {dp, bucket_size, true, true});
        buf.apply(reg);
        reg.finalize(rctx, DType::kF64, 9);
        std::vector<BucketRange> buckets;
        for (const auto& r : buf.bucket_ranges()) buckets.push_back({r.begin, r.end});
        DistributedOptimizer opt(reg, buckets, comm, kCfg);
        // 1/DP of the state (the padded buffer splits exactly).
        EXPECT_EQ(opt.state_bytes() * static_cast<size_t>(dp), opt.unsharded_state_bytes());
        EXPECT_EQ(opt.owned_ranges().size(), buckets.size());
        for (int s = 0; s < 4; ++s) {
          for (auto& p : reg.parameters()) ops::copy(rctx, p.grad, grad_of(p, s).view());
          // Junk outside the owned shards (stale after a reduce-scatter): must not be read.
          double* g = reg.flat_grads().data<double>();
          std::vector<char> owned(static_cast<size_t>(reg.numel()), 0);
          for (const auto& own : opt.owned_ranges())
            for (int64_t k = own.begin; k < own.end; ++k) owned[k] = 1;
          for (int64_t k = 0; k < reg.numel(); ++k)
            if (!owned[k]) g[k] = 1e6;
          opt.step(rctx, kLr[s]);
          opt.finish_param_gather();
        }
        EXPECT_EQ(opt.steps_taken(), 4);
        std::vector<char> covered(static_cast<size_t>(reg.numel()), 0);
        for (const auto& p : reg.parameters()) {
          EXPECT_LT(testing::rel_error(p.value, ref.get(p.spec.name).value), 1e-14)
              << p.spec.name << " rank " << comm.rank();
          for (int64_t k = 0; k < p.local_shape.numel(); ++k) covered[p.offset + k] = 1;
        }
        const auto values = testing::to_vector(reg.flat_values());
        for (size_t k = 0; k < values.size(); ++k)
          if (!covered[k]) ASSERT_EQ(values[k], 0.0) << "padding " << k;
      }));
    }
  }
}

// --bf16: step() writes the owned shards' compute values; after the all-gather the rest comes
// from sync_compute_values() (the trainer's finish_param_gather). At DP = 1 nothing is gathered,
// so the step alone must leave the whole compute copy equal to the rounded master values.
TEST(DistributedOptimizer, WritesTheOwnedShardsOfTheComputeCopy) {
  for (int dp : {1, 2}) {
    SCOPED_TRACE(::testing::Message() << "dp " << dp);
    dist::ThreadWorld world(dp, {.timeout = 20s});
    dist::rethrow_first_error(world.run([&](dist::Communicator& comm) {
      DeviceContext ctx = DeviceContext::cpu();
      model::ParameterRegistry reg;
      add_params(reg);
      const parallel::GradBuffer buf = parallel::GradBuffer::plan(reg, {dp, 200, true, true});
      buf.apply(reg);
      reg.finalize(ctx, DType::kF32, 9, DType::kBF16);
      std::vector<BucketRange> buckets;
      for (const auto& r : buf.bucket_ranges()) buckets.push_back({r.begin, r.end});
      DistributedOptimizer opt(reg, buckets, comm, kCfg);
      auto rounded = [](double v) {
        return static_cast<double>(bf16_bits_to_float(float_to_bf16_bits(static_cast<float>(v))));
      };
      for (int s = 0; s < 2; ++s) {
        for (auto& p : reg.parameters())
          ops::copy(ctx, p.grad, testing::convert(grad_of(p, s).view(), DType::kF32).view());
        opt.step(ctx, kLr[s]);
        std::vector<double> master = testing::to_vector(reg.flat_values());
        std::vector<double> compute = testing::to_vector(reg.flat_compute_values());
        for (const auto& own : opt.owned_ranges())
          for (int64_t k = own.begin; k < own.end; ++k)
            ASSERT_EQ(compute[k], rounded(master[k])) << "owned element " << k << " step " << s;
        opt.finish_param_gather();
        if (dp > 1) reg.sync_compute_values(ctx);  // what the trainer does after a gather
        master = testing::to_vector(reg.flat_values());
        compute = testing::to_vector(reg.flat_compute_values());
        for (size_t k = 0; k < master.size(); ++k)
          ASSERT_EQ(compute[k], rounded(master[k])) << "element " << k << " step " << s;
      }
    }));
  }
}

TEST(DistributedOptimizer, RejectsBucketsThatDoNotSplitEvenly) {
  dist::ThreadWorld world(2, {.timeout = 5s});
  auto errors = world.run([&](dist::Communicator& comm) {
    DeviceContext ctx = DeviceContext::cpu();
    model::ParameterRegistry reg;
    add_params(reg);
    reg.finalize(ctx, DType::kF64, 1);  // back to back: total 785 is odd
    DistributedOptimizer opt(reg, {{0, reg.numel()}}, comm, kCfg);
  });
  for (const auto& e : errors) {
    ASSERT_TRUE(e);
    try {
      std::rethrow_exception(e);
    } catch (const Error& err) {
      EXPECT_NE(std::string(err.what()).find("does not split evenly"), std::string::npos)
          << err.what();
    }
  }
}

}  // namespace
}  // namespace shardlm::optim
