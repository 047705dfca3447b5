#include "shardlm/train/train_config.h"

#include <optional>
#include <utility>

#include "shardlm/base/error.h"

namespace shardlm::train {

namespace {
[[noreturn]] void bad(const std::string& m) { throw Error(ErrorKind::kInvalidConfig, m); }
std::string s(int64_t v) { return std::to_string(v); }
}  // namespace

void TrainConfig::validate() const {
  if (micro_batch_size <= 0)
    bad("--micro-batch-size " + s(micro_batch_size) + " must be a positive integer");
  if (train_iters <= 0) bad("--train-iters " + s(train_iters) + " must be a positive integer");
  if (global_batch_size < 0) bad("--global-batch-size " + s(global_batch_size) + " must be positive");
  const int64_t per_step = micro_batch_size * data_parallel_size;
  if (global_batch_size > 0 && global_batch_size % per_step != 0)
    bad("--global-batch-size " + s(global_batch_size) + " is not divisible by --micro-batch-size " +
        s(micro_batch_size) + " x data-parallel size " + s(data_parallel_size) + " = " +
        s(per_step) + "; use a multiple of " + s(per_step));
  if (optimizer.lr < 0) bad("--lr is required (e.g. --lr 3e-4)");
  optim::lr_decay_style_from_name(optimizer.lr_decay_style);
  if (optimizer.lr_warmup_fraction >= 0 && optimizer.lr_warmup_iters > 0)
    bad("--lr-warmup-fraction and --lr-warmup-iters are both set; use only one");
  if (optimizer.lr_warmup_fraction > 1) bad("--lr-warmup-fraction must be in [0, 1]");
  if (optimizer.lr_decay_iters < 0) bad("--lr-decay-iters must not be negative");
  if (optimizer.weight_decay < 0) bad("--weight-decay must not be negative");
  if (!(optimizer.adam_beta1 >= 0 && optimizer.adam_beta1 < 1))
    bad("--adam-beta1 must be in [0, 1)");
  if (!(optimizer.adam_beta2 >= 0 && optimizer.adam_beta2 < 1))
    bad("--adam-beta2 must be in [0, 1)");
  if (!(optimizer.adam_eps > 0)) bad("--adam-eps must be positive");
  if (optimizer.clip_grad < 0) bad("--clip-grad must not be negative (0 disables clipping)");
  optim::LearningRateSchedule check_schedule(lr_schedule());  // throws on inconsistency
  if (logging.log_interval <= 0) bad("--log-interval must be a positive integer");
  if (logging.eval_interval <= 0) bad("--eval-interval must be a positive integer");
  if (logging.eval_iters < 0) bad("--eval-iters must not be negative");
  if (!data.mock_data && data.data_path.empty())
    bad("no training data: pass --data-path PREFIX (a preprocessed .bin/.idx corpus) or "
        "--mock-data");
  if (device != "auto" && device != "cpu" && device != "cuda")
    bad("--device '" + device + "' is not one of auto, cpu, cuda");
  if (compute_dtype != "fp32" && compute_dtype != "fp64")
    bad("--compute-dtype '" + compute_dtype + "' is not one of fp32, fp64");
  if (main_params_dtype != "fp32" && main_params_dtype != "fp64")
    bad("--main-params-dtype '" + main_params_dtype + "' is not one of fp32, fp64");
  if (main_params_dtype == "fp64" && (bf16 || fp16 || compute_dtype != "fp32" || device == "cuda"))
    bad("--main-params-dtype fp64 is the CPU's mixed precision (fp32 compute, fp64 master "
        "weights): it needs --device cpu and --compute-dtype fp32, without --bf16 / --fp16");
  if (fp16 && bf16) bad("--fp16 and --bf16 are both set; choose one mixed precision");
  if (fp16 && device == "cpu")
    bad("--fp16 needs --device cuda; the CPU backend computes in fp32/fp64");
  if (fp16 && compute_dtype != "fp32")
    bad("--fp16 and --compute-dtype " + compute_dtype +
        " conflict: --fp16 keeps fp32 master weights; drop --compute-dtype");
  loss_scaler.validate();
  recompute.validate(model.num_layers);
  if (attention_backend == "unfused" || attention_backend == "local")
    bad("--attention-backend " + attention_backend +
        ": ShardLM has no unfused attention (the S x S score matrix is never materialised); use "
        "auto, fused (cuDNN) or flash (ShardLM's kernels)");
  if (attention_backend != "auto" && attention_backend != "fused" && attention_backend != "flash")
    bad("--attention-backend " + attention_backend + " is not one of auto, fused, flash");
  if (model.fp8.enabled() && device == "cuda" && !bf16 && !fp16)
    bad("--fp8-format on the GPU needs --bf16 or --fp16 (the fp8 GEMMs take and give 16-bit "
        "activations, as in Megatron); add --bf16");
  if (bf16 && device == "cpu")
    bad("--bf16 needs --device cuda; the CPU backend computes in fp32/fp64");
  if (bf16 && compute_dtype != "fp32")
    bad("--bf16 and --compute-dtype " + compute_dtype +
        " conflict: --bf16 keeps fp32 master weights; drop --compute-dtype");
  if (group_query_attention && model.num_query_groups == 0)
    bad("--group-query-attention needs --num-query-groups G (G must divide the head count)");
  const ParallelConfig& par = parallel;
  if (par.tensor_model_parallel_size < 1)
    bad("--tensor-model-parallel-size " + s(par.tensor_model_parallel_size) + " must be >= 1");
  if (par.pipeline_model_parallel_size < 1)
    bad("--pipeline-model-parallel-size " + s(par.pipeline_model_parallel_size) + " must be >= 1");
  for (auto [flag, v] : {std::pair{"--num-layers-per-virtual-pipeline-stage",
                                   par.num_layers_per_virtual_pipeline_stage},
                         std::pair{"--num-virtual-stages-per-pipeline-rank",
                                   par.num_virtual_stages_per_pipeline_rank},
                         std::pair{"--decoder-first-pipeline-num-layers",
                                   par.decoder_first_pipeline_num_layers},
                         std::pair{"--decoder-last-pipeline-num-layers",
                                   par.decoder_last_pipeline_num_layers}})
    if (v < 0) bad(std::string(flag) + " " + s(v) + " must be positive");
  // The layer partition (divisibility, virtual and uneven stages) is checked here; the
  // schedule, which needs the data-parallel size, in validate_parallel.
  if (pipeline_flags_given())
    parallel::PipelinePartition::create(pipeline_plan_config(data_parallel_size).partition);
  if (par.cp_comm_type != "all_gather" && par.cp_comm_type != "a2a")
    bad("--cp-comm-type " + par.cp_comm_type +
        " is not implemented: ShardLM's context parallelism all-gathers keys and values "
        "(all_gather) or trades tokens for heads with all-to-alls (a2a, DeepSpeed-Ulysses); p2p "
        "(ring) and a2a+p2p are not available yet. Use --cp-comm-type all_gather or a2a");

  if (par.overlap_param_gather && !par.use_distributed_optimizer)
    bad("--overlap-param-gather needs --use-distributed-optimizer (only the distributed "
        "optimizer gathers parameters); add it or drop --overlap-param-gather");
  if (par.overlap_param_gather && !par.overlap_grad_reduce)
    bad("--overlap-param-gather needs --overlap-grad-reduce (as Megatron); add it");
  if (par.ddp_bucket_size < 0)
    bad("--ddp-bucket-size " + s(par.ddp_bucket_size) + " must be positive (elements per bucket)");
  if (par.distributed_backend != "nccl" && par.distributed_backend != "gloo")
    bad("--distributed-backend must be nccl or gloo, got '" + par.distributed_backend + "'");
  if (!(par.distributed_timeout_minutes > 0))
    bad("--distributed-timeout-minutes must be positive, got " +
        std::to_string(par.distributed_timeout_minutes));
  const CheckpointConfig& ck = checkpoint;
  if (ck.save_interval < 0) bad("--save-interval must not be negative");
  if (ck.keep_last_checkpoints < 0) bad("--keep-last-checkpoints must not be negative");
  if (ck.exit_interval < 0) bad("--exit-interval must not be negative");
  if (ck.exit_duration_in_mins < 0) bad("--exit-duration-in-mins must not be negative");
  if (ck.ckpt_step >= 0 && ck.load.empty())
    bad("--ckpt-step " + s(ck.ckpt_step) + " needs --load DIR (the checkpoint directory)");
  if (ck.finetune && ck.load.empty())
    bad("--finetune needs --load DIR (the checkpoint to fine-tune from)");
  model.validate();
}

dist::ParallelSizes TrainConfig::parallel_sizes() const {
  dist::ParallelSizes sizes;
  sizes.tensor = parallel.tensor_model_parallel_size;
  sizes.pipeline = parallel.pipeline_model_parallel_size;
  sizes.context = parallel.context_parallel_size;
  sizes.expert = parallel.expert_model_parallel_size;
  return sizes;
}

void TrainConfig::validate_parallel(int world_size) const {
  // Throws naming the flags when world_size is not a multiple of TP x PP x CP.
  const dist::ParallelLayout layout = dist::ParallelLayout::create(world_size, parallel_sizes());
  dist::ModelDims dims;
  dims.num_layers = 0;  // the pipeline partition checks layers (uneven stages allowed)
  dims.num_attention_heads = model.num_attention_heads;
  dims.num_query_groups = model.query_groups();
  dims.num_experts = model.num_experts;
  dims.ffn_hidden_size = model.ffn_size();
  dims.seq_length = model.seq_length;
  dims.sequence_parallel = parallel.sequence_parallel && parallel.tensor_model_parallel_size > 1;
  layout.validate_model(dims);
  // The model's own TP rules (query groups, vocabulary padding, sequence split), with the
  // vocabulary padded for this TP size as the trainer builds it.
  model::TransformerConfig tp_model = model;
  tp_model.tensor_model_parallel_size = layout.tp();
  tp_model.validate_tensor_parallel(layout.tp(), dims.sequence_parallel);
  tp_model.validate_fp8(layout.tp(), layout.cp());
  if (parallel.cp_comm_type == "a2a") tp_model.validate_cp_all_to_all(layout.tp(), layout.cp());
  if (model.bert() && layout.cp() > 1)
    bad("BERT runs bidirectional attention over the whole padded sequence: "
        "--context-parallel-size " + s(layout.cp()) +
        " is not supported for it (as in Megatron); use 1");
  if (model.t5()) {
    if (layout.cp() > 1)
      bad("T5 attends over whole padded sequences: --context-parallel-size " + s(layout.cp()) +
          " is not supported for --model-type t5 (as in Megatron); use 1");
    if (layout.pp() > 1)
      bad("--pipeline-model-parallel-size " + s(layout.pp()) +
          ": T5's encoder and decoder run in one pipeline stage here; use 1 (and tensor or "
          "data parallelism to spread the model)");
    model::TransformerConfig decoder = tp_model.stack_config(model::T5Stack::kDecoder);
    decoder.validate_tensor_parallel(layout.tp(), dims.sequence_parallel);
  }
  const int64_t per_step = micro_batch_size * layout.dp();
  if (global_batch_size > 0 && global_batch_size % per_step != 0)
    bad("--global-batch-size " + s(global_batch_size) + " is not divisible by --micro-batch-size " +
        s(micro_batch_size) + " x data-parallel size " + s(layout.dp()) + " (world " +
        s(world_size) + " / (TP " + s(layout.tp()) + " x PP " + s(layout.pp()) + " x CP " +
        s(layout.cp()) + ")) = " + s(per_step) + "; use a multiple of " + s(per_step));
  // Partition + micro-batches + schedule (M a multiple of P for interleaving, ...).
  if (pipeline_flags_given()) parallel::make_pipeline_plan(pipeline_plan_config(layout.dp()));
}

bool TrainConfig::pipeline_flags_given() const {
  const ParallelConfig& p = parallel;
  return p.pipeline_model_parallel_size > 1 || p.num_layers_per_virtual_pipeline_stage > 0 ||
         p.num_virtual_stages_per_pipeline_rank > 0 || p.decoder_first_pipeline_num_layers > 0 ||
         p.decoder_last_pipeline_num_layers > 0 || !p.pipeline_schedule.empty();
}

parallel::PipelinePlanConfig TrainConfig::pipeline_plan_config(int64_t data_parallel) const {
  const ParallelConfig& p = parallel;
  auto given = [](int v) { return v > 0 ? std::optional<int>(v) : std::nullopt; };
  parallel::PipelinePlanConfig c;
  c.partition.num_layers = static_cast<int>(model.num_layers);
  c.partition.pipeline_parallel_size = p.pipeline_model_parallel_size;
  c.partition.num_layers_per_virtual_stage = given(p.num_layers_per_virtual_pipeline_stage);
  c.partition.num_virtual_stages_per_rank = given(p.num_virtual_stages_per_pipeline_rank);
  c.partition.first_stage_num_layers = given(p.decoder_first_pipeline_num_layers);
  c.partition.last_stage_num_layers = given(p.decoder_last_pipeline_num_layers);
  c.micro_batch_size = micro_batch_size;
  c.data_parallel_size = data_parallel;
  c.global_batch_size =
      global_batch_size > 0 ? global_batch_size : micro_batch_size * data_parallel;
  c.schedule = p.pipeline_schedule == "interleaved" ? "interleaved-1f1b"
               : p.pipeline_schedule == "afab"      ? "all-forward-all-backward"
                                                    : p.pipeline_schedule;
  return c;
}

std::chrono::milliseconds TrainConfig::distributed_timeout() const {
  return std::chrono::milliseconds(
      static_cast<int64_t>(parallel.distributed_timeout_minutes * 60'000.0));
}

int64_t TrainConfig::num_microbatches() const {
  const int64_t per_step = micro_batch_size * data_parallel_size;
  return global_batch_size > 0 ? global_batch_size / per_step : 1;
}

optim::LrScheduleConfig TrainConfig::lr_schedule() const {
  optim::LrScheduleConfig c;
  c.max_lr = optimizer.lr;
  c.min_lr = optimizer.min_lr;
  c.decay_style = optim::lr_decay_style_from_name(optimizer.lr_decay_style);
  c.decay_steps = optimizer.lr_decay_iters > 0 ? optimizer.lr_decay_iters : train_iters;
  c.warmup_steps = optimizer.lr_warmup_fraction >= 0
                       ? static_cast<int64_t>(optimizer.lr_warmup_fraction *
                                              static_cast<double>(c.decay_steps))
                       : optimizer.lr_warmup_iters;
  return c;
}

optim::AdamWConfig TrainConfig::adamw() const {
  return {optimizer.adam_beta1, optimizer.adam_beta2, optimizer.adam_eps, optimizer.weight_decay};
}

}  // namespace shardlm::train
