// MoeMlp: the mixture-of-experts MLP of a transformer layer, as Megatron Core's MoELayer builds
// it with a TopKRouter, the token dispatcher and SequentialMLP experts, on one rank:
//
//   logits = router(x)                [N, E]  decoder.layers.<i>.mlp.router.weight [E, C]
//   probs, experts = top-k(logits)     per token: softmax over its k largest logits, or (with
//                                      --moe-router-pre-softmax) its k largest softmax scores,
//                                      times --moe-router-topk-scaling-factor when given
//   y[n] = Σ_i probs[n, i] · expert_{experts[n, i]}(x[n])
//
// Expert e is linear_fc2(act(linear_fc1(x))) with --moe-ffn-hidden-size and the layer's
// activation (GELU, or SwiGLU with fc1 [gate ; up]), named
// decoder.layers.<i>.mlp.experts.local_experts.<e>.linear_fc{1,2}.{weight,bias} with the global
// expert index e (Megatron's distributed-checkpoint keys).
//
// Dispatch: the top-k choices are copied to the host (N·k int32), the N·k (token, choice) pairs
// are sorted by expert with a stable counting sort (token order inside an expert), the plan goes
// back to the device in one transfer and is saved (backward reads back only the counts, which
// size the expert GEMMs: two host synchronisations per layer in forward, three under EP, one in
// backward), and the tokens are gathered into contiguous rows per expert (ops::gather_rows). Each expert runs its GEMMs on its rows; the
// outputs are gathered back and summed with the router's weights (ops::gather_sum_rows). No
// atomics anywhere, so results are deterministic. Dropless unless a capacity factor is set:
// every token reaches its k experts.
// The expert GEMMs' shapes follow the routing, so they take cuBLASLt's heuristic choice instead of
// being timed per new shape (ops::GemmAutotuneOff).
//
// Tensor parallelism (Megatron's expert tensor parallelism = TP): every TP rank holds all N
// tokens (gathered under SP), routes them identically (replicated router) and runs its slice of
// every expert: fc1 column-parallel (SwiGLU: [gate_r ; up_r]), fc2 row-parallel, so the output is
// a partial sum over TP that the caller reduces (exit_row_region), as for the dense MLP. The
// routing weights' gradient is all-reduced over TP (each rank saw a partial expert output), and
// the router's input gradient is added on TP rank 0 only, since the caller sums the input
// gradient over TP. Context parallelism: each rank routes its own tokens; the load-balancing
// counts are summed over the CP group and N is the whole micro-batch (N_local · CP), so the CP
// ranks' losses add up to the single rank's.
//
// Expert parallelism (--expert-model-parallel-size EP, model/expert_parallel.h): EP rank r holds
// experts [r·E/EP, (r+1)·E/EP) (registered under their global index, ParameterSpec::expert). Each
// rank routes its own tokens; the per-expert counts are all-gathered over EP (one [EP, E] int32
// exchange), the rows go to their experts' rank by an all-to-all (dist/all_to_all.h; rows for
// rank j are contiguous after the sort), are reordered from source-major to expert-major there
// (one row gather by a permutation computed on the host from the counts), run through the
// local experts, reordered back and returned by a second all-to-all; backward mirrors it. The
// received rows are saved (they cannot be recomputed without exchanging again). This is
// Megatron's alltoall token dispatcher; --moe-token-dispatcher-type allgather gives the same
// numbers through the same exchange. The expert side's buffers are sized for the worst case,
// R_max = EP·N·min(k, E/EP) rows (every rank sending all its tokens' choices here), since the
// dispatch is dropless and the arena is planned before training; a capacity factor lowers it to
// EP·(E/EP)·capacity.
//
// Token dropping (--moe-expert-capacity-factor f > 0, Megatron's): each expert keeps at most
// ceil(N·k/E · f) of a micro-batch's (token, choice) pairs on this rank, those of the highest
// router weight (ties: the earlier token) or, with --moe-token-drop-policy position, the
// earliest tokens; kept pairs stay in token order. A dropped pair's slot is row K-1, zeroed in
// the experts' outputs and input gradients (it is free whenever a pair was dropped), so it adds
// nothing to its token and its weight gets no gradient, as Megatron's probs·mask. The
// load-balancing loss counts the pairs routed before dropping (Megatron's tokens_per_expert).
// Under EP the cap applies per source rank and expert, so it also bounds the experts' buffers.
//
// Load balancing (--moe-aux-loss-coeff > 0, --moe-router-load-balancing-type aux_loss; with
// seq_aux_loss, DeepSeek's sequence-level loss as Megatron computes it: the same loss over each
// sequence's tokens (N = seq_length), averaged over the micro-batch's sequences):
// Megatron's switch loss aux = E·coeff / (N²·k) · Σ_e tokens_e · Σ_n softmax(logits[n])[e]. It
// joins the objective as Megatron's MoEAuxLossAutoScaler does: its gradient enters the router's
// backward scaled like the language-model loss (StepContext::loss_grad_scale), and its value is
// added to StepContext::moe_aux_loss for the log.
//
// Router z-loss (--moe-z-loss-coeff c > 0, Megatron's): c · mean_n logsumexp(logits[n])², the
// mean over the micro-batch's tokens on all CP ranks; its gradient enters the router like the
// load-balancing loss's, and its value (over c) is added to StepContext::moe_z_loss.
//
// Memory (per layer and micro-batch, N = B·T tokens, K = N·k rows, F' = F or 2F with SwiGLU,
// R = K without EP, else R_max above): saved logits [N, E], probs [N, k], choices [N, k], fc1
// output [R, F'], expert outputs [K, C], under EP the received rows [R, C], and the dispatch
// plan (3K + (G + 1)·E int32, or 3K + (G + EP)·E + 2·R_max under EP; G the load-balancing
// groups); without EP the expert inputs are
// recomputed in backward, and the activations always are. Scratch is shared by the layers.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "shardlm/model/context_parallel.h"
#include "shardlm/model/expert_parallel.h"
#include "shardlm/model/layers/linear.h"
#include "shardlm/model/tensor_parallel.h"
#include "shardlm/model/module.h"
#include "shardlm/model/transformer_config.h"
#include "shardlm/tensor/arena.h"

namespace shardlm::model {

class MoeMlp {
 public:
  struct Saved {
    Tensor logits;      // [N, E]
    Tensor probs;       // [N, k] fp32 (fp64 in fp64 runs): the router's weights
    Tensor choices;     // [N, k] int32: the experts of each token, by descending weight
    Tensor fc1;         // [R, F'] the local experts' fc1 outputs, rows grouped by expert
    Tensor expert_out;  // [K, C]  the experts' outputs for this rank's rows (sorted by expert)
    Tensor expert_in;   // [R, C]  EP only: the rows received for the local experts, by expert
    // The dispatch plan, int32, packed so that it reaches the device in one transfer and
    // backward reads only the counts back: [K token_of | K weight_index | N*k slot_of | E routed
    // | D counts | EP only: R em_from_sm | R sm_from_em] (routing_views() names the parts).
    Tensor routing;
  };
  // The parts of Saved::routing.
  struct Routing {
    Tensor token_of;      // [K]    row -> token
    Tensor weight_index;  // [K]    row -> flat (token, choice), to gather the router weights
    Tensor slot_of;       // [N, k] (token, choice) -> row (a dropped pair: the zero row K-1)
    Tensor routed;        // [G, E] this rank's (token, choice) pairs per expert in each
                          //        load-balancing group (G = 1, or the sequences), before dropping
    Tensor counts;        // [D]    rows per expert: [E], or under EP [EP, E] (rank s's row)
    Tensor em_from_sm;    // [R]    EP: expert-major row -> received (source-major) row
    Tensor sm_from_em;    // [R]    EP: received row -> expert-major row
  };
  // What the counts say about the exchange (routing_views().counts, read on the host).
  struct Dispatch {
    std::vector<int64_t> routed;             // [G, E] this rank's pairs per expert and group
    int64_t rows = 0;                        // K' <= K: this rank's rows kept (sent)
    std::vector<int64_t> local_expert_rows;  // [E/EP] rows each local expert runs
    std::vector<int64_t> send_rows, recv_rows;  // [EP] rows to / from each EP rank
    int64_t received = 0;                    // rows this rank's experts run (sum of recv_rows)
  };
  struct Scratch {
    Tensor rows;          // [K, C]  this rank's rows sorted by expert (forward and backward)
    Tensor act;           // [R, F]  activation output; in backward its gradient
    Tensor dfc1;          // [R, F'] backward; first holds the recomputed activation output
    Tensor d_expert_out;  // [K, C]  backward: the experts' output, then input gradients
    Tensor exchange;      // [R, C]  EP: rows as the all-to-all delivers them (source-major)
    Tensor expert_rows;   // [R, C]  EP: local experts' outputs; in backward their output, then
                          //         input gradients (expert-major)
    Tensor weight_of;     // [K]    probs dtype: row -> its router weight
    Tensor dprobs;        // [N, k] probs dtype
    Tensor dlogits;       // [N, E]
    Tensor d_router_in;   // [N, C]
    Tensor score_sums;    // [G, E] probs dtype (aux loss)
    Tensor aux_weights;   // [G, E] probs dtype
    Tensor counts;        // [G, E] probs dtype: tokens per expert, summed over CP
    Tensor lse;           // [N] probs dtype: the router z-loss's logsumexp per token
  };

  MoeMlp(const TransformerConfig& cfg, int64_t layer_index, const TensorParallel& tp = {},
         const ContextParallel& cp = {}, const ExpertParallel& ep = {});

  void register_parameters(ParameterRegistry& reg) const;
  void bind(ParameterRegistry& reg);
  void append_parameters(std::vector<Parameter*>& out) const;

  Saved allocate_saved(TensorAllocator& alloc, DType dtype, int64_t tokens) const;
  static Scratch allocate_scratch(const TransformerConfig& cfg, const TensorParallel& tp,
                                  const ExpertParallel& ep, TensorAllocator& alloc, DType dtype,
                                  int64_t tokens, int64_t sequences = 1);
  // R: the rows the local experts may run per micro-batch of `tokens` tokens (see above).
  static int64_t expert_row_capacity(const TransformerConfig& cfg, const ExpertParallel& ep,
                                     int64_t tokens);

  // out [N, C] (assigned; a partial sum over TP) from x [N, C] (all rows, the same on every TP
  // rank).
  void forward(StepContext& step, Tensor out, const Tensor& x, const Saved& s,
               const Scratch& scratch) const;
  // Backward in two steps, so the caller may reuse dout's buffer for x (the recomputed norm
  // output under SP):
  //   backward_output: consumes dout [N, C] (all rows) into the experts' output gradients and
  //                    the routing weights' gradient (scratch); returns the saved dispatch
  //                    counts (for backward_input);
  //   backward_input:  dx [N, C] (assigned; partial over TP) from them and x, forward's input.
  // Parameter gradients accumulate.
  std::vector<int64_t> backward_output(StepContext& step, const Tensor& dout, const Saved& s,
                                       const Scratch& scratch) const;
  void backward_input(StepContext& step, Tensor dx, const Tensor& x,
                      const std::vector<int64_t>& counts, const Saved& s,
                      const Scratch& scratch) const;

 private:
  struct Expert {
    Linear fc1, fc2;
  };
  // One expert's rows [first, first + count) of a [K, width] buffer grouped by expert.
  struct RowBlock {
    int64_t first, count;
    Tensor operator()(const Tensor& t) const { return (*this)(t, t.size(1)); }
    // The block as rows of `width` (<= t's) packed from the block's start: a narrower view
    // that stays inside the block.
    Tensor operator()(const Tensor& t, int64_t width) const {
      return t.flat_view(first * t.size(1), Shape({count, width}));
    }
  };
  // fn(expert, its rows) for every local expert with rows, in expert order (rows: [E/EP]);
  // GEMM autotuning off.
  void for_each_expert(DeviceContext& ctx, const std::vector<int64_t>& rows,
                       const std::function<void(const Expert&, const RowBlock&)>& fn) const;
  Routing routing_views(const Saved& s) const;
  // The rows of each expert after a stable counting sort of s.choices (under EP also the other
  // ranks' counts, all-gathered, and the permutations between the received order and the
  // experts' order): fills s.routing (one host-to-device transfer) and returns its counts.
  std::vector<int64_t> route(DeviceContext& ctx, const Saved& s) const;
  // Backward: the counts route() saved.
  std::vector<int64_t> saved_counts(DeviceContext& ctx, const Saved& s) const;
  Dispatch dispatch_of(const std::vector<int64_t>& counts) const;
  int64_t num_local_experts() const { return static_cast<int64_t>(experts_.size()); }
  int64_t first_local_expert() const { return ep_.rank() * num_local_experts(); }
  void activation_forward(DeviceContext& ctx, Tensor out, const Tensor& fc1) const;
  // The local experts over rows [R', C] grouped by expert (their fc1 outputs saved in s.fc1):
  // out [R', C] = the experts' outputs.
  void run_experts(DeviceContext& ctx, const std::vector<int64_t>& rows, Tensor out,
                   const Tensor& in, const Saved& s, const Scratch& scratch) const;
  // Their backward: d_rows [R', C] holds the output gradients and receives the input gradients.
  void run_experts_backward(DeviceContext& ctx, const std::vector<int64_t>& rows,
                            const Tensor& d_rows, const Tensor& in, const Saved& s,
                            const Scratch& scratch) const;
  // Token dropping: row K-1 of `rows` [K, C] (the slot of every dropped pair) := 0 when only
  // `kept` < K rows are in use.
  void zero_dropped_row(DeviceContext& ctx, const Tensor& rows, int64_t kept) const;
  // Tokens per expert for the load-balancing loss: counts summed over the CP group.
  std::vector<double> global_counts(DeviceContext& ctx, const std::vector<int64_t>& counts,
                                    const Scratch& scratch) const;
  // The load-balancing loss's groups of tokens in a micro-batch of `tokens` local tokens: 1 (the
  // switch loss), or with --moe-router-load-balancing-type seq_aux_loss its sequences.
  int64_t balancing_groups(int64_t tokens) const;
  void for_each_balancing_group(
      int64_t tokens,
      const std::function<void(int64_t g, int64_t first_row, int64_t rows)>& fn) const;
  // Megatron's switch load-balancing coefficient E·coeff / (N²·k), N a group's tokens over all CP
  // ranks, over G (the mean over the groups).
  double aux_scale(int64_t local_tokens) const;

  TransformerConfig cfg_;
  TensorParallel tp_;
  ContextParallel cp_;
  ExpertParallel ep_;
  uint32_t index_;
  Linear router_;
  std::vector<Expert> experts_;
};

}  // namespace shardlm::model
