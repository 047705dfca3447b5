// TrainConfig: everything `shardlm train` needs, as typed sub-configs, validated in one place.
// Field names follow Megatron-LM's flags (--micro-batch-size -> micro_batch_size); the CLI maps
// flags and YAML keys onto these fields in one table (cli/train_flags.cc).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "shardlm/dist/parallel_layout.h"
#include "shardlm/model/recompute.h"
#include "shardlm/model/transformer_config.h"
#include "shardlm/optim/adamw.h"
#include "shardlm/optim/loss_scaler.h"
#include "shardlm/optim/lr_schedule.h"
#include "shardlm/parallel/pipeline_plan.h"

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
  // BERT (--model-type bert): Megatron's masking (--mask-prob) and short-sequence
  // (--short-seq-prob) probabilities.
  double mask_prob = 0.15;
  double short_seq_prob = 0.1;
  // T5 (--model-type t5): sentinel tokens <extra_id_i> added to the WordPiece vocabulary
  // (--vocab-extra-ids; Megatron's T5 uses 100).
  int vocab_extra_ids = 0;
};

struct LoggingConfig {
  int64_t log_interval = 100;
  int64_t eval_interval = 1000;
  int64_t eval_iters = 100;
  std::string log_jsonl;  // optional: one JSON object per logged iteration / evaluation
};

// Checkpoints and exits (Megatron's flags; policy in train/checkpointing.h).
struct CheckpointConfig {
  std::string save;                  // --save DIR
  int64_t save_interval = 0;         // --save-interval N (0: only at the end / on exit)
  std::string load;                  // --load DIR
  bool finetune = false;             // --finetune: weights only, iteration 0, fresh optimizer
  bool no_load_optim = false;        // --no-load-optim
  bool no_load_rng = false;          // --no-load-rng
  bool no_save_optim = false;        // --no-save-optim
  int64_t ckpt_step = -1;            // --ckpt-step N (-1: the latest)
  bool async_save = false;           // --async-save
  bool exit_signal_handler = false;  // --exit-signal-handler (SIGTERM/SIGINT: save, exit 0)
  int64_t exit_interval = 0;         // --exit-interval N
  double exit_duration_in_mins = 0;  // --exit-duration-in-mins M
  int64_t keep_last_checkpoints = 0; // --keep-last-checkpoints K (0: keep all)
};

// Parallel layout and data-parallel communication (Megatron's distributed flags).
struct ParallelConfig {
  int tensor_model_parallel_size = 1;    // --tensor-model-parallel-size
  int pipeline_model_parallel_size = 1;  // --pipeline-model-parallel-size
  int context_parallel_size = 1;         // --context-parallel-size (model/context_parallel.h)
  // --cp-comm-type: how attention sees the other ranks' tokens (model/context_parallel.h):
  // all_gather (K/V all-gathered, then each local chunk attends) or a2a (DeepSpeed-Ulysses:
  // all-to-alls trade tokens for heads; query groups per TP rank divisible by CP).
  std::string cp_comm_type = "all_gather";
  int expert_model_parallel_size = 1;    // --expert-model-parallel-size (reserved)
  bool sequence_parallel = false;        // --sequence-parallel (no-op with TP 1, as Megatron)
  bool use_distributed_optimizer = false;  // --use-distributed-optimizer
  bool overlap_grad_reduce = false;        // --overlap-grad-reduce
  bool overlap_param_gather = false;       // --overlap-param-gather
  int64_t ddp_bucket_size = 0;             // --ddp-bucket-size; 0: max(40M, 1M x DP) elements
  double distributed_timeout_minutes = 10;  // --distributed-timeout-minutes (Megatron: 10)
  // --distributed-backend: "nccl" (GPU ranks, one GPU each) or "gloo" (as torch's gloo: every
  // collective over host sockets, GPU tensors staged through host memory; slow, but GPU ranks
  // may share a GPU, so a multi-rank GPU job runs on a one-GPU machine). CPU ranks always use
  // the socket communicator.
  std::string distributed_backend = "nccl";
  // Pipeline layout (parallel/pipeline_partition.h); 0 = unset.
  int num_layers_per_virtual_pipeline_stage = 0;  // --num-layers-per-virtual-pipeline-stage
  int num_virtual_stages_per_pipeline_rank = 0;   // --num-virtual-stages-per-pipeline-rank
  int decoder_first_pipeline_num_layers = 0;      // --decoder-first-pipeline-num-layers
  int decoder_last_pipeline_num_layers = 0;       // --decoder-last-pipeline-num-layers
  // --pipeline-schedule: 1f1b, interleaved-1f1b (alias interleaved), all-forward-all-backward
  // (alias afab); "" = Megatron's choice (interleaved-1f1b with virtual stages, else 1f1b).
  std::string pipeline_schedule;
};

struct TrainConfig {
  model::TransformerConfig model;
  model::RecomputeConfig recompute;  // --recompute-granularity / -method / -num-layers
  ParallelConfig parallel;
  OptimizerConfig optimizer;
  DataConfig data;
  LoggingConfig logging;
  CheckpointConfig checkpoint;
  int64_t micro_batch_size = 0;   // required
  int64_t global_batch_size = 0;  // 0: micro × data-parallel size
  int64_t train_iters = 0;        // required
  uint64_t seed = 1234;
  std::string device = "auto";    // auto | cpu | cuda
  // --attention-backend (Megatron's flag): auto = cuDNN's fused attention where it applies,
  // ShardLM's flash kernels otherwise; fused = cuDNN only (an error where it cannot run); flash
  // = ShardLM's kernels only. CUDA only; the CPU has one (reference) attention. cuDNN draws its
  // own attention-dropout masks (ops/cuda/cudnn_attention.h); flash keeps ShardLM's.
  std::string attention_backend = "auto";
  std::string compute_dtype = "fp32";  // CPU: fp32 | fp64
  // --main-params-dtype: the master weights, main gradients and Adam moments. "fp32" keeps them
  // in the compute dtype (or fp32 under --bf16/--fp16). "fp64" (CPU, --compute-dtype fp32) is
  // the CPU's mixed precision: fp32 compute copies of fp64 master weights, the same code paths
  // as --bf16 on a GPU (compute copies, gradient folds and fusion, the distributed optimizer's
  // sharded master weights, checkpoints), so they are testable without a GPU.
  std::string main_params_dtype = "fp32";
  // Megatron's mixed precision: bf16 weights/activations for compute, fp32 master weights and
  // fp32 main gradients in the optimizer. CUDA only. --fp16 adds a dynamic loss scale.
  bool bf16 = false;
  bool fp16 = false;
  // Megatron's gradient-accumulation fusion (on unless --no-gradient-accumulation-fusion):
  // under --bf16/--fp16 the linear layers' weight-gradient GEMMs and the word embedding's
  // backward write the fp32 main gradients directly (model/parameter.h). No effect in fp32/fp64
  // runs.
  bool gradient_accumulation_fusion = true;
  // --fp16 loss scaling (--loss-scale, --initial-loss-scale, --min-loss-scale,
  // --loss-scale-window, --hysteresis); unused otherwise.
  optim::LossScalerConfig loss_scaler;
  // Derived: world size / (TP × PP × CP). The Trainer sets it from its RankContext's layout.
  int64_t data_parallel_size = 1;
  bool group_query_attention = false;  // Megatron's switch; --num-query-groups sets G

  // Throws Error(kInvalidConfig) naming the flag, the value and the fix.
  void validate() const;
  int64_t num_microbatches() const;
  optim::LrScheduleConfig lr_schedule() const;
  optim::AdamWConfig adamw() const;
  // The layout sizes for dist::ParallelLayout::create(world_size, ...).
  dist::ParallelSizes parallel_sizes() const;
  // Checks the parallel flags against a world of world_size ranks and the model (heads,
  // groups, ffn, vocab, sequence divisible by TP, ...); throws Error(kInvalidConfig).
  void validate_parallel(int world_size) const;
  // The pipeline flags as a plan config for a data-parallel size (schedule aliases resolved).
  parallel::PipelinePlanConfig pipeline_plan_config(int64_t data_parallel) const;
  bool pipeline_flags_given() const;
  // --distributed-timeout-minutes as a duration (every collective's deadline).
  std::chrono::milliseconds distributed_timeout() const;
};

}  // namespace shardlm::train
