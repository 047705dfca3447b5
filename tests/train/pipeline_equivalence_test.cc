// Pipeline parallelism trains exactly like one rank (issue 6): CPU, ranks as threads, fp32,
// dropout on, gradient accumulation. For PP in {2, 4} x virtual stages in {1, 2}, uneven first /
// last stages, every schedule, the tied embedding (its last-stage copy stays bit-equal to the
// first stage's) and TP x PP x DP with sequence parallelism and the distributed optimizer
// (GPT and a Llama-style model), 20 iterations give the single-rank loss sequence within 1e-5
// relative and the same final parameters (gathered by global name) within 1e-5, and the same
// validation loss (forward-only pipeline). Plus the flags that do not make a valid pipeline.
#include <gtest/gtest.h>

#include <functional>
#include <sstream>

#include "shardlm/parallel/schedule_generators.h"
#include "shardlm/train/gpt_pipeline_stage.h"
#include "tests/train/layout_harness.h"

namespace shardlm::train {
namespace {

using namespace layout_harness;

// 8 layers so that PP 4 x V 2 has a layer per virtual stage; otherwise the layout test's model.
TrainConfig pipeline_config() { return tiny_config(8); }

// Llama-style: RMSNorm, SwiGLU, RoPE, GQA (4 heads in 2 groups), untied output layer.
TrainConfig llama_config() {
  TrainConfig c = pipeline_config();
  c.model.num_layers = 4;
  c.model.normalization = model::Normalization::kRMSNorm;
  c.model.swiglu = true;
  c.model.ffn_hidden_size = 48;
  c.model.position_embedding = model::PositionEmbedding::kRope;
  c.model.num_query_groups = 2;
  c.group_query_attention = true;
  c.model.untie_embeddings_and_output_weights = true;
  return c;
}

class PipelineEquivalence : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    gpt_ = new RunResult(single_rank(pipeline_config()));
    llama_ = new RunResult(single_rank(llama_config()));
  }
  static void TearDownTestSuite() {
    delete gpt_;
    delete llama_;
  }
  static RunResult* gpt_;
  static RunResult* llama_;
};
RunResult* PipelineEquivalence::gpt_ = nullptr;
RunResult* PipelineEquivalence::llama_ = nullptr;

Layout pipeline(int pp, int layers_per_virtual_stage = 0) {
  Layout l;
  l.pp = pp;
  l.layers_per_virtual_stage = layers_per_virtual_stage;
  return l;
}

TEST_F(PipelineEquivalence, ReferenceActuallyTrains) {
  EXPECT_LT(gpt_->losses.back(), gpt_->losses.front() - 0.3);
  EXPECT_LT(llama_->losses.back(), llama_->losses.front() - 0.3);
}

TEST_F(PipelineEquivalence, OneF1BWithTiedEmbeddings) {
  // The harness checks the last stage's copy of the tied word embedding equals the first's.
  for (int pp : {2, 4}) {
    const Layout l = pipeline(pp);
    std::string log;
    // Only the first and last stages read samples; a middle stage builds no dataset (and
    // still evaluates: eval_interval 10 of 20 iterations).
    const auto data_only_at_the_ends = [pp](Trainer& t) {
      const int stage = t.rank().coord().pp;
      EXPECT_EQ(t.has_training_data(), stage == 0 || stage == pp - 1) << "stage " << stage;
    };
    expect_same_training(run_layout(pipeline_config(), l, &log, data_only_at_the_ends), *gpt_,
                         l.name());
    EXPECT_NE(log.find("> pipeline: schedule 1f1b, " + std::to_string(pp) + " stages x 1 chunks"),
              std::string::npos) << log;
  }
}

TEST_F(PipelineEquivalence, InterleavedVirtualStages) {
  // PP 2: 4 layers per rank in 2 chunks; PP 4: 2 layers per rank, 2 chunks of 1.
  for (auto [pp, per_vstage] : {std::pair{2, 2}, std::pair{4, 1}}) {
    const Layout l = pipeline(pp, per_vstage);
    std::string log;
    expect_same_training(run_layout(pipeline_config(), l, &log), *gpt_, l.name());
    EXPECT_NE(log.find("schedule interleaved-1f1b"), std::string::npos) << log;
  }
}

TEST_F(PipelineEquivalence, UnevenStagesAndOtherSchedules) {
  Layout uneven = pipeline(4);
  uneven.first_stage_layers = 1;
  uneven.last_stage_layers = 3;  // the middle two get 2 each
  expect_same_training(run_layout(pipeline_config(), uneven), *gpt_, uneven.name());
  Layout afab = pipeline(2);
  afab.schedule = "afab";
  expect_same_training(run_layout(pipeline_config(), afab), *gpt_, afab.name());
}

TEST_F(PipelineEquivalence, RecomputationUnderInterleaving) {
  // Shared recomputation buffers with several micro-batches in flight per chunk.
  for (const char* granularity : {"selective", "full"}) {
    TrainConfig cfg = pipeline_config();
    cfg.recompute.granularity = granularity;
    if (cfg.recompute.full()) cfg.recompute.method = "uniform", cfg.recompute.num_layers = 2;
    const Layout l = pipeline(2, 2);
    expect_same_training(run_layout(cfg, l), *gpt_, l.name() + " recompute " + granularity);
  }
}

Layout tp2_pp2_dp2() {
  Layout l = pipeline(2);
  l.tp = 2;
  l.dp = 2;
  l.sequence_parallel = true;
  l.distributed_optimizer = true;
  return l;
}

TEST_F(PipelineEquivalence, TensorPipelineDataParallelWithDistributedOptimizer) {
  Layout l = tp2_pp2_dp2();
  expect_same_training(run_layout(pipeline_config(), l), *gpt_, l.name());
  // Overlapped bucketed reduction and parameter gather, interleaved (M = 2 = P).
  l.overlap_grad_reduce = l.overlap_param_gather = true;
  l.bucket_size = 2000;
  l.layers_per_virtual_stage = 2;
  const RunResult got = run_layout(pipeline_config(), l);
  expect_same_training(got, *gpt_, l.name());
  EXPECT_GE(got.buckets, 3);
  EXPECT_EQ(got.buckets_started_during_backward, got.buckets);
}

TEST_F(PipelineEquivalence, LlamaTensorPipelineDataParallel) {
  const Layout l = tp2_pp2_dp2();
  expect_same_training(run_layout(llama_config(), l), *llama_, l.name() + " llama");
}

TEST(GPTPipelineStage, SlotsFollowTheSchedulesInFlightBoundNotM) {
  // 1F1B with P = 4, M = 8: rank r holds at most P - r micro-batches.
  const parallel::PipelineSchedule s = parallel::generate_1f1b({4, 1, 8});
  for (int r = 0; r < 4; ++r)
    EXPECT_EQ(GPTPipelineStage::slots_per_chunk(s, r), std::vector<int>{4 - r}) << r;
  // All-forward-all-backward holds everything.
  const parallel::PipelineSchedule afab = parallel::generate_all_forward_all_backward({2, 2, 4});
  EXPECT_EQ(GPTPipelineStage::slots_per_chunk(afab, 0), (std::vector<int>{4, 4}));
  // Interleaved: each chunk within the rank's bound, which is below M per chunk on rank 0
  // (warmup 2·(P-1) + (V-1)·P = 10 forwards, then 1F1B pairs: 11 in flight of V·M = 16).
  const parallel::PipelineSchedule il = parallel::generate_interleaved_1f1b({4, 2, 8});
  for (int r = 0; r < 4; ++r) {
    const std::vector<int> slots = GPTPipelineStage::slots_per_chunk(il, r);
    ASSERT_EQ(slots.size(), 2u);
    for (int n : slots) EXPECT_LE(n, il.max_in_flight[static_cast<size_t>(r)]) << r;
  }
  const std::vector<int> rank0 = GPTPipelineStage::slots_per_chunk(il, 0);
  EXPECT_LT(rank0[0] + rank0[1], 16);
}

TEST(PipelineFlags, InvalidPipelinesAreRejectedWithTheNumbersAndAFix) {
  auto with = [](const std::function<void(TrainConfig&)>& edit) {
    TrainConfig c = pipeline_config();
    edit(c);
    return c;
  };
  const auto validate = validation;
  // 8 layers over 3 stages.
  EXPECT_NE(config_error(validate(with([](TrainConfig& c) {
              c.parallel.pipeline_model_parallel_size = 3;
            }), 3)).find("--num-layers 8 is not divisible by --pipeline-model-parallel-size 3"),
            std::string::npos);
  // Virtual stages without a pipeline.
  EXPECT_NE(config_error(validate(with([](TrainConfig& c) {
              c.parallel.num_layers_per_virtual_pipeline_stage = 2;
            }), 1)).find("need --pipeline-model-parallel-size > 1"), std::string::npos);
  // Interleaving needs M a multiple of P: 8 / (2 x DP 2) = 2 micro-batches, P = 4.
  const std::string m_error = config_error(validate(with([](TrainConfig& c) {
    c.parallel.pipeline_model_parallel_size = 4;
    c.parallel.num_layers_per_virtual_pipeline_stage = 1;
  }), 8));
  EXPECT_NE(m_error.find("M=2"), std::string::npos) << m_error;
  EXPECT_NE(m_error.find("P=4"), std::string::npos) << m_error;
  // 1f1b cannot run virtual stages.
  EXPECT_NE(config_error(validate(with([](TrainConfig& c) {
              c.parallel.pipeline_model_parallel_size = 2;
              c.parallel.num_layers_per_virtual_pipeline_stage = 2;
              c.parallel.pipeline_schedule = "1f1b";
            }), 2)).find("1f1b"), std::string::npos);
  // Unknown schedule names list the known ones.
  EXPECT_NE(config_error(validate(with([](TrainConfig& c) {
              c.parallel.pipeline_model_parallel_size = 2;
              c.parallel.pipeline_schedule = "zigzag";
            }), 2)).find("interleaved-1f1b"), std::string::npos);
  // Uneven stages that do not add up.
  EXPECT_NE(config_error(validate(with([](TrainConfig& c) {
              c.parallel.pipeline_model_parallel_size = 2;
              c.parallel.decoder_first_pipeline_num_layers = 3;
              c.parallel.decoder_last_pipeline_num_layers = 3;
            }), 2)).find("must equal --num-layers"), std::string::npos);
  // A layers-per-virtual-stage that does not divide the stage.
  EXPECT_NE(config_error(validate(with([](TrainConfig& c) {
              c.parallel.pipeline_model_parallel_size = 2;
              c.parallel.num_layers_per_virtual_pipeline_stage = 3;
            }), 2)).find("--num-layers-per-virtual-pipeline-stage 3 must divide"),
            std::string::npos);
  // The world must hold the pipeline: 3 ranks for PP 2.
  EXPECT_NE(config_error(validate(with([](TrainConfig& c) {
              c.parallel.pipeline_model_parallel_size = 2;
            }), 3)).find("--pipeline-model-parallel-size"), std::string::npos);
}

}  // namespace
}  // namespace shardlm::train
