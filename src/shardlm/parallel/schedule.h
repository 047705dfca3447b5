// PipelineSchedule: a pipeline schedule as data (DESIGN §2.7) — for every pipeline rank, the
// ordered list of actions it performs in one training step: forward / backward of micro-batch m
// of its model chunk c, and the point-to-point transfers of activations and gradients between
// neighbouring stages. Generators (schedule_generators.h) write these lists; the simulator
// (schedule_simulator.h) runs all ranks' lists together; the executor (executor.h) runs one
// rank's list. docs/formats/schedule.md is the prose description of the format.
//
// Vocabulary. P pipeline ranks, V model chunks per rank, M micro-batches. Chunk c of rank r is
// virtual stage s = c·P + r of S = V·P; data flows s → s+1, so the output of rank P-1's chunk c
// goes to rank 0's chunk c+1 (Megatron's interleaved layout). An action names the chunk *on the
// rank that performs it*:
//   kForward(c, m)        run chunk c forward on micro-batch m
//   kBackward(c, m)       run chunk c backward on micro-batch m
//   kSendActivation(c, m) send the output of chunk c, mb m to the next virtual stage's rank
//   kRecvActivation(c, m) receive the input of chunk c, mb m from the previous virtual stage
//   kSendGradient(c, m)   send d(loss)/d(input of chunk c, mb m) to the previous stage's rank
//   kRecvGradient(c, m)   receive d(loss)/d(output of chunk c, mb m) from the next stage's rank
// Batches: a maximal run of consecutive transfer actions in a rank's list is posted together
// (one batch_send_recv per channel), never one by one.
// Channels: activations and gradients travel on two separate communicators (p2p.h), and on
// each channel the k-th send from rank a to rank b matches b's k-th receive from a (FIFO, as
// NCCL and the thread communicator match them). validate_schedule checks that the identities
// of the k-th send and the k-th receive agree.
//
// Thread contract: plain values; share freely. Ownership: owns its vectors.
//
//   PipelineSchedule s = ScheduleRegistry::builtin().generate("1f1b", {.P = 4, .V = 1, .M = 8});
//   validate_schedule(s);                  // throws kInternal naming the broken rule
//   std::cout << format_schedule(s);       // one line per rank: "F0.0 SA0.0 ..."
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace shardlm::parallel {

enum class ActionKind {
  kForward,
  kBackward,
  kSendActivation,
  kRecvActivation,
  kSendGradient,
  kRecvGradient,
};

// Short tag used by format_action: F, B, SA, RA, SG, RG.
const char* action_kind_tag(ActionKind kind);
const char* action_kind_name(ActionKind kind);

struct Action {
  ActionKind kind = ActionKind::kForward;
  int chunk = 0;       // model chunk on the rank performing the action, 0..V-1
  int microbatch = 0;  // 0..M-1

  bool is_compute() const {
    return kind == ActionKind::kForward || kind == ActionKind::kBackward;
  }
  bool is_transfer() const { return !is_compute(); }
  bool is_send() const {
    return kind == ActionKind::kSendActivation || kind == ActionKind::kSendGradient;
  }
  bool is_activation_transfer() const {
    return kind == ActionKind::kSendActivation || kind == ActionKind::kRecvActivation;
  }
  friend bool operator==(const Action&, const Action&) = default;
};

inline Action forward_action(int chunk, int mb) { return {ActionKind::kForward, chunk, mb}; }
inline Action backward_action(int chunk, int mb) { return {ActionKind::kBackward, chunk, mb}; }

// "F1.3" = forward of chunk 1, micro-batch 3 (tag, chunk, '.', micro-batch).
std::string format_action(const Action& a);

struct PipelineSchedule {
  std::string name;              // generator that produced it ("1f1b", ...)
  int num_stages = 1;            // P
  int num_chunks = 1;            // V
  int num_microbatches = 1;      // M
  std::vector<std::vector<Action>> ranks;  // [P] action lists
  // The most micro-batches (chunk, mb pairs) the generator promises rank r holds activations
  // for at once (forward done, backward not yet done); the simulator measures the real peak.
  std::vector<int> max_in_flight;          // [P]
};

// One line per rank: "rank 0: F0.0 SA0.0 RA0.1 F0.1 ...".
std::string format_schedule(const PipelineSchedule& s);

// Where a transfer action's data comes from / goes to. For kSend*: the receiving rank and the
// receive action it matches there; for kRecv*: the sending rank and its send action.
// Returns nullopt when the action has no peer (e.g. kSendActivation on the last virtual stage).
struct TransferPeer {
  int rank = 0;
  Action action;
};
std::optional<TransferPeer> transfer_peer(const Action& a, int rank, int num_stages,
                                          int num_chunks);

// Virtual-stage helpers: s = chunk·P + rank.
inline int virtual_stage(int rank, int chunk, int num_stages) { return chunk * num_stages + rank; }
inline bool is_first_virtual_stage(int rank, int chunk) { return rank == 0 && chunk == 0; }
inline bool is_last_virtual_stage(int rank, int chunk, int num_stages, int num_chunks) {
  return rank == num_stages - 1 && chunk == num_chunks - 1;
}

// Builds a full schedule from per-rank compute steps. A step is a run of computes with no
// transfer batch between them (Megatron's steady-state interleaved iteration is one step of a
// forward and a backward; 1F1B's steps are single computes). The one placement rule: the batch
// after step i holds the sends of step i's outputs and the receives of step i+1's inputs; a
// batch before step 0 receives step 0's inputs. So a receive is posted one step ahead and a
// send as soon as its step ends, and on a channel each batch pairs a send with the receive
// travelling the other way round the ring, which keeps the V > 1 rings (rank P−1 → rank 0)
// free of cyclic waits.
using ComputeSteps = std::vector<std::vector<Action>>;  // [step][compute]
PipelineSchedule place_transfers(std::string name, int num_stages, int num_chunks,
                                 int num_microbatches,
                                 const std::vector<ComputeSteps>& steps_per_rank,
                                 std::vector<int> max_in_flight);
// Every compute its own step.
std::vector<ComputeSteps> single_compute_steps(
    const std::vector<std::vector<Action>>& compute_orders);

// Structural checks, independent of timing: every (chunk, mb) has exactly one forward and one
// backward per rank, forward before backward; a receive precedes the compute that consumes it
// and exactly the transfers that must exist do (none on the first / last virtual stage); sends
// follow the compute that produces them; every send has its matching receive on the peer and
// the k-th send on each (channel, from, to) matches the k-th receive. Throws
// Error(kInternal) listing every violation (a generator bug, not a user error).
void validate_schedule(const PipelineSchedule& s);

// Peak in-flight micro-batches of each rank counted in program order (#forwards − #backwards
// done so far), independent of timing.
std::vector<int> count_peak_in_flight(const PipelineSchedule& s);

}  // namespace shardlm::parallel
