// Layout planner: which parallel layout to train a model with on a given set of GPUs, instead of
// guessing. `shardlm plan` prints its answer.
//
// Search: every layout Megatron's flags can express on the GPUs — tensor parallel size TP (a
// divisor of the GPUs per node: TP stays inside a node), pipeline size PP, context-parallel size
// CP (a divisor of GPUs / (TP·PP) that splits the sequence into 2·CP chunks: long sequences),
// data-parallel size DP = GPUs / (TP·CP·PP), virtual pipeline chunks V (2..8, splitting a
// stage's layers evenly), uneven first / last stages (one layer fewer where the embedding or the
// output layer sits, with V = 1), micro-batch size (every divisor of the per-rank batch up to
// 64), activation recomputation (below) — with sequence parallelism whenever TP > 1 and the
// distributed optimizer with overlapped gradient reduction and parameter gather whenever
// DP·CP > 1 (gradients are reduced over data x context ranks; Megatron's recommended settings:
// they cost no time and save memory). Choices the caller fixes are not searched (a fixed TP may
// cross nodes; its collectives then run at the network's bandwidth). Layouts the model cannot be
// split into (heads, query groups, FFN, vocabulary, sequence or layers not divisible, batch not
// divisible, ...) are rejected with the trainer's own validation, and counted by reason.
//
// Memory is exact: each candidate's pipeline stages are built as the trainer builds them
// (train/rank_model.h, on shape-only communicators), and its MemoryPlan is the one the trainer
// will print, check and allocate. A layout fits when its busiest stage's plan plus
// Cluster::reserved_bytes (CUDA context, NCCL buffers, allocator slack) fits the GPU.
//
// Time is an estimate, stated as one: the model FLOPs of train/metrics.h run at a fixed
// fraction of the GPU's peak (Cluster::achieved_mfu, by default calibrated on what ShardLM
// measured on one GPU; bench/RESULTS.md), on a rank's seq/CP tokens of each sequence;
// tensor- and context-parallel collectives (not overlapped: CP all-gathers each layer's fused
// QKV rows, and its backward gathers again and reduce-scatters the key/value gradients; with
// --cp-comm-type a2a it trades the rank's own QKV and attention-output rows instead) and
// data-parallel ones (overlapped with the last micro-batch's backward and the next forward) cost
// ring-algorithm bytes over the node's or the network's bandwidth; the pipeline's step is
// simulated with the schedule's own action lists (parallel/schedule_simulator.h), so bubbles, uneven first and
// last stages and activation transfers are counted as the executor would run them; the
// optimizer step is bound by memory bandwidth. Kernel efficiency at smaller per-rank shapes is
// not modelled; a small fixed cost per layer and micro-batch stands for launch overheads.
//
// Thread contract: pure function of its arguments.
//
//   PlanResult r = plan_layouts(cfg, {.num_gpus = 8}, {});
//   const Candidate& best = r.candidates.front();   // fits, fastest estimate
//   std::string flags = join(best.flags());          // "--tensor-model-parallel-size 2 ..."
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "shardlm/model/recompute.h"
#include "shardlm/train/memory_plan.h"
#include "shardlm/train/train_config.h"

namespace shardlm::plan {

inline constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// The GPUs the job will run on, and the numbers the time estimate assumes.
struct Cluster {
  int num_gpus = 1;
  int gpus_per_node = 8;                       // TP never crosses a node
  double gpu_memory_bytes = 80.0 * kGiB;       // per GPU (H100 SXM: 80 GiB)
  double reserved_bytes = 3.0 * kGiB;          // CUDA context, NCCL buffers, allocator slack
  double peak_flops = 989e12;                  // dense bf16 (H100/H200 SXM)
  // Of peak, for the model FLOPs: with the overheads below, 0.6 reproduces the measured
  // 61,980 tokens/s of the 1.3B GPT (micro-batch 8 x 2048) on one H100 (bench/RESULTS.md).
  double achieved_mfu = 0.6;
  double intra_node_bandwidth = 360e9;         // bytes/s per GPU, collectives over NVLink
  double inter_node_bandwidth = 45e9;          // bytes/s per GPU, collectives over the network
  double memory_bandwidth = 3.35e12;           // bytes/s of HBM (optimizer step)
  double per_layer_overhead_s = 100e-6;        // per layer and micro-batch (launches, small ops)
  // --fp8-format: the transformer layers' linears (forward + backward, quantisation included)
  // run this many times faster than in bf16: 1.02 measured for the 1.3B layer's four linears on
  // an H100 (ops_bench --fp8, 2026-12-07; bench/RESULTS.md).
  double fp8_linear_speedup = 1.02;
};

// Activation recomputation as `shardlm train` takes it (--recompute-granularity / -method /
// -num-layers). The search tries none, selective, full of every layer (uniform, 1), and full
// of the first k layers of each model chunk (block) for k a quarter, half and three quarters
// of the chunk's layers.
model::RecomputeConfig no_recompute();
model::RecomputeConfig selective_recompute();
model::RecomputeConfig full_recompute(const std::string& method = "uniform", int64_t layers = 1);
// "none", "selective", "full", "full block 6", "full uniform 2"
std::string recompute_label(const model::RecomputeConfig& r);

// Choices the caller fixed (the flags given on the command line); unset ones are searched.
struct FixedChoices {
  std::optional<int> tensor_parallel;
  std::optional<int> pipeline_parallel;
  std::optional<int> context_parallel;  // 1 keeps context parallelism off
  std::optional<int> expert_parallel;   // --expert-model-parallel-size (MoE models)
  std::optional<int> virtual_chunks;  // V per pipeline rank (1: plain 1F1B)
  // {first, last} stage layers (--decoder-first/last-pipeline-num-layers; 0 = unset): {0, 0}
  // fixes the even split. Given in the config instead, they are kept and not searched.
  std::optional<std::pair<int, int>> stage_layers;
  std::optional<int64_t> micro_batch_size;
  std::optional<bool> sequence_parallel;
  std::optional<bool> distributed_optimizer;
  std::optional<model::RecomputeConfig> recompute;
};

struct Candidate {
  int tp = 1, pp = 1, cp = 1, dp = 1, virtual_chunks = 1;
  int ep = 1;  // expert-parallel ranks among the data x context ranks (MoE models)
  // --decoder-first/last-pipeline-num-layers (0: unset, the layers split evenly).
  int first_stage_layers = 0, last_stage_layers = 0;
  int64_t micro_batch_size = 1, num_microbatches = 1;
  bool sequence_parallel = false, distributed_optimizer = false;
  model::RecomputeConfig recompute;
  // Megatron's overlap settings, on wherever there is a gradient reduction to overlap: over the
  // data x context ranks, so CP alone has one too.
  int grad_ranks() const { return dp * cp; }
  bool overlap_grad_reduce() const { return grad_ranks() > 1; }
  bool overlap_param_gather() const { return distributed_optimizer && grad_ranks() > 1; }

  std::vector<train::MemoryPlan> stage_memory;  // [PP] each pipeline stage's plan
  int memory_stage = 0;      // the stage that needs the most
  bool fits = false;         // memory().total() + reserved <= GPU memory
  const train::MemoryPlan& memory() const { return stage_memory.at(static_cast<size_t>(memory_stage)); }

  // Seconds per training step (estimate): the pipeline's simulated makespan (compute, TP and
  // CP collectives, activation transfers, bubble), then the exposed data-parallel
  // communication, the tied-embedding all-reduce and the optimizer step.
  double compute_s = 0;        // busiest rank's compute, TP and CP collectives included
  double tp_comm_s = 0;        // of which tensor-parallel collectives
  double cp_comm_s = 0;        // of which context-parallel collectives (QKV gathers, scatters)
  double ep_comm_s = 0;        // of which expert-parallel all-to-alls (MoE token exchange)
  double pipeline_s = 0;       // the simulated makespan (≥ compute_s: the bubble)
  double dp_exposed_s = 0;     // data-parallel reduction (and gather) not hidden by compute
  double embedding_sync_s = 0; // first/last stage word-embedding gradient all-reduce (PP > 1)
  double optimizer_s = 0;
  double step_s = 0;
  double tokens_per_s_per_gpu = 0;
  double mfu = 0;  // model FLOPs per GPU over peak

  double bubble_fraction() const { return compute_s > 0 ? pipeline_s / compute_s - 1 : 0; }
  // The train flags that select this layout ("--tensor-model-parallel-size", "2", ...).
  std::vector<std::string> flags() const;
  // "TP 2 x PP 2 (V 2) x DP 2, micro-batch 4, recompute selective" ("... x CP 2 x DP 2" with CP)
  std::string describe() const;
};

struct PlanResult {
  std::vector<Candidate> candidates;  // fitting ones first, each group by estimated step time
  // Layouts the model or batch cannot be split into, by reason: the validation's message (the
  // first seen of those that differ only in numbers) and how many layouts it rejected.
  std::map<std::string, int> rejected;
  int64_t parameters = 0;       // global, tied output layer counted once
  double flops_per_token = 0;   // train/metrics.h
  int64_t tokens_per_step = 0;  // global batch × sequence length

  int fitting() const;
};

// cfg: the model, --global-batch-size (required), precision and the fixed choices' flags as
// `shardlm train` parses them; data, iterations and learning-rate flags are not needed.
// Throws Error(kInvalidConfig) for an unusable request (no global batch, GPUs not a multiple of
// the per-node count, ...). Candidates that do not fit are returned too (fits == false).
PlanResult plan_layouts(const train::TrainConfig& cfg, const Cluster& cluster,
                        const FixedChoices& fixed);

}  // namespace shardlm::plan
