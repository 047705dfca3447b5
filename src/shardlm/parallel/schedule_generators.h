// The built-in pipeline schedule generators. Each decides only the order of forward and
// backward computes on every rank (as Megatron-LM's schedules.py orders them) and states its
// in-flight bound; place_transfers (schedule.h) adds the sends and receives by one rule.
//
//   all-forward-all-backward  every forward (in the interleaved table order below), then every
//                             backward in the reverse table order (GPipe; the reference).
//                             In flight: V·M on every rank.
//   1f1b                      Megatron's non-interleaved schedule (V = 1): rank r runs
//                             w = min(P−r−1, M) warmup forwards, then M−w steady pairs
//                             (forward w+i, backward i), then w cooldown backwards.
//                             In flight: min(P−r, M).
//   interleaved-1f1b          Megatron's interleaved schedule with V chunks per rank; needs M a
//                             multiple of P. Virtual micro-batch k (0..V·M−1) is chunk
//                             (k mod P·V) / P of micro-batch (k / (P·V))·P + k mod P for
//                             forwards, and chunk V−1−(that) for backwards. Warmup is
//                             w = min(2·(P−r−1) + (V−1)·P, V·M), or all V·M when M == P; then
//                             (forward k+w, backward k) pairs, then the remaining backwards.
//                             In flight: min(w+1, V·M) (V·M when M == P).
//
// Thread contract: pure functions. Errors: a spec a generator cannot run (V > 1 for 1f1b, M not
// a multiple of P for interleaved-1f1b, non-positive sizes) throws Error(kInvalidConfig) naming
// the numbers and the flag to change.
//
//   PipelineSchedule s = generate_1f1b({.num_stages = 4, .num_chunks = 1, .num_microbatches = 8});
#pragma once

#include <utility>

#include "shardlm/parallel/schedule.h"

namespace shardlm::parallel {

struct ScheduleSpec {
  int num_stages = 1;        // P  (--pipeline-model-parallel-size)
  int num_chunks = 1;        // V  (virtual stages per rank)
  int num_microbatches = 1;  // M  (global batch / (micro batch × data parallel))
};

PipelineSchedule generate_all_forward_all_backward(const ScheduleSpec& spec);
PipelineSchedule generate_1f1b(const ScheduleSpec& spec);
PipelineSchedule generate_interleaved_1f1b(const ScheduleSpec& spec);

// Megatron's interleaved table: (chunk, micro-batch) of virtual micro-batch k.
std::pair<int, int> interleaved_forward_position(int k, int num_stages, int num_chunks);
std::pair<int, int> interleaved_backward_position(int k, int num_stages, int num_chunks);

// Megatron's warmup counts (number of forwards before the first backward).
int warmup_1f1b(int rank, const ScheduleSpec& spec);
int warmup_interleaved(int rank, const ScheduleSpec& spec);

// Throws kInvalidConfig unless P, V, M >= 1 and V == 1 when P == 1; `generator` names the caller.
void check_schedule_spec(const ScheduleSpec& spec, const char* generator);

}  // namespace shardlm::parallel
