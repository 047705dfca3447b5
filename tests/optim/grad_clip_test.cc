// Global grad norm across ranks: every element counted exactly once whatever the layout.
// TP-split parameters contribute their shard on every TP rank, replicated parameters only on TP
// rank 0, distributed-optimizer ranks only their owned ranges; the sum over the group equals
// the single-rank norm of the full gradient, and clipping scales by Megatron's coefficient.
#include <gtest/gtest.h>

#include <cmath>

#include "shardlm/dist/thread_communicator.h"
#include "shardlm/ops/ops.h"
#include "shardlm/optim/grad_clip.h"
#include "tests/testing/tensors.h"

namespace shardlm::optim {
namespace {

using namespace std::chrono_literals;

// Registry of a tiny "model": a column-split matrix, a replicated vector and a row-split matrix.
model::ParameterRegistry make(int tp_rank, int tp_size) {
  model::ParameterRegistry reg;
  auto split = [&](int dim) {
    return tp_size > 1 ? model::Split::along(dim, tp_rank, tp_size) : model::Split::none();
  };
  reg.add({"col.weight", {8, 5}, split(0), true, model::Init::normal(1)});
  reg.add({"norm.weight", {5}, model::Split::none(), false, model::Init::ones()});
  reg.add({"row.weight", {5, 12}, split(1), true, model::Init::normal(1)});
  return reg;
}

// The full (single-rank) gradient of parameter `name`, element i of the global tensor.
double full_grad(const std::string& name, int64_t i) {
  return std::sin(0.37 * static_cast<double>(i) + static_cast<double>(name.size()));
}

void fill_grads(model::ParameterRegistry& reg) {
  for (model::Parameter& p : reg.parameters())
    for (int64_t k = 0; k < p.local_shape.numel(); ++k)
      p.grad.data<double>()[k] = full_grad(p.spec.name, p.global_index(k));
}

TEST(GradClip, NormOverTensorParallelRanksCountsEveryElementOnce) {
  DeviceContext ctx = DeviceContext::cpu();
  model::ParameterRegistry full = make(0, 1);
  full.finalize(ctx, DType::kF64, 1);
  fill_grads(full);
  const double expect = global_grad_norm(ctx, full);
  double sum = 0;
  for (const auto& p : full.parameters())
    for (int64_t i = 0; i < p.local_shape.numel(); ++i) sum += std::pow(full_grad(p.spec.name, i), 2);
  EXPECT_NEAR(expect, std::sqrt(sum), 1e-12);
  for (int tp : {2, 4}) {
    dist::ThreadWorld world(tp, {.timeout = 10s});
    dist::rethrow_first_error(world.run([&](dist::Communicator& comm) {
      DeviceContext rctx = DeviceContext::cpu();
      model::ParameterRegistry reg = make(comm.rank(), tp);
      reg.finalize(rctx, DType::kF64, 1);
      fill_grads(reg);
      GradNormScope scope{.tp_rank = comm.rank(), .sum_group = &comm};
      EXPECT_NEAR(global_grad_norm(rctx, reg, scope), expect, 1e-12 * expect);
      // Without the group sum a rank sees only its part; without the TP-rank filter the
      // replicated norm weight would be counted tp times.
      GradNormScope local{.tp_rank = comm.rank()};
      EXPECT_LT(global_grad_norm(rctx, reg, local), expect);
      GradNormScope unfiltered{.tp_rank = 0, .sum_group = &comm};
      EXPECT_GT(global_grad_norm(rctx, reg, unfiltered), expect * (1 + 1e-9));
    }));
  }
}

// Replicated query groups (G < TP): a fused-QKV-like [12, 3] parameter of 2 groups, each
// [q (4 rows) | k | v]; on TP 4 rank r holds q rows 2(r%2)..+2 of group r/2 and a copy of its
// k/v rows, a replica on odd ranks. Neighbours in the flat buffer on both sides check that the
// replica rows are cut out of the span without dropping or re-adding anything around them.
model::ParameterRegistry make_with_replicas(int tp_rank, int tp_size) {
  model::ParameterRegistry reg;
  auto split = [&](int dim) {
    return tp_size > 1 ? model::Split::along(dim, tp_rank, tp_size) : model::Split::none();
  };
  model::Split qkv = model::Split::none();
  if (tp_size > 1) {
    const int64_t g = tp_rank / 2;
    qkv = model::Split::of_runs(0, tp_rank, tp_size,
                                {{g * 6 + (tp_rank % 2) * 2, 2, false}, {g * 6 + 4, 2, tp_rank % 2 == 1}});
  }
  reg.add({"col.weight", {8, 5}, split(0), true, model::Init::normal(1)});
  reg.add({"qkv.weight", {12, 3}, qkv, true, model::Init::normal(1)});
  reg.add({"row.weight", {5, 12}, split(1), true, model::Init::normal(1)});
  return reg;
}

TEST(GradClip, ReplicatedRowsAreCountedOnce) {
  DeviceContext ctx = DeviceContext::cpu();
  model::ParameterRegistry full = make_with_replicas(0, 1);
  full.finalize(ctx, DType::kF64, 1);
  fill_grads(full);
  const double expect = global_grad_norm(ctx, full);
  dist::ThreadWorld world(4, {.timeout = 10s});
  dist::rethrow_first_error(world.run([&](dist::Communicator& comm) {
    DeviceContext rctx = DeviceContext::cpu();
    model::ParameterRegistry reg = make_with_replicas(comm.rank(), 4);
    reg.finalize(rctx, DType::kF64, 1);
    ASSERT_EQ(reg.get("qkv.weight").local_shape, Shape({4, 3}));
    fill_grads(reg);
    GradNormScope scope{.tp_rank = comm.rank(), .sum_group = &comm};
    EXPECT_NEAR(global_grad_norm(rctx, reg, scope), expect, 1e-12 * expect);
  }));
}

TEST(GradClip, DistributedOptimizerShardsSumToTheFullNormAndClipScales) {
  DeviceContext ctx = DeviceContext::cpu();
  model::ParameterRegistry full = make(0, 1);
  full.finalize(ctx, DType::kF64, 1);
  fill_grads(full);
  const double expect = global_grad_norm(ctx, full);
  const int dp = 4;
  const int64_t n = full.numel();  // 40 + 5 + 60 = 105: shards cut through parameters
  dist::ThreadWorld world(dp, {.timeout = 10s});
  dist::rethrow_first_error(world.run([&](dist::Communicator& comm) {
    DeviceContext rctx = DeviceContext::cpu();
    model::ParameterRegistry reg = make(0, 1);
    reg.finalize(rctx, DType::kF64, 1);
    fill_grads(reg);
    const int64_t per = (n + dp - 1) / dp;
    const BucketRange own{std::min(n, comm.rank() * per), std::min(n, (comm.rank() + 1) * per)};
    GradNormScope scope{.owned = std::span<const BucketRange>(&own, 1), .sum_group = &comm};
    const double clip = 0.5 * expect;
    const double norm = clip_grad_norm(rctx, reg, clip, scope);
    EXPECT_NEAR(norm, expect, 1e-12 * expect);
    const double coeff = clip / (expect + 1e-6);
    const auto& p = reg.get("row.weight");
    EXPECT_NEAR(p.grad.data<double>()[3], coeff * full_grad("row.weight", 3), 1e-12);
  }));
}

TEST(GradClip, NonFiniteNormIsReportedOnEveryRankAndNothingIsScaled) {
  dist::ThreadWorld world(2, {.timeout = 10s});
  dist::rethrow_first_error(world.run([&](dist::Communicator& comm) {
    DeviceContext rctx = DeviceContext::cpu();
    model::ParameterRegistry reg = make(comm.rank(), 2);
    reg.finalize(rctx, DType::kF64, 1);
    fill_grads(reg);
    if (comm.rank() == 1) reg.get("row.weight").grad.data<double>()[0] = std::nan("");
    const double before = reg.get("col.weight").grad.data<double>()[1];
    GradNormScope scope{.tp_rank = comm.rank(), .sum_group = &comm};
    EXPECT_FALSE(std::isfinite(clip_grad_norm(rctx, reg, 1e-3, scope)));
    EXPECT_EQ(reg.get("col.weight").grad.data<double>()[1], before);
  }));
}

}  // namespace
}  // namespace shardlm::optim
