// --bf16 on the GPU (Megatron's mixed precision: bf16 weights and activations for compute, fp32
// master weights and fp32 main gradients in the optimizer) against the fp32 CPU reference from
// the same init and data: losses agree within bf16 tolerance step for step, and a longer bf16
// run learns (its loss falls). With --fp8-format the GPU run tracks the CPU's fp8 emulation.
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>

#include "shardlm/ops/cuda/cuda_context.h"
#include "shardlm/tensor/device.h"
#include "shardlm/train/trainer.h"

namespace shardlm::train {
namespace {

TrainConfig tiny_bf16_config() {
  TrainConfig cfg;
  cfg.model.num_layers = 2;
  cfg.model.hidden_size = 64;
  cfg.model.num_attention_heads = 4;
  cfg.model.num_query_groups = 2;
  cfg.model.seq_length = 32;
  cfg.model.vocab_size = 200;
  cfg.model.hidden_dropout = 0.0;
  cfg.model.attention_dropout = 0.0;
  cfg.micro_batch_size = 4;
  cfg.global_batch_size = 8;  // two micro-batches: exercises bf16 -> fp32 grad accumulation
  cfg.train_iters = 5;
  cfg.optimizer.lr = 1e-3;
  cfg.optimizer.lr_warmup_iters = 1;
  cfg.data.mock_data = true;
  cfg.logging.eval_iters = 0;
  return cfg;
}

// The Llama layer: RMSNorm, SwiGLU, RoPE, no biases, untied output layer.
void make_llama(TrainConfig& cfg) {
  cfg.model.normalization = model::Normalization::kRMSNorm;
  cfg.model.swiglu = true;
  cfg.model.position_embedding = model::PositionEmbedding::kRope;
  cfg.model.add_bias_linear = false;
  cfg.model.untie_embeddings_and_output_weights = true;
}

TEST(TrainerBf16Gpu, TracksTheFp32CpuRun) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
  TrainConfig cfg = tiny_bf16_config();
  std::ostringstream log_cpu, log_gpu;
  cfg.device = "cpu";
  Trainer cpu(cfg, log_cpu);
  cfg.device = "cuda";
  cfg.bf16 = true;
  Trainer gpu(cfg, log_gpu);
  EXPECT_NE(log_gpu.str().find("> precision: bf16 mixed precision"), std::string::npos)
      << log_gpu.str();
  EXPECT_NE(log_gpu.str().find("compute parameters"), std::string::npos) << log_gpu.str();
  EXPECT_EQ(gpu.parameters().dtype(), DType::kF32);
  EXPECT_EQ(gpu.parameters().compute_dtype(), DType::kBF16);
  for (int i = 0; i < cfg.train_iters; ++i) {
    const IterationRecord a = cpu.train_step();
    const IterationRecord b = gpu.train_step();
    ASSERT_TRUE(std::isfinite(b.loss)) << "iteration " << i + 1;
    ASSERT_TRUE(std::isfinite(b.grad_norm)) << "iteration " << i + 1;
    EXPECT_FALSE(b.skipped) << "iteration " << i + 1;
    EXPECT_NEAR(b.loss, a.loss, 2e-2 * std::abs(a.loss)) << "iteration " << i + 1;
    std::cout << "iteration " << i + 1 << ": cpu fp32 loss " << a.loss << " gpu bf16 loss "
              << b.loss << " | grad norm " << a.grad_norm << " vs " << b.grad_norm << "\n";
  }
}

// Sequences of 128 tokens: attention runs on cuDNN's fused engines (--attention-backend fused,
// so a case cuDNN turns down fails here instead of silently taking ShardLM's kernels), for the GPT layer and
// the Llama layer (RMSNorm, SwiGLU, RoPE, no biases, untied output, 2 query heads per group, so
// queries are gathered and dQ scattered). The bf16 GPU run tracks the fp32 CPU run.
class TrainerBf16CudnnGpu : public ::testing::TestWithParam<bool /*llama*/> {};
INSTANTIATE_TEST_SUITE_P(Families, TrainerBf16CudnnGpu, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Llama" : "Gpt"; });

TEST_P(TrainerBf16CudnnGpu, TracksTheFp32CpuRun) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
#ifndef SHARDLM_WITH_CUDNN
  GTEST_SKIP() << "built without cuDNN";
#endif
  TrainConfig cfg = tiny_bf16_config();
  cfg.model.seq_length = 128;
  cfg.model.hidden_size = 128;  // head dim 32
  cfg.micro_batch_size = 2;
  cfg.global_batch_size = 4;
  if (GetParam()) make_llama(cfg);
  std::ostringstream log_cpu, log_gpu;
  cfg.device = "cpu";
  Trainer cpu(cfg, log_cpu);
  cfg.device = "cuda";
  cfg.bf16 = true;
  cfg.attention_backend = "fused";
  Trainer gpu(cfg, log_gpu);
  EXPECT_EQ(ops::cuda::cuda_state(gpu.device()).attention_kernels(),
            ops::cuda::AttentionKernels::kCudnn);
  for (int i = 0; i < cfg.train_iters; ++i) {
    const IterationRecord a = cpu.train_step();
    const IterationRecord b = gpu.train_step();
    ASSERT_TRUE(std::isfinite(b.loss)) << "iteration " << i + 1;
    EXPECT_NEAR(b.loss, a.loss, 2e-2 * std::abs(a.loss)) << "iteration " << i + 1;
    ASSERT_TRUE(std::isfinite(b.grad_norm)) << "iteration " << i + 1;
  }
}

// Gradient-accumulation fusion (the default) against --no-gradient-accumulation-fusion, for the
// GPT layer (biases, tied embedding: the output GEMM and the lookup's scatter-add both write the
// fp32 master gradient) and the Llama layer (no biases, untied output layer, whose weight
// gradient is fused too, as the word embedding's), two micro-batches per step (the second adds
// in fp32). The first forward is the same computation, so the first loss is equal; after that
// the fused gradients are the unrounded fp32 sums, so the runs agree within bf16 rounding.
class TrainerBf16FusionGpu : public ::testing::TestWithParam<bool /*llama*/> {};
INSTANTIATE_TEST_SUITE_P(Families, TrainerBf16FusionGpu, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Llama" : "Gpt"; });

TEST_P(TrainerBf16FusionGpu, TracksTheUnfusedRun) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
  TrainConfig cfg = tiny_bf16_config();
  cfg.device = "cuda";
  cfg.bf16 = true;
  if (GetParam()) make_llama(cfg);
  std::ostringstream log_fused, log_plain;
  Trainer fused(cfg, log_fused);
  cfg.gradient_accumulation_fusion = false;
  Trainer plain(cfg, log_plain);
  // Fused: no 16-bit gradient for the linear weights, the word embedding (nor the untied output
  // layer).
  int fused_count = 0;
  for (const model::Parameter& p : fused.parameters().parameters()) {
    const bool linear_weight = p.spec.name.find("linear_") != std::string::npos &&
                               p.spec.name.ends_with(".weight");
    const bool output = p.spec.name == "output_layer.weight";
    const bool word_embedding = p.spec.name == "embedding.word_embeddings.weight";
    EXPECT_EQ(p.main_grad_fused, linear_weight || output || word_embedding) << p.spec.name;
    EXPECT_EQ(p.compute_grad.defined(), !p.main_grad_fused) << p.spec.name;
    fused_count += p.main_grad_fused;
  }
  EXPECT_EQ(fused_count, 4 * cfg.model.num_layers + 1 + (GetParam() ? 1 : 0));
  EXPECT_LT(fused.parameters().compute_grad_numel(), fused.parameters().numel() / 2);
  for (const model::Parameter& p : plain.parameters().parameters())
    EXPECT_FALSE(p.main_grad_fused) << p.spec.name;
  EXPECT_EQ(plain.parameters().compute_grad_numel(), plain.parameters().numel());
  for (int i = 0; i < cfg.train_iters; ++i) {
    const IterationRecord a = plain.train_step();
    const IterationRecord b = fused.train_step();
    ASSERT_TRUE(std::isfinite(b.loss) && std::isfinite(b.grad_norm)) << "iteration " << i + 1;
    if (i == 0) EXPECT_EQ(b.loss, a.loss);
    EXPECT_NEAR(b.loss, a.loss, 5e-3 * std::abs(a.loss)) << "iteration " << i + 1;
    EXPECT_NEAR(b.grad_norm, a.grad_norm, 2e-2 * a.grad_norm) << "iteration " << i + 1;
  }
}

TEST(TrainerBf16Gpu, LossFalls) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
  TrainConfig cfg = tiny_bf16_config();
  cfg.device = "cuda";
  cfg.bf16 = true;
  cfg.train_iters = 60;
  cfg.optimizer.lr = 3e-3;
  cfg.optimizer.lr_warmup_iters = 5;
  std::ostringstream log;
  Trainer gpu(cfg, log);
  gpu.train();
  const auto& h = gpu.history();
  ASSERT_EQ(static_cast<int64_t>(h.size()), cfg.train_iters);
  double first = 0, last = 0;
  for (int i = 0; i < 5; ++i) first += h[i].loss / 5, last += h[h.size() - 1 - i].loss / 5;
  EXPECT_TRUE(std::isfinite(last));
  EXPECT_LT(last, 0.6 * first) << "first 5 iterations " << first << ", last 5 " << last;
  for (const IterationRecord& r : h) EXPECT_FALSE(r.skipped) << "iteration " << r.iteration;
}

// BERT (--model-type bert) on the GPU in bf16 against the fp32 CPU run from the same init and
// data (mock masked-LM samples, some padded: the padded-mask attention kernels): the losses
// (masked LM + sentence order) agree within bf16 tolerance step for step, and the sentence-
// order part is reported.
TEST(TrainerBf16Gpu, BertTracksTheFp32CpuRun) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
  TrainConfig cfg = tiny_bf16_config();
  cfg.model.family = model::ModelFamily::kBert;
  cfg.model.num_query_groups = 0;
  std::ostringstream log_cpu, log_gpu;
  cfg.device = "cpu";
  Trainer cpu(cfg, log_cpu);
  cfg.device = "cuda";
  cfg.bf16 = true;
  Trainer gpu(cfg, log_gpu);
  for (int i = 0; i < cfg.train_iters; ++i) {
    const IterationRecord a = cpu.train_step();
    const IterationRecord b = gpu.train_step();
    ASSERT_TRUE(std::isfinite(b.loss)) << "iteration " << i + 1;
    EXPECT_NEAR(b.loss, a.loss, 2e-2 * std::abs(a.loss)) << "iteration " << i + 1;
    EXPECT_NEAR(b.sop_loss, a.sop_loss, 3e-2 * std::abs(a.sop_loss)) << "iteration " << i + 1;
    std::cout << "BERT iteration " << i + 1 << ": cpu fp32 loss " << a.loss << " (sop "
              << a.sop_loss << ") gpu bf16 loss " << b.loss << " (sop " << b.sop_loss << ")\n";
  }
}

// T5 (--model-type t5) on the GPU in bf16 against the fp32 CPU run from the same init and data
// (mock span-corruption samples with padded encoder sequences: the padded bidirectional kernels
// in the encoder, the cross-attention kernels with key padding and TQ != TK in the decoder):
// the losses agree within bf16 tolerance step for step.
TEST(TrainerBf16Gpu, T5TracksTheFp32CpuRun) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
  TrainConfig cfg = tiny_bf16_config();
  cfg.model.family = model::ModelFamily::kT5;
  cfg.model.num_query_groups = 0;
  cfg.model.seq_length = 48;          // encoder: not a multiple of the kernels' tiles
  cfg.model.decoder_seq_length = 24;
  cfg.model.encoder_num_layers = 3;
  std::ostringstream log_cpu, log_gpu;
  cfg.device = "cpu";
  Trainer cpu(cfg, log_cpu);
  cfg.device = "cuda";
  cfg.bf16 = true;
  Trainer gpu(cfg, log_gpu);
  for (int i = 0; i < cfg.train_iters; ++i) {
    const IterationRecord a = cpu.train_step();
    const IterationRecord b = gpu.train_step();
    ASSERT_TRUE(std::isfinite(b.loss)) << "iteration " << i + 1;
    EXPECT_NEAR(b.loss, a.loss, 2e-2 * std::abs(a.loss)) << "iteration " << i + 1;
    std::cout << "T5 iteration " << i + 1 << ": cpu fp32 loss " << a.loss << " gpu bf16 loss "
              << b.loss << "\n";
  }
}

// --fp8-format on the GPU (bf16 mixed precision with fp8 GEMMs in the transformer layers'
// linears) against the CPU's fp8 emulation (fp32 compute, the same quantisation) from the same
// init and data: losses agree within bf16 tolerance step for step, for both recipes and the
// Llama layer (SwiGLU, no biases: fc1 without a bias epilogue), and a longer run learns.
struct Fp8Case {
  const char* name;
  model::Fp8Format format;
  bool llama;
};

class TrainerFp8Gpu : public ::testing::TestWithParam<Fp8Case> {};
INSTANTIATE_TEST_SUITE_P(Recipes, TrainerFp8Gpu,
                         ::testing::Values(Fp8Case{"Hybrid", model::Fp8Format::kHybrid, false},
                                           Fp8Case{"E4M3", model::Fp8Format::kE4M3, false},
                                           Fp8Case{"HybridLlama", model::Fp8Format::kHybrid, true}),
                         [](const auto& info) { return info.param.name; });

TEST_P(TrainerFp8Gpu, TracksTheCpuFp8Run) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
  TrainConfig cfg = tiny_bf16_config();
  cfg.model.fp8.format = GetParam().format;
  if (GetParam().llama) make_llama(cfg);
  std::ostringstream log_cpu, log_gpu;
  cfg.device = "cpu";
  Trainer cpu(cfg, log_cpu);
  cfg.device = "cuda";
  cfg.bf16 = true;
  Trainer gpu(cfg, log_gpu);
  EXPECT_NE(log_gpu.str().find("tensorwise scales) in the transformer layers' linears"),
            std::string::npos)
      << log_gpu.str();
  for (int i = 0; i < cfg.train_iters; ++i) {
    const IterationRecord a = cpu.train_step();
    const IterationRecord b = gpu.train_step();
    ASSERT_TRUE(std::isfinite(b.loss)) << "iteration " << i + 1;
    ASSERT_TRUE(std::isfinite(b.grad_norm)) << "iteration " << i + 1;
    EXPECT_NEAR(b.loss, a.loss, 2e-2 * std::abs(a.loss)) << "iteration " << i + 1;
    EXPECT_NEAR(b.grad_norm, a.grad_norm, 0.1 * a.grad_norm) << "iteration " << i + 1;
    std::cout << "iteration " << i + 1 << ": cpu fp8 (fp32) loss " << a.loss
              << " gpu fp8 (bf16) loss " << b.loss << " | grad norm " << a.grad_norm << " vs "
              << b.grad_norm << "\n";
  }
}

TEST(TrainerFp8GpuLearning, LossFalls) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
  TrainConfig cfg = tiny_bf16_config();
  cfg.model.fp8.format = model::Fp8Format::kHybrid;
  cfg.device = "cuda";
  cfg.bf16 = true;
  cfg.train_iters = 60;
  std::ostringstream log;
  Trainer t(cfg, log);
  t.train();
  const auto& h = t.history();
  ASSERT_EQ(h.size(), 60u);
  EXPECT_LT(h.back().loss, h.front().loss - 1.0) << log.str();
}

}  // namespace
}  // namespace shardlm::train
