// Whole-model resharding through a checkpoint (N ranks as threads, CPU fp32, dropout on):
// 6 iterations with TP=2 x DP=2 and the distributed optimizer, save, then resume for 6 more
// iterations as TP=1 x DP=1, TP=4 x DP=1 and TP=1 x DP=2 (distributed optimizer): the losses
// agree with 12 iterations on one rank within 1e-5 relative (summation order differs between
// layouts; the same bound as tests/train/layout_equivalence_test.cc).
#include <gtest/gtest.h>

#include <cmath>
#include <mutex>
#include <sstream>

#include "ckpt_test_util.h"
#include "shardlm/ckpt/checkpoint_reader.h"
#include "shardlm/dist/parallel_layout.h"
#include "shardlm/dist/rank_context.h"
#include "shardlm/dist/thread_communicator.h"
#include "shardlm/train/trainer.h"

namespace shardlm::train {
namespace {

using namespace std::chrono_literals;
using ckpt::testing::TempDir;

TrainConfig config() {
  TrainConfig c;
  c.model.num_layers = 2;
  c.model.hidden_size = 32;
  c.model.num_attention_heads = 4;
  c.model.seq_length = 16;
  c.model.vocab_size = 60;  // padded to 64 for TP 1, 2 and 4
  c.model.make_vocab_size_divisible_by = 16;
  c.model.add_bias_linear = false;  // see layout_equivalence_test.cc: the key bias is noise
  c.model.hidden_dropout = 0.1;
  c.model.attention_dropout = 0.1;
  c.micro_batch_size = 2;
  c.global_batch_size = 8;
  c.train_iters = 12;
  c.optimizer.lr = 3e-3;
  c.optimizer.min_lr = 3e-4;
  c.optimizer.lr_decay_style = "cosine";
  c.optimizer.lr_warmup_iters = 3;
  c.optimizer.weight_decay = 0.1;
  c.data.mock_data = true;
  c.logging.log_interval = 6;
  c.logging.eval_interval = 100;
  c.logging.eval_iters = 0;
  c.device = "cpu";
  return c;
}

// Runs cfg on tp x dp thread ranks; returns rank 0's losses.
std::vector<double> run(TrainConfig cfg, int tp, int dp, bool distributed_optimizer) {
  cfg.parallel.tensor_model_parallel_size = tp;
  cfg.parallel.use_distributed_optimizer = distributed_optimizer;
  const int n = tp * dp;
  const dist::ParallelLayout layout = dist::ParallelLayout::create(n, cfg.parallel_sizes());
  dist::ThreadWorld world(n, {.timeout = 60s});
  std::vector<double> losses;
  std::mutex mu;
  dist::rethrow_first_error(world.run([&](dist::Communicator& comm) {
    DeviceContext device = DeviceContext::cpu();
    const int r = comm.rank();
    dist::RankContext rc = dist::RankContext::create(device, comm.split(0, r, "world"), layout, r);
    std::ostringstream log;
    Trainer t(cfg, rc, log);
    t.train();
    std::lock_guard<std::mutex> lock(mu);
    if (r == 0)
      for (const auto& h : t.history()) losses.push_back(h.loss);
  }));
  return losses;
}

// The last 6 of 12 single-rank losses `ref`, from a run resumed at iteration 6.
void expect_resumes_like_one_rank(const std::vector<double>& ref, const std::vector<double>& rest,
                                  const std::string& what) {
  ASSERT_EQ(rest.size(), 6u) << what;
  for (int i = 0; i < 6; ++i)
    EXPECT_LT(std::abs(rest[i] - ref[6 + i]), 1e-5 * ref[6 + i])
        << what << " iteration " << 7 + i << ": " << rest[i] << " vs " << ref[6 + i];
}

TEST(ReshardResume, SaveTp2Dp2DistOptResumeInOtherLayouts) {
  const std::vector<double> ref = run(config(), 1, 1, false);
  ASSERT_EQ(ref.size(), 12u);
  TempDir dir;
  TrainConfig save = config();
  save.checkpoint.save = dir.str();
  save.checkpoint.exit_interval = 6;
  const std::vector<double> first = run(save, 2, 2, true);
  ASSERT_EQ(first.size(), 6u);
  ASSERT_EQ(ckpt::CheckpointReader::latest_iteration(dir.str()), 6);
  {  // 4 ranks wrote: TP-split parameters in 2 shards, the moments in 4 (TP x DP) flat pieces
    ckpt::CheckpointReader reader(dir.str(), 6);
    reader.verify_files();
    EXPECT_EQ(reader.metadata()["world_size"], 4);
  }
  for (int i = 0; i < 6; ++i) EXPECT_LT(std::abs(first[i] - ref[i]), 1e-5 * ref[i]) << i;
  struct Target {
    int tp, dp;
    bool distopt;
  };
  for (const Target& t : {Target{1, 1, false}, Target{4, 1, false}, Target{1, 2, true}}) {
    TrainConfig resume = config();
    resume.checkpoint.load = dir.str();
    expect_resumes_like_one_rank(ref, run(resume, t.tp, t.dp, t.distopt),
                                 "TP" + std::to_string(t.tp) + " DP" + std::to_string(t.dp) +
                                     (t.distopt ? " distopt" : ""));
  }
}

}  // namespace
}  // namespace shardlm::train

namespace shardlm::train {
namespace {

// Small buckets (--overlap-grad-reduce --ddp-bucket-size 96) cut parameters at the distributed optimizer's shard
// boundaries, the TP-replicated ones (norm weights, biases) included: each TP rank holds the
// same fragment of those, which only TP rank 0 may write, or the checkpoint holds overlapping
// shards and will not load. Saved at TP=2 x DP=2, resumed at TP=1 x DP=1 and TP=2 x DP=2.
TEST(ReshardResume, FragmentsOfReplicatedParametersAreWrittenOnce) {
  TrainConfig base = config();
  base.model.add_bias_linear = true;  // replicated row-parallel biases, cut by the buckets too
  base.parallel.ddp_bucket_size = 96;
  base.parallel.overlap_grad_reduce = true;  // the bucket size applies with overlap only
  const std::vector<double> ref = run(base, 1, 1, false);
  ASSERT_EQ(ref.size(), 12u);
  TempDir dir;
  TrainConfig save = base;
  save.checkpoint.save = dir.str();
  save.checkpoint.exit_interval = 6;
  ASSERT_EQ(run(save, 2, 2, true).size(), 6u);
  {
    ckpt::CheckpointReader reader(dir.str(), 6);
    reader.verify_files();
    // Replicated over TP and cut by the shard boundaries (the position embedding [16, 32] is a
    // bucket of its own, split between the two DP ranks): the pieces tile it exactly once.
    for (const char* key : {"model/embedding.position_embeddings.weight",
                            "optim/exp_avg/embedding.position_embeddings.weight",
                            "optim/exp_avg/decoder.final_layernorm.weight"}) {
      const auto& t = reader.metadata()["tensors"][key];
      ASSERT_TRUE(t.is_object()) << key;
      int64_t total = 1, n = 0;
      for (const auto& d : t["shape"]) total *= d.get<int64_t>();
      for (const auto& shard : t["shards"]) {
        int64_t box = 1;  // a piece that is no box is a flat range of its box
        for (const auto& e : shard["extents"]) box *= e.get<int64_t>();
        n += shard.contains("flat_range")
                 ? shard["flat_range"][1].get<int64_t>() - shard["flat_range"][0].get<int64_t>()
                 : box;
      }
      EXPECT_EQ(n, total) << key << " " << t["shards"].dump();
    }
  }
  for (const auto& [tp, dp] : {std::pair{1, 1}, std::pair{2, 2}}) {
    TrainConfig resume = base;
    resume.checkpoint.load = dir.str();
    const std::vector<double> rest = run(resume, tp, dp, dp > 1);
    ASSERT_EQ(rest.size(), 6u);
    for (int i = 0; i < 6; ++i)
      EXPECT_LT(std::abs(rest[i] - ref[6 + i]), 1e-5 * ref[6 + i])
          << "TP" << tp << " DP" << dp << " iteration " << 7 + i;
  }
}

// A vocabulary padded differently (Megatron pads to divisible-by x TP): TP=4 pads 60 to 128,
// TP=1 to 64. The parameters and the distributed optimizer's flat moment shards load the
// common rows (the padding rows differ, so the losses cannot match a fixed-padding run).
TEST(ReshardResume, DifferentVocabularyPaddingLoads) {
  TempDir dir;
  TrainConfig save = config();
  save.model.make_vocab_size_divisible_by = 32;
  save.checkpoint.save = dir.str();
  save.checkpoint.exit_interval = 3;
  ASSERT_EQ(run(save, 4, 1, false).size(), 3u);
  ckpt::CheckpointReader reader(dir.str(), 3);
  EXPECT_EQ(reader.global_shape("model/embedding.word_embeddings.weight"), (Shape{128, 32}));
  TrainConfig resume = config();
  resume.model.make_vocab_size_divisible_by = 32;
  resume.checkpoint.load = dir.str();
  resume.train_iters = 5;
  const std::vector<double> rest = run(resume, 1, 2, true);
  ASSERT_EQ(rest.size(), 2u);
  for (double l : rest) EXPECT_TRUE(std::isfinite(l) && l > 0 && l < 10) << l;
}

}  // namespace
}  // namespace shardlm::train

namespace shardlm::train {
namespace {

// Fewer query groups than TP ranks (Llama: RMSNorm, SwiGLU, RoPE, untied; 4 heads, 2 groups):
// at TP=4 the k/v rows of each group are replicated on 2 ranks and saved once; a checkpoint
// saved there resumes at TP=1, TP=2 (groups split) and TP=1 x DP=2 (distributed optimizer),
// and one saved at TP=2 x DP=2 (distributed optimizer) resumes at TP=4. The losses follow 12
// iterations on one rank. SwiGLU's fc1 [gate ; up] is two pieces per TP rank as well.
TrainConfig llama_gqa2() {
  TrainConfig c = config();
  c.model.num_query_groups = 2;
  c.model.normalization = model::Normalization::kRMSNorm;
  c.model.swiglu = true;
  c.model.position_embedding = model::PositionEmbedding::kRope;
  c.model.untie_embeddings_and_output_weights = true;
  return c;
}

TEST(ReshardResume, ReplicatedQueryGroupsSaveAtTp4ResumeAtTp1AndTp2AndBack) {
  const std::vector<double> ref = run(llama_gqa2(), 1, 1, false);
  ASSERT_EQ(ref.size(), 12u);
  TempDir tp4;
  TrainConfig save = llama_gqa2();
  save.checkpoint.save = tp4.str();
  save.checkpoint.exit_interval = 6;
  const std::vector<double> first = run(save, 4, 1, false);
  ASSERT_EQ(first.size(), 6u);
  for (int i = 0; i < 6; ++i) EXPECT_LT(std::abs(first[i] - ref[i]), 1e-5 * ref[i]) << i;
  {  // The replicated k/v rows are written once: ranks 0 and 2 write two pieces of linear_qkv
     // (q rows, k/v rows), ranks 1 and 3 only their q rows; together they tile the tensor.
    ckpt::CheckpointReader reader(tp4.str(), 6);
    reader.verify_files();
    const auto& qkv =
        reader.metadata()["tensors"]["model/decoder.layers.0.self_attention.linear_qkv.weight"];
    EXPECT_EQ(qkv["shards"].size(), 6u);
    int64_t rows = 0;
    for (const auto& shard : qkv["shards"]) rows += shard["extents"][0].get<int64_t>();
    EXPECT_EQ(rows, qkv["shape"][0].get<int64_t>());
  }
  struct Target {
    int tp, dp;
    bool distopt;
  };
  for (const Target& t : {Target{1, 1, false}, Target{2, 1, false}, Target{1, 2, true}}) {
    TrainConfig resume = llama_gqa2();
    resume.checkpoint.load = tp4.str();
    expect_resumes_like_one_rank(ref, run(resume, t.tp, t.dp, t.distopt),
                                 "from TP4 to TP" + std::to_string(t.tp) + " DP" +
                                     std::to_string(t.dp));
  }
  TempDir tp2;
  save.checkpoint.save = tp2.str();
  ASSERT_EQ(run(save, 2, 2, true).size(), 6u);
  TrainConfig resume = llama_gqa2();
  resume.checkpoint.load = tp2.str();
  expect_resumes_like_one_rank(ref, run(resume, 4, 1, false), "from TP2 DP2 distopt to TP4");
}

}  // namespace
}  // namespace shardlm::train
