#include "shardlm/model/layers/moe_mlp.h"

#include <algorithm>
#include <cmath>

#include "shardlm/base/check.h"
#include "shardlm/dist/all_to_all.h"
#include "shardlm/ops/device_queries.h"
#include "shardlm/ops/ops.h"

namespace shardlm::model {

namespace {
std::string mlp_prefix(int64_t layer) { return "decoder.layers." + std::to_string(layer) + ".mlp"; }
// The router's weights and their gradients: fp64 in fp64 runs, else fp32 (ops.h).
DType probs_dtype(DType dtype) { return dtype == DType::kF64 ? DType::kF64 : DType::kF32; }

// Small fp32/fp64 vectors between the device and the host (copies keep the dtype; the host
// converts).
std::vector<double> to_host(DeviceContext& ctx, const Tensor& t) {
  OwnedTensor host = OwnedTensor::empty(t.dtype(), t.shape());
  ops::copy(ctx, host.view(), t);
  std::vector<double> out(static_cast<size_t>(t.numel()));
  for (size_t i = 0; i < out.size(); ++i)
    out[i] = t.dtype() == DType::kF64 ? host.view().data<double>()[i]
                                      : static_cast<double>(host.view().data<float>()[i]);
  return out;
}
// The first `rows` rows (entries) of a buffer sized for the most.
Tensor first_rows(const Tensor& t, int64_t rows) {
  std::vector<int64_t> dims = t.shape().dims();
  dims[0] = rows;
  return t.flat_view(0, Shape(dims));
}
void from_host(DeviceContext& ctx, Tensor t, const std::vector<double>& v) {
  OwnedTensor host = OwnedTensor::empty(t.dtype(), t.shape());
  for (size_t i = 0; i < v.size(); ++i) {
    if (t.dtype() == DType::kF64)
      host.view().data<double>()[i] = v[i];
    else
      host.view().data<float>()[i] = static_cast<float>(v[i]);
  }
  ops::copy(ctx, t, host.view());
}
}  // namespace

MoeMlp::MoeMlp(const TransformerConfig& cfg, int64_t layer_index, const TensorParallel& tp,
               const ContextParallel& cp, const ExpertParallel& ep)
    : cfg_(cfg),
      tp_(tp),
      cp_(cp),
      ep_(ep),
      index_(static_cast<uint32_t>(layer_index)),
      // Megatron's router: no bias, initialised like the other input projections.
      router_(mlp_prefix(layer_index) + ".router", cfg.hidden_size, cfg.num_experts, false,
              Init::normal(cfg.init_method_std)) {
  const int64_t F = cfg.moe_ffn_size();
  SHARDLM_REQUIRE(cfg.num_experts % ep.size() == 0, ErrorKind::kInvalidConfig,
                  "--num-experts " + std::to_string(cfg.num_experts) +
                      " is not divisible by --expert-model-parallel-size " +
                      std::to_string(ep.size()));
  const int64_t local = cfg.num_experts / ep.size(), first = ep.rank() * local;
  experts_.reserve(static_cast<size_t>(local));
  for (int64_t e = first; e < first + local; ++e) {
    const std::string p = mlp_prefix(layer_index) + ".experts.local_experts." + std::to_string(e);
    experts_.push_back(
        {Linear(p + ".linear_fc1", cfg.hidden_size, cfg.swiglu ? 2 * F : F, cfg.add_bias_linear,
                Init::normal(cfg.init_method_std), ParallelMode::kColumn, tp, cfg.swiglu ? 2 : 1),
         Linear(p + ".linear_fc2", F, cfg.hidden_size, cfg.add_bias_linear,
                Init::normal(cfg.init_method_std / std::sqrt(2.0 * cfg.num_layers)),
                ParallelMode::kRow, tp)});
    experts_.back().fc1.mark_expert();
    experts_.back().fc2.mark_expert();
  }
}

void MoeMlp::register_parameters(ParameterRegistry& reg) const {
  router_.register_parameters(reg);
  for (const Expert& e : experts_) {
    e.fc1.register_parameters(reg);
    e.fc2.register_parameters(reg);
  }
}

void MoeMlp::bind(ParameterRegistry& reg) {
  router_.bind(reg);
  for (Expert& e : experts_) {
    e.fc1.bind(reg);
    e.fc2.bind(reg);
  }
}

void MoeMlp::append_parameters(std::vector<Parameter*>& out) const {
  router_.append_parameters(out);
  for (const Expert& e : experts_) {
    e.fc1.append_parameters(out);
    e.fc2.append_parameters(out);
  }
}

int64_t MoeMlp::expert_row_capacity(const TransformerConfig& cfg, const ExpertParallel& ep,
                                    int64_t tokens) {
  const int64_t k = cfg.moe_router_topk, L = cfg.num_experts / ep.size();
  // A token sends a rank at most min(k, E/EP) rows (its k choices are distinct experts) ...
  int64_t rows = ep.size() * tokens * std::min<int64_t>(k, L);
  // ... and with token dropping each rank at most `capacity` rows per expert.
  const int64_t capacity = cfg.moe_expert_capacity(tokens);
  if (capacity > 0) rows = std::min(rows, ep.size() * L * capacity);
  return ep.enabled() ? rows : std::min(rows, tokens * k);
}

MoeMlp::Saved MoeMlp::allocate_saved(TensorAllocator& alloc, DType dtype, int64_t tokens) const {
  const int64_t k = cfg_.moe_router_topk, K = tokens * k, F = cfg_.moe_ffn_size() / tp_.size();
  const int64_t R = expert_row_capacity(cfg_, ep_, tokens), E = cfg_.num_experts;
  const int64_t G = balancing_groups(tokens);
  Saved s;
  s.logits = alloc.allocate(dtype, {tokens, E});
  s.probs = alloc.allocate(probs_dtype(dtype), {tokens, k});
  s.choices = alloc.allocate(DType::kI32, {tokens, k});
  s.fc1 = alloc.allocate(dtype, {R, cfg_.swiglu ? 2 * F : F});
  s.expert_out = alloc.allocate(dtype, {K, cfg_.hidden_size});
  if (ep_.enabled()) {
    s.expert_in = alloc.allocate(dtype, {R, cfg_.hidden_size});
    s.routing = alloc.allocate(DType::kI32, {3 * K + (G + ep_.size()) * E + 2 * R});
  } else {
    s.routing = alloc.allocate(DType::kI32, {3 * K + (G + 1) * E});
  }
  return s;
}

MoeMlp::Scratch MoeMlp::allocate_scratch(const TransformerConfig& cfg, const TensorParallel& tp,
                                         const ExpertParallel& ep, TensorAllocator& alloc,
                                         DType dtype, int64_t tokens, int64_t sequences) {
  const int64_t k = cfg.moe_router_topk, K = tokens * k, F = cfg.moe_ffn_size() / tp.size();
  const int64_t C = cfg.hidden_size, E = cfg.num_experts, R = expert_row_capacity(cfg, ep, tokens);
  const DType pd = probs_dtype(dtype);
  Scratch s;
  s.rows = alloc.allocate(dtype, {K, C});
  s.act = alloc.allocate(dtype, {R, F});
  s.dfc1 = alloc.allocate(dtype, {R, cfg.swiglu ? 2 * F : F});
  s.d_expert_out = alloc.allocate(dtype, {K, C});
  if (ep.enabled()) {
    s.exchange = alloc.allocate(dtype, {R, C});
    s.expert_rows = alloc.allocate(dtype, {R, C});
  }
  s.weight_of = alloc.allocate(pd, {K});
  s.dprobs = alloc.allocate(pd, {tokens, k});
  s.dlogits = alloc.allocate(dtype, {tokens, E});
  s.d_router_in = alloc.allocate(dtype, {tokens, C});
  // The load-balancing loss's groups of tokens: the micro-batch, or each of its sequences.
  const int64_t G = cfg.moe_seq_aux_loss ? sequences : 1;
  s.score_sums = alloc.allocate(pd, {G * E});
  s.aux_weights = alloc.allocate(pd, {G * E});
  s.counts = alloc.allocate(pd, {G * E});
  if (cfg.moe_z_loss_coeff > 0) s.lse = alloc.allocate(pd, {tokens});
  return s;
}

MoeMlp::Routing MoeMlp::routing_views(const Saved& s) const {
  const int64_t N = s.choices.size(0), k = s.choices.size(1), K = N * k;
  const int64_t E = cfg_.num_experts, D = ep_.size() * E, GE = balancing_groups(N) * E;
  Routing r{s.routing.flat_view(0, Shape({K})),          s.routing.flat_view(K, Shape({K})),
            s.routing.flat_view(2 * K, Shape({N, k})),   s.routing.flat_view(3 * K, Shape({GE})),
            s.routing.flat_view(3 * K + GE, Shape({D})), Tensor(),
            Tensor()};
  if (ep_.enabled()) {
    const int64_t R = s.expert_in.size(0);
    r.em_from_sm = s.routing.flat_view(3 * K + GE + D, Shape({R}));
    r.sm_from_em = s.routing.flat_view(3 * K + GE + D + R, Shape({R}));
  }
  return r;
}

std::vector<int64_t> MoeMlp::saved_counts(DeviceContext& ctx, const Saved& s) const {
  const int64_t K = s.choices.numel();
  const int64_t n = cfg_.num_experts * (balancing_groups(s.choices.size(0)) + ep_.size());
  const Tensor counts = s.routing.flat_view(3 * K, Shape({n}));  // routed, then kept
  OwnedTensor host = OwnedTensor::empty(DType::kI32, counts.shape());
  ops::copy(ctx, host.view(), counts);
  const int32_t* c = host.view().data<int32_t>();
  return std::vector<int64_t>(c, c + n);
}

MoeMlp::Dispatch MoeMlp::dispatch_of(const std::vector<int64_t>& counts) const {
  const int64_t E = cfg_.num_experts, L = num_local_experts(), P = ep_.size();
  const int64_t GE = static_cast<int64_t>(counts.size()) - P * E;  // the groups' routed counts
  SHARDLM_CHECK(GE >= E && GE % E == 0);
  Dispatch d;
  d.routed.assign(counts.begin(), counts.begin() + GE);
  d.local_expert_rows.assign(static_cast<size_t>(L), 0);
  d.send_rows.assign(static_cast<size_t>(P), 0);
  d.recv_rows.assign(static_cast<size_t>(P), 0);
  for (int64_t src = 0; src < P; ++src)
    for (int64_t e = 0; e < E; ++e) {
      const int64_t n = counts[static_cast<size_t>(GE + src * E + e)];
      if (src == ep_.rank()) {
        d.send_rows[static_cast<size_t>(e / L)] += n;
        d.rows += n;
      }
      if (e / L != ep_.rank()) continue;
      d.recv_rows[static_cast<size_t>(src)] += n;
      d.local_expert_rows[static_cast<size_t>(e - first_local_expert())] += n;
      d.received += n;
    }
  return d;
}

std::vector<int64_t> MoeMlp::route(DeviceContext& ctx, const Saved& s) const {
  const int64_t N = s.choices.size(0), k = s.choices.size(1), E = cfg_.num_experts, K = N * k;
  const int64_t P = ep_.size(), L = num_local_experts(), G = balancing_groups(N);
  OwnedTensor choices = OwnedTensor::empty(DType::kI32, s.choices.shape());
  ops::copy(ctx, choices.view(), s.choices);
  const int32_t* c = choices.view().data<int32_t>();
  // The (token, choice) pairs of each expert in token order: a stable counting sort.
  std::vector<int64_t> routed(static_cast<size_t>(E), 0);
  for (int64_t i = 0; i < K; ++i) {
    SHARDLM_REQUIRE(c[i] >= 0 && c[i] < E, ErrorKind::kInternal,
                    "MoE router chose expert " + std::to_string(c[i]) + " of " +
                        std::to_string(E));
    ++routed[static_cast<size_t>(c[i])];
  }
  std::vector<int64_t> start(static_cast<size_t>(E) + 1, 0);
  for (int64_t e = 0; e < E; ++e) start[e + 1] = start[e] + routed[e];
  std::vector<int64_t> pairs(static_cast<size_t>(K));  // flat n * k + i, grouped by expert
  {
    std::vector<int64_t> next(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < K; ++i) pairs[static_cast<size_t>(next[c[i]]++)] = i;
  }
  // Token dropping: each expert keeps at most `capacity` pairs, those of the highest router
  // weight (ties: the earlier token) or the earliest tokens; kept pairs stay in token order.
  std::vector<int64_t> kept = routed;
  const int64_t capacity = cfg_.moe_expert_capacity(N);
  std::vector<char> keep(static_cast<size_t>(K), 1);
  if (capacity > 0) {
    std::vector<double> weight;
    if (!cfg_.moe_token_drop_by_position) weight = to_host(ctx, s.probs);
    for (int64_t e = 0; e < E; ++e) {
      if (routed[e] <= capacity) continue;
      const auto first = pairs.begin() + start[e], last = pairs.begin() + start[e + 1];
      std::vector<int64_t> order(first, last);
      if (!cfg_.moe_token_drop_by_position)
        std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
          return weight[static_cast<size_t>(a)] > weight[static_cast<size_t>(b)];
        });
      for (size_t j = static_cast<size_t>(capacity); j < order.size(); ++j)
        keep[static_cast<size_t>(order[j])] = 0;
      kept[e] = capacity;
    }
  }
  OwnedTensor plan = OwnedTensor::empty(DType::kI32, s.routing.shape());
  int32_t* tok = plan.view().data<int32_t>();
  int32_t* widx = tok + K;
  int32_t* slot = widx + K;
  int32_t* routed_out = slot + K;         // [G, E] pairs per expert in each balancing group
  int32_t* all_counts = routed_out + G * E;  // [P, E] kept rows: rank src's row at src * E
  std::fill(routed_out, routed_out + G * E, 0);
  for (int64_t i = 0; i < K; ++i) ++routed_out[(i / k) / (N / G) * E + c[i]];
  for (int64_t e = 0; e < E; ++e) all_counts[ep_.rank() * E + e] = static_cast<int32_t>(kept[e]);
  // Rows: the kept pairs, grouped by expert. A dropped pair's slot is the last row, left zero in
  // the experts' outputs and input gradients (rows < K are kept when any pair is dropped).
  int64_t rows = 0;
  for (int64_t i : pairs) {
    if (!keep[static_cast<size_t>(i)]) {
      slot[i] = static_cast<int32_t>(K - 1);
      continue;
    }
    tok[rows] = static_cast<int32_t>(i / k);
    widx[rows] = static_cast<int32_t>(i);
    slot[i] = static_cast<int32_t>(rows++);
  }
  for (int64_t r = rows; r < K; ++r) tok[r] = widx[r] = 0;  // unused
  if (ep_.enabled()) {
    // Every EP rank's kept counts: this rank's row goes into its slot of the saved plan, which
    // the all-gather completes in place; then the host reads them all.
    const Routing r = routing_views(s);
    const Tensor mine = r.counts.flat_view(ep_.rank() * E, Shape({E}));
    ops::copy(ctx, mine, plan.view().flat_view(3 * K + G * E + ep_.rank() * E, Shape({E})));
    ep_.group->all_gather(r.counts, mine);
    ops::copy(ctx, plan.view().flat_view(3 * K + G * E, Shape({P * E})), r.counts);
    // Received rows arrive source-major (rank 0's rows for the local experts in expert order,
    // then rank 1's, ...); the experts run expert-major. The permutations between the two:
    const int64_t R = s.expert_in.size(0);
    int32_t* em_from_sm = all_counts + P * E;
    int32_t* sm_from_em = em_from_sm + R;
    std::vector<int64_t> expert_start(static_cast<size_t>(P * L), 0);  // [src, local e]
    int64_t at = 0;
    for (int64_t src = 0; src < P; ++src)
      for (int64_t e = 0; e < L; ++e) {
        expert_start[static_cast<size_t>(src * L + e)] = at;
        at += all_counts[src * E + first_local_expert() + e];
      }
    SHARDLM_CHECK_LE(at, R);
    int64_t em = 0;
    for (int64_t e = 0; e < L; ++e)
      for (int64_t src = 0; src < P; ++src) {
        const int64_t first = expert_start[static_cast<size_t>(src * L + e)];
        for (int64_t j = 0; j < all_counts[src * E + first_local_expert() + e]; ++j, ++em) {
          em_from_sm[em] = static_cast<int32_t>(first + j);
          sm_from_em[first + j] = static_cast<int32_t>(em);
        }
      }
    for (int64_t i = at; i < R; ++i) em_from_sm[i] = sm_from_em[i] = 0;  // unused
  }
  ops::copy(ctx, s.routing, plan.view());
  std::vector<int64_t> out(static_cast<size_t>((G + P) * E));
  for (int64_t i = 0; i < (G + P) * E; ++i) out[static_cast<size_t>(i)] = routed_out[i];
  return out;
}

void MoeMlp::activation_forward(DeviceContext& ctx, Tensor out, const Tensor& fc1) const {
  if (cfg_.swiglu)
    ops::swiglu_forward(ctx, out, fc1);
  else
    ops::gelu_forward(ctx, out, fc1);
}

void MoeMlp::for_each_expert(DeviceContext& ctx, const std::vector<int64_t>& rows,
                             const std::function<void(const Expert&, const RowBlock&)>& fn) const {
  SHARDLM_CHECK_EQ(rows.size(), experts_.size());
  // The rows per expert change every step: timing GEMM candidates for every new shape would
  // cost more than it saves (ops/device_queries.h).
  const ops::GemmAutotuneOff fixed_choice(ctx);
  int64_t first = 0;
  for (size_t e = 0; e < experts_.size(); ++e) {
    if (rows[e] > 0) fn(experts_[e], RowBlock{first, rows[e]});
    first += rows[e];
  }
}

void MoeMlp::run_experts(DeviceContext& ctx, const std::vector<int64_t>& rows, Tensor out,
                         const Tensor& in, const Saved& s, const Scratch& scratch) const {
  for_each_expert(ctx, rows, [&](const Expert& ex, const RowBlock& b) {
    const Tensor x = b(in), fc1 = b(s.fc1), act = b(scratch.act);
    if (cfg_.swiglu) {
      ex.fc1.forward(ctx, fc1, x);
      ops::swiglu_forward(ctx, act, fc1);
    } else {
      ex.fc1.forward_gelu(ctx, act, fc1, x);
    }
    ex.fc2.forward(ctx, b(out), act);
  });
}

void MoeMlp::run_experts_backward(DeviceContext& ctx, const std::vector<int64_t>& rows,
                                  const Tensor& d_rows, const Tensor& in, const Saved& s,
                                  const Scratch& scratch) const {
  const int64_t F = scratch.act.size(1);
  // Each expert's input gradient overwrites its block of d_rows, whose output gradient fc2's
  // backward has consumed by then.
  for_each_expert(ctx, rows, [&](const Expert& ex, const RowBlock& b) {
    const Tensor x = b(in), fc1 = b(s.fc1), dfc1 = b(scratch.dfc1), d = b(d_rows);
    // The recomputed activation output lives in the block of its gradient's gradient, dfc1,
    // which is written only after fc2's backward has read it (as the dense MLP does).
    const Tensor act = b(scratch.dfc1, F), dact = b(scratch.act);
    activation_forward(ctx, act, fc1);
    ex.fc2.backward(ctx, dact, d, act);
    if (cfg_.swiglu) {
      ops::swiglu_backward(ctx, dfc1, dact, fc1);
      ex.fc1.backward(ctx, d, dfc1, x);
    } else {
      ex.fc1.backward_from_gelu(ctx, d, dfc1, dact, fc1, x);
    }
  });
}

std::vector<double> MoeMlp::global_counts(DeviceContext& ctx, const std::vector<int64_t>& counts,
                                          const Scratch& scratch) const {
  std::vector<double> c(counts.begin(), counts.end());
  if (!cp_.enabled()) return c;
  from_host(ctx, scratch.counts, c);  // exact in fp32 up to 2^24 tokens per expert
  cp_.group->all_reduce(scratch.counts);
  return to_host(ctx, scratch.counts);
}

int64_t MoeMlp::balancing_groups(int64_t tokens) const {
  return cfg_.moe_seq_aux_loss ? tokens / cp_.local_length(cfg_.seq_length) : 1;
}

double MoeMlp::aux_scale(int64_t local_tokens) const {
  // Each group's switch loss over its tokens on all CP ranks, averaged over the groups.
  const double G = static_cast<double>(balancing_groups(local_tokens));
  const double N = static_cast<double>(local_tokens * cp_.size()) / G;
  return static_cast<double>(cfg_.num_experts) * cfg_.moe_aux_coeff() /
         (N * N * static_cast<double>(cfg_.moe_router_topk)) / G;
}

void MoeMlp::for_each_balancing_group(
    int64_t tokens, const std::function<void(int64_t g, int64_t first_row, int64_t rows)>& fn) const {
  const int64_t G = balancing_groups(tokens), rows = tokens / G;
  for (int64_t g = 0; g < G; ++g) fn(g, g * rows, rows);
}

void MoeMlp::forward(StepContext& step, Tensor out, const Tensor& x, const Saved& s,
                     const Scratch& scratch) const {
  DeviceContext& ctx = step.device;
  const int64_t N = x.size(0), k = cfg_.moe_router_topk;
  router_.forward(ctx, s.logits, x);
  ops::moe_topk_router_forward(ctx, s.probs, s.choices, s.logits, k, cfg_.moe_router_pre_softmax);
  // --moe-router-topk-scaling-factor: the routing weights times a constant (Megatron's).
  if (cfg_.moe_router_topk_scaling_factor > 0)
    ops::scale_inplace(ctx, s.probs, cfg_.moe_router_topk_scaling_factor);
  // The load-balancing loss's value for the log (its gradient is added in backward); the sums
  // are queued before route() waits for the choices, so reading them back waits for nothing.
  const bool log_aux = cfg_.moe_aux_coeff() > 0 && step.moe_aux_loss != nullptr;
  const int64_t E = cfg_.num_experts;
  if (log_aux)
    for_each_balancing_group(N, [&](int64_t g, int64_t first, int64_t rows) {
      ops::moe_router_score_sums(ctx, scratch.score_sums.flat_view(g * E, Shape({E})),
                                 s.logits.flat_view(first * E, Shape({rows, E})));
    });
  const Dispatch d = dispatch_of(route(ctx, s));
  const Routing r = routing_views(s);
  if (log_aux) {
    const std::vector<double> sums = to_host(ctx, scratch.score_sums);
    const std::vector<double> tokens = global_counts(ctx, d.routed, scratch);
    double loss = 0;  // this rank's tokens' part (the CP ranks' parts add up)
    for (size_t e = 0; e < sums.size(); ++e) loss += tokens[e] * sums[e];
    // Megatron tracks the loss divided by its coefficient ("load_balancing_loss").
    *step.moe_aux_loss += loss * aux_scale(N) / cfg_.moe_aux_coeff();
  }
  if (cfg_.moe_z_loss_coeff > 0 && step.moe_z_loss != nullptr) {
    // This rank's tokens' part of the mean over the micro-batch (the CP ranks' parts add up).
    ops::moe_router_logsumexp(ctx, scratch.lse, s.logits);
    double sum = 0;
    for (double l : to_host(ctx, scratch.lse)) sum += l * l;
    *step.moe_z_loss += sum / static_cast<double>(N * cp_.size());
  }
  // This rank's kept rows, sorted by expert (all N·k rows unless tokens were dropped).
  const Tensor sorted = first_rows(scratch.rows, d.rows);
  ops::gather_rows(ctx, sorted, x, first_rows(r.token_of, d.rows), Tensor());
  if (!ep_.enabled()) {
    run_experts(ctx, d.local_expert_rows, s.expert_out, scratch.rows, s, scratch);
  } else {
    // To the experts' ranks, into the experts' order, through them, and back.
    const int64_t R = d.received;
    const Tensor received = first_rows(scratch.exchange, R), by_expert = first_rows(s.expert_in, R);
    dist::all_to_all_v(*ep_.group, ctx, received, sorted, d.send_rows, d.recv_rows);
    if (R > 0) ops::gather_rows(ctx, by_expert, received, first_rows(r.em_from_sm, R), Tensor());
    run_experts(ctx, d.local_expert_rows, scratch.expert_rows, s.expert_in, s, scratch);
    if (R > 0)
      ops::gather_rows(ctx, received, first_rows(scratch.expert_rows, R),
                       first_rows(r.sm_from_em, R), Tensor());
    dist::all_to_all_v(*ep_.group, ctx, first_rows(s.expert_out, d.rows), received, d.recv_rows,
                       d.send_rows);
  }
  zero_dropped_row(ctx, s.expert_out, d.rows);
  ops::gather_sum_rows(ctx, out, s.expert_out, r.slot_of, s.probs);
}

void MoeMlp::zero_dropped_row(DeviceContext& ctx, const Tensor& rows, int64_t kept) const {
  const int64_t K = rows.size(0), C = rows.size(1);
  if (kept < K) ops::fill(ctx, rows.flat_view((K - 1) * C, Shape({1, C})), 0.0);
}

std::vector<int64_t> MoeMlp::backward_output(StepContext& step, const Tensor& dout,
                                             const Saved& s, const Scratch& scratch) const {
  DeviceContext& ctx = step.device;
  const Routing r = routing_views(s);
  std::vector<int64_t> counts = saved_counts(ctx, s);
  const Dispatch d = dispatch_of(counts);
  // Combine backward: each kept row's output gradient is its token's, times its weight; the
  // weights' gradient is the dot of the token's gradient with the row's output (0 for a dropped
  // pair, whose slot is the zero row).
  const int64_t rows = d.rows;
  const Tensor weight_of = first_rows(scratch.weight_of, rows);
  ops::gather_rows(ctx, weight_of.reshape({rows, 1}), s.probs.reshape({s.probs.numel(), 1}),
                   first_rows(r.weight_index, rows), Tensor());
  const Tensor d_sorted = first_rows(scratch.d_expert_out, rows);
  ops::gather_rows(ctx, d_sorted, dout, first_rows(r.token_of, rows), weight_of);
  ops::gathered_row_dot(ctx, scratch.dprobs, dout, s.expert_out, r.slot_of);
  if (tp_.enabled()) tp_.group->all_reduce(scratch.dprobs);  // expert_out is partial over TP
  if (ep_.enabled()) {  // the output gradients to the experts' ranks, in the experts' order
    const int64_t R = d.received;
    const Tensor received = first_rows(scratch.exchange, R);
    dist::all_to_all_v(*ep_.group, ctx, received, d_sorted, d.send_rows, d.recv_rows);
    if (R > 0)
      ops::gather_rows(ctx, first_rows(scratch.expert_rows, R), received,
                       first_rows(routing_views(s).em_from_sm, R), Tensor());
  }
  return counts;
}

void MoeMlp::backward_input(StepContext& step, Tensor dx, const Tensor& x,
                            const std::vector<int64_t>& counts, const Saved& s,
                            const Scratch& scratch) const {
  DeviceContext& ctx = step.device;
  const int64_t N = x.size(0);
  const Routing r = routing_views(s);
  const Dispatch d = dispatch_of(counts);
  if (!ep_.enabled()) {
    // The experts, from the recomputed inputs; their input gradients replace the output
    // gradients in d_expert_out.
    ops::gather_rows(ctx, first_rows(scratch.rows, d.rows), x, first_rows(r.token_of, d.rows),
                     Tensor());
    run_experts_backward(ctx, d.local_expert_rows, scratch.d_expert_out, scratch.rows, s, scratch);
  } else {
    // The experts on the rows they received, then the input gradients back to their ranks.
    const int64_t R = d.received;
    run_experts_backward(ctx, d.local_expert_rows, scratch.expert_rows, s.expert_in, s, scratch);
    const Tensor received = first_rows(scratch.exchange, R);
    if (R > 0)
      ops::gather_rows(ctx, received, first_rows(scratch.expert_rows, R),
                       first_rows(r.sm_from_em, R), Tensor());
    dist::all_to_all_v(*ep_.group, ctx, first_rows(scratch.d_expert_out, d.rows), received,
                       d.recv_rows, d.send_rows);
  }
  // Dispatch backward: a token's gradient is the sum of its kept rows' input gradients (now in
  // d_expert_out, whose output gradients are spent; a dropped pair reads the zero row).
  zero_dropped_row(ctx, scratch.d_expert_out, d.rows);
  ops::gather_sum_rows(ctx, dx, scratch.d_expert_out, r.slot_of, Tensor());
  // The router: top-k softmax backward, plus the load-balancing loss's gradient.
  if (cfg_.moe_router_topk_scaling_factor > 0)  // to the gradient of the unscaled weights
    ops::scale_inplace(ctx, scratch.dprobs, cfg_.moe_router_topk_scaling_factor);
  ops::moe_topk_router_backward(ctx, scratch.dlogits, scratch.dprobs, s.logits, s.choices,
                                cfg_.moe_router_pre_softmax);
  if (cfg_.moe_aux_coeff() > 0) {
    std::vector<double> w = global_counts(ctx, d.routed, scratch);
    for (double& v : w) v *= aux_scale(N) * step.loss_grad_scale;
    from_host(ctx, scratch.aux_weights, w);
    for_each_balancing_group(N, [&](int64_t g, int64_t first, int64_t rows) {
      const int64_t E = cfg_.num_experts;
      ops::moe_aux_loss_backward(ctx, scratch.dlogits.flat_view(first * E, Shape({rows, E})),
                                 s.logits.flat_view(first * E, Shape({rows, E})),
                                 scratch.aux_weights.flat_view(g * E, Shape({E})));
    });
  }
  if (cfg_.moe_z_loss_coeff > 0)
    ops::moe_z_loss_backward(ctx, scratch.dlogits, s.logits,
                             cfg_.moe_z_loss_coeff / static_cast<double>(N * cp_.size()) *
                                 step.loss_grad_scale);
  // Every TP rank computed the same router gradients; the caller sums dx over TP, so the
  // router's share enters on rank 0 only (its weight gradient is complete on every rank).
  router_.backward(ctx, scratch.d_router_in, scratch.dlogits, x);
  if (tp_.rank() == 0) ops::add_inplace(ctx, dx, scratch.d_router_in);
}

}  // namespace shardlm::model
