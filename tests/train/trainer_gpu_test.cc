// The whole training step on the GPU against the CPU reference: same config, same seed, same
// data, dropout on (masks are bit-identical across backends), fp32 on both. Losses and grad
// norms must agree to fp32 accuracy for several optimizer steps.
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>

#include "shardlm/tensor/device.h"
#include "shardlm/train/trainer.h"

namespace shardlm::train {
namespace {

TrainConfig gpu_vs_cpu_config() {
  TrainConfig cfg;
  cfg.model.num_layers = 2;
  cfg.model.hidden_size = 64;
  cfg.model.num_attention_heads = 4;
  cfg.model.num_query_groups = 2;
  cfg.model.seq_length = 32;
  cfg.model.vocab_size = 200;
  cfg.model.hidden_dropout = 0.1;
  cfg.model.attention_dropout = 0.1;
  cfg.micro_batch_size = 4;
  cfg.global_batch_size = 8;
  cfg.train_iters = 6;
  cfg.optimizer.lr = 1e-3;
  cfg.optimizer.lr_warmup_iters = 1;
  cfg.data.mock_data = true;
  cfg.logging.eval_iters = 0;
  return cfg;
}

void expect_gpu_follows_cpu(TrainConfig cfg) {
  std::ostringstream log_cpu, log_gpu;
  cfg.device = "cpu";
  Trainer cpu(cfg, log_cpu);
  cfg.device = "cuda";
  Trainer gpu(cfg, log_gpu);
  for (int i = 0; i < cfg.train_iters; ++i) {
    const IterationRecord a = cpu.train_step();
    const IterationRecord b = gpu.train_step();
    EXPECT_NEAR(b.loss, a.loss, 1e-4 * std::abs(a.loss)) << "iteration " << i + 1;
    EXPECT_NEAR(b.grad_norm, a.grad_norm, 1e-3 * a.grad_norm) << "iteration " << i + 1;
    std::cout << "iteration " << i + 1 << ": cpu loss " << a.loss << " gpu loss " << b.loss
              << " | grad norm " << a.grad_norm << " vs " << b.grad_norm << "\n";
  }
}

TEST(TrainerGpu, MatchesCpuStepForStep) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
  expect_gpu_follows_cpu(gpu_vs_cpu_config());
}

// MoE layers (layers/moe_mlp.h): the router, the host-side routing, the row gathers and the
// per-expert GEMMs on the GPU follow the CPU (fp32, so the routing choices agree).
TEST(TrainerGpu, MixtureOfExpertsMatchesCpuStepForStep) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
  TrainConfig cfg = gpu_vs_cpu_config();
  cfg.model.num_experts = 4;
  cfg.model.moe_router_topk = 2;
  cfg.model.moe_aux_loss_coeff = 0.01;
  cfg.model.moe_ffn_hidden_size = 96;
  expect_gpu_follows_cpu(cfg);
  cfg.model.swiglu = true;
  cfg.model.moe_router_pre_softmax = true;
  cfg.model.moe_layer_freq = 2;
  expect_gpu_follows_cpu(cfg);
  // Token dropping (by position, so the choice of dropped pairs is the routing's alone): the
  // zeroed row of dropped pairs in the device buffers.
  cfg.model.moe_expert_capacity_factor = 0.5;
  cfg.model.moe_token_drop_by_position = true;
  expect_gpu_follows_cpu(cfg);
  // The sequence-level load-balancing loss (per-sequence slices of the router's rows), the router
  // z-loss and the routing-weight scale.
  cfg.model.moe_expert_capacity_factor = 0;
  cfg.model.moe_seq_aux_loss = true;
  cfg.model.moe_z_loss_coeff = 0.01;
  cfg.model.moe_router_topk_scaling_factor = 1.5;
  expect_gpu_follows_cpu(cfg);
}

}  // namespace
}  // namespace shardlm::train
