// split(color, key): membership, ordering by (key, parent rank), kNoColor, nesting, and that
// collectives of sibling groups do not mix.
#include <gtest/gtest.h>

#include "rank_threads.h"

namespace shardlm::dist {
namespace {

using namespace testing;

TEST(ThreadSplit, GroupsByColorOrderedByKeyThenRank) {
  const int n = 8;
  std::vector<std::vector<int>> members(n);
  std::vector<int> sub_rank(n, -1);
  run_ranks(n, [&](Communicator& comm) {
    const int r = comm.rank();
    // Colour by parity, reversed order inside (key = -rank); ties broken by parent rank.
    auto g = comm.split(r % 2, -r, r % 2 ? "odd" : "even");
    ASSERT_TRUE(g);
    members[r] = g->world_ranks();
    sub_rank[r] = g->rank();
    EXPECT_EQ(g->name(), r % 2 ? "odd" : "even");
    EXPECT_EQ(g->size(), 4);
    EXPECT_EQ(g->timeout(), comm.timeout());
    // Reduce inside the subgroup: the sum covers its members only.
    OwnedTensor t = OwnedTensor::zeros(DType::kI64, {1});
    t.view().data<int64_t>()[0] = int64_t{1} << r;
    g->all_reduce(t.view());
    EXPECT_EQ(t.view().data<int64_t>()[0], r % 2 ? 0b10101010 : 0b01010101);
    // Equal keys: parent rank order.
    auto h = comm.split(0, 0, "all");
    EXPECT_EQ(h->rank(), r);
  });
  EXPECT_EQ(members[0], (std::vector<int>{6, 4, 2, 0}));
  EXPECT_EQ(members[1], (std::vector<int>{7, 5, 3, 1}));
  EXPECT_EQ(sub_rank[0], 3);
  EXPECT_EQ(sub_rank[6], 0);
  EXPECT_EQ(sub_rank[7], 0);
}

TEST(ThreadSplit, NoColorGetsNoGroupAndNestedSplitsMapToWorldRanks) {
  run_ranks(6, [](Communicator& comm) {
    const int r = comm.rank();
    auto g = comm.split(r == 5 ? kNoColor : 0, r, "first5");
    if (r == 5) {
      EXPECT_EQ(g, nullptr);
      return;
    }
    ASSERT_TRUE(g);
    EXPECT_EQ(g->size(), 5);
    auto pair = g->split(g->rank() / 2, g->rank(), "pair");  // {0,1} {2,3} {4}
    EXPECT_EQ(pair->size(), r == 4 ? 1 : 2);
    EXPECT_EQ(pair->world_ranks().front(), r / 2 * 2);
    OwnedTensor t = OwnedTensor::zeros(DType::kF32, {1});
    t.view().data<float>()[0] = static_cast<float>(r);
    pair->all_reduce(t.view());
    const float expected = r == 4 ? 4.0f : static_cast<float>(r / 2 * 4 + 1);
    EXPECT_EQ(t.view().data<float>()[0], expected);
    g->barrier();
  });
}

TEST(ThreadSplit, SiblingGroupsRunIndependentSequences) {
  // Group {0,1} does three all_reduces while {2,3} does one broadcast: sequences are per group.
  run_ranks(4, [](Communicator& comm) {
    const int r = comm.rank();
    auto g = comm.split(r / 2, r, "pair");
    OwnedTensor t = OwnedTensor::zeros(DType::kF32, {2});
    t.view().data<float>()[0] = 1.0f;
    if (r < 2) {
      for (int k = 0; k < 3; ++k) g->all_reduce(t.view());
      EXPECT_EQ(t.view().data<float>()[0], 8.0f);
    } else {
      t.view().data<float>()[1] = static_cast<float>(r);
      g->broadcast(t.view(), 1);
      EXPECT_EQ(t.view().data<float>()[1], 3.0f);
    }
    comm.barrier();
  });
}

TEST(ThreadSplit, RejectsNegativeColor) {
  run_ranks(1, [](Communicator& comm) {
    expect_error([&] { comm.split(-5, 0, "x"); }, ErrorKind::kInvalidArgument, {"color -5"});
  });
}

}  // namespace
}  // namespace shardlm::dist
