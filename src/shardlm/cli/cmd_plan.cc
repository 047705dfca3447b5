// `shardlm plan`: which parallel layout to train a model with on N GPUs (plan/layout_planner.h).
// Takes the model, batch and precision flags of `shardlm train` (so the same command line or
// --config file works) plus the GPUs; prints the layouts ranked by estimated speed among those
// that fit, the best one's flags and the launch line. Layout flags given on the command line or
// in the --config file (--tensor-model-parallel-size, --micro-batch-size,
// --recompute-granularity, ...) are kept fixed, so a training config is planned as written
// except for what it leaves out; the others are searched.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "shardlm/base/error.h"
#include "shardlm/cli/commands.h"
#include "shardlm/cli/train_flags.h"
#include "shardlm/plan/layout_planner.h"
#include "shardlm/train/training_data.h"

namespace shardlm::cli {

namespace {

struct PlanOptions {
  plan::Cluster cluster;
  double gpu_memory_gib = 80, reserved_gib = 3;
  double peak_tflops = 989, intra_gbs = 360, inter_gbs = 45, hbm_gbs = 3350;
  int top = 10;
  std::string json;
};

std::string fmt(const char* f, auto... args) {
  char buf[512];
  std::snprintf(buf, sizeof(buf), f, args...);
  return buf;
}

std::string with_commas(double v) {
  std::string s = std::to_string(static_cast<long long>(std::llround(v)));
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& x : v) s += (s.empty() ? "" : " ") + x;
  return s;
}

bool given(CLI::App& cmd, const std::string& flag) { return cmd.get_option(flag)->count() > 0; }

plan::FixedChoices fixed_choices(CLI::App& cmd, const train::TrainConfig& cfg) {
  plan::FixedChoices f;
  const train::ParallelConfig& p = cfg.parallel;
  if (given(cmd, "--tensor-model-parallel-size")) f.tensor_parallel = p.tensor_model_parallel_size;
  if (given(cmd, "--pipeline-model-parallel-size"))
    f.pipeline_parallel = p.pipeline_model_parallel_size;
  // 1 too: --context-parallel-size 1 keeps context parallelism out of the search.
  if (given(cmd, "--context-parallel-size")) f.context_parallel = p.context_parallel_size;
  if (given(cmd, "--expert-model-parallel-size"))
    f.expert_parallel = p.expert_model_parallel_size;
  if (given(cmd, "--num-virtual-stages-per-pipeline-rank"))
    f.virtual_chunks = p.num_virtual_stages_per_pipeline_rank;
  if (given(cmd, "--num-layers-per-virtual-pipeline-stage")) {
    SHARDLM_REQUIRE(f.pipeline_parallel && p.num_layers_per_virtual_pipeline_stage > 0 &&
                        cfg.model.num_layers % (*f.pipeline_parallel *
                                                p.num_layers_per_virtual_pipeline_stage) == 0,
                    ErrorKind::kInvalidConfig,
                    "--num-layers-per-virtual-pipeline-stage needs --pipeline-model-parallel-size "
                    "too, with --num-layers a multiple of their product (or pass "
                    "--num-virtual-stages-per-pipeline-rank V, or neither and let plan choose)");
    f.virtual_chunks = static_cast<int>(cfg.model.num_layers /
                                        (*f.pipeline_parallel * p.num_layers_per_virtual_pipeline_stage));
  }
  if (given(cmd, "--micro-batch-size")) f.micro_batch_size = cfg.micro_batch_size;
  // The value, not the presence: --sequence-parallel=false fixes SP off.
  if (given(cmd, "--sequence-parallel")) f.sequence_parallel = p.sequence_parallel;
  if (given(cmd, "--use-distributed-optimizer"))
    f.distributed_optimizer = p.use_distributed_optimizer;
  // --recompute-granularity (with its method and layers, which train checks) or
  // --recompute-activations fixes recompute; --no-recompute-norm-activation carries into every
  // candidate.
  if (!cfg.recompute.granularity.empty()) f.recompute = cfg.recompute;
  return f;
}

// ", or drop a fixed layout flag (--tensor-model-parallel-size, ...)" when any choice was
// fixed, else "": what to add to a message about layouts that could not be found.
std::string drop_fixed_hint(const plan::FixedChoices& f) {
  std::string flags;
  for (const auto& [fixed, flag] :
       {std::pair{f.tensor_parallel.has_value(), "--tensor-model-parallel-size"},
        std::pair{f.pipeline_parallel.has_value(), "--pipeline-model-parallel-size"},
        std::pair{f.context_parallel.has_value(), "--context-parallel-size"},
        std::pair{f.expert_parallel.has_value(), "--expert-model-parallel-size"},
        std::pair{f.virtual_chunks.has_value(), "virtual stages"},
        std::pair{f.stage_layers.has_value(), "--decoder-first/last-pipeline-num-layers"},
        std::pair{f.micro_batch_size.has_value(), "--micro-batch-size"},
        std::pair{f.sequence_parallel.has_value(), "--sequence-parallel"},
        std::pair{f.distributed_optimizer.has_value(), "--use-distributed-optimizer"},
        std::pair{f.recompute.has_value(), "--recompute-*"}})
    if (fixed) flags += (flags.empty() ? "" : ", ") + std::string(flag);
  return flags.empty() ? "" : ", or drop a fixed layout flag (" + flags + ")";
}

void print_table(std::ostream& out, const plan::PlanResult& r, const plan::Cluster& cl, int top) {
  out << "   #  TP  PP  CP  V  first/last  DP  EP  mbs  SP  distopt  recompute      memory/GPU"
         "     step s  tokens/s/GPU    MFU  bubble  TP comm s  CP comm s  EP comm s  DP exposed s\n";
  int shown = 0;
  for (const plan::Candidate& c : r.candidates) {
    if (shown == top) break;
    const bool fits = c.fits;
    const std::string uneven =
        c.first_stage_layers || c.last_stage_layers
            ? (c.first_stage_layers ? std::to_string(c.first_stage_layers) : "-") + "/" +
                  (c.last_stage_layers ? std::to_string(c.last_stage_layers) : "-")
            : "-";
    out << fmt("%4d %3d %3d %3d %2d  %-10s %3d %3d %4lld  %-3s %-8s %-14s %7.2f GiB", ++shown,
               c.tp, c.pp, c.cp, c.virtual_chunks, uneven.c_str(), c.dp, c.ep,
               static_cast<long long>(c.micro_batch_size),
               c.sequence_parallel ? "on" : "-", c.distributed_optimizer ? "on" : "-",
               plan::recompute_label(c.recompute).c_str(),
               (static_cast<double>(c.memory().total()) + cl.reserved_bytes) / plan::kGiB);
    if (fits)
      out << fmt("  %9.3f  %12s  %5.1f%%  %5.1f%%  %9.3f  %9.3f  %9.3f  %12.3f\n", c.step_s,
                 with_commas(c.tokens_per_s_per_gpu).c_str(), 100 * c.mfu,
                 100 * c.bubble_fraction(), c.tp_comm_s, c.cp_comm_s, c.ep_comm_s,
                 c.dp_exposed_s);
    else
      out << "  does not fit\n";
  }
}

nlohmann::json to_json(const plan::PlanResult& r, const plan::Cluster& cl) {
  nlohmann::json j;
  j["parameters"] = r.parameters;
  j["flops_per_token"] = r.flops_per_token;
  j["tokens_per_step"] = r.tokens_per_step;
  j["cluster"] = {{"num_gpus", cl.num_gpus},
                  {"gpus_per_node", cl.gpus_per_node},
                  {"gpu_memory_bytes", cl.gpu_memory_bytes},
                  {"reserved_bytes", cl.reserved_bytes},
                  {"peak_flops", cl.peak_flops},
                  {"achieved_mfu", cl.achieved_mfu},
                  {"intra_node_bandwidth", cl.intra_node_bandwidth},
                  {"inter_node_bandwidth", cl.inter_node_bandwidth},
                  {"memory_bandwidth", cl.memory_bandwidth}};
  j["rejected"] = r.rejected;
  j["candidates"] = nlohmann::json::array();
  for (const plan::Candidate& c : r.candidates) {
    nlohmann::json e = {{"tp", c.tp},
                        {"pp", c.pp},
                        {"cp", c.cp},
                        {"ep", c.ep},
                        {"virtual_chunks", c.virtual_chunks},
                        {"first_stage_layers", c.first_stage_layers},
                        {"last_stage_layers", c.last_stage_layers},
                        {"dp", c.dp},
                        {"micro_batch_size", c.micro_batch_size},
                        {"num_microbatches", c.num_microbatches},
                        {"sequence_parallel", c.sequence_parallel},
                        {"distributed_optimizer", c.distributed_optimizer},
                        {"recompute", plan::recompute_label(c.recompute)},
                        {"memory_bytes", c.memory().total()},
                        {"memory_stage", c.memory_stage},
                        {"fits", c.fits},
                        {"flags", c.flags()}};
    if (c.fits) {
      e["step_s"] = c.step_s;
      e["compute_s"] = c.compute_s;
      e["tp_comm_s"] = c.tp_comm_s;
      e["cp_comm_s"] = c.cp_comm_s;
      e["ep_comm_s"] = c.ep_comm_s;
      e["pipeline_s"] = c.pipeline_s;
      e["dp_exposed_s"] = c.dp_exposed_s;
      e["embedding_sync_s"] = c.embedding_sync_s;
      e["optimizer_s"] = c.optimizer_s;
      e["tokens_per_s_per_gpu"] = c.tokens_per_s_per_gpu;
      e["mfu"] = c.mfu;
    }
    j["candidates"].push_back(e);
  }
  return j;
}

void run_plan(CLI::App& cmd, train::TrainConfig cfg, PlanOptions opt) {
  plan::Cluster& cl = opt.cluster;
  cl.gpu_memory_bytes = opt.gpu_memory_gib * plan::kGiB;
  cl.reserved_bytes = opt.reserved_gib * plan::kGiB;
  cl.peak_flops = opt.peak_tflops * 1e12;
  cl.intra_node_bandwidth = opt.intra_gbs * 1e9;
  cl.inter_node_bandwidth = opt.inter_gbs * 1e9;
  cl.memory_bandwidth = opt.hbm_gbs * 1e9;
  if (!given(cmd, "--gpus-per-node")) cl.gpus_per_node = std::min(cl.num_gpus, 8);
  train::resolve_vocab_size(cfg);
  note_ignored_flags(cmd, cfg, std::cerr);
  const plan::FixedChoices fixed = fixed_choices(cmd, cfg);
  const plan::PlanResult r = plan::plan_layouts(cfg, cl, fixed);

  std::ostream& out = std::cout;
  const char* precision = cfg.bf16 ? "bf16" : cfg.fp16 ? "fp16" : "fp32 (no --bf16)";
  out << fmt("> plan: %s parameters, %d GPU%s (%d per node, %.1f GiB each, %.1f GiB reserved), "
             "global batch %lld x %lld = %s tokens per step, %s\n",
             with_commas(static_cast<double>(r.parameters)).c_str(), cl.num_gpus,
             cl.num_gpus == 1 ? "" : "s", cl.gpus_per_node, opt.gpu_memory_gib, opt.reserved_gib,
             static_cast<long long>(cfg.global_batch_size),
             static_cast<long long>(cfg.model.seq_length),
             with_commas(static_cast<double>(r.tokens_per_step)).c_str(), precision);
  int rejected = 0;
  for (const auto& [reason, n] : r.rejected) rejected += n;
  const int fitting = r.fitting();
  out << fmt("> %d layouts: %d fit, %d do not fit, %d rejected by the model's shape or the batch\n",
             static_cast<int>(r.candidates.size()) + rejected, fitting,
             static_cast<int>(r.candidates.size()) - fitting, rejected);
  std::vector<std::pair<int, std::string>> reasons;
  for (const auto& [reason, n] : r.rejected) reasons.emplace_back(n, reason);
  std::sort(reasons.rbegin(), reasons.rend());
  for (size_t i = 0; i < reasons.size() && i < 5; ++i)
    out << fmt("  rejected %d: ", reasons[i].first) << reasons[i].second << "\n";
  if (!opt.json.empty()) {
    std::ofstream f(opt.json);
    SHARDLM_REQUIRE(static_cast<bool>(f), ErrorKind::kIo,
                    "--json " + opt.json + ": cannot write the file; check the directory");
    f << to_json(r, cl).dump(1) << "\n";
  }
  SHARDLM_REQUIRE(!r.candidates.empty(), ErrorKind::kInvalidConfig,
                  "no layout of " + std::to_string(cl.num_gpus) +
                      " GPUs can split this model and batch (reasons above); change --num-gpus "
                      "or --global-batch-size" +
                      drop_fixed_hint(fixed));
  print_table(out, r, cl, opt.top);
  const plan::Candidate& best = r.candidates.front();
  if (!best.fits)
    throw Error(ErrorKind::kOutOfMemory,
                "no layout fits " + fmt("%.1f", opt.gpu_memory_gib) +
                    " GiB per GPU: the smallest, " + best.describe() + ", needs " +
                    fmt("%.1f", (static_cast<double>(best.memory().total()) + cl.reserved_bytes) /
                                    plan::kGiB) +
                    " GiB (" + train::format_bytes(best.memory().total()) +
                    " planned + the reserve). Use more GPUs (--num-gpus), a shorter "
                    "--seq-length or a smaller model" +
                    drop_fixed_hint(fixed));
  out << "> best: " << best.describe()
      << fmt(": estimated %s tokens/s per GPU (MFU %.1f%%), %.2f GiB of %.1f GiB per GPU\n",
             with_commas(best.tokens_per_s_per_gpu).c_str(), 100 * best.mfu,
             (static_cast<double>(best.memory().total()) + cl.reserved_bytes) / plan::kGiB,
             opt.gpu_memory_gib);
  out << "> flags: " << join(best.flags()) << "\n";
  const int nodes = (cl.num_gpus + cl.gpus_per_node - 1) / cl.gpus_per_node;
  const int per_node = std::min(cl.num_gpus, cl.gpus_per_node);
  out << "> run:   shardlm launch --nproc-per-node " << per_node
      << (nodes > 1 ? " --nnodes " + std::to_string(nodes) +
                          " --node-rank R --master-addr HOST"
                    : std::string())
      << " -- train <model, data and optimizer flags> " << join(best.flags()) << "\n";
  out << fmt("> time is an estimate: model FLOPs at %.0f%% MFU of %.0f TFLOP/s, collectives at "
             "%.0f GB/s in a node and %.0f GB/s between nodes, the pipeline simulated with its "
             "schedule; memory is the trainer's own plan\n",
             100 * cl.achieved_mfu, opt.peak_tflops, opt.intra_gbs, opt.inter_gbs);
}

}  // namespace

void register_plan(CLI::App& app) {
  auto cfg = std::make_shared<train::TrainConfig>();
  auto opt = std::make_shared<PlanOptions>();
  CLI::App* cmd = app.add_subcommand(
      "plan", "Rank the parallel layouts of a model on N GPUs by memory and estimated speed");
  add_train_flags(*cmd, *cfg);
  const char* g = "Planning";
  const auto pos = CLI::PositiveNumber;
  cmd->add_option("--num-gpus", opt->cluster.num_gpus, "GPUs of the job (all nodes)")
      ->group(g)->required()->check(pos);
  cmd->add_option("--gpus-per-node", opt->cluster.gpus_per_node,
                  "GPUs per node (default: 8, or --num-gpus if fewer); TP stays in a node")
      ->group(g)->check(pos);
  cmd->add_option("--gpu-memory-gib", opt->gpu_memory_gib, "Memory per GPU (H100: 80, H200: 141)")
      ->group(g)->check(pos);
  cmd->add_option("--reserved-memory-gib", opt->reserved_gib,
                  "Per GPU, outside ShardLM's plan: CUDA context, NCCL, allocator slack (3)")
      ->group(g)->check(CLI::NonNegativeNumber);
  cmd->add_option("--peak-tflops", opt->peak_tflops, "Dense bf16 peak per GPU (H100/H200: 989)")
      ->group(g)->check(pos);
  cmd->add_option("--assumed-mfu", opt->cluster.achieved_mfu,
                  "Fraction of the peak the model FLOPs run at (0.6: fits ShardLM's measured 1.3B on one H100)")
      ->group(g)->check(CLI::Range(0.01, 1.0));
  cmd->add_option("--intra-node-bandwidth-gbs", opt->intra_gbs,
                  "Collective bandwidth per GPU inside a node, GB/s (NVLink: 360)")
      ->group(g)->check(pos);
  cmd->add_option("--inter-node-bandwidth-gbs", opt->inter_gbs,
                  "Collective bandwidth per GPU between nodes, GB/s (400 Gb/s NIC per GPU: 45)")
      ->group(g)->check(pos);
  cmd->add_option("--memory-bandwidth-gbs", opt->hbm_gbs, "GPU memory bandwidth, GB/s (3350)")
      ->group(g)->check(pos);
  cmd->add_option("--top", opt->top, "Layouts to print (10)")->group(g)->check(pos);
  cmd->add_option("--json", opt->json, "Also write every layout considered to this JSON file")
      ->group(g);
  cmd->callback([cmd, cfg, opt] { run_plan(*cmd, *cfg, *opt); });
}

}  // namespace shardlm::cli
