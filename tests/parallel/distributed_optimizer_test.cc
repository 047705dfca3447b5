// DistributedOptimizer vs plain AdamW: DP ranks (threads) holding the same reduced gradients
// update only their shards and all-gather; after several steps every rank's parameters equal a
// single unsharded AdamW's (fp64, so any indexing slip shows), weight decay is applied per
// parameter flag even where a shard boundary cuts a parameter, padding stays zero, and each
// rank holds 1/DP of the Adam state. Under mixed precision the master weights are sharded too.
#include <gtest/gtest.h>

#include <functional>
#include <map>

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

// The test parameters in DP-padded buckets of bucket_size (overlap on, distributed optimizer),
// finalized with seed 9; returns the buckets.
std::vector<BucketRange> bucketed(model::ParameterRegistry& reg, DeviceContext& ctx, int dp,
                                  int64_t bucket_size, DType master, DType compute) {
  add_params(reg);
  const parallel::GradBuffer buf = parallel::GradBuffer::plan(reg, {dp, bucket_size, true, true});
  buf.apply(reg);
  reg.finalize(ctx, master, 9, compute);
  std::vector<BucketRange> buckets;
  for (const auto& r : buf.bucket_ranges()) buckets.push_back({r.begin, r.end});
  return buckets;
}

// Runs fn(comm, dp, bucket_size) on DP = 1, 2, 4 thread ranks, with 200-element buckets and
// with one bucket.
void on_every_layout(const std::function<void(dist::Communicator&, int, int64_t)>& fn) {
  for (int dp : {1, 2, 4}) {
    for (int64_t bucket_size : {int64_t{200}, int64_t{1} << 30}) {
      SCOPED_TRACE(::testing::Message() << "dp " << dp << " bucket " << bucket_size);
      dist::ThreadWorld world(dp, {.timeout = 20s});
      dist::rethrow_first_error(
          world.run([&](dist::Communicator& comm) { fn(comm, dp, bucket_size); }));
    }
  }
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
  on_every_layout([&](dist::Communicator& comm, int dp, int64_t bucket_size) {
    DeviceContext rctx = DeviceContext::cpu();
    model::ParameterRegistry reg;
    const std::vector<BucketRange> buckets =
        bucketed(reg, rctx, dp, bucket_size, DType::kF64, DType::kF64);
    DistributedOptimizer opt(rctx, reg, buckets, comm, kCfg);
    EXPECT_FALSE(opt.shards_master_weights());  // fp64 values are the weights
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
  });
}

// Mixed precision (--bf16, or the CPU's fp64 master / fp32 compute): the optimizer keeps only
// its shards of the master weights (the registry releases its full master buffer), and the
// all-gather moves compute values. After every step each rank's whole compute copy equals the
// one a plain AdamW over an unsharded registry writes, bit for bit, and its master shards equal
// the same elements of the plain master values; padding stays zero. sync_compute_values()
// rebuilds the compute copy from master shards written from outside (a checkpoint load).
struct MixedCase {
  DType master, compute;
};

class DistributedOptimizerMixed : public ::testing::TestWithParam<MixedCase> {};

INSTANTIATE_TEST_SUITE_P(Dtypes, DistributedOptimizerMixed,
                         ::testing::Values(MixedCase{DType::kF64, DType::kF32},
                                           MixedCase{DType::kF32, DType::kBF16}),
                         [](const auto& info) {
                           return std::string(dtype_name(info.param.master)) + "_" +
                                  dtype_name(info.param.compute);
                         });

TEST_P(DistributedOptimizerMixed, ShardsTheMasterWeightsAndGathersComputeValues) {
  const MixedCase mc = GetParam();
  DeviceContext ctx = DeviceContext::cpu();
  model::ParameterRegistry ref;
  add_params(ref);
  ref.finalize(ctx, mc.master, 9, mc.compute);
  AdamW plain(ref, kCfg);
  std::vector<std::map<std::string, std::vector<double>>> ref_master(4), ref_compute(4);
  for (int s = 0; s < 4; ++s) {
    for (auto& p : ref.parameters())
      ops::copy(ctx, p.grad, testing::convert(grad_of(p, s).view(), mc.master).view());
    plain.step(ctx, kLr[s]);
    for (const auto& p : ref.parameters()) {
      ref_master[s][p.spec.name] = testing::to_vector(p.value);
      ref_compute[s][p.spec.name] = testing::to_vector(p.compute_value);
    }
  }
  on_every_layout([&](dist::Communicator& comm, int dp, int64_t bucket_size) {
    DeviceContext rctx = DeviceContext::cpu();
    model::ParameterRegistry reg;
    const std::vector<BucketRange> buckets =
        bucketed(reg, rctx, dp, bucket_size, mc.master, mc.compute);
    DistributedOptimizer opt(rctx, reg, buckets, comm, kCfg);
    ASSERT_TRUE(opt.shards_master_weights());
    EXPECT_FALSE(reg.has_master_values());
    EXPECT_FALSE(reg.parameters()[0].value.defined());
    EXPECT_THROW(reg.sync_compute_values(rctx), Error);  // nothing to convert from any more
    EXPECT_EQ(opt.master_bytes() * static_cast<size_t>(dp),
              static_cast<size_t>(reg.numel()) * dtype_size(mc.master));
    // Master element k of the registry's flat layout -> its place in master_values().
    std::vector<int64_t> where(static_cast<size_t>(reg.numel()), -1);
    int64_t at = 0;
    for (const auto& own : opt.owned_ranges())
      for (int64_t k = own.begin; k < own.end; ++k) where[k] = at++;
    auto check = [&](int s) {
      const std::vector<double> compute = testing::to_vector(reg.flat_compute_values());
      const std::vector<double> master = testing::to_vector(opt.master_values());
      std::vector<char> covered(compute.size(), 0);
      for (const auto& p : reg.parameters()) {
        const std::vector<double>& rc = ref_compute[s].at(p.spec.name);
        const std::vector<double>& rm = ref_master[s].at(p.spec.name);
        for (int64_t i = 0; i < p.local_shape.numel(); ++i) {
          const int64_t k = p.offset + i;
          covered[k] = 1;
          ASSERT_EQ(compute[k], rc[i]) << p.spec.name << "[" << i << "] step " << s;
          if (where[k] >= 0)
            ASSERT_EQ(master[where[k]], rm[i]) << p.spec.name << "[" << i << "] step " << s;
        }
      }
      for (size_t k = 0; k < compute.size(); ++k)
        if (!covered[k]) ASSERT_EQ(compute[k], 0.0) << "padding " << k;
    };
    for (int s = 0; s < 4; ++s) {
      for (auto& p : reg.parameters())
        ops::copy(rctx, p.grad, testing::convert(grad_of(p, s).view(), mc.master).view());
      opt.step(rctx, kLr[s]);
      opt.finish_param_gather();
      check(s);
    }
    // A load writes the master shards; the compute copy follows from them alone.
    ops::fill(rctx, reg.flat_compute_values(), 7.0);
    opt.sync_compute_values(rctx);
    check(3);
  });
}

// --overlap-param-gather: wait_for(params) completes exactly the gathers of the buckets that
// hold those parameters (the forward's pre-hook); the values it lets through are final.
TEST(DistributedOptimizer, WaitsForTheBucketsOfTheParametersAsked) {
  dist::ThreadWorld world(2, {.timeout = 20s});
  dist::rethrow_first_error(world.run([&](dist::Communicator& comm) {
    DeviceContext ctx = DeviceContext::cpu();
    model::ParameterRegistry reg;
    const std::vector<BucketRange> buckets =
        bucketed(reg, ctx, 2, 200, DType::kF32, DType::kBF16);
    ASSERT_GE(buckets.size(), 3u);
    DistributedOptimizer opt(ctx, reg, buckets, comm, kCfg);
    for (auto& p : reg.parameters())
      ops::copy(ctx, p.grad, testing::convert(grad_of(p, 0).view(), DType::kF32).view());
    opt.step(ctx, kLr[0]);
    ASSERT_TRUE(opt.param_gather_pending());
    // The parameter registered first is laid out last: its bucket is the last one.
    model::Parameter* first = &reg.parameters().front();
    opt.wait_for({&first, 1});
    EXPECT_TRUE(opt.param_gather_pending());  // the other buckets were not waited for
    std::vector<model::Parameter*> all;
    for (auto& p : reg.parameters()) all.push_back(&p);
    opt.wait_for(all);
    EXPECT_FALSE(opt.param_gather_pending());
    opt.finish_param_gather();  // nothing left: a no-op
    opt.step(ctx, kLr[1]);      // a new step may start
    opt.finish_param_gather();
  }));
}

TEST(DistributedOptimizer, RejectsBucketsThatDoNotSplitEvenly) {
  dist::ThreadWorld world(2, {.timeout = 5s});
  auto errors = world.run([&](dist::Communicator& comm) {
    DeviceContext ctx = DeviceContext::cpu();
    model::ParameterRegistry reg;
    add_params(reg);
    reg.finalize(ctx, DType::kF64, 1);  // back to back: total 785 is odd
    DistributedOptimizer opt(ctx, reg, {{0, reg.numel()}}, comm, kCfg);
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
