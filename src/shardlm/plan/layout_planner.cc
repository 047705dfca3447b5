#include "shardlm/plan/layout_planner.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <memory>

#include "shardlm/base/error.h"
#include "shardlm/dist/parallel_layout.h"
#include "shardlm/dist/shape_only_communicator.h"
#include "shardlm/model/context_parallel.h"
#include "shardlm/model/layers/qkv_layout.h"
#include "shardlm/parallel/schedule_simulator.h"
#include "shardlm/train/metrics.h"
#include "shardlm/train/rank_model.h"

namespace shardlm::plan {

namespace {

using train::TrainConfig;

// Forward FLOPs per token of one transformer layer, train/metrics.h's convention (2 per
// multiply-add of every weight; attention scores and values over the full S x S).
struct LayerFlops {
  double linear = 0;     // QKV, projection, MLP (per token, averaged over dense and MoE layers)
  // Of `linear`, what runs as fp8 GEMMs under --fp8-format (the four dense linears of the fp8
  // layers, averaged over all layers; not the MoE experts or router).
  double fp8_linear = 0;
  double attention = 0;  // QK^T and PV: what selective recomputation re-runs
  double moe_share = 0;  // MoE layers / layers
};

LayerFlops layer_forward_flops(const model::TransformerConfig& m) {
  const double H = static_cast<double>(m.hidden_size);
  const double q = static_cast<double>(m.num_attention_heads * m.head_dim());
  auto mlp = [&](double F) { return 2 * H * F * (m.swiglu ? 2 : 1) + 2 * F * H; };
  LayerFlops f;
  f.moe_share = static_cast<double>(m.num_moe_layers()) / static_cast<double>(m.num_layers);
  // An MoE layer: the router and k experts' MLPs per token.
  const double moe_mlp = 2 * H * static_cast<double>(m.num_experts) +
                         static_cast<double>(m.moe_router_topk) *
                             mlp(static_cast<double>(m.moe_ffn_size()));
  f.linear = 2 * H * static_cast<double>(m.qkv_size()) + 2 * q * H +
             (1 - f.moe_share) * mlp(static_cast<double>(m.ffn_size())) + f.moe_share * moe_mlp;
  f.attention = 4 * static_cast<double>(m.seq_length) * q;
  if (m.fp8.enabled()) {
    int64_t fp8_layers = 0, fp8_dense = 0;
    for (int64_t l = 0; l < m.num_layers; ++l) {
      fp8_layers += m.fp8_layer(l);
      fp8_dense += m.fp8_layer(l) && !m.is_moe_layer(l);
    }
    const double L = static_cast<double>(m.num_layers);
    f.fp8_linear = (2 * H * static_cast<double>(m.qkv_size()) + 2 * q * H) *
                       static_cast<double>(fp8_layers) / L +
                   mlp(static_cast<double>(m.ffn_size())) * static_cast<double>(fp8_dense) / L;
  }
  return f;
}

// The tensor-parallel groups of TP rank 0 as shapes only (every TP rank has the same shapes).
struct ShapeOnlyTensorParallel {
  std::unique_ptr<dist::ShapeOnlyCommunicator> group, query_group;
  model::TensorParallel tp;

  ShapeOnlyTensorParallel(const TrainConfig& cfg, int size, bool sequence_parallel) {
    if (size == 1) return;
    group = std::make_unique<dist::ShapeOnlyCommunicator>("tp", 0, size);
    tp.group = group.get();
    tp.sequence_parallel = sequence_parallel;
    const model::QkvLayout qkv = model::QkvLayout::of(cfg.model, 0, size);
    if (qkv.replicated()) {  // what GPTModel would split off the TP group
      query_group = std::make_unique<dist::ShapeOnlyCommunicator>(
          "tp-query-group", 0, static_cast<int>(qkv.replicas));
      tp.query_group = query_group.get();
    }
  }
};

// A context- or expert-parallel group (model::ContextParallel / ExpertParallel) of its rank 0 as
// a shape: every rank of such a group has the same shapes. The expert-parallel size is kept as
// the config gives it (the search does not vary it).
template <class Parallel>
struct ShapeOnlyGroup {
  std::unique_ptr<dist::ShapeOnlyCommunicator> group;
  Parallel parallel;

  ShapeOnlyGroup(const char* name, int size) {
    if (size == 1) return;
    group = std::make_unique<dist::ShapeOnlyCommunicator>(name, 0, size);
    parallel.group = group.get();
  }
};

// Per micro-batch times of one model chunk on one rank.
struct ChunkTimes {
  double forward = 0, backward = 0;
  double tp_comm = 0;  // forward + backward (+ recomputation) TP collectives, included above
  double cp_comm = 0;  // the same for CP's
  double ep_comm = 0;  // and for EP's all-to-alls
};

class CandidateEstimator {
 public:
  CandidateEstimator(const TrainConfig& cfg, const Cluster& cluster)
      : cfg_(cfg), cluster_(cluster), flops_(layer_forward_flops(cfg.model)) {}

  ChunkTimes chunk_times(const Candidate& c, int64_t num_layers, bool has_head) const {
    if (cfg_.model.t5()) return t5_times(c);
    // The rank's tokens: seq/CP of each sequence (the load-balanced split gives every CP rank
    // the same attention work, so attention divides by CP as the linear layers do).
    const double tokens =
        static_cast<double>(c.micro_batch_size * cfg_.model.seq_length) / c.cp;
    // fp8 linears run cluster_.fp8_linear_speedup times faster than in 16-bit.
    const double linear_time_flops =
        flops_.linear - flops_.fp8_linear + flops_.fp8_linear / cluster_.fp8_linear_speedup;
    ChunkTimes t = stack_times(c, num_layers, tokens, linear_time_flops, flops_.attention,
                               /*tp_collectives=*/2);
    if (has_head) add_output_layer(c, tokens, t);
    return t;
  }

  // T5 (one pipeline stage): the encoder's layers on the encoder's tokens, the decoder's on the
  // decoder's, each decoder layer with its cross-attention (linear_q and linear_proj on decoder
  // rows, linear_kv on encoder rows, scores against the encoder's keys; a third TP region pair),
  // and the output layer on the decoder's tokens.
  ChunkTimes t5_times(const Candidate& c) const {
    const model::TransformerConfig& m = cfg_.model;
    const double mbs = static_cast<double>(c.micro_batch_size);
    const double TE = static_cast<double>(m.seq_length);
    const double TD = static_cast<double>(m.decoder_seq_length);
    const double H = static_cast<double>(m.hidden_size);
    const double q = static_cast<double>(m.num_attention_heads * m.head_dim());
    ChunkTimes t = stack_times(c, m.t5_encoder_layers(), mbs * TE, flops_.linear,
                               4 * TE * q, /*tp_collectives=*/2);
    const double cross_linear = 2 * H * q + 2 * q * H + 2 * H * 2 * q * TE / TD;
    const ChunkTimes decoder = stack_times(c, m.num_layers, mbs * TD, flops_.linear + cross_linear,
                                           4 * (TD + TE) * q, /*tp_collectives=*/3);
    t.forward += decoder.forward;
    t.backward += decoder.backward;
    t.tp_comm += decoder.tp_comm;
    add_output_layer(c, mbs * TD, t);
    return t;
  }

  // num_layers layers on `tokens` rows of the rank, each with linear_flops and attention_flops
  // per token (forward) and tp_collectives TP region pairs per direction.
  ChunkTimes stack_times(const Candidate& c, int64_t num_layers, double tokens,
                         double linear_flops, double attention_flops, int tp_collectives) const {
    const double sequences = tokens * c.cp;  // whole sequences' rows (CP splits them)
    const double rate = cluster_.peak_flops * cluster_.achieved_mfu;
    const double tp = c.tp, cp = c.cp;
    const double bytes = static_cast<double>(dtype_size(compute_dtype()));
    // Per layer and direction, tp_collectives all-reduces (or, with SP, all-gather +
    // reduce-scatter pairs: the same ring bytes) of the [tokens, hidden] activation, 2(t-1)/t
    // of it each.
    const double act_bytes = tokens * static_cast<double>(cfg_.model.hidden_size) * bytes;
    const double comm =
        c.tp > 1 ? 2 * tp_collectives * (tp - 1) / tp * act_bytes / bandwidth(c.tp) : 0.0;
    // CP: each attention pass all-gathers the fused QKV rows of whole sequences, [mbs x seq,
    // QKV rows / TP] ((c-1)/c of them arrive per rank in a ring); the backward gathers again and
    // reduce-scatters the key/value gradients of the same size. The group is the aligned block
    // of TP x CP ranks.
    const double qkv_rows =
        static_cast<double>(model::QkvLayout::of(cfg_.model, 0, c.tp).local_rows());
    // --cp-comm-type a2a (Ulysses) instead trades each rank's own rows: a pass sends (c-1)/c of
    // its [seq/CP tokens, QKV rows / TP] and of the attention output [seq/CP, heads x HS / TP];
    // the backward redoes that exchange (or the selective recompute does) and trades the output
    // and QKV gradients: two passes, as all_gather's.
    const double attn_cols =
        static_cast<double>(cfg_.model.num_attention_heads / c.tp * cfg_.model.head_dim());
    const double pass_bytes = cfg_.parallel.cp_comm_type == "a2a"
                                  ? tokens * (qkv_rows + attn_cols) * bytes
                                  : sequences * qkv_rows * bytes;
    const double cp_pass = c.cp > 1 ? (cp - 1) / cp * pass_bytes / bandwidth(c.tp * c.cp) : 0.0;
    const double fwd_compute = tokens * (linear_flops + attention_flops) / tp / rate;
    const double attention_compute = tokens * attention_flops / tp / rate;
    // EP: an MoE layer sends its rows [tokens x k, hidden] to the experts' ranks and back, in
    // forward and again in backward; (e-1)/e of them leave the rank, over the aligned block of
    // TP x EP ranks (the expert layout's tp-ep order). Spread over the layers by the share of MoE
    // layers, as the MoE FLOPs are.
    const double ep = c.ep;
    const double ep_pass =
        c.ep > 1 ? flops_.moe_share * 2 * (ep - 1) / ep * act_bytes *
                       static_cast<double>(cfg_.model.moe_router_topk) / bandwidth(c.tp * c.ep)
                 : 0.0;
    const double layer_fwd = fwd_compute + comm + cp_pass + ep_pass + cluster_.per_layer_overhead_s;
    const double layer_bwd =
        2 * fwd_compute + comm + 2 * cp_pass + ep_pass + cluster_.per_layer_overhead_s;
    // Layers of this chunk whose forward backward re-runs (model/recompute.h: chunk-local).
    int64_t rerun = 0;
    for (int64_t l = 0; l < num_layers; ++l) rerun += c.recompute.recomputes_layer(l);
    const double n = static_cast<double>(num_layers), r = static_cast<double>(rerun);
    ChunkTimes t;
    t.forward = n * layer_fwd;
    t.backward = n * layer_bwd + r * layer_fwd;
    t.tp_comm = n * 2 * comm + r * comm;
    t.cp_comm = n * 3 * cp_pass + r * cp_pass;
    t.ep_comm = n * 2 * ep_pass + r * ep_pass;
    // Selective: attention re-runs with its gather, which the backward then reuses.
    if (c.recompute.selective()) t.backward += n * attention_compute;
    return t;
  }

  // The output layer's GEMM on `tokens` rows (vocabulary split over TP).
  void add_output_layer(const Candidate& c, double tokens, ChunkTimes& t) const {
    const double rate = cluster_.peak_flops * cluster_.achieved_mfu;
    const double head = tokens * 2 * static_cast<double>(cfg_.model.padded_vocab_size()) *
                        static_cast<double>(cfg_.model.hidden_size) / c.tp / rate;
    t.forward += head;
    t.backward += 2 * head;
  }

  // Bandwidth of a collective over the aligned block of `span` consecutive ranks that holds
  // the group (TP: span TP; CP: TP x CP; DP with CP: TP x CP x DP; pipeline neighbours: the
  // whole world, as the slowest boundary gates every step): NVLink when every such block sits
  // inside one node.
  double bandwidth(int span) const {
    const int g = cluster_.gpus_per_node;
    return span <= g && g % span == 0 ? cluster_.intra_node_bandwidth
                                      : cluster_.inter_node_bandwidth;
  }

  DType compute_dtype() const { return train::compute_dtype_of(cfg_); }
  DType master_dtype() const { return train::master_dtype_of(cfg_); }

 private:
  const TrainConfig& cfg_;
  const Cluster& cluster_;
  LayerFlops flops_;
};

// One pipeline stage of a candidate, built as the trainer builds it.
struct StagePlan {
  train::MemoryPlan memory;
  int64_t params = 0;            // local elements of the flat buffers (padding included)
  int64_t tied_embedding = 0;    // local elements of the word embedding synced over PP
  int num_buckets = 1;
  std::vector<std::pair<int64_t, bool>> chunks;  // [V] (layers, has output layer)
};

StagePlan plan_stage(const TrainConfig& c, const dist::ParallelLayout& layout, int pp_rank,
                     const parallel::PipelinePlan* pipeline) {
  const ShapeOnlyTensorParallel tp(c, layout.tp(), c.parallel.sequence_parallel);
  const ShapeOnlyGroup<model::ContextParallel> cp("cp", layout.cp());
  const ShapeOnlyGroup<model::ExpertParallel> ep("ep", layout.ep());
  train::RankModel m =
      train::build_rank_model(c, layout, pp_rank, tp.tp, pipeline, cp.parallel, ep.parallel);
  StagePlan s;
  s.memory = train::plan_rank_memory(c, layout, m, /*cuda=*/true);
  s.params = m.registry.numel();
  s.num_buckets = std::max(1, m.grad_buffer.num_buckets());
  for (const model::Parameter& p : m.registry.parameters())
    if (p.spec.pipeline_tie != model::PipelineTie::kNone) s.tied_embedding += p.local_shape.numel();
  for (const auto& chunk : m.chunks)
    s.chunks.emplace_back(chunk->chunk().layer_end - chunk->chunk().layer_begin,
                          chunk->chunk().has_head);
  return s;
}

void estimate_time(Candidate& cand, const TrainConfig& c, const Cluster& cluster,
                   const std::vector<StagePlan>& stages, const parallel::PipelinePlan* pipeline,
                   double tokens_per_step, double flops_per_token) {
  const CandidateEstimator est(c, cluster);
  // [stage][chunk] per micro-batch times.
  std::vector<std::vector<ChunkTimes>> times(stages.size());
  for (size_t r = 0; r < stages.size(); ++r)
    for (const auto& [layers, head] : stages[r].chunks)
      times[r].push_back(est.chunk_times(cand, layers, head));
  const double M = static_cast<double>(cand.num_microbatches);
  std::vector<double> busy(stages.size(), 0), comm(stages.size(), 0), cp_comm(stages.size(), 0),
      ep_comm(stages.size(), 0);
  for (size_t r = 0; r < stages.size(); ++r)
    for (const ChunkTimes& t : times[r]) {
      busy[r] += M * (t.forward + t.backward);
      comm[r] += M * t.tp_comm;
      cp_comm[r] += M * t.cp_comm;
      ep_comm[r] += M * t.ep_comm;
    }
  const size_t busiest = static_cast<size_t>(std::max_element(busy.begin(), busy.end()) - busy.begin());
  cand.compute_s = busy[busiest];
  cand.tp_comm_s = comm[busiest];
  cand.cp_comm_s = cp_comm[busiest];
  cand.ep_comm_s = ep_comm[busiest];
  cand.pipeline_s = cand.compute_s;
  const double compute_bytes = static_cast<double>(dtype_size(est.compute_dtype()));
  const double master_bytes = static_cast<double>(dtype_size(est.master_dtype()));
  if (pipeline) {
    // Activations (and their gradients) between stages: [tokens, hidden] of the rank's seq/CP
    // tokens, sequence-sharded under SP. Stages are TP x CP x DP ranks apart; one transfer time
    // for all boundaries, so a job wider than a node pays the network's.
    const double boundary = static_cast<double>(cand.micro_batch_size * c.model.seq_length *
                                                c.model.hidden_size) *
                            compute_bytes / (cand.sequence_parallel ? cand.tp : 1) / cand.cp;
    parallel::SimulationTiming timing;
    timing.transfer = boundary / est.bandwidth(cluster.num_gpus);
    timing.compute_time = [&](int rank, const parallel::Action& a) {
      const ChunkTimes& t = times[static_cast<size_t>(rank)][static_cast<size_t>(a.chunk)];
      return a.kind == parallel::ActionKind::kForward ? t.forward : t.backward;
    };
    const parallel::SimulationResult sim = parallel::simulate_schedule(pipeline->schedule, timing);
    SHARDLM_CHECK(sim.completed);  // the generators' schedules complete (tested)
    cand.pipeline_s = sim.makespan;
  }
  // Data parallel, over the data x context ranks (CP ranks hold the same parameters): the
  // reduction overlaps the last micro-batch's backward, the gathers of the distributed optimizer
  // the next step's first forward; the last (first) bucket is exposed.
  double dp_exposed = 0, optimizer = 0;
  for (size_t r = 0; r < stages.size(); ++r) {
    const StagePlan& s = stages[r];
    double last_backward = 0, first_forward = 0;
    for (const ChunkTimes& t : times[r]) {
      last_backward += t.backward;
      first_forward += t.forward;
    }
    double exposed = 0;
    if (cand.grad_ranks() > 1) {
      const double d = cand.grad_ranks(), bw = est.bandwidth(cand.tp * cand.grad_ranks());
      const double grad_bytes = static_cast<double>(s.params) * master_bytes;
      const double reduce = (cand.distributed_optimizer ? 1.0 : 2.0) * (d - 1) / d * grad_bytes / bw;
      exposed += std::max(reduce - last_backward, reduce / s.num_buckets);
      if (cand.distributed_optimizer) {
        const double gather =
            (d - 1) / d * static_cast<double>(s.params) * compute_bytes / bw;
        exposed += std::max(gather - first_forward, gather / s.num_buckets);
      }
    }
    dp_exposed = std::max(dp_exposed, exposed);
    // AdamW: read value, gradient, two moments; write value, moments (+ the compute copy).
    const double elements = static_cast<double>(s.params) /
                            (cand.distributed_optimizer ? cand.grad_ranks() : 1);
    const double bytes_per_element =
        7 * master_bytes + (est.compute_dtype() != est.master_dtype() ? compute_bytes : 0);
    optimizer = std::max(optimizer, elements * bytes_per_element / cluster.memory_bandwidth);
    if (pipeline && s.tied_embedding > 0)  // all-reduce over the first and last stage
      cand.embedding_sync_s = std::max(
          cand.embedding_sync_s, static_cast<double>(s.tied_embedding) * master_bytes /
                                     est.bandwidth(cluster.num_gpus));
  }
  cand.dp_exposed_s = dp_exposed;
  cand.optimizer_s = optimizer;
  cand.step_s = cand.pipeline_s + cand.dp_exposed_s + cand.embedding_sync_s + cand.optimizer_s;
  cand.tokens_per_s_per_gpu = tokens_per_step / cand.step_s / cluster.num_gpus;
  cand.mfu = flops_per_token * cand.tokens_per_s_per_gpu / cluster.peak_flops;
}

std::vector<int> divisors(int n) {
  std::vector<int> d;
  for (int i = 1; i <= n; ++i)
    if (n % i == 0) d.push_back(i);
  return d;
}

template <typename T>
std::vector<T> choices(const std::optional<T>& fixed, std::vector<T> all) {
  return fixed ? std::vector<T>{*fixed} : all;
}

// Counts rejections by reason: messages that differ only in their numbers are one reason,
// reported with the first message seen (its first clause, before the fix).
class Rejections {
 public:
  explicit Rejections(std::map<std::string, int>& out) : out_(out) {}
  void add(const std::string& message) {
    std::string m = message.substr(0, message.find(';'));
    std::string key;
    for (char ch : m) {  // each run of digits becomes one '#'
      const bool digit = std::isdigit(static_cast<unsigned char>(ch)) != 0;
      if (!digit) key += ch;
      else if (key.empty() || key.back() != '#') key += '#';
    }
    auto it = example_.emplace(key, m).first;
    ++out_[it->second];
  }

 private:
  std::map<std::string, int>& out_;
  std::map<std::string, std::string> example_;  // normalized -> first message
};

// Context-parallel sizes to try with `ranks` = GPUs / (TP x PP): the divisors that split the
// sequence into 2 x CP chunks (1 always: CP off).
std::vector<int> context_sizes(const TrainConfig& cfg, int ranks) {
  std::vector<int> out;
  // BERT and T5 have no context parallelism (GPTModel refuses it).
  const bool cp_capable = !cfg.model.bert() && !cfg.model.t5();
  for (int c : divisors(ranks))
    if (c == 1 || (cp_capable && cfg.model.seq_length % (2 * c) == 0)) out.push_back(c);
  return out;
}

// Expert-parallel sizes of an MoE model over `ranks` = data x context ranks: the divisors of
// both the ranks and the experts ({1} for a dense model).
std::vector<int> expert_sizes(const TrainConfig& cfg, int ranks) {
  std::vector<int> out;
  for (int e : divisors(ranks))
    if (e == 1 || (cfg.model.num_experts > 0 && cfg.model.num_experts % e == 0)) out.push_back(e);
  return out;
}

// The points of the search (layout and per-rank choices; the Candidate fields evaluate()
// does not fill). Layout sizes that cannot split the layers or the batch are counted in
// `rejected` here; the rest of the validation is evaluate()'s.
std::vector<Candidate> enumerate_choices(const TrainConfig& cfg, const Cluster& cluster,
                                         const FixedChoices& fixed, Rejections& rejected) {
  const int N = cluster.num_gpus;
  const int64_t L = cfg.model.num_layers;
  // TP inside a node: the divisors of the GPUs per node (a fixed TP may cross nodes; its
  // collectives are then priced at the network's bandwidth).
  std::vector<int> tps;
  for (int t : divisors(std::min(N, cluster.gpus_per_node)))
    if (cluster.gpus_per_node % t == 0 && N % t == 0) tps.push_back(t);
  // A layout (TP, PP, CP, V, first/last stage layers) with its per-rank choices.
  struct Layout {
    int tp, pp, cp, v, first, last, ep;
  };
  std::vector<Layout> layouts;
  for (int tp : choices(fixed.tensor_parallel, tps))
    for (int pp : choices(fixed.pipeline_parallel, divisors(N / tp))) {
      if (pp > L) {
        rejected.add("--pipeline-model-parallel-size " + std::to_string(pp) +
                     " exceeds the model's " + std::to_string(L) + " layers (--num-layers)");
        continue;
      }
      // Virtual chunks per rank: every V > 1 that splits the stage's layers (up to 8).
      std::vector<int> vs = {1};
      for (int v = 2; pp > 1 && v <= 8 && v <= L / pp; ++v)
        if (L % (pp * v) == 0) vs.push_back(v);
      for (int cp : choices(fixed.context_parallel, context_sizes(cfg, N / (tp * pp)))) {
        // A fixed size may leave a searched one no room: not a layout of N GPUs at all.
        if (N % (tp * pp * cp) != 0) continue;
        for (int v : choices(fixed.virtual_chunks, vs)) {
          // Uneven first / last stages (1F1B): one layer fewer where the embedding or the
          // output layer sits, when the config gives neither. {0, 0}: Megatron's even split.
          std::vector<std::pair<int, int>> stage_layers = {{0, 0}};
          const int e = static_cast<int>(L / pp);
          if (pp > 1 && v == 1 && e > 1 && cfg.parallel.decoder_first_pipeline_num_layers == 0 &&
              cfg.parallel.decoder_last_pipeline_num_layers == 0)
            stage_layers.insert(stage_layers.end(), {{0, e - 1}, {e - 1, 0}, {e - 1, e - 1}});
          for (const auto& [first, last] : choices(fixed.stage_layers, stage_layers))
            for (int ep : choices(fixed.expert_parallel, expert_sizes(cfg, N / (tp * pp))))
              layouts.push_back({tp, pp, cp, v, first, last, ep});
        }
      }
    }
  std::vector<Candidate> out;
  for (const Layout& l : layouts) {
    const int dp = N / (l.tp * l.pp * l.cp);
    // Micro-batch sizes: every divisor of the per-rank batch, up to 64.
    std::vector<int64_t> mbss;
    const int64_t per_rank = cfg.global_batch_size % dp == 0 ? cfg.global_batch_size / dp : 0;
    for (int64_t m = 1; m <= std::min<int64_t>(64, per_rank); ++m)
      if (per_rank % m == 0) mbss.push_back(m);
    if (mbss.empty() && !fixed.micro_batch_size) {
      rejected.add("--global-batch-size " + std::to_string(cfg.global_batch_size) +
                   " is not divisible by the data-parallel size " + std::to_string(dp));
      continue;
    }
    // Recomputation: none, selective, full of every layer, full of the first k of each chunk.
    std::vector<model::RecomputeConfig> recomputes = {no_recompute(), selective_recompute(),
                                                      full_recompute()};
    const int64_t per_chunk = L / (static_cast<int64_t>(l.pp) * l.v);
    for (int64_t k : {per_chunk / 4, per_chunk / 2, 3 * per_chunk / 4})
      if (k >= 1 && k < per_chunk &&
          (recomputes.back().method != "block" || recomputes.back().num_layers != k))
        recomputes.push_back(full_recompute("block", k));
    for (int64_t mbs : choices(fixed.micro_batch_size, mbss))
      for (const model::RecomputeConfig& rec : choices(fixed.recompute, recomputes)) {
        Candidate c;
        c.tp = l.tp;
        c.pp = l.pp;
        c.cp = l.cp;
        c.ep = l.ep;
        c.dp = dp;
        c.virtual_chunks = l.v;
        c.first_stage_layers = l.first;
        c.last_stage_layers = l.last;
        c.micro_batch_size = mbs;
        c.recompute = rec;
        c.recompute.norm_activation = cfg.recompute.norm_activation;
        c.sequence_parallel = fixed.sequence_parallel.value_or(l.tp > 1) && l.tp > 1;
        c.distributed_optimizer = fixed.distributed_optimizer.value_or(c.grad_ranks() > 1);
        out.push_back(c);
      }
  }
  return out;
}

// The train config that runs choice c: the user's, with c's layout flags.
TrainConfig config_of(const TrainConfig& cfg, const Candidate& c, const FixedChoices& fixed) {
  TrainConfig t = cfg;
  t.micro_batch_size = c.micro_batch_size;
  t.data_parallel_size = c.dp;
  t.model.tensor_model_parallel_size = c.tp;
  train::ParallelConfig& p = t.parallel;
  p.tensor_model_parallel_size = c.tp;
  p.pipeline_model_parallel_size = c.pp;
  p.context_parallel_size = c.cp;
  p.expert_model_parallel_size = c.ep;
  p.sequence_parallel = c.sequence_parallel;
  p.use_distributed_optimizer = c.distributed_optimizer;
  p.overlap_grad_reduce = c.overlap_grad_reduce();
  p.overlap_param_gather = c.overlap_param_gather();
  p.num_layers_per_virtual_pipeline_stage = 0;
  p.num_virtual_stages_per_pipeline_rank = c.virtual_chunks > 1 ? c.virtual_chunks : 0;
  if (c.first_stage_layers || c.last_stage_layers || fixed.stage_layers) {
    p.decoder_first_pipeline_num_layers = c.first_stage_layers;
    p.decoder_last_pipeline_num_layers = c.last_stage_layers;
  }
  t.recompute = c.recompute;
  return t;
}

// choice with its memory (every stage built as the trainer builds it) and, when it fits, its
// time; nullopt when the trainer's validation rejects it (counted in `rejected`, unless it is an
// uneven split the search guessed itself: not a reason the user's model cannot be split).
std::optional<Candidate> evaluate(const TrainConfig& cfg, const Cluster& cluster,
                                  const FixedChoices& fixed, Candidate cand,
                                  const PlanResult& totals, Rejections& rejected) {
  const bool guessed_split =
      (cand.first_stage_layers || cand.last_stage_layers) && !fixed.stage_layers;
  TrainConfig c = config_of(cfg, cand, fixed);
  cand.first_stage_layers = c.parallel.decoder_first_pipeline_num_layers;  // the config's, if given
  cand.last_stage_layers = c.parallel.decoder_last_pipeline_num_layers;
  std::optional<parallel::PipelinePlan> pipeline;
  try {
    c.recompute.validate(c.model.num_layers);
    c.validate_parallel(cluster.num_gpus);
    if (cand.pp > 1) pipeline = parallel::make_pipeline_plan(c.pipeline_plan_config(cand.dp));
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kInvalidConfig) throw;
    if (!guessed_split) rejected.add(e.what());
    return std::nullopt;
  }
  cand.num_microbatches = cfg.global_batch_size / (cand.micro_batch_size * cand.dp);
  const dist::ParallelLayout layout = dist::ParallelLayout::create(cluster.num_gpus, c.parallel_sizes());
  std::vector<StagePlan> stages;
  for (int r = 0; r < cand.pp; ++r) {
    stages.push_back(plan_stage(c, layout, r, pipeline ? &*pipeline : nullptr));
    cand.stage_memory.push_back(stages.back().memory);
    if (stages.back().memory.total() > cand.memory().total()) cand.memory_stage = r;
  }
  cand.fits = static_cast<double>(cand.memory().total()) + cluster.reserved_bytes <=
              cluster.gpu_memory_bytes;
  if (cand.fits)  // only fitting layouts are worth simulating
    estimate_time(cand, c, cluster, stages, pipeline ? &*pipeline : nullptr,
                  static_cast<double>(totals.tokens_per_step), totals.flops_per_token);
  return cand;
}

}  // namespace

model::RecomputeConfig no_recompute() { return {}; }

model::RecomputeConfig selective_recompute() {
  model::RecomputeConfig r;
  r.granularity = "selective";
  return r;
}

model::RecomputeConfig full_recompute(const std::string& method, int64_t layers) {
  model::RecomputeConfig r;
  r.granularity = "full";
  r.method = method;
  r.num_layers = layers;
  return r;
}

std::string recompute_label(const model::RecomputeConfig& r) {
  if (r.selective()) return "selective";
  if (!r.full()) return "none";
  if (r.method == "uniform" && r.layers_per_unit() == 1) return "full";
  return "full " + r.method + " " + std::to_string(r.layers_per_unit());
}

std::vector<std::string> Candidate::flags() const {
  std::vector<std::string> f = {"--tensor-model-parallel-size", std::to_string(tp),
                                "--pipeline-model-parallel-size", std::to_string(pp)};
  if (cp > 1) {
    f.push_back("--context-parallel-size");
    f.push_back(std::to_string(cp));
  }
  if (ep > 1) {
    f.push_back("--expert-model-parallel-size");
    f.push_back(std::to_string(ep));
  }
  f.push_back("--micro-batch-size");
  f.push_back(std::to_string(micro_batch_size));
  if (virtual_chunks > 1) {
    f.push_back("--num-virtual-stages-per-pipeline-rank");
    f.push_back(std::to_string(virtual_chunks));
  }
  if (first_stage_layers) {
    f.push_back("--decoder-first-pipeline-num-layers");
    f.push_back(std::to_string(first_stage_layers));
  }
  if (last_stage_layers) {
    f.push_back("--decoder-last-pipeline-num-layers");
    f.push_back(std::to_string(last_stage_layers));
  }
  if (sequence_parallel) f.push_back("--sequence-parallel");
  if (distributed_optimizer) f.push_back("--use-distributed-optimizer");
  if (overlap_grad_reduce()) f.push_back("--overlap-grad-reduce");
  if (overlap_param_gather()) f.push_back("--overlap-param-gather");
  if (recompute.selective()) {
    f.push_back("--recompute-granularity");
    f.push_back("selective");
  } else if (recompute.full()) {
    for (const std::string& s :
         {std::string("--recompute-granularity"), std::string("full"),
          std::string("--recompute-method"), recompute.method,
          std::string("--recompute-num-layers"), std::to_string(recompute.layers_per_unit())})
      f.push_back(s);
  }
  return f;
}

std::string Candidate::describe() const {
  std::string s = "TP " + std::to_string(tp) + " x PP " + std::to_string(pp);
  if (virtual_chunks > 1) s += " (V " + std::to_string(virtual_chunks) + ")";
  if (first_stage_layers || last_stage_layers)
    s += " (layers first " + (first_stage_layers ? std::to_string(first_stage_layers) : "even") +
         ", last " + (last_stage_layers ? std::to_string(last_stage_layers) : "even") + ")";
  if (cp > 1) s += " x CP " + std::to_string(cp);
  s += " x DP " + std::to_string(dp);
  if (ep > 1) s += " (EP " + std::to_string(ep) + ")";
  s += ", micro-batch " + std::to_string(micro_batch_size) +
       ", recompute " + recompute_label(recompute);
  return s;
}

int PlanResult::fitting() const {
  return static_cast<int>(std::count_if(candidates.begin(), candidates.end(),
                                        [](const Candidate& c) { return c.fits; }));
}

PlanResult plan_layouts(const TrainConfig& cfg, const Cluster& cluster, const FixedChoices& fixed) {
  const int N = cluster.num_gpus;
  SHARDLM_REQUIRE(N >= 1, ErrorKind::kInvalidConfig,
                  "--num-gpus " + std::to_string(N) + " must be at least 1");
  SHARDLM_REQUIRE(cluster.gpus_per_node >= 1 &&
                      (N <= cluster.gpus_per_node || N % cluster.gpus_per_node == 0),
                  ErrorKind::kInvalidConfig,
                  "--num-gpus " + std::to_string(N) + " is not a whole number of nodes of " +
                      std::to_string(cluster.gpus_per_node) +
                      " GPUs (--gpus-per-node); use a multiple of it");
  SHARDLM_REQUIRE(cfg.global_batch_size > 0, ErrorKind::kInvalidConfig,
                  "the planner needs the global batch: pass --global-batch-size (samples per "
                  "iteration, e.g. 256)");
  SHARDLM_REQUIRE(cluster.gpu_memory_bytes > cluster.reserved_bytes &&
                      cluster.peak_flops > 0 && cluster.achieved_mfu > 0 &&
                      cluster.achieved_mfu <= 1 && cluster.intra_node_bandwidth > 0 &&
                      cluster.inter_node_bandwidth > 0 && cluster.memory_bandwidth > 0 &&
                      cluster.fp8_linear_speedup > 0,
                  ErrorKind::kInvalidConfig,
                  "the cluster's numbers must be positive, the GPU memory above the reserve and "
                  "the assumed MFU in (0, 1]");
  cfg.model.validate();

  PlanResult result;
  result.tokens_per_step = cfg.global_batch_size * cfg.model.seq_length;
  {  // Global counts from the one-rank model.
    TrainConfig one = cfg;
    one.parallel = {};
    one.recompute = {};
    one.model.tensor_model_parallel_size = 1;
    const ShapeOnlyTensorParallel tp(one, 1, false);
    const train::RankModel m =
        train::build_rank_model(one, dist::ParallelLayout::create(1, {}), 0, tp.tp, nullptr);
    const train::ModelFlops f = train::model_flops(m.registry, one.model);
    result.parameters = f.parameters;
    result.flops_per_token = f.flops_per_token;
  }

  Rejections rejected(result.rejected);
  // Fixed sizes that no layout of N GPUs can have fail here, naming the flag.
  auto fixed_positive = [](const auto& v, const char* flag) {
    SHARDLM_REQUIRE(!v || *v >= 1, ErrorKind::kInvalidConfig,
                    std::string(flag) + " must be at least 1");
  };
  fixed_positive(fixed.tensor_parallel, "--tensor-model-parallel-size");
  fixed_positive(fixed.pipeline_parallel, "--pipeline-model-parallel-size");
  fixed_positive(fixed.context_parallel, "--context-parallel-size");
  fixed_positive(fixed.expert_parallel, "--expert-model-parallel-size");
  fixed_positive(fixed.virtual_chunks, "the virtual stages per pipeline rank");
  fixed_positive(fixed.micro_batch_size, "--micro-batch-size");
  int fixed_product = 1;
  std::string fixed_sizes;  // "--tensor-model-parallel-size 2 x --context-parallel-size 3"
  for (const auto& [size, flag] :
       {std::pair{fixed.tensor_parallel, "--tensor-model-parallel-size"},
        std::pair{fixed.context_parallel, "--context-parallel-size"},
        std::pair{fixed.pipeline_parallel, "--pipeline-model-parallel-size"}})
    if (size) {
      fixed_product *= *size;
      fixed_sizes += (fixed_sizes.empty() ? "" : " x ") + std::string(flag) + " " +
                     std::to_string(*size);
    }
  SHARDLM_REQUIRE(N % fixed_product == 0, ErrorKind::kInvalidConfig,
                  "--num-gpus " + std::to_string(N) + " is not a multiple of the fixed " +
                      fixed_sizes + "; change it or --num-gpus");
  for (const Candidate& choice : enumerate_choices(cfg, cluster, fixed, rejected)) {
    std::optional<Candidate> cand = evaluate(cfg, cluster, fixed, choice, result, rejected);
    if (cand) result.candidates.push_back(std::move(*cand));
  }
  std::stable_sort(result.candidates.begin(), result.candidates.end(),
                   [](const Candidate& a, const Candidate& b) {
                     if (a.fits != b.fits) return a.fits;
                     if (a.fits && a.step_s != b.step_s) return a.step_s < b.step_s;
                     return a.memory().total() < b.memory().total();
                   });
  return result;
}

}  // namespace shardlm::plan
