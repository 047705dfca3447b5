// GradSync on ranks as threads: after M micro-batches of per-rank random gradients the buffer
// holds the mean over DP ranks of each rank's accumulated gradient (all of it with all-reduce,
// the owned shards with reduce-scatter), for DP 1/2/4, with and without overlap and the
// distributed optimizer; nothing is communicated before the last micro-batch; with overlap the
// buckets start during backward, in backward order, as soon as they are complete; parameters
// the hook never reports are still reduced; mixed precision folds compute grads per parameter.
#include <gtest/gtest.h>

#include <atomic>

#include "shardlm/dist/thread_communicator.h"
#include "shardlm/ops/ops.h"
#include "shardlm/parallel/grad_sync.h"
#include "tests/testing/tensors.h"

namespace shardlm::parallel {
namespace {

using namespace std::chrono_literals;

void add_params(model::ParameterRegistry& reg) {
  const int64_t sizes[] = {37, 5, 120, 64, 9, 200, 3, 77};
  for (int i = 0; i < 8; ++i)
    reg.add({"layer" + std::to_string(i), Shape({sizes[i]}), model::Split::none(), i % 2 == 0,
             model::Init::normal(0.1)});
}

// The "gradient" rank r adds for parameter i in micro-batch m.
OwnedTensor grad_of(DType dtype, int r, int m, size_t i, int64_t n) {
  return testing::random_tensor(dtype, Shape({n}), 1000 * r + 100 * m + i + 1);
}

struct Case {
  int dp;
  bool overlap, distopt;
  int hook_chunk;  // parameters per hook call; 0: the hook is never called
};

void run_case(const Case& c, DType master, DType compute) {
  SCOPED_TRACE(::testing::Message() << "dp " << c.dp << " overlap " << c.overlap << " distopt "
                                    << c.distopt << " hook chunk " << c.hook_chunk);
  const int M = 3;
  dist::ThreadWorld world(c.dp, {.timeout = 20s});
  dist::rethrow_first_error(world.run([&](dist::Communicator& comm) {
    DeviceContext ctx = DeviceContext::cpu();
    model::ParameterRegistry reg;
    add_params(reg);
    const GradBuffer buf = GradBuffer::plan(reg, {c.dp, 150, c.overlap, c.distopt});
    buf.apply(reg);
    reg.finalize(ctx, master, 5, compute);
    GradSync sync(reg, buf, comm, ctx, {c.overlap, c.distopt});
    auto& params = reg.parameters();
    for (int iteration = 0; iteration < 2; ++iteration) {
      reg.zero_grads(ctx);
      sync.start_iteration();
      for (int m = 0; m < M; ++m) {
        sync.begin_microbatch(m == M - 1);
        // "Backward": parameters complete in reverse registration order.
        std::vector<model::Parameter*> ready;
        for (size_t i = params.size(); i-- > 0;) {
          OwnedTensor g = grad_of(compute, comm.rank() + iteration, m, i,
                                  params[i].local_shape.numel());
          ops::add_inplace(ctx, params[i].compute_grad.reshape(Shape({g.view().numel()})),
                           g.view());
          ready.push_back(&params[i]);
          if (c.hook_chunk > 0 && static_cast<int>(ready.size()) == c.hook_chunk) {
            sync.on_grads_ready(ready);
            ready.clear();
          }
        }
        if (c.hook_chunk > 0 && !ready.empty()) sync.on_grads_ready(ready);
        if (m < M - 1) EXPECT_TRUE(sync.started_buckets().empty());  // accumulation only
        sync.end_microbatch();
        if (m < M - 1) EXPECT_TRUE(sync.started_buckets().empty());
      }
      sync.wait();
      // Every bucket started once, in backward (bucket) order.
      std::vector<int> expect_order(static_cast<size_t>(buf.num_buckets()));
      for (int b = 0; b < buf.num_buckets(); ++b) expect_order[b] = b;
      EXPECT_EQ(sync.started_buckets(), expect_order);
      EXPECT_EQ(sync.started_during_backward(),
                c.overlap && c.hook_chunk > 0 ? buf.num_buckets() : 0);
      // Expected: mean over ranks of the sum over micro-batches, in double.
      for (size_t i = 0; i < params.size(); ++i) {
        const int64_t n = params[i].local_shape.numel();
        std::vector<double> expect(static_cast<size_t>(n), 0.0);
        for (int r = 0; r < c.dp; ++r)
          for (int m = 0; m < M; ++m) {
            const auto g = testing::to_vector(grad_of(compute, r + iteration, m, i, n).view());
            for (int64_t k = 0; k < n; ++k) expect[k] += g[k] / c.dp;
          }
        const auto got = testing::to_vector(params[i].grad);
        // Compare where this rank holds reduced values: everywhere, or its shards (DO).
        std::vector<double> got_owned, expect_owned;
        for (int64_t k = 0; k < n; ++k) {
          const int64_t flat = params[i].offset + k;
          bool owned = true;
          if (c.distopt) {
            const FlatRange s = buf.shard(buf.bucket_of(i), comm.rank());
            owned = flat >= s.begin && flat < s.end;
          }
          if (owned) got_owned.push_back(got[k]), expect_owned.push_back(expect[k]);
        }
        if (!expect_owned.empty())
          EXPECT_LT(testing::rel_error(got_owned, expect_owned),
                    master == DType::kF64 ? 1e-13 : 1e-6)
              << params[i].spec.name << " rank " << comm.rank();
      }
    }
  }));
}

TEST(GradSync, AveragesOverDataParallelRanksInEveryMode) {
  for (int dp : {1, 2, 4})
    for (bool overlap : {false, true})
      for (bool distopt : {false, true})
        for (int chunk : {0, 1, 3}) run_case({dp, overlap, distopt, chunk}, DType::kF64, DType::kF64);
}

TEST(GradSync, MixedPrecisionFoldsComputeGradsPerParameterBeforeReducing) {
  // fp64 master / fp32 compute stands in for fp32 / bf16 on the CPU backend.
  for (bool overlap : {false, true})
    for (bool distopt : {false, true}) run_case({2, overlap, distopt, 2}, DType::kF64, DType::kF32);
}

TEST(GradSync, ParameterReportedTwiceIsAnInternalError) {
  DeviceContext ctx = DeviceContext::cpu();
  dist::ThreadWorld world(1);
  auto comm = world.communicator(0);
  model::ParameterRegistry reg;
  add_params(reg);
  const GradBuffer buf = GradBuffer::plan(reg, {1, 100, true, false});
  buf.apply(reg);
  reg.finalize(ctx, DType::kF32, 1);
  GradSync sync(reg, buf, *comm, ctx, {true, false});
  sync.begin_microbatch(true);
  model::Parameter* p = &reg.parameters().back();
  sync.on_grads_ready(std::span<model::Parameter* const>(&p, 1));
  try {
    sync.on_grads_ready(std::span<model::Parameter* const>(&p, 1));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInternal);
    EXPECT_NE(std::string(e.what()).find("layer7"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace shardlm::parallel
