// TrainConfig: everything `shardlm train` needs, as typed sub-configs, validated in one place.
// Field names follow Megatron-LM's flags (--micro-batch-size -> micro_batch_size); the CLI maps
// flags and YAML keys onto these fields in one table (cli/train_flags.cc).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "shardlm/model/transformer_config.h"
#include "shardlm/optim/adamw.h"
#include "shardlm/optim/lr_schedule.h"

namespace shardlm::train {

struct OptimizerConfig {
  double lr = -1;  // required (Megatron has no default)
  double min_lr = 0.0;
  std::string lr_decay_style = "linear";
  int64_t lr_warmup_iters = 0;
  double lr_warmup_fraction = -1;  // < 0: unset; else warmup = fraction × decay iters
  int64_t lr_decay_iters = 0;      // 0: = train_iters
  double weight_decay = 0.01;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_eps = 1e-8;
  double clip_grad = 1.0;
};

struct DataConfig {
  bool mock_data = false;
  std::vector<std::string> data_path;   // Megatron --data-path [weight] prefix ...
  std::string split = "969, 30, 1";
  std::string data_cache_path;
  std::string tokenizer_type;
  std::string vocab_file, merge_file, tokenizer_model;
  bool eod_mask_loss = false;  // exclude end-of-document targets from the loss
  int32_t eod_id = -1;         // set from the tokenizer
};

struct LoggingConfig {
  int64_t log_interval = 100;
  int64_t eval_interval = 1000;
  int64_t eval_iters = 100;
  std::string log_jsonl;  // optional: one JSON object per logged iteration / evaluation
};

struct TrainConfig {
  model::TransformerConfig model;
  OptimizerConfig optimizer;
  DataConfig data;
  LoggingConfig logging;
  int64_t micro_batch_size = 0;   // required
  int64_t global_batch_size = 0;  // 0: micro × data-parallel size
  int64_t train_iters = 0;        // required
  uint64_t seed = 1234;
  std::string device = "auto";    // auto | cpu | cuda
  std::string compute_dtype = "fp32";  // CPU: fp32 | fp64
  // Megatron's mixed precision: bf16 weights/activations for compute, fp32 master weights and
  // fp32 main gradients in the optimizer. CUDA only. fp16 (dynamic loss scaling) is pending.
  bool bf16 = false;
  bool fp16 = false;
  int64_t data_parallel_size = 1;
  bool group_query_attention = false;  // Megatron's switch; --num-query-groups sets G

  // Throws Error(kInvalidConfig) naming the flag, the value and the fix.
  void validate() const;
  int64_t num_microbatches() const;
  optim::LrScheduleConfig lr_schedule() const;
  optim::AdamWConfig adamw() const;
};

}  // namespace shardlm::train
