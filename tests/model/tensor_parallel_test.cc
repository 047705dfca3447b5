// Tensor and sequence parallelism of the GPT model: TP ranks as threads (ThreadWorld +
// RankContext) against the single-rank model in fp64. For each layout: every shard initialises
// equal to its slice of the unsharded parameter (bit for bit), two micro-batches of forward +
// backward with dropout on give the single-rank losses and each rank's gradient shard equals the
// slice of the single-rank gradient; the grad-ready hook reports every parameter once, after its
// gradient is final. Fewer query groups than ranks (MQA / GQA with G < TP) replicate each group's
// k/v on TP/G ranks. Bad layouts are rejected with the numbers in the message.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "shardlm/dist/parallel_layout.h"
#include "shardlm/dist/rank_context.h"
#include "shardlm/model/families/gpt_model.h"
#include "tests/dist/rank_threads.h"
#include "tests/testing/tensors.h"

namespace shardlm::model {
namespace {

using dist::testing::expect_error;
using dist::testing::run_ranks;

constexpr uint64_t kSeed = 5;
constexpr int kMicroBatches = 2;

struct Layout {
  const char* name;
  int tp;
  bool sp;
  int64_t batch;
  TransformerConfig cfg;
};

TransformerConfig base_config(int tp) {
  TransformerConfig c;
  c.num_layers = 2;
  c.hidden_size = 16;
  c.num_attention_heads = 8;
  c.seq_length = 8;
  c.vocab_size = 37;  // padded to a multiple of 4 x TP: padding rows exist
  c.make_vocab_size_divisible_by = 4;
  c.tensor_model_parallel_size = tp;
  c.ffn_hidden_size = 24;
  c.hidden_dropout = 0.2;
  c.attention_dropout = 0.2;
  c.init_method_std = 0.3;
  return c;
}

// The batch every rank (and the reference) trains on: micro-batch m.
struct Data {
  OwnedTensor tokens, targets, mask;
  double mask_sum = 0;
  Data(const TransformerConfig& cfg, int64_t B, int m) {
    const auto V = static_cast<int32_t>(cfg.vocab_size);
    tokens = testing::random_ints({B, cfg.seq_length}, V, 100 + m);
    targets = testing::random_ints({B, cfg.seq_length}, V, 200 + m);
    std::vector<double> v(B * cfg.seq_length);
    for (size_t i = 0; i < v.size(); ++i) v[i] = (i % 4 == 2) ? 0.0 : 1.0;
    for (double x : v) mask_sum += x;
    mask = testing::from_vector(DType::kF64, {B, cfg.seq_length}, v);
  }
  Batch batch() const { return {tokens.view(), targets.view(), mask.view(), mask_sum}; }
};

// Losses, values (after init) and gradients (after the micro-batches) by parameter name.
struct Result {
  std::vector<double> losses;
  std::map<std::string, std::vector<double>> init, grads;
  std::vector<std::string> report_order;
  bool reports_were_final = true;
};

// Runs kMicroBatches forward/backward passes of `model` (already bound), with the hook on.
void train_micro_batches(GPTModel& model, ParameterRegistry& reg, DeviceContext& ctx,
                         int64_t B, Result& out) {
  Arena acts(Device::cpu(), model.plan_activation_bytes(DType::kF64, B), "acts");
  model.allocate_activations(acts, DType::kF64, B);
  for (const Parameter& p : reg.parameters()) out.init[p.spec.name] = testing::to_vector(p.value);
  std::map<std::string, std::vector<double>> at_report;
  model.set_grad_ready_callback([&](std::span<Parameter* const> params) {
    for (Parameter* p : params) {
      out.report_order.push_back(p->spec.name);
      at_report[p->spec.name] = testing::to_vector(p->grad);
    }
  });
  reg.zero_grads(ctx);
  for (int m = 0; m < kMicroBatches; ++m) {
    const Data data(model.config(), B, m);
    StepContext step{ctx, 99, 3, static_cast<uint32_t>(m), true};
    out.losses.push_back(model.forward(step, data.batch()));
    at_report.clear();
    model.backward(step, data.batch(), 1.0 / kMicroBatches);
    for (const Parameter& p : reg.parameters())
      if (at_report[p.spec.name] != testing::to_vector(p.grad)) out.reports_were_final = false;
  }
  for (const Parameter& p : reg.parameters()) out.grads[p.spec.name] = testing::to_vector(p.grad);
}

Result run_single_rank(const TransformerConfig& cfg, int64_t B) {
  DeviceContext ctx = DeviceContext::cpu();
  GPTModel model(cfg);
  ParameterRegistry reg;
  model.register_parameters(reg);
  reg.finalize(ctx, DType::kF64, kSeed);
  model.bind(reg);
  Result r;
  train_micro_batches(model, reg, ctx, B, r);
  return r;
}

// The elements of a global tensor (row-major, by name) that local shard `p` holds.
std::vector<double> slice_of(const Parameter& p, const std::vector<double>& global) {
  std::vector<double> out(p.local_shape.numel());
  for (int64_t i = 0; i < p.local_shape.numel(); ++i) out[i] = global.at(p.global_index(i));
  return out;
}

void expect_layout_matches_single_rank(const Layout& layout) {
  SCOPED_TRACE(layout.name);
  const Result ref = run_single_rank(layout.cfg, layout.batch);
  const int n = layout.tp;
  const dist::ParallelLayout parallel = dist::ParallelLayout::create(n, {.tensor = n});
  std::mutex mu;
  run_ranks(n, [&](dist::Communicator& world) {
    DeviceContext ctx = DeviceContext::cpu();
    dist::RankContext rc =
        dist::RankContext::create(ctx, world.split(0, world.rank(), "world"), parallel);
    GPTModel model(layout.cfg, TensorParallel::of(rc, layout.sp));
    ParameterRegistry reg;
    model.register_parameters(reg);
    reg.finalize(ctx, DType::kF64, kSeed);
    model.bind(reg);
    Result r;
    train_micro_batches(model, reg, ctx, layout.batch, r);
    std::lock_guard<std::mutex> lock(mu);
    const std::string rank = "rank " + std::to_string(rc.tp().rank());
    ASSERT_EQ(r.losses.size(), ref.losses.size());
    for (size_t m = 0; m < r.losses.size(); ++m)
      EXPECT_NEAR(r.losses[m], ref.losses[m], 1e-12 * std::abs(ref.losses[m])) << rank;
    EXPECT_EQ(r.report_order, ref.report_order) << rank;
    EXPECT_TRUE(r.reports_were_final) << rank;
    ASSERT_EQ(reg.parameters().size(), ref.grads.size());
    for (const Parameter& p : reg.parameters()) {
      const std::string& name = p.spec.name;
      EXPECT_EQ(p.spec.global_shape.numel(), static_cast<int64_t>(ref.init.at(name).size()))
          << rank << " " << name;
      EXPECT_EQ(r.init.at(name), slice_of(p, ref.init.at(name))) << rank << " " << name;
      // fp64: measured <= 7e-15 (summation order differs between layouts).
      EXPECT_LT(testing::rel_error(r.grads.at(name), slice_of(p, ref.grads.at(name))), 1e-12)
          << rank << " " << name;
    }
  });
}

Layout layout(const char* name, int tp, bool sp, int64_t B, TransformerConfig cfg) {
  return {name, tp, sp, B, cfg};
}

TEST(TensorParallel, Tp2GeluMhaTied) {
  expect_layout_matches_single_rank(layout("tp2 gelu mha tied", 2, false, 2, base_config(2)));
}

TEST(TensorParallel, Tp2SequenceParallelGeluMhaTied) {
  expect_layout_matches_single_rank(layout("tp2 sp gelu mha tied", 2, true, 2, base_config(2)));
}

TEST(TensorParallel, Tp4SwigluGqa4UntiedRmsNormNoBias) {
  TransformerConfig c = base_config(4);
  c.swiglu = true;
  c.num_query_groups = 4;
  c.untie_embeddings_and_output_weights = true;
  c.normalization = Normalization::kRMSNorm;
  c.add_bias_linear = false;
  expect_layout_matches_single_rank(layout("tp4 swiglu gqa4 untied", 4, false, 2, c));
}

TEST(TensorParallel, Tp4SequenceParallelSwigluGqa4Untied) {
  TransformerConfig c = base_config(4);
  c.swiglu = true;
  c.num_query_groups = 4;
  c.untie_embeddings_and_output_weights = true;
  expect_layout_matches_single_rank(layout("tp4 sp swiglu gqa4 untied", 4, true, 2, c));
}

TEST(TensorParallel, Tp2SequenceParallelSwigluGqa2TiedMicroBatch1) {
  TransformerConfig c = base_config(2);
  c.swiglu = true;
  c.num_query_groups = 2;
  expect_layout_matches_single_rank(layout("tp2 sp swiglu gqa2 tied b1", 2, true, 1, c));
}

TEST(TensorParallel, Tp4SequenceParallelGeluMhaTiedNoPositions) {
  TransformerConfig c = base_config(4);
  c.position_embedding = PositionEmbedding::kNone;
  expect_layout_matches_single_rank(layout("tp4 sp gelu mha no positions", 4, true, 3, c));
}

TEST(TensorParallel, Tp2GeluGqa2UntiedLayerNorm) {
  TransformerConfig c = base_config(2);
  c.num_query_groups = 2;
  c.untie_embeddings_and_output_weights = true;
  expect_layout_matches_single_rank(layout("tp2 gelu gqa2 untied", 2, false, 2, c));
}

TEST(TensorParallel, Tp4GeluMhaUntied) {
  TransformerConfig c = base_config(4);
  c.untie_embeddings_and_output_weights = true;
  expect_layout_matches_single_rank(layout("tp4 gelu mha untied", 4, false, 2, c));
}

TEST(TensorParallel, Tp2SequenceParallelSwigluGqa4TwoGroupsPerRankRmsNorm) {
  TransformerConfig c = base_config(2);
  c.swiglu = true;
  c.num_query_groups = 4;
  c.normalization = Normalization::kRMSNorm;
  expect_layout_matches_single_rank(layout("tp2 sp swiglu gqa4 rmsnorm", 2, true, 2, c));
}

TEST(TensorParallel, Tp4SequenceParallelLlamaRopeGqa4) {
  TransformerConfig c = base_config(4);
  c.swiglu = true;
  c.num_query_groups = 4;
  c.untie_embeddings_and_output_weights = true;
  c.normalization = Normalization::kRMSNorm;
  c.add_bias_linear = false;
  c.position_embedding = PositionEmbedding::kRope;
  expect_layout_matches_single_rank(layout("tp4 sp llama rope gqa4", 4, true, 2, c));
}

// Fewer query groups than TP ranks (G < TP): TP/G ranks share each group, each holding its
// q heads and a replica of the group's k/v, whose gradient the replicas sum.
TransformerConfig llama_config(int tp, int64_t groups) {
  TransformerConfig c = base_config(tp);
  c.swiglu = true;
  c.num_query_groups = groups;
  c.untie_embeddings_and_output_weights = true;
  c.normalization = Normalization::kRMSNorm;
  c.add_bias_linear = false;
  c.position_embedding = PositionEmbedding::kRope;
  return c;
}

TransformerConfig gelu_config(int tp, int64_t groups) {
  TransformerConfig c = base_config(tp);  // linear biases on: the k/v bias rows are replicated too
  c.num_query_groups = groups;
  return c;
}

TEST(TensorParallel, Tp2GeluMqaReplicatesTheGroup) {
  expect_layout_matches_single_rank(layout("tp2 gelu mqa", 2, false, 2, gelu_config(2, 1)));
}

TEST(TensorParallel, Tp2SequenceParallelLlamaMqa) {
  expect_layout_matches_single_rank(layout("tp2 sp llama mqa", 2, true, 2, llama_config(2, 1)));
}

TEST(TensorParallel, Tp4GeluMqaUntied) {
  TransformerConfig c = gelu_config(4, 1);
  c.untie_embeddings_and_output_weights = true;
  expect_layout_matches_single_rank(layout("tp4 gelu mqa untied", 4, false, 2, c));
}

TEST(TensorParallel, Tp4SequenceParallelGeluMqa) {
  expect_layout_matches_single_rank(layout("tp4 sp gelu mqa", 4, true, 2, gelu_config(4, 1)));
}

TEST(TensorParallel, Tp4LlamaGqa2) {
  expect_layout_matches_single_rank(layout("tp4 llama gqa2", 4, false, 2, llama_config(4, 2)));
}

TEST(TensorParallel, Tp4SequenceParallelLlamaGqa2MicroBatch1) {
  expect_layout_matches_single_rank(layout("tp4 sp llama gqa2 b1", 4, true, 1, llama_config(4, 2)));
}

TEST(TensorParallel, Tp4SequenceParallelGeluGqa2) {
  expect_layout_matches_single_rank(layout("tp4 sp gelu gqa2", 4, true, 2, gelu_config(4, 2)));
}

TEST(TensorParallel, ReplicatedQueryGroupsHoldTheirHeadsAndTheGroupsKeyValueRows) {
  // NH 8, HS 2, G 2, TP 4: group g's rows are [q heads 4g..4g+3 (8) | k (2) | v (2)] = 12 rows.
  // Rank r holds q rows of heads 2r, 2r+1 and k/v of group r/2; odd ranks hold replicas.
  const TransformerConfig c = llama_config(4, 2);
  const std::vector<std::vector<int64_t>> rows = {{0, 1, 2, 3, 8, 9, 10, 11},
                                                  {4, 5, 6, 7, 8, 9, 10, 11},
                                                  {12, 13, 14, 15, 20, 21, 22, 23},
                                                  {16, 17, 18, 19, 20, 21, 22, 23}};
  for (int r = 0; r < 4; ++r) {
    const QkvLayout q = QkvLayout::of(c, r, 4);
    EXPECT_EQ(q.heads, 2);
    EXPECT_EQ(q.groups, 1);
    EXPECT_EQ(q.replicas, 2);
    EXPECT_EQ(q.first_head, 2 * r);
    ASSERT_EQ(q.local_rows(), 8);
    Parameter p;
    p.spec = {"w", {c.qkv_size(), 3}, q.split, true, Init::zeros()};
    p.local_shape = Shape({q.local_rows(), 3});
    for (int64_t i = 0; i < 8 * 3; ++i)
      EXPECT_EQ(p.global_index(i), rows[r][i / 3] * 3 + i % 3) << "rank " << r << " " << i;
    using Ranges = std::vector<std::pair<int64_t, int64_t>>;
    const Ranges replicas = r % 2 ? Ranges{{12, 24}} : Ranges{};
    EXPECT_EQ(p.replica_ranges(), replicas) << "rank " << r;
  }
  // Groups split over TP keep the one-block layout.
  const QkvLayout split = QkvLayout::of(llama_config(2, 4), 1, 2);
  EXPECT_EQ(split.replicas, 1);
  EXPECT_EQ(split.groups, 2);
  EXPECT_TRUE(split.split.runs.empty());
}

TEST(TensorParallel, SplitInChunksHoldsMatchingRowsOfEachChunk) {
  // SwiGLU fc1 [gate ; up] with F = 4 rows each, TP = 2: rank 1 holds gate rows 2,3, up rows 6,7.
  Parameter p;
  p.spec = {"w", {8, 3}, Split::along(0, 1, 2, 2), true, Init::zeros()};
  p.local_shape = Shape({4, 3});
  const std::vector<int64_t> rows = {2, 3, 6, 7};
  for (int64_t i = 0; i < 12; ++i) EXPECT_EQ(p.global_index(i), rows[i / 3] * 3 + i % 3) << i;
}

TEST(TensorParallel, BadLayoutsAreRejectedWithTheNumbers) {
  TransformerConfig c = base_config(4);
  c.num_attention_heads = 6;
  c.hidden_size = 12;
  expect_error([&] { c.validate(); }, ErrorKind::kInvalidConfig,
               {"--num-attention-heads 6", "--tensor-model-parallel-size 4"});
  // Fewer groups than ranks are replicated when the group count divides TP.
  for (int tp : {2, 4})
    for (int64_t groups : {1, 2}) {
      c = base_config(tp);
      c.num_query_groups = groups;
      EXPECT_NO_THROW(c.validate()) << "TP " << tp << " G " << groups;
    }
  c = base_config(4);
  c.num_attention_heads = 12;
  c.hidden_size = 24;
  c.num_query_groups = 3;
  expect_error([&] { c.validate(); }, ErrorKind::kInvalidConfig,
               {"--num-query-groups 3 does not divide --tensor-model-parallel-size 4",
                "choose a group count that divides 4"});
  c = base_config(4);
  c.num_attention_heads = 2;
  c.hidden_size = 8;
  c.num_query_groups = 1;
  expect_error([&] { c.validate(); }, ErrorKind::kInvalidConfig,
               {"--num-attention-heads 2", "--tensor-model-parallel-size 4"});
  c = base_config(4);
  c.num_query_groups = 4;
  c.num_attention_heads = 12;
  c.hidden_size = 24;
  c.num_query_groups = 6;
  expect_error([&] { c.validate(); }, ErrorKind::kInvalidConfig,
               {"--num-query-groups 6 is not divisible by --tensor-model-parallel-size 4"});
  c = base_config(4);
  c.ffn_hidden_size = 18;
  expect_error([&] { c.validate(); }, ErrorKind::kInvalidConfig,
               {"--ffn-hidden-size 18", "--tensor-model-parallel-size 4"});
  c = base_config(4);
  c.seq_length = 6;
  expect_error([&] { c.validate_tensor_parallel(4, true); }, ErrorKind::kInvalidConfig,
               {"--seq-length 6", "--tensor-model-parallel-size 4", "--sequence-parallel"});
  EXPECT_NO_THROW(c.validate_tensor_parallel(4, false));
  // The model config must be built for the group's size (vocab padding).
  run_ranks(2, [&](dist::Communicator& world) {
    expect_error([&] { GPTModel model(base_config(4), TensorParallel{&world, false}); },
                 ErrorKind::kInvalidConfig,
                 {"tensor_model_parallel_size 4", "group has 2 ranks"});
  });
}

}  // namespace
}  // namespace shardlm::model
