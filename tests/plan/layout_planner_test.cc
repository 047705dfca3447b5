// The layout planner: its memory is the trainer's own plan on every pipeline stage (trainers
// built on thread ranks, compared field by field), its choices follow the model and the GPUs
// (data parallel when the model fits, split when it does not, nothing when nothing fits), fixed
// choices stay fixed, unsplittable layouts are rejected with the validation's reason, and the
// time estimate moves as its inputs say (pipeline bubble, bandwidth, context-parallel
// collectives: CP wins a long sequence and loses a short one).
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <mutex>
#include <sstream>

#include <CLI/CLI.hpp>

#include <algorithm>

#include "shardlm/cli/train_flags.h"
#include "shardlm/dist/thread_communicator.h"
#include "shardlm/plan/layout_planner.h"
#include "shardlm/train/trainer.h"

namespace shardlm::plan {
namespace {

using train::MemoryPlan;
using train::TrainConfig;

TrainConfig tiny_config() {
  TrainConfig c;
  c.model.num_layers = 4;
  c.model.hidden_size = 32;
  c.model.num_attention_heads = 4;
  c.model.seq_length = 16;
  c.model.vocab_size = 60;
  c.model.make_vocab_size_divisible_by = 16;
  c.micro_batch_size = 2;
  c.global_batch_size = 16;
  c.train_iters = 1;
  c.optimizer.lr = 1e-3;
  c.data.mock_data = true;
  c.device = "cpu";
  return c;
}

TrainConfig gpt_1_3b() {
  TrainConfig c;
  c.model.num_layers = 24;
  c.model.hidden_size = 2048;
  c.model.num_attention_heads = 16;
  c.model.seq_length = 2048;
  c.model.max_position_embeddings = 2048;
  c.model.vocab_size = 50257;
  c.model.hidden_dropout = 0;
  c.model.attention_dropout = 0;
  c.global_batch_size = 256;
  c.micro_batch_size = 1;
  c.bf16 = true;
  return c;
}

TrainConfig gpt_13b() {
  TrainConfig c = gpt_1_3b();
  c.model.num_layers = 40;
  c.model.hidden_size = 5120;
  c.model.num_attention_heads = 40;
  c.model.seq_length = 4096;
  c.model.max_position_embeddings = 4096;
  c.model.vocab_size = 32000;
  c.global_batch_size = 128;
  return c;
}

// Llama-3-8B's shape (GQA 8, SwiGLU, RoPE) at a long sequence.
TrainConfig llama_8b(int64_t seq) {
  TrainConfig c = gpt_1_3b();
  c.model.num_layers = 32;
  c.model.hidden_size = 4096;
  c.model.num_attention_heads = 32;
  c.model.num_query_groups = 8;
  c.model.swiglu = true;
  c.model.ffn_hidden_size = 14336;
  c.model.position_embedding = model::PositionEmbedding::kRope;
  c.model.seq_length = seq;
  c.model.max_position_embeddings = seq;
  c.model.vocab_size = 128256;
  c.global_batch_size = 16;
  return c;
}

Cluster gpus(int n, double memory_gib = 80) {
  Cluster c;
  c.num_gpus = n;
  c.gpus_per_node = std::min(n, 8);
  c.gpu_memory_bytes = memory_gib * kGiB;
  return c;
}

struct LayoutCase {
  std::string name;
  int tp, pp, dp, v;
  bool sp, distopt;
  model::RecomputeConfig recompute;
  int64_t query_groups = 0;
  bool fp64_master = false;  // the CPU's mixed precision: compute copies and sharded masters
  int last_stage_layers = 0;  // --decoder-last-pipeline-num-layers given by the user
  int cp = 1;                 // --context-parallel-size
};

// Every rank's memory plan as the Trainer makes it, by pipeline stage (ranks of one stage must
// agree: same shapes).
std::vector<MemoryPlan> trainer_plans(const TrainConfig& cfg, int world) {
  using namespace std::chrono_literals;
  const dist::ParallelLayout layout = dist::ParallelLayout::create(world, cfg.parallel_sizes());
  std::map<int, MemoryPlan> by_stage;
  std::mutex mu;
  dist::ThreadWorld threads(world, {.timeout = 60s});
  dist::rethrow_first_error(threads.run([&](dist::Communicator& comm) {
    const int r = comm.rank();
    DeviceContext device = DeviceContext::cpu();
    dist::RankContext rc =
        dist::RankContext::create(device, comm.split(0, r, "world"), layout, r);
    std::ostringstream log;
    train::Trainer t(cfg, rc, log);
    std::lock_guard<std::mutex> lock(mu);
    const MemoryPlan& p = t.memory_plan();
    auto [it, first] = by_stage.emplace(rc.coord().pp, p);
    if (!first) {
      EXPECT_EQ(it->second.total(), p.total()) << "rank " << r << " differs within its stage";
    }
  }));
  std::vector<MemoryPlan> plans;
  for (const auto& [stage, p] : by_stage) plans.push_back(p);
  return plans;
}

void expect_same_plan(const MemoryPlan& planned, const MemoryPlan& trainer, const std::string& what) {
  EXPECT_EQ(planned.master_params, trainer.master_params) << what;
  EXPECT_EQ(planned.main_grads, trainer.main_grads) << what;
  EXPECT_EQ(planned.compute_params, trainer.compute_params) << what;
  EXPECT_EQ(planned.compute_grads, trainer.compute_grads) << what;
  EXPECT_EQ(planned.optimizer_state, trainer.optimizer_state) << what;
  EXPECT_EQ(planned.activations, trainer.activations) << what;
  EXPECT_GT(planned.activations, 0u) << what;
  // The planner plans for GPUs: the CUDA workspace comes on top of what a CPU rank needs.
  EXPECT_EQ(trainer.workspace, 0u) << what;
  EXPECT_GT(planned.workspace, 0u) << what;
}

TEST(LayoutPlanner, MemoryIsTheTrainersPlanOnEveryStage) {
  const std::vector<LayoutCase> cases = {
      {"TP2 PP2 (V2) DP2, SP, distributed optimizer", 2, 2, 2, 2, true, true, no_recompute()},
      {"TP4 DP2 over 2 query groups (replicated), selective", 4, 1, 2, 1, true, true,
       selective_recompute(), 2},
      {"PP4 1F1B, full recompute", 1, 4, 1, 1, false, false, full_recompute()},
      {"PP2 DP2, full recompute of each stage's first layer (block)", 1, 2, 2, 1, false, true,
       full_recompute("block", 1)},
      {"TP2 PP2 DP2, fp64 master weights sharded", 2, 2, 2, 1, false, true, no_recompute(), 0,
       true},
      {"DP4, fp64 master weights, no distributed optimizer", 1, 1, 4, 1, false, false,
       no_recompute(), 0, true},
      {"PP2 with a one-layer last stage (--decoder-last-pipeline-num-layers 1)", 1, 2, 1, 1,
       false, false, selective_recompute(), 0, false, 1},
      // Context parallel: a rank's seq/CP tokens, optimizer state sharded over DP x CP.
      {"CP2 x TP2 x DP2, SP, distributed optimizer", 2, 1, 2, 1, true, true, no_recompute(), 0,
       false, 0, 2},
      {"CP2 x PP2, distributed optimizer over the CP ranks, selective", 1, 2, 1, 1, false, true,
       selective_recompute(), 0, false, 0, 2},
      {"CP4, fp64 master weights sharded over CP, full recompute", 1, 1, 1, 1, false, true,
       full_recompute(), 0, true, 0, 4},
  };
  for (const LayoutCase& lc : cases) {
    SCOPED_TRACE(lc.name);
    TrainConfig cfg = tiny_config();
    cfg.model.num_query_groups = lc.query_groups;
    if (lc.fp64_master) cfg.main_params_dtype = "fp64";
    cfg.parallel.decoder_last_pipeline_num_layers = lc.last_stage_layers;
    const int world = lc.tp * lc.pp * lc.cp * lc.dp;
    FixedChoices fixed{.tensor_parallel = lc.tp,
                       .pipeline_parallel = lc.pp,
                       .context_parallel = lc.cp,
                       .virtual_chunks = lc.v,
                       .stage_layers = std::pair{0, lc.last_stage_layers},
                       .micro_batch_size = cfg.micro_batch_size,
                       .sequence_parallel = lc.sp,
                       .distributed_optimizer = lc.distopt,
                       .recompute = lc.recompute};
    const PlanResult r = plan_layouts(cfg, gpus(world), fixed);
    ASSERT_EQ(r.candidates.size(), 1u) << (r.rejected.empty() ? "" : r.rejected.begin()->first);
    const Candidate& c = r.candidates.front();
    ASSERT_EQ(static_cast<int>(c.stage_memory.size()), lc.pp);
    ASSERT_EQ(c.cp, lc.cp);
    ASSERT_EQ(c.dp, lc.dp);

    // The same layout as `shardlm train` takes it: the candidate's printed flags, parsed by
    // train's own flag table over the base config, then built by trainers on thread ranks.
    TrainConfig t = cfg;
    {
      CLI::App app;
      cli::add_train_flags(app, t);
      std::vector<std::string> args = c.flags();
      std::reverse(args.begin(), args.end());  // CLI11 consumes a reversed vector
      app.parse(args);
    }
    const std::vector<MemoryPlan> trainer = trainer_plans(t, world);
    ASSERT_EQ(trainer.size(), c.stage_memory.size());
    for (size_t s = 0; s < trainer.size(); ++s)
      expect_same_plan(c.stage_memory[s], trainer[s], "stage " + std::to_string(s));
    // The candidate's memory is its largest stage's.
    for (const MemoryPlan& p : c.stage_memory) EXPECT_LE(p.total(), c.memory().total());
  }
}

// A mixture-of-experts model with --expert-model-parallel-size: the planner keeps the EP size and
// plans the trainer's memory, the experts' optimizer state sharded over the expert-data-parallel
// ranks and their buffers sized for the dropless worst case; EP costs activation memory and saves
// parameter memory.
TEST(LayoutPlanner, ExpertParallelMemoryIsTheTrainersPlan) {
  TrainConfig cfg = tiny_config();
  cfg.model.num_experts = 4;
  cfg.model.moe_router_topk = 2;
  cfg.model.moe_ffn_hidden_size = 64;
  FixedChoices fixed{.tensor_parallel = 1,
                     .pipeline_parallel = 1,
                     .context_parallel = 1,
                     .micro_batch_size = cfg.micro_batch_size,
                     .distributed_optimizer = true,
                     .recompute = no_recompute()};
  std::vector<MemoryPlan> by_ep;
  for (int ep : {1, 2, 4}) {
    SCOPED_TRACE("EP " + std::to_string(ep));
    cfg.parallel.expert_model_parallel_size = ep;
    cfg.parallel.use_distributed_optimizer = true;
    fixed.expert_parallel = ep;
    const PlanResult r = plan_layouts(cfg, gpus(4), fixed);
    ASSERT_FALSE(r.candidates.empty());
    EXPECT_EQ(r.candidates.front().ep, ep);
    ASSERT_EQ(r.candidates.size(), 1u) << (r.rejected.empty() ? "" : r.rejected.begin()->first);
    const std::vector<MemoryPlan> trainer = trainer_plans(cfg, 4);
    ASSERT_EQ(trainer.size(), 1u);
    expect_same_plan(r.candidates.front().stage_memory.front(), trainer.front(), "stage 0");
    by_ep.push_back(trainer.front());
  }
  for (size_t i = 1; i < by_ep.size(); ++i)
    EXPECT_LT(by_ep[i].master_params, by_ep[i - 1].master_params);
  // Rows per layer: 2N without EP, EP·N·min(2, 4/EP) = 4N at EP 2 and at EP 4.
  EXPECT_GT(by_ep[1].activations, by_ep[0].activations);
  EXPECT_GE(by_ep[2].activations, by_ep[1].activations);
}

// fp8 (--fp8-format): the planner plans the trainer's memory (the fp8 workspace in the layer
// scratch included), and the linears of the fp8 layers run Cluster::fp8_linear_speedup times
// faster: all layers in fp8 gain most, the first and last kept in bf16 a little less.
TEST(LayoutPlanner, Fp8MemoryIsTheTrainersPlanAndItsLinearsRunFaster) {
  TrainConfig cfg = tiny_config();
  cfg.model.fp8.format = model::Fp8Format::kHybrid;
  const FixedChoices fixed{.tensor_parallel = 2, .pipeline_parallel = 1, .context_parallel = 1,
                           .micro_batch_size = cfg.micro_batch_size, .sequence_parallel = true,
                           .distributed_optimizer = true, .recompute = no_recompute()};
  const PlanResult r = plan_layouts(cfg, gpus(4), fixed);
  ASSERT_EQ(r.candidates.size(), 1u) << (r.rejected.empty() ? "" : r.rejected.begin()->first);
  TrainConfig t = cfg;
  t.parallel.tensor_model_parallel_size = 2;
  t.parallel.sequence_parallel = t.parallel.use_distributed_optimizer = true;
  const std::vector<MemoryPlan> trainer = trainer_plans(t, 4);
  ASSERT_EQ(trainer.size(), 1u);
  expect_same_plan(r.candidates.front().stage_memory.front(), trainer.front(), "fp8 TP2 DP2");
  TrainConfig bf16 = cfg;
  bf16.model.fp8 = {};
  const PlanResult r16 = plan_layouts(bf16, gpus(4), fixed);
  EXPECT_GT(r.candidates.front().memory().activations, r16.candidates.front().memory().activations);

  TrainConfig big = gpt_1_3b();
  big.global_batch_size = 8;
  const TrainConfig base = big;
  const FixedChoices one{.micro_batch_size = 8, .recompute = no_recompute()};
  Cluster fast = gpus(1);
  fast.fp8_linear_speedup = 1.5;
  const double step16 = plan_layouts(big, fast, one).candidates.front().step_s;
  big.model.fp8.format = model::Fp8Format::kHybrid;
  const double step8 = plan_layouts(big, fast, one).candidates.front().step_s;
  big.model.fp8_first_last_layers_bf16 = true;
  const double step8_ends16 = plan_layouts(big, fast, one).candidates.front().step_s;
  EXPECT_LT(step8, step8_ends16);
  EXPECT_LT(step8_ends16, step16);
  // Without a gain the estimate does not move.
  Cluster neutral = gpus(1);
  neutral.fp8_linear_speedup = 1.0;
  EXPECT_NEAR(plan_layouts(big, neutral, one).candidates.front().step_s,
              plan_layouts(base, neutral, one).candidates.front().step_s, 1e-12);
}

// The search tries expert parallelism for an MoE model (the divisors of the data x context ranks
// that divide the experts): the same layout with more EP ranks holds fewer experts per rank and
// pays all-to-alls; a dense model never gets EP; the flags and the description say it.
TEST(LayoutPlanner, ExpertParallelIsSearchedForMoeModels) {
  TrainConfig moe = gpt_1_3b();
  moe.model.num_layers = 8;
  moe.model.num_experts = 8;
  moe.model.moe_router_topk = 2;
  moe.global_batch_size = 64;
  const FixedChoices fixed{.tensor_parallel = 1, .pipeline_parallel = 1, .context_parallel = 1,
                           .micro_batch_size = 1, .recompute = no_recompute()};
  const PlanResult r = plan_layouts(moe, gpus(8), fixed);
  std::map<int, const Candidate*> by_ep;
  for (const Candidate& c : r.candidates) by_ep[c.ep] = &c;
  ASSERT_EQ(by_ep.size(), 4u);  // EP 1, 2, 4, 8
  for (const auto& [ep, c] : by_ep) {
    SCOPED_TRACE(c->describe());
    EXPECT_EQ(c->ep_comm_s > 0, ep > 1);
    if (ep == 1) continue;
    const Candidate& fewer = *std::prev(by_ep.find(ep))->second;
    EXPECT_LT(c->memory().compute_params, fewer.memory().compute_params);
    EXPECT_NE(c->describe().find("(EP " + std::to_string(ep) + ")"), std::string::npos);
    const std::vector<std::string> f = c->flags();
    const auto at = std::find(f.begin(), f.end(), "--expert-model-parallel-size");
    ASSERT_NE(at, f.end());
    EXPECT_EQ(*(at + 1), std::to_string(ep));
  }
  // Across nodes (2 GPUs each) EP 8's all-to-alls cost more than inside one.
  Cluster small_nodes = gpus(8);
  small_nodes.gpus_per_node = 2;
  FixedChoices ep8 = fixed;
  ep8.expert_parallel = 8;
  const PlanResult apart = plan_layouts(moe, small_nodes, ep8);
  ASSERT_EQ(apart.candidates.size(), 1u);
  EXPECT_GT(apart.candidates.front().ep_comm_s, by_ep.at(8)->ep_comm_s);
  for (const Candidate& c : plan_layouts(gpt_1_3b(), gpus(8), fixed).candidates)
    EXPECT_EQ(c.ep, 1);
}

TEST(LayoutPlanner, DataParallelWhenTheModelFitsOneGpu) {
  const PlanResult r = plan_layouts(gpt_1_3b(), gpus(8), {});
  ASSERT_GT(r.fitting(), 0);
  const Candidate& best = r.candidates.front();
  EXPECT_EQ(best.tp, 1);
  EXPECT_EQ(best.pp, 1);
  EXPECT_EQ(best.cp, 1);  // 2048 tokens: context parallelism only adds collectives
  EXPECT_EQ(best.dp, 8);
  EXPECT_TRUE(std::any_of(r.candidates.begin(), r.candidates.end(),
                          [](const Candidate& c) { return c.cp > 1 && c.fits; }))
      << "CP layouts are searched, and lose";
  EXPECT_TRUE(best.distributed_optimizer);
  EXPECT_EQ(r.parameters, 1315819520);  // padded vocabulary 50,304
  // Fitting layouts first, fastest first; then the others.
  bool seen_unfit = false;
  for (size_t i = 0; i < r.candidates.size(); ++i) {
    const Candidate& c = r.candidates[i];
    if (!c.fits) seen_unfit = true;
    EXPECT_FALSE(seen_unfit && c.fits) << "a fitting layout after one that does not fit";
    if (i > 0 && c.fits) EXPECT_GE(c.step_s, r.candidates[i - 1].step_s);
    if (c.fits)
      EXPECT_LE(static_cast<double>(c.memory().total()) + gpus(8).reserved_bytes, 80 * kGiB);
  }
}

TEST(LayoutPlanner, SplitsAModelThatDoesNotFitOneGpu) {
  const PlanResult r = plan_layouts(gpt_13b(), gpus(8), {});
  ASSERT_GT(r.fitting(), 0);
  const Candidate& best = r.candidates.front();
  EXPECT_TRUE(best.fits);
  EXPECT_GT(best.tp * best.pp, 1) << best.describe();
  for (const Candidate& c : r.candidates)
    if (c.tp == 1 && c.pp == 1) EXPECT_FALSE(c.fits) << c.describe() << " cannot hold 13B";
  // With twice the memory per GPU, the whole model fits one GPU and plain data parallelism wins.
  const PlanResult big = plan_layouts(gpt_13b(), gpus(8, 160), {});
  EXPECT_EQ(big.candidates.front().tp * big.candidates.front().pp, 1)
      << big.candidates.front().describe();
}

TEST(LayoutPlanner, NothingFitsComesBackSmallestFirst) {
  TrainConfig cfg = gpt_13b();
  const PlanResult r = plan_layouts(cfg, gpus(1), {});
  ASSERT_FALSE(r.candidates.empty());
  EXPECT_EQ(r.fitting(), 0);
  for (size_t i = 1; i < r.candidates.size(); ++i)
    EXPECT_GE(r.candidates[i].memory().total(), r.candidates[i - 1].memory().total());
  EXPECT_EQ(recompute_label(r.candidates.front().recompute), "full");  // the least memory
}

TEST(LayoutPlanner, FixedChoicesAreKept) {
  const PlanResult r = plan_layouts(gpt_1_3b(), gpus(8),
                                    {.tensor_parallel = 2, .micro_batch_size = 2,
                                     .recompute = selective_recompute()});
  ASSERT_FALSE(r.candidates.empty());
  for (const Candidate& c : r.candidates) {
    EXPECT_EQ(c.tp, 2);
    EXPECT_EQ(c.micro_batch_size, 2);
    EXPECT_TRUE(c.recompute.selective());
    EXPECT_TRUE(c.sequence_parallel);
  }
  // Fixed off stays off; fixed PP and V are the only ones tried.
  const PlanResult off = plan_layouts(
      gpt_1_3b(), gpus(8),
      {.tensor_parallel = 2, .pipeline_parallel = 2, .virtual_chunks = 3,
       .sequence_parallel = false, .distributed_optimizer = false});
  ASSERT_FALSE(off.candidates.empty());
  for (const Candidate& c : off.candidates) {
    EXPECT_EQ(c.pp, 2);
    EXPECT_EQ(c.virtual_chunks, 3);
    EXPECT_FALSE(c.sequence_parallel);
    EXPECT_FALSE(c.distributed_optimizer);
    const std::vector<std::string> f = c.flags();
    EXPECT_EQ(std::count(f.begin(), f.end(), "--use-distributed-optimizer"), 0);
    EXPECT_EQ(std::count(f.begin(), f.end(), "--overlap-param-gather"), 0);
  }
  // A fixed PP leaves the searched TP only sizes that fit next to it (TP 4 x PP 4 is not a
  // layout of 8 GPUs; it once divided by a data-parallel size of 0).
  const PlanResult pp4 = plan_layouts(gpt_1_3b(), gpus(8), {.pipeline_parallel = 4});
  ASSERT_FALSE(pp4.candidates.empty());
  for (const Candidate& c : pp4.candidates) EXPECT_EQ(c.tp * c.cp * c.pp * c.dp, 8) << c.describe();
  // A distributed optimizer fixed on one GPU: no data-parallel overlap flags to print.
  for (const Candidate& c :
       plan_layouts(gpt_1_3b(), gpus(1), {.distributed_optimizer = true}).candidates) {
    const std::vector<std::string> f = c.flags();
    EXPECT_EQ(std::count(f.begin(), f.end(), "--overlap-grad-reduce"), 0);
  }
}

TEST(LayoutPlanner, RejectsLayoutsTheModelCannotSplit) {
  TrainConfig cfg = gpt_1_3b();
  cfg.model.num_attention_heads = 12;  // 2048 / 12 is not whole: use kv channels
  cfg.model.hidden_size = 1536;
  const PlanResult r = plan_layouts(cfg, gpus(8), {});
  for (const Candidate& c : r.candidates) EXPECT_NE(c.tp, 8) << "12 heads do not split 8 ways";
  bool heads_named = false;
  for (const auto& [reason, n] : r.rejected)
    heads_named |= reason.find("--num-attention-heads") != std::string::npos;
  EXPECT_TRUE(heads_named) << "the rejection names the heads";
}

TEST(LayoutPlanner, PipelineBubbleIsTheSchedules) {
  // Stages of equal cost (the output layer's GEMM is negligible next to a layer's), no
  // per-layer overhead, free transfers: the makespan is compute x (1 + (P-1)/(V*M)).
  TrainConfig cfg = gpt_1_3b();
  cfg.model.vocab_size = 64;
  cfg.model.num_layers = 16;
  cfg.global_batch_size = 8;
  Cluster cl = gpus(4, 1000);
  cl.per_layer_overhead_s = 0;
  cl.intra_node_bandwidth = 1e18;
  for (int v : {1, 2}) {
    const PlanResult r = plan_layouts(
        cfg, cl, {.tensor_parallel = 1, .pipeline_parallel = 4, .virtual_chunks = v,
                  .stage_layers = std::pair{0, 0}, .micro_batch_size = 1,
                  .recompute = no_recompute()});
    ASSERT_EQ(r.candidates.size(), 1u);
    const Candidate& c = r.candidates.front();
    ASSERT_EQ(c.num_microbatches, 8);
    EXPECT_NEAR(c.bubble_fraction(), 3.0 / (v * 8.0), 0.01) << "V " << v;
  }
}

// A heavy output layer (a 256k vocabulary is ten layers' worth of FLOPs here) makes the last
// stage the bottleneck: the search moves layers off it (first and last stages one layer short,
// the only uneven split of 16 layers over 4 stages it tries that divides), and that wins.
TEST(LayoutPlanner, UnevenStagesRelieveAHeavyOutputLayer) {
  TrainConfig cfg = gpt_1_3b();
  cfg.model.num_layers = 16;
  cfg.model.vocab_size = 256000;
  cfg.global_batch_size = 16;
  const PlanResult r = plan_layouts(cfg, gpus(4, 1000),
                                    {.tensor_parallel = 1, .pipeline_parallel = 4,
                                     .virtual_chunks = 1, .micro_batch_size = 1,
                                     .recompute = no_recompute()});
  ASSERT_EQ(r.candidates.size(), 2u);  // even, and first/last 3 (the others do not divide)
  const Candidate& best = r.candidates.front();
  EXPECT_EQ(best.first_stage_layers, 3);
  EXPECT_EQ(best.last_stage_layers, 3);
  EXPECT_LT(best.step_s, 0.95 * r.candidates.back().step_s);
  const std::vector<std::string> f = best.flags();
  EXPECT_NE(std::find(f.begin(), f.end(), "--decoder-last-pipeline-num-layers"), f.end());
}

// Full recomputation re-runs the forward of the layers it covers: half the layers, half the
// extra time; selective re-runs attention only.
TEST(LayoutPlanner, RecomputationCostsWhatItReruns) {
  TrainConfig cfg = gpt_1_3b();
  cfg.global_batch_size = 8;
  auto step = [&](const model::RecomputeConfig& r) {
    const PlanResult p = plan_layouts(cfg, gpus(1), {.micro_batch_size = 8, .recompute = r});
    EXPECT_EQ(p.candidates.size(), 1u);
    return p.candidates.front().step_s;
  };
  const double none = step(no_recompute()), full = step(full_recompute());
  const double half = step(full_recompute("block", 12)), selective = step(selective_recompute());
  EXPECT_LT(none, selective);
  EXPECT_LT(selective, half);
  EXPECT_NEAR(half - none, (full - none) / 2, 1e-9 * full);
  EXPECT_NEAR(step(full_recompute("uniform", 4)), full, 1e-12 * full);  // every layer either way
}

TEST(LayoutPlanner, CommunicationFollowsBandwidth) {
  const FixedChoices tp2{.tensor_parallel = 2, .pipeline_parallel = 1, .micro_batch_size = 4,
                         .recompute = no_recompute()};
  Cluster fast = gpus(8), slow = gpus(8);
  slow.intra_node_bandwidth = fast.intra_node_bandwidth / 2;
  const Candidate a = plan_layouts(gpt_1_3b(), fast, tp2).candidates.front();
  const Candidate b = plan_layouts(gpt_1_3b(), slow, tp2).candidates.front();
  EXPECT_GT(a.tp_comm_s, 0);
  EXPECT_NEAR(b.tp_comm_s, 2 * a.tp_comm_s, 1e-9 * a.tp_comm_s);
  EXPECT_NEAR(b.compute_s - a.compute_s, a.tp_comm_s, 1e-6 * a.compute_s);
  // Without TP there is nothing to wait for.
  const Candidate dp = plan_layouts(gpt_1_3b(), fast, {.tensor_parallel = 1}).candidates.front();
  EXPECT_EQ(dp.tp_comm_s, 0);
}

// The default MFU is calibrated so the estimate reproduces the measurement it came from: the
// 1.3B GPT, micro-batch 8 x 2048, on one H100: 61,980 tokens/s (bench/RESULTS.md, 2026-12).
TEST(LayoutPlanner, DefaultsReproduceTheMeasured1_3B) {
  TrainConfig cfg = gpt_1_3b();
  cfg.global_batch_size = 8;
  const PlanResult r =
      plan_layouts(cfg, gpus(1), {.micro_batch_size = 8, .recompute = no_recompute()});
  ASSERT_EQ(r.candidates.size(), 1u);
  EXPECT_NEAR(r.candidates.front().tokens_per_s_per_gpu, 61980, 0.03 * 61980);
}

// Data parallelism: reduction hidden behind the last backward unless the network is slow; the
// distributed optimizer's step touches 1/DP of the parameters.
TEST(LayoutPlanner, DataParallelCostsFollowTheGroup) {
  const FixedChoices dp{.tensor_parallel = 1, .pipeline_parallel = 1, .micro_batch_size = 8,
                        .distributed_optimizer = false, .recompute = no_recompute()};
  Cluster two_nodes = gpus(16);
  two_nodes.inter_node_bandwidth = 1e9;  // 1 GB/s between nodes
  const Candidate within = plan_layouts(gpt_1_3b(), gpus(8), dp).candidates.front();
  const Candidate across = plan_layouts(gpt_1_3b(), two_nodes, dp).candidates.front();
  EXPECT_LT(within.dp_exposed_s, 0.01);  // 10.5 GB at 360 GB/s hides behind a backward
  // 2 (d-1)/d x 4 B x parameters at 1 GB/s, less one micro-batch's backward.
  EXPECT_GT(across.dp_exposed_s, 5.0);
  FixedChoices sharded = dp;
  sharded.distributed_optimizer = true;
  const Candidate opt = plan_layouts(gpt_1_3b(), gpus(8), sharded).candidates.front();
  EXPECT_NEAR(opt.optimizer_s * 8, within.optimizer_s, 0.01 * within.optimizer_s);
}

// A long sequence: Llama-3-8B's shape at 32,768 tokens on 8 GPUs. Context parallelism wins: a
// CP rank moves the sequence's fused QKV rows (1.5 x hidden under GQA 8) three times per layer,
// where TP moves four [tokens, hidden] activations per layer and direction, so CP2 x TP2
// beats every layout without CP (TP4 x DP2 the best of those).
TEST(LayoutPlanner, ContextParallelWinsALongSequence) {
  const PlanResult r = plan_layouts(llama_8b(32768), gpus(8), {});
  ASSERT_GT(r.fitting(), 0);
  const Candidate& best = r.candidates.front();
  EXPECT_TRUE(best.fits);
  EXPECT_GT(best.cp, 1) << best.describe();
  EXPECT_LE(static_cast<double>(best.memory().total()) + gpus(8).reserved_bytes, 80 * kGiB);
  EXPECT_EQ(best.tp * best.cp * best.pp * best.dp, 8);
  EXPECT_GT(best.cp_comm_s, 0);
  const auto no_cp = std::find_if(r.candidates.begin(), r.candidates.end(),
                                  [](const Candidate& c) { return c.cp == 1; });
  ASSERT_NE(no_cp, r.candidates.end());
  EXPECT_TRUE(no_cp->fits);
  EXPECT_LT(best.step_s, 0.97 * no_cp->step_s) << no_cp->describe();
  // The flags say it, and describe() too.
  const std::vector<std::string> f = best.flags();
  const auto at = std::find(f.begin(), f.end(), "--context-parallel-size");
  ASSERT_NE(at, f.end());
  EXPECT_EQ(*(at + 1), std::to_string(best.cp));
  EXPECT_NE(best.describe().find(" x CP " + std::to_string(best.cp) + " x DP "), std::string::npos);
  // CP's activations: the same layout without CP needs more memory (twice the tokens).
  const PlanResult without = plan_layouts(
      llama_8b(32768), gpus(8),
      {.tensor_parallel = best.tp, .pipeline_parallel = best.pp, .context_parallel = 1,
       .micro_batch_size = best.micro_batch_size, .recompute = best.recompute});
  ASSERT_FALSE(without.candidates.empty());
  EXPECT_GT(without.candidates.front().memory().activations, best.memory().activations);
}

// A fixed --context-parallel-size is the only one tried: 1 keeps CP off where it would win,
// others are kept with DP = GPUs / (TP x CP x PP); one the sequence cannot split is rejected with
// the trainer's reason, one the GPUs cannot hold names the flag.
TEST(LayoutPlanner, FixedContextParallelIsKept) {
  const PlanResult off = plan_layouts(llama_8b(32768), gpus(8), {.context_parallel = 1});
  ASSERT_GT(off.fitting(), 0);
  for (const Candidate& c : off.candidates) {
    EXPECT_EQ(c.cp, 1);
    const std::vector<std::string> f = c.flags();
    EXPECT_EQ(std::count(f.begin(), f.end(), "--context-parallel-size"), 0);
  }
  const PlanResult four = plan_layouts(llama_8b(32768), gpus(8), {.context_parallel = 4});
  ASSERT_GT(four.fitting(), 0);
  for (const Candidate& c : four.candidates) {
    EXPECT_EQ(c.cp, 4);
    EXPECT_EQ(c.tp * c.pp * c.dp, 2) << c.describe();
  }
  // 2040 tokens split into 2 x CP chunks for CP 2 and 4, not 8: the search skips 8, a fixed 8
  // is rejected by the trainer's validation.
  TrainConfig odd = gpt_1_3b();
  odd.model.seq_length = 2040;
  for (const Candidate& c : plan_layouts(odd, gpus(8), {}).candidates) EXPECT_LE(c.cp, 4);
  const PlanResult eight = plan_layouts(odd, gpus(8), {.context_parallel = 8});
  EXPECT_TRUE(eight.candidates.empty());
  bool named = false;
  for (const auto& [reason, n] : eight.rejected)
    named |= reason.find("--context-parallel-size 8") != std::string::npos;
  EXPECT_TRUE(named);
  try {
    plan_layouts(gpt_1_3b(), gpus(8), {.tensor_parallel = 2, .context_parallel = 3});
    FAIL() << "CP 3 of 8 GPUs accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
    EXPECT_NE(std::string(e.what()).find(
                  "--tensor-model-parallel-size 2 x --context-parallel-size 3"),
              std::string::npos)
        << e.what();
  }
}

// BERT (--model-type bert) has no context parallelism: the search never tries it, and a fixed
// --context-parallel-size is rejected with the model's reason.
TEST(LayoutPlanner, BertIsPlannedWithoutContextParallelism) {
  TrainConfig bert = gpt_1_3b();
  bert.model.family = model::ModelFamily::kBert;
  bert.model.seq_length = 8192;
  bert.model.max_position_embeddings = 8192;
  const PlanResult r = plan_layouts(bert, gpus(8), {});
  ASSERT_GT(r.fitting(), 0);
  for (const Candidate& c : r.candidates) EXPECT_EQ(c.cp, 1) << c.describe();
  const PlanResult fixed = plan_layouts(bert, gpus(8), {.context_parallel = 2});
  EXPECT_TRUE(fixed.candidates.empty());
  bool named = false;
  for (const auto& [reason, n] : fixed.rejected)
    named |= reason.find("BERT runs bidirectional attention") != std::string::npos;
  EXPECT_TRUE(named);
}

// CP's collectives as the time model prices them: per layer, one all-gather of the fused QKV
// rows forward, one more and a reduce-scatter backward, each (c-1)/c of [mbs x seq, QKV rows/TP];
// full recomputation gathers once more; the group spans TP x CP consecutive ranks, at the
// network's bandwidth once that block leaves a node.
TEST(LayoutPlanner, ContextParallelCommunicationScales) {
  TrainConfig cfg = gpt_1_3b();
  cfg.global_batch_size = 8;
  auto plan = [&](const Cluster& cl, int tp, int cp, const model::RecomputeConfig& r) {
    const PlanResult p = plan_layouts(cfg, cl, {.tensor_parallel = tp, .pipeline_parallel = 1,
                                                .context_parallel = cp, .micro_batch_size = 1,
                                                .recompute = r});
    EXPECT_EQ(p.candidates.size(), 1u);
    EXPECT_TRUE(p.candidates.front().fits);
    return p.candidates.front();
  };
  // DP 1 on CP GPUs: 8 micro-batches either way. No per-layer overhead: compute only.
  auto bare = [](int n) {
    Cluster cl = gpus(n);
    cl.per_layer_overhead_s = 0;
    return cl;
  };
  const Candidate cp2 = plan(bare(2), 1, 2, no_recompute());
  const Candidate cp4 = plan(bare(4), 1, 4, no_recompute());
  ASSERT_EQ(cp2.num_microbatches, 8);
  ASSERT_EQ(cp4.num_microbatches, 8);
  // 3 passes x 24 layers x 8 micro-batches x 1/2 x 2048 x 3 x 2048 x 2 bytes at 360 GB/s.
  const double qkv_bytes = 2048.0 * 3 * 2048 * 2;
  EXPECT_NEAR(cp2.cp_comm_s, 3 * 24 * 8 * 0.5 * qkv_bytes / 360e9, 1e-9);
  EXPECT_NEAR(cp4.cp_comm_s / cp2.cp_comm_s, (3.0 / 4) / (1.0 / 2), 1e-9);
  EXPECT_EQ(cp2.tp_comm_s, 0);
  // CP ranks hold the same parameters: gradients are reduced over them (DP x CP) and the
  // distributed optimizer, on by default, shards its step over them.
  EXPECT_TRUE(cp2.distributed_optimizer);
  EXPECT_GT(cp2.dp_exposed_s, 0);
  EXPECT_NEAR(cp4.optimizer_s * 2, cp2.optimizer_s, 1e-3 * cp2.optimizer_s);
  // Each rank computes on half the tokens at CP 4 of CP 2's (compute_s holds the collectives).
  EXPECT_NEAR((cp4.compute_s - cp4.cp_comm_s) / (cp2.compute_s - cp2.cp_comm_s), 0.5, 1e-9);
  const Candidate full = plan(bare(2), 1, 2, full_recompute());
  EXPECT_NEAR(full.cp_comm_s / cp2.cp_comm_s, 4.0 / 3, 1e-9);
  // --cp-comm-type a2a: each pass trades the rank's own seq/CP rows of QKV (3 x 2048) and
  // attention output (2048) columns instead of gathering the sequence's QKV rows: at CP 4,
  // (1/4 x 4/3) of all_gather's bytes.
  cfg.parallel.cp_comm_type = "a2a";
  const Candidate a2a4 = plan(bare(4), 1, 4, no_recompute());
  EXPECT_NEAR(a2a4.cp_comm_s / cp4.cp_comm_s, (1.0 / 4) * (4.0 / 3), 1e-9);
  EXPECT_NEAR(a2a4.compute_s - a2a4.cp_comm_s, cp4.compute_s - cp4.cp_comm_s, 1e-12);
  cfg.parallel.cp_comm_type = "all_gather";
  // 16 GPUs on two nodes: with TP 4, CP 2's block of TP x CP = 8 ranks is one node (NVLink);
  // with TP 8 the block is both nodes (the network's 45 GB/s) and the QKV rows per rank half
  // as wide: 8 / 2 = 4 times the time per micro-batch.
  const Candidate tp4 = plan(gpus(16), 4, 2, no_recompute());
  const Candidate tp8 = plan(gpus(16), 8, 2, no_recompute());
  ASSERT_EQ(tp8.num_microbatches, tp4.num_microbatches * 2);  // DP 1 and DP 2
  EXPECT_NEAR((tp8.cp_comm_s / tp8.num_microbatches) / (tp4.cp_comm_s / tp4.num_microbatches),
              360.0 / 45 / 2, 1e-9);
}

TEST(LayoutPlanner, BadRequestsNameTheFix) {
  TrainConfig cfg = gpt_1_3b();
  cfg.global_batch_size = 0;
  try {
    plan_layouts(cfg, gpus(8), {});
    FAIL() << "no global batch accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
    EXPECT_NE(std::string(e.what()).find("--global-batch-size"), std::string::npos);
  }
  Cluster odd = gpus(12);
  odd.gpus_per_node = 8;
  EXPECT_THROW(plan_layouts(gpt_1_3b(), odd, {}), Error);
  for (const FixedChoices& f : {FixedChoices{.tensor_parallel = 16}, FixedChoices{.tensor_parallel = 3},
                                FixedChoices{.tensor_parallel = 0}, FixedChoices{.micro_batch_size = 0}}) {
    try {
      plan_layouts(gpt_1_3b(), gpus(8), f);
      FAIL() << "accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
      EXPECT_NE(std::string(e.what()).find(f.micro_batch_size ? "--micro-batch-size"
                                                              : "--tensor-model-parallel-size"),
                std::string::npos)
          << e.what();
    }
  }
}

// T5: the planner never splits its pipeline or its sequences (the trainer refuses both: those
// layouts are rejected with its reason), its memory is the trainer's plan, and the step estimate
// counts both stacks: more encoder layers or a longer encoder cost time.
TEST(LayoutPlanner, T5KeepsOneStageCountsBothStacksAndPlansTheTrainersMemory) {
  TrainConfig cfg = tiny_config();
  cfg.model.family = model::ModelFamily::kT5;
  cfg.model.seq_length = 32;
  cfg.model.decoder_seq_length = 16;
  cfg.model.encoder_num_layers = 4;
  const PlanResult all = plan_layouts(cfg, gpus(4), FixedChoices{});
  ASSERT_FALSE(all.candidates.empty());
  for (const Candidate& c : all.candidates) {
    EXPECT_EQ(c.pp, 1);
    EXPECT_EQ(c.cp, 1);
  }
  bool pipeline_reason = false;
  for (const auto& [reason, count] : all.rejected)
    pipeline_reason |= reason.find("--pipeline-model-parallel-size") != std::string::npos;
  EXPECT_TRUE(pipeline_reason);
  const FixedChoices fixed{.tensor_parallel = 2, .pipeline_parallel = 1, .context_parallel = 1,
                           .micro_batch_size = cfg.micro_batch_size, .sequence_parallel = true,
                           .distributed_optimizer = true, .recompute = no_recompute()};
  const PlanResult r = plan_layouts(cfg, gpus(4), fixed);
  ASSERT_EQ(r.candidates.size(), 1u) << (r.rejected.empty() ? "" : r.rejected.begin()->first);
  TrainConfig t = cfg;
  t.parallel.tensor_model_parallel_size = 2;
  t.parallel.sequence_parallel = t.parallel.use_distributed_optimizer = true;
  const std::vector<MemoryPlan> trainer = trainer_plans(t, 4);
  ASSERT_EQ(trainer.size(), 1u);
  expect_same_plan(r.candidates.front().stage_memory.front(), trainer.front(), "T5 TP2 DP2");
  TrainConfig deeper = cfg;
  deeper.model.encoder_num_layers = 8;
  TrainConfig longer = cfg;
  longer.model.seq_length = 64;
  longer.model.max_position_embeddings = 64;
  const double step = r.candidates.front().step_s;
  EXPECT_GT(plan_layouts(deeper, gpus(4), fixed).candidates.front().step_s, step);
  EXPECT_GT(plan_layouts(longer, gpus(4), fixed).candidates.front().step_s, step);
}

}  // namespace
}  // namespace shardlm::plan
