// RankContext built from a ThreadWorld: every group matches the layout, group ranks equal the
// coordinates, collectives stay inside their group, and mismatched world sizes are rejected.
#include "shardlm/dist/rank_context.h"

#include <gtest/gtest.h>

#include <thread>

#include "rank_threads.h"

namespace shardlm::dist {
namespace {

using namespace testing;

TEST(RankContext, GroupsMatchTheLayoutForTp2Pp2Dp2) {
  const int n = 8;
  ParallelLayout layout = ParallelLayout::create(n, {.tensor = 2, .pipeline = 2});
  ThreadWorld world(n, {.timeout = 20s});
  std::vector<std::thread> threads;
  std::vector<std::string> failures(n);
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        DeviceContext device = DeviceContext::cpu();
        RankContext rc = RankContext::create(device, world.communicator(r), layout, r % 4);
        EXPECT_EQ(&rc.device(), &device);
        EXPECT_EQ(rc.world_rank(), r);
        EXPECT_EQ(rc.world_size(), n);
        EXPECT_EQ(rc.local_rank(), r % 4);
        for (GroupKind kind : kAllGroupKinds) {
          const auto& members = layout.group_of(kind, r);
          ASSERT_EQ(rc.has_group(kind), !members.empty()) << group_kind_name(kind);
          if (members.empty()) continue;
          EXPECT_EQ(rc.group(kind).world_ranks(), members) << group_kind_name(kind);
          EXPECT_EQ(rc.group(kind).name(), group_kind_name(kind));
        }
        EXPECT_EQ(rc.tp().rank(), rc.coord().tp);
        EXPECT_EQ(rc.dp().rank(), rc.coord().dp);
        EXPECT_EQ(rc.pp().rank(), rc.coord().pp);
        EXPECT_EQ(rc.is_first_pipeline_stage(), r < 4);
        EXPECT_EQ(rc.is_last_pipeline_stage(), r >= 4);
        // A sum over the tp group adds exactly its members' world ranks.
        OwnedTensor t = OwnedTensor::zeros(DType::kI64, {1});
        t.view().data<int64_t>()[0] = r;
        rc.tp().all_reduce(t.view());
        int64_t expected = 0;
        for (int m : layout.group_of(GroupKind::kTp, r)) expected += m;
        EXPECT_EQ(t.view().data<int64_t>()[0], expected);
        t.view().data<int64_t>()[0] = r;
        rc.dp_cp().all_reduce(t.view());
        expected = 0;
        for (int m : layout.group_of(GroupKind::kDpCp, r)) expected += m;
        EXPECT_EQ(t.view().data<int64_t>()[0], expected);
        // With PP = 2 every rank is on the first or the last stage: all in embedding groups.
        ASSERT_TRUE(rc.has_group(GroupKind::kEmbedding));
        rc.embedding().barrier();
        rc.world().barrier();
      } catch (const std::exception& e) {
        failures[r] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < n; ++r) EXPECT_EQ(failures[r], "") << "rank " << r;
}

TEST(RankContext, MiddleStagesHaveNoEmbeddingGroup) {
  ParallelLayout layout = ParallelLayout::create(4, {.pipeline = 4});
  run_ranks(4, [&](Communicator& comm) {
    const int r = comm.rank();
    auto owned = std::make_unique<DeviceContext>(DeviceContext::cpu());
    DeviceContext* raw = owned.get();
    // run_ranks owns the world communicator; give RankContext a duplicate made by split.
    RankContext rc = RankContext::create(std::move(owned), comm.split(0, r, "world"), layout);
    EXPECT_EQ(&rc.device(), raw);
    EXPECT_EQ(rc.has_group(GroupKind::kEmbedding), r == 0 || r == 3);
    if (r == 1 || r == 2) {
      expect_error([&] { rc.embedding(); }, ErrorKind::kInvalidArgument,
                   {"world rank " + std::to_string(r), "'embedding'", "has_group"});
    } else {
      EXPECT_EQ(rc.embedding().world_ranks(), (std::vector<int>{0, 3}));
    }
    EXPECT_EQ(rc.has_group(GroupKind::kPositionEmbedding), r == 0);
  });
}

TEST(RankContext, RejectsALayoutForAnotherWorldSize) {
  ParallelLayout layout = ParallelLayout::create(8, {.tensor = 2});
  run_ranks(2, [&](Communicator& comm) {
    DeviceContext device = DeviceContext::cpu();
    expect_error(
        [&] { RankContext::create(device, comm.split(0, comm.rank(), "w"), layout); },
        ErrorKind::kInvalidConfig, {"for 8 ranks but the job has 2", "Fix"});
  });
}

}  // namespace
}  // namespace shardlm::dist
