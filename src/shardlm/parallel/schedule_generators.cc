// Built-in schedule generators: compute orders as Megatron-LM orders them; transfers are placed
// by place_transfers.
#include "shardlm/parallel/schedule_generators.h"

#include <algorithm>
#include <string>

#include "shardlm/base/error.h"

namespace shardlm::parallel {

namespace {

std::string spec_numbers(const ScheduleSpec& s) {
  return "P=" + std::to_string(s.num_stages) + " (--pipeline-model-parallel-size), V=" +
         std::to_string(s.num_chunks) + " (virtual stages per rank), M=" +
         std::to_string(s.num_microbatches) + " (micro-batches per step)";
}

}  // namespace

void check_schedule_spec(const ScheduleSpec& spec, const char* generator) {
  if (spec.num_stages < 1 || spec.num_chunks < 1 || spec.num_microbatches < 1) {
    throw Error(ErrorKind::kInvalidConfig,
                std::string("pipeline schedule '") + generator + "': " + spec_numbers(spec) +
                    " must all be >= 1");
  }
  if (spec.num_stages == 1 && spec.num_chunks > 1) {
    throw Error(ErrorKind::kInvalidConfig,
                std::string("pipeline schedule '") + generator + "': " + spec_numbers(spec) +
                    ": virtual pipeline stages need --pipeline-model-parallel-size > 1; drop "
                    "--num-layers-per-virtual-pipeline-stage / "
                    "--num-virtual-stages-per-pipeline-rank");
  }
}

std::pair<int, int> interleaved_forward_position(int k, int P, int V) {
  const int group = k / (P * V);
  const int in_group = k % (P * V);
  return {in_group / P, group * P + in_group % P};
}

std::pair<int, int> interleaved_backward_position(int k, int P, int V) {
  auto [chunk, mb] = interleaved_forward_position(k, P, V);
  return {V - 1 - chunk, mb};
}

int warmup_1f1b(int rank, const ScheduleSpec& spec) {
  return std::min(spec.num_stages - rank - 1, spec.num_microbatches);
}

int warmup_interleaved(int rank, const ScheduleSpec& spec) {
  const int P = spec.num_stages, V = spec.num_chunks, M = spec.num_microbatches;
  const int total = V * M;
  if (M == P) return total;  // Megatron: all forwards first when M equals P
  return std::min(2 * (P - rank - 1) + (V - 1) * P, total);
}

PipelineSchedule generate_all_forward_all_backward(const ScheduleSpec& spec) {
  check_schedule_spec(spec, "all-forward-all-backward");
  const int P = spec.num_stages, V = spec.num_chunks, M = spec.num_microbatches;
  // With V > 1 the table order needs full groups of P micro-batches; with V == 1 the table is
  // simply 0..M-1, so any M works.
  if (V > 1 && M % P != 0) {
    throw Error(ErrorKind::kInvalidConfig,
                "pipeline schedule 'all-forward-all-backward' with virtual stages: " +
                    spec_numbers(spec) + ": M must be a multiple of P; pick "
                    "--global-batch-size a multiple of micro-batch x data-parallel x P");
  }
  std::vector<std::vector<Action>> orders(P);
  for (int r = 0; r < P; ++r) {
    for (int k = 0; k < V * M; ++k) {
      auto [c, m] = V == 1 ? std::pair{0, k} : interleaved_forward_position(k, P, V);
      orders[r].push_back(forward_action(c, m));
    }
    for (int k = 0; k < V * M; ++k) {
      auto [c, m] = V == 1 ? std::pair{0, k} : interleaved_backward_position(k, P, V);
      orders[r].push_back(backward_action(c, m));
    }
  }
  return place_transfers("all-forward-all-backward", P, V, M, single_compute_steps(orders),
                         std::vector<int>(P, V * M));
}

PipelineSchedule generate_1f1b(const ScheduleSpec& spec) {
  check_schedule_spec(spec, "1f1b");
  const int P = spec.num_stages, M = spec.num_microbatches;
  if (spec.num_chunks != 1) {
    throw Error(ErrorKind::kInvalidConfig,
                "pipeline schedule '1f1b' runs one model chunk per rank but got " +
                    spec_numbers(spec) +
                    "; use --pipeline-schedule interleaved-1f1b or drop the virtual stages");
  }
  std::vector<std::vector<Action>> orders(P);
  std::vector<int> bound(P);
  for (int r = 0; r < P; ++r) {
    const int w = warmup_1f1b(r, spec);
    auto& o = orders[r];
    for (int i = 0; i < w; ++i) o.push_back(forward_action(0, i));
    for (int i = 0; i < M - w; ++i) {
      o.push_back(forward_action(0, w + i));
      o.push_back(backward_action(0, i));
    }
    for (int i = M - w; i < M; ++i) o.push_back(backward_action(0, i));
    bound[r] = std::min(P - r, M);
  }
  return place_transfers("1f1b", P, 1, M, single_compute_steps(orders), std::move(bound));
}

PipelineSchedule generate_interleaved_1f1b(const ScheduleSpec& spec) {
  check_schedule_spec(spec, "interleaved-1f1b");
  const int P = spec.num_stages, V = spec.num_chunks, M = spec.num_microbatches;
  if (M % P != 0) {
    throw Error(ErrorKind::kInvalidConfig,
                "pipeline schedule 'interleaved-1f1b' needs the number of micro-batches to be a "
                "multiple of the pipeline size, as Megatron-LM: " +
                    spec_numbers(spec) + "; pick --global-batch-size a multiple of "
                    "--micro-batch-size x data-parallel size x " + std::to_string(P));
  }
  const int total = V * M;
  std::vector<ComputeSteps> steps(P);
  std::vector<int> bound(P);
  for (int r = 0; r < P; ++r) {
    const int w = warmup_interleaved(r, spec);
    auto fwd = [&](int k) {
      auto [c, m] = interleaved_forward_position(k, P, V);
      return forward_action(c, m);
    };
    auto bwd = [&](int k) {
      auto [c, m] = interleaved_backward_position(k, P, V);
      return backward_action(c, m);
    };
    for (int k = 0; k < w; ++k) steps[r].push_back({fwd(k)});
    // Steady state: one step of (forward k+w, backward k), then one combined batch — as
    // Megatron's send_forward_backward_recv_forward_backward.
    for (int k = 0; k < total - w; ++k) steps[r].push_back({fwd(k + w), bwd(k)});
    for (int k = total - w; k < total; ++k) steps[r].push_back({bwd(k)});
    bound[r] = std::min(w + 1, total);
  }
  return place_transfers("interleaved-1f1b", P, V, M, steps, std::move(bound));
}

}  // namespace shardlm::parallel
