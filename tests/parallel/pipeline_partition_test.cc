// PipelinePartition: Megatron's layer layout over (stage, chunk), checked against an
// independent transcription of Megatron Core's get_transformer_layer_offset, plus the
// micro-batch count and every invalid combination's message.
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "shardlm/base/error.h"
#include "shardlm/parallel/pipeline_partition.h"
#include "shardlm/parallel/pipeline_plan.h"

namespace shardlm::parallel {
namespace {

// Megatron Core's layer offset / count for (pp rank, vp stage), written from its formulas.
struct Reference {
  int L, P, V;
  std::optional<int> first, last;
  int count(int r) const {  // layers per chunk on rank r
    if (!first && !last) return L / P / V;
    const int middle_stages = P - (first ? 1 : 0) - (last ? 1 : 0);
    const int middle = L - first.value_or(0) - last.value_or(0);
    if (r == 0 && first) return *first / V;
    if (r == P - 1 && last) return *last / V;
    return middle / middle_stages / V;
  }
  int offset(int r, int vp) const {
    if (!first && !last) return vp * (L / V) + r * (L / V / P);
    const int middle_stages = P - (first ? 1 : 0) - (last ? 1 : 0);
    const int middle = L - first.value_or(0) - last.value_or(0);
    const int first_chunk = first.value_or(0) / V;
    const int middle_chunk = middle / V;
    const int last_chunk = last.value_or(0) / V;
    const int total_chunk = first_chunk + middle_chunk + last_chunk;
    const int middle_rank = first ? r - 1 : r;
    if (r == 0) return vp * total_chunk;
    return vp * total_chunk + first_chunk +
           middle_rank * (middle_stages > 0 ? middle_chunk / middle_stages : 0);
  }
};

TEST(PipelinePartitionTest, EvenAndVirtualLayoutsMatchMegatron) {
  for (int P : {1, 2, 3, 4}) {
    for (int L : {4, 8, 12, 24}) {
      if (L % P != 0) continue;
      for (int n = 1; n <= L / P; ++n) {
        if ((L / P) % n != 0) continue;
        SCOPED_TRACE("L=" + std::to_string(L) + " P=" + std::to_string(P) + " n=" +
                     std::to_string(n));
        PipelinePartitionConfig cfg{.num_layers = L, .pipeline_parallel_size = P};
        if (P > 1) cfg.num_layers_per_virtual_stage = n;
        const auto p = PipelinePartition::create(cfg);
        const int V = P > 1 ? L / P / n : 1;
        ASSERT_EQ(p.num_chunks(), V);
        Reference ref{L, P, V, {}, {}};
        for (int r = 0; r < P; ++r) {
          for (int c = 0; c < V; ++c) {
            EXPECT_EQ(p.layers(r, c), (LayerRange{ref.offset(r, c), ref.offset(r, c) + ref.count(r)}))
                << "rank " << r << " chunk " << c;
          }
          EXPECT_EQ(p.num_layers_on_stage(r), L / P);
        }
      }
    }
  }
}

TEST(PipelinePartitionTest, UnevenFirstAndLastStagesMatchMegatron) {
  struct Case { int L, P, V; std::optional<int> first, last; };
  const std::vector<Case> cases = {
      {10, 4, 1, 1, 3},   {11, 4, 1, 2, {}}, {9, 4, 1, {}, 3}, {6, 2, 1, 2, 4},
      {5, 2, 1, 2, {}},   {16, 4, 2, 2, 2},  {22, 4, 2, 4, {}}, {14, 3, 2, 2, 4},
      {24, 5, 2, 2, 4},   {12, 2, 2, 4, 8},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE("L=" + std::to_string(c.L) + " P=" + std::to_string(c.P) + " V=" +
                 std::to_string(c.V) + " first=" + std::to_string(c.first.value_or(-1)) +
                 " last=" + std::to_string(c.last.value_or(-1)));
    PipelinePartitionConfig cfg{.num_layers = c.L, .pipeline_parallel_size = c.P,
                                .first_stage_num_layers = c.first,
                                .last_stage_num_layers = c.last};
    if (c.V > 1) cfg.num_virtual_stages_per_rank = c.V;
    const auto p = PipelinePartition::create(cfg);
    ASSERT_EQ(p.num_chunks(), c.V);
    Reference ref{c.L, c.P, c.V, c.first, c.last};
    std::vector<int> seen(c.L, 0);
    for (int r = 0; r < c.P; ++r) {
      for (int ch = 0; ch < c.V; ++ch) {
        const LayerRange lr = p.layers(r, ch);
        EXPECT_EQ(lr.size(), ref.count(r)) << "rank " << r << " chunk " << ch;
        EXPECT_EQ(lr.begin, ref.offset(r, ch)) << "rank " << r << " chunk " << ch;
        for (int l = lr.begin; l < lr.end; ++l) {
          seen[l]++;
          EXPECT_EQ(p.locate(l).stage, r);
          EXPECT_EQ(p.locate(l).chunk, ch);
        }
      }
    }
    for (int l = 0; l < c.L; ++l) EXPECT_EQ(seen[l], 1) << "layer " << l;
    if (c.first) EXPECT_EQ(p.num_layers_on_stage(0), *c.first);
    if (c.last) EXPECT_EQ(p.num_layers_on_stage(c.P - 1), *c.last);
    EXPECT_TRUE(p.has_embedding(0, 0));
    EXPECT_TRUE(p.has_output_layer(c.P - 1, c.V - 1));
    EXPECT_FALSE(p.has_output_layer(c.P - 1, 0) && c.V > 1);
  }
}

void expect_config_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected Error(kInvalidConfig)";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig) << e.what();
    for (const auto& p : parts) {
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
          << "missing '" << p << "' in: " << e.what();
    }
  }
}

TEST(PipelinePartitionTest, InvalidCombinationsAreRejectedWithNumbersAndFix) {
  auto make = [](PipelinePartitionConfig c) { return [c] { PipelinePartition::create(c); }; };
  expect_config_error(make({.num_layers = 10, .pipeline_parallel_size = 4}),
                      {"--num-layers 10", "--pipeline-model-parallel-size 4", "multiple of 4",
                       "--decoder-first-pipeline-num-layers"});
  expect_config_error(
      make({.num_layers = 12, .pipeline_parallel_size = 2, .num_layers_per_virtual_stage = 4}),
      {"--num-layers-per-virtual-pipeline-stage 4", "= 6"});
  expect_config_error(
      make({.num_layers = 12, .pipeline_parallel_size = 2, .num_virtual_stages_per_rank = 4}),
      {"--num-virtual-stages-per-pipeline-rank 4", "= 6"});
  expect_config_error(make({.num_layers = 12, .pipeline_parallel_size = 2,
                            .num_layers_per_virtual_stage = 2,
                            .num_virtual_stages_per_rank = 3}),
                      {"only one of"});
  expect_config_error(make({.num_layers = 12, .pipeline_parallel_size = 2,
                            .num_layers_per_virtual_stage = 2, .first_stage_num_layers = 4}),
                      {"--num-virtual-stages-per-pipeline-rank"});
  expect_config_error(
      make({.num_layers = 12, .pipeline_parallel_size = 1, .num_layers_per_virtual_stage = 3}),
      {"--pipeline-model-parallel-size > 1"});
  expect_config_error(make({.num_layers = 10, .pipeline_parallel_size = 4,
                            .first_stage_num_layers = 2, .last_stage_num_layers = 3}),
                      {"5 layers left for the 2 middle", "first stage 2", "last stage 3"});
  expect_config_error(make({.num_layers = 8, .pipeline_parallel_size = 2,
                            .first_stage_num_layers = 2, .last_stage_num_layers = 3}),
                      {"must equal --num-layers", "3 layers have no stage"});
  expect_config_error(make({.num_layers = 4, .pipeline_parallel_size = 3,
                            .first_stage_num_layers = 3, .last_stage_num_layers = 3}),
                      {"exceed --num-layers"});
  expect_config_error(make({.num_layers = 4, .pipeline_parallel_size = 3,
                            .first_stage_num_layers = 2, .last_stage_num_layers = 2}),
                      {"non-empty"});
  expect_config_error(make({.num_layers = 16, .pipeline_parallel_size = 4,
                            .num_virtual_stages_per_rank = 2, .first_stage_num_layers = 3,
                            .last_stage_num_layers = 3}),
                      {"3 layers of the first stage", "not divisible by the 2 virtual"});
  expect_config_error(make({.num_layers = 8, .pipeline_parallel_size = 2,
                            .first_stage_num_layers = 0}),
                      {"--decoder-first-pipeline-num-layers 0", ">= 1"});
  expect_config_error(make({.num_layers = 0, .pipeline_parallel_size = 2}), {"--num-layers 0"});
}

TEST(PipelinePartitionTest, MicroBatchesFromGlobalBatch) {
  EXPECT_EQ(num_microbatches(64, 2, 4), 8);
  EXPECT_EQ(num_microbatches(8, 8, 1), 1);
  expect_config_error([] { num_microbatches(30, 4, 2); },
                      {"--global-batch-size 30", "--micro-batch-size 4", "data-parallel size 2",
                       "multiple of 8"});
  expect_config_error([] { num_microbatches(8, 0, 1); }, {">= 1"});
}

TEST(PipelinePlanTest, FlagsToPartitionMicroBatchesAndSchedule) {
  PipelinePlanConfig cfg{.partition = {.num_layers = 24, .pipeline_parallel_size = 4,
                                       .num_layers_per_virtual_stage = 3},
                         .global_batch_size = 64, .micro_batch_size = 2,
                         .data_parallel_size = 2};
  PipelinePlan plan = make_pipeline_plan(cfg);
  EXPECT_EQ(plan.partition.num_chunks(), 2);
  EXPECT_EQ(plan.num_microbatches, 16);
  EXPECT_EQ(plan.schedule.name, "interleaved-1f1b");
  EXPECT_EQ(plan.schedule.num_chunks, 2);
  EXPECT_EQ(plan.schedule.num_microbatches, 16);
  cfg.schedule = "all-forward-all-backward";
  EXPECT_EQ(make_pipeline_plan(cfg).schedule.name, "all-forward-all-backward");
  cfg.partition.num_layers_per_virtual_stage.reset();
  cfg.schedule.clear();
  EXPECT_EQ(make_pipeline_plan(cfg).schedule.name, "1f1b");
  // Interleaving with M = 64 / (2 x 4) = 8 micro-batches on P = 3 stages: rejected.
  expect_config_error(
      [] {
        make_pipeline_plan({.partition = {.num_layers = 12, .pipeline_parallel_size = 3,
                                          .num_virtual_stages_per_rank = 2},
                            .global_batch_size = 64, .micro_batch_size = 2,
                            .data_parallel_size = 4});
      },
      {"P=3", "M=8", "multiple"});
  cfg.schedule = "no-such-schedule";
  expect_config_error([&] { make_pipeline_plan(cfg); }, {"no-such-schedule"});
}

}  // namespace
}  // namespace shardlm::parallel
