// Schedule simulator: runs every rank's action list of a PipelineSchedule together in simulated
// time, with the blocking rules the executor (executor.h) and the GPU communicator have, and
// reports deadlock (with the stuck actions), per-rank peak in-flight micro-batches, makespan and
// bubble fraction.
//
// Model (docs/formats/schedule.md, "Simulation"):
//  - Each rank has one host thread that walks its list in order and one compute stream: a
//    compute action starts when the host reaches it and its input has arrived, and holds the
//    host for its duration.
//  - A maximal run of transfer actions is posted at once without blocking the host: per
//    channel (activations, gradients) one batch, appended to that channel's FIFO stream on the
//    rank (as batch_send_recv_async on the channel's communicator, whose NCCL form runs on the
//    communicator's own stream).
//  - A batch starts when it reaches the head of its stream. A send/receive pair transfers when
//    both batches holding them have started (NCCL's send and receive kernels must both run);
//    pairs are matched FIFO per (channel, from, to). A batch completes when all its transfers
//    have; only then is a received tensor usable (the executor waits on the batch's handle).
//  - A rank finishes when its host has run the last action and its streams are empty.
// So the model is stricter than the thread communicator (which has no stream order); a
// schedule that completes here completes on both backends.
//
// Timing: compute durations per action (default forward 1, backward 2 per chunk, i.e.
// backward = 2 × forward, the usual cost ratio) and a per-transfer time (default 0:
// communication free). Bubble fraction = (makespan − B) / B with B the busiest rank's compute
// time; for equal chunk times and free communication, 1F1B and interleaved 1F1B give
// (P − 1) / (V · M) in this model (tested).
//
// Thread contract: pure function. Errors: a schedule whose channels cannot be matched
// (identities disagree) is reported in the result, not thrown.
//
//   SimulationResult r = simulate_schedule(generate_1f1b({.num_stages = 4, .num_microbatches = 8}));
//   if (!r.completed) std::cerr << r.error;
//   std::cout << r.bubble_fraction;   // 3/8
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "shardlm/parallel/schedule.h"

namespace shardlm::parallel {

struct SimulationTiming {
  double forward = 1.0;   // one chunk's forward of one micro-batch
  double backward = 2.0;  // one chunk's backward of one micro-batch
  double transfer = 0.0;  // one send/receive pair, once both sides have started
  // Optional per-action compute time (overrides forward/backward), e.g. uneven stages.
  std::function<double(int rank, const Action&)> compute_time;
};

struct SimulationResult {
  bool completed = false;
  // Empty when completed; otherwise "deadlock:" or "mismatch:" followed by one line per stuck
  // host action and stuck transfer batch.
  std::string error;
  double makespan = 0.0;
  double bubble_fraction = 0.0;
  std::vector<double> busy;         // [P] compute time of each rank
  std::vector<double> finish;       // [P] when each rank finished (host and streams)
  std::vector<int> peak_in_flight;  // [P] most (chunk, mb) with forward run, backward not
  // [P][action index] simulated start and end of every action (transfers: post time and the
  // completion of their batch); -1 for actions never reached.
  std::vector<std::vector<double>> start, end;
};

SimulationResult simulate_schedule(const PipelineSchedule& schedule,
                                   const SimulationTiming& timing = {});

}  // namespace shardlm::parallel
