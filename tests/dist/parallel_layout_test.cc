// ParallelLayout against Megatron's documented examples, property tests over every layout of up
// to 16 ranks, and every rejection message.
#include "shardlm/dist/parallel_layout.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "rank_threads.h"

namespace shardlm::dist {
namespace {

using Groups = std::vector<std::vector<int>>;
using testing::expect_error;

TEST(ParallelLayout, MegatronDocstringExample16RanksTp2Pp4) {
  ParallelLayout l = ParallelLayout::create(16, {.tensor = 2, .pipeline = 4});
  EXPECT_EQ(l.dp(), 2);
  EXPECT_EQ(l.groups(GroupKind::kTp),
            (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}, {8, 9}, {10, 11}, {12, 13}, {14, 15}}));
  EXPECT_EQ(l.groups(GroupKind::kPp),
            (Groups{{0, 4, 8, 12}, {1, 5, 9, 13}, {2, 6, 10, 14}, {3, 7, 11, 15}}));
  EXPECT_EQ(l.groups(GroupKind::kDp),
            (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}, {8, 10}, {9, 11}, {12, 14}, {13, 15}}));
  EXPECT_EQ(l.groups(GroupKind::kDpCp), l.groups(GroupKind::kDp));  // CP = 1
  EXPECT_EQ(l.groups(GroupKind::kModelParallel),
            (Groups{{0, 1, 4, 5, 8, 9, 12, 13}, {2, 3, 6, 7, 10, 11, 14, 15}}));
  EXPECT_EQ(l.groups(GroupKind::kEmbedding), (Groups{{0, 12}, {1, 13}, {2, 14}, {3, 15}}));
  EXPECT_EQ(l.groups(GroupKind::kPositionEmbedding), (Groups{{0}, {1}, {2}, {3}}));
  EXPECT_TRUE(l.group_of(GroupKind::kEmbedding, 5).empty());
  EXPECT_EQ(l.group_index(GroupKind::kEmbedding, 5), -1);
  EXPECT_EQ(l.group_of(GroupKind::kEmbedding, 13), (std::vector<int>{1, 13}));
  const RankCoord c = l.coord(11);  // 11 = 1 + 2·(1 + 2·2): tp 1, dp 1, pp 2
  EXPECT_EQ(c.tp, 1);
  EXPECT_EQ(c.dp, 1);
  EXPECT_EQ(c.pp, 2);
  EXPECT_EQ(c.cp, 0);
  EXPECT_EQ(l.describe(), "world 16 = TP 2 x CP 1 x PP 4 x DP 2 (experts: ETP 2 x EP 1 x EDP 2)");
}

TEST(ParallelLayout, ContextParallelSitsBetweenTensorAndData) {
  ParallelLayout l = ParallelLayout::create(8, {.tensor = 2, .context = 2});
  EXPECT_EQ(l.dp(), 2);
  EXPECT_EQ(l.groups(GroupKind::kCp), (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  EXPECT_EQ(l.groups(GroupKind::kDp), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  EXPECT_EQ(l.groups(GroupKind::kDpCp), (Groups{{0, 2, 4, 6}, {1, 3, 5, 7}}));
  EXPECT_EQ(l.groups(GroupKind::kTpCp), (Groups{{0, 1, 2, 3}, {4, 5, 6, 7}}));
  EXPECT_EQ(l.groups(GroupKind::kTpDpCp), (Groups{{0, 1, 2, 3, 4, 5, 6, 7}}));
}

TEST(ParallelLayout, ExpertLayoutUsesItsOwnGenerator) {
  // Megatron: expert ranks = etp + ETP·(ep + EP·(edp + EDP·pp)), EP not in the dense layout.
  ParallelLayout l = ParallelLayout::create(8, {.tensor = 2, .expert = 2});
  EXPECT_EQ(l.dp(), 4);
  EXPECT_EQ(l.edp(), 2);
  EXPECT_EQ(l.groups(GroupKind::kDp), (Groups{{0, 2, 4, 6}, {1, 3, 5, 7}}));
  EXPECT_EQ(l.groups(GroupKind::kEp), (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  EXPECT_EQ(l.groups(GroupKind::kExpertDp), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  EXPECT_EQ(l.groups(GroupKind::kExpertTpEp), (Groups{{0, 1, 2, 3}, {4, 5, 6, 7}}));
  ParallelLayout e = ParallelLayout::create(8, {.tensor = 2, .expert = 4, .expert_tensor = 1});
  EXPECT_EQ(e.groups(GroupKind::kEp), (Groups{{0, 1, 2, 3}, {4, 5, 6, 7}}));
  EXPECT_EQ(e.groups(GroupKind::kExpertTp).size(), 8u);
  EXPECT_EQ(e.coord(6).ep, 2);
  EXPECT_EQ(e.coord(6).edp, 1);
}

// Properties over every layout of up to 16 ranks: each kind partitions the world, coordinates
// follow the rank formula, and a group holds exactly the ranks that differ in its dimensions.
TEST(ParallelLayout, EveryLayoutUpTo16RanksIsConsistent) {
  int layouts = 0;
  for (int world = 1; world <= 16; ++world) {
    for (int tp = 1; tp <= world; ++tp)
      for (int cp = 1; cp <= world; ++cp)
        for (int pp = 1; pp <= world; ++pp) {
          if (world % (tp * cp * pp) != 0) continue;
          const int dp = world / (tp * cp * pp);
          ParallelLayout l = ParallelLayout::create(world, {.tensor = tp, .pipeline = pp,
                                                            .context = cp});
          ++layouts;
          for (GroupKind kind : kAllGroupKinds) {
            if (kind == GroupKind::kEmbedding || kind == GroupKind::kPositionEmbedding) continue;
            std::multiset<int> seen;
            for (const auto& g : l.groups(kind)) seen.insert(g.begin(), g.end());
            ASSERT_EQ(static_cast<int>(seen.size()), world) << group_kind_name(kind);
            for (int r = 0; r < world; ++r) ASSERT_EQ(seen.count(r), 1u);
          }
          for (int r = 0; r < world; ++r) {
            const RankCoord c = l.coord(r);
            ASSERT_EQ(r, c.tp + tp * (c.cp + cp * (c.dp + dp * c.pp)));
            auto same = [&](int o, bool t, bool cc, bool d, bool p) {
              const RankCoord x = l.coord(o);
              return (t || x.tp == c.tp) && (cc || x.cp == c.cp) && (d || x.dp == c.dp) &&
                     (p || x.pp == c.pp);
            };
            auto check = [&](GroupKind kind, bool t, bool cc, bool d, bool p, int size) {
              const auto& g = l.group_of(kind, r);
              ASSERT_EQ(static_cast<int>(g.size()), size) << group_kind_name(kind);
              ASSERT_TRUE(std::is_sorted(g.begin(), g.end()));
              for (int o : g) ASSERT_TRUE(same(o, t, cc, d, p)) << group_kind_name(kind);
            };
            check(GroupKind::kTp, true, false, false, false, tp);
            check(GroupKind::kCp, false, true, false, false, cp);
            check(GroupKind::kDp, false, false, true, false, dp);
            check(GroupKind::kPp, false, false, false, true, pp);
            check(GroupKind::kDpCp, false, true, true, false, dp * cp);
            check(GroupKind::kModelParallel, true, false, false, true, tp * pp);
            // Group rank == the coordinate along the group's dimension.
            ASSERT_EQ(l.group_of(GroupKind::kTp, r)[c.tp], r);
            ASSERT_EQ(l.group_of(GroupKind::kPp, r)[c.pp], r);
            ASSERT_EQ(l.group_of(GroupKind::kDp, r)[c.dp], r);
            const bool in_embedding = c.pp == 0 || c.pp == pp - 1;
            ASSERT_EQ(l.group_index(GroupKind::kEmbedding, r) >= 0, in_embedding);
          }
        }
  }
  EXPECT_GT(layouts, 100);
}

TEST(ParallelLayout, RejectsInconsistentSizesWithFlagsNumbersAndFix) {
  expect_error([] { ParallelLayout::create(12, {.tensor = 4, .pipeline = 2}); },
               ErrorKind::kInvalidConfig,
               {"world size 12", "--tensor-model-parallel-size 4", "--pipeline-model-parallel-size 2",
                "= 8", "Fix", "multiple of 8"});
  expect_error([] { ParallelLayout::create(8, {.tensor = 0}); }, ErrorKind::kInvalidConfig,
               {"--tensor-model-parallel-size must be >= 1, got 0"});
  expect_error([] { ParallelLayout::create(8, {.pipeline = -1}); }, ErrorKind::kInvalidConfig,
               {"--pipeline-model-parallel-size"});
  expect_error([] { ParallelLayout::create(8, {.context = 3}); }, ErrorKind::kInvalidConfig,
               {"--context-parallel-size 3"});
  expect_error([] { ParallelLayout::create(8, {.tensor = 2, .expert = 3}); },
               ErrorKind::kInvalidConfig, {"--expert-model-parallel-size 3", "expert data-parallel"});
  expect_error([] { ParallelLayout::create(0, {}); }, ErrorKind::kInvalidConfig,
               {"world size must be >= 1"});
}

TEST(ParallelLayout, RejectsModelNumbersThatDoNotSplit) {
  ParallelLayout tp8 = ParallelLayout::create(8, {.tensor = 8});
  expect_error([&] { tp8.validate_model({.num_attention_heads = 12}); }, ErrorKind::kInvalidConfig,
               {"--num-attention-heads 12", "--tensor-model-parallel-size 8", "{1, 2, 3, 4, 6, 12}"});
  expect_error([&] { tp8.validate_model({.ffn_hidden_size = 3076}); }, ErrorKind::kInvalidConfig,
               {"--ffn-hidden-size 3076"});
  expect_error([&] { tp8.validate_model({.padded_vocab_size = 50257}); },
               ErrorKind::kInvalidConfig, {"vocabulary size 50257", "--make-vocab-size-divisible-by"});
  expect_error([&] { tp8.validate_model({.num_attention_heads = 24, .num_query_groups = 6}); },
               ErrorKind::kInvalidConfig, {"--num-query-groups 6", "split evenly", "replicated"});
  expect_error([&] { tp8.validate_model({.num_attention_heads = 32, .num_query_groups = 24}); },
               ErrorKind::kInvalidConfig, {"--num-attention-heads 32", "--num-query-groups 24"});
  expect_error([&] { tp8.validate_model({.seq_length = 1020, .sequence_parallel = true}); },
               ErrorKind::kInvalidConfig, {"--seq-length 1020", "--sequence-parallel"});
  // Query groups fewer than TP ranks are replicated, so 2 groups on TP 8 is fine.
  tp8.validate_model({.num_layers = 5, .num_attention_heads = 16, .num_query_groups = 2,
                      .ffn_hidden_size = 4096, .padded_vocab_size = 50304, .seq_length = 1024,
                      .sequence_parallel = true});

  ParallelLayout pp4 = ParallelLayout::create(8, {.pipeline = 4});
  expect_error([&] { pp4.validate_model({.num_layers = 10}); }, ErrorKind::kInvalidConfig,
               {"--num-layers 10", "--pipeline-model-parallel-size 4", "{1, 2, 5, 10}"});
  ParallelLayout cp2 = ParallelLayout::create(4, {.context = 2});
  expect_error([&] { cp2.validate_model({.seq_length = 1026}); }, ErrorKind::kInvalidConfig,
               {"--seq-length 1026", "--context-parallel-size 2", "= 4"});
  ParallelLayout ep4 = ParallelLayout::create(8, {.expert = 4});
  expect_error([&] { ep4.validate_model({.num_experts = 6}); }, ErrorKind::kInvalidConfig,
               {"--num-experts 6", "--expert-model-parallel-size 4"});
  expect_error([&] { ep4.validate_model({}); }, ErrorKind::kInvalidConfig,
               {"--num-experts", "needs a mixture-of-experts model"});
  ep4.validate_model({.num_experts = 8});
}

TEST(ParallelLayout, CoordRejectsRanksOutsideTheWorld) {
  ParallelLayout l = ParallelLayout::create(4, {.tensor = 2});
  expect_error([&] { l.coord(4); }, ErrorKind::kInvalidArgument, {"rank 4", "[0, 4)"});
  expect_error([&] { l.group_of(GroupKind::kTp, -1); }, ErrorKind::kInvalidArgument, {"rank -1"});
}

}  // namespace
}  // namespace shardlm::dist
