// PipelineSchedule: formatting, peers of transfers, the transfer placement rule and the
// structural validation shared by every generator.
#include "shardlm/parallel/schedule.h"

#include <algorithm>
#include <map>
#include <set>
#include <sstream>
#include <tuple>
#include <utility>

#include "shardlm/base/check.h"
#include "shardlm/base/error.h"

namespace shardlm::parallel {

const char* action_kind_tag(ActionKind kind) {
  switch (kind) {
    case ActionKind::kForward: return "F";
    case ActionKind::kBackward: return "B";
    case ActionKind::kSendActivation: return "SA";
    case ActionKind::kRecvActivation: return "RA";
    case ActionKind::kSendGradient: return "SG";
    case ActionKind::kRecvGradient: return "RG";
  }
  return "?";
}

const char* action_kind_name(ActionKind kind) {
  switch (kind) {
    case ActionKind::kForward: return "forward";
    case ActionKind::kBackward: return "backward";
    case ActionKind::kSendActivation: return "send-activation";
    case ActionKind::kRecvActivation: return "recv-activation";
    case ActionKind::kSendGradient: return "send-gradient";
    case ActionKind::kRecvGradient: return "recv-gradient";
  }
  return "?";
}

std::string format_action(const Action& a) {
  return std::string(action_kind_tag(a.kind)) + std::to_string(a.chunk) + "." +
         std::to_string(a.microbatch);
}

std::string format_schedule(const PipelineSchedule& s) {
  std::ostringstream os;
  os << s.name << ": P=" << s.num_stages << " V=" << s.num_chunks << " M=" << s.num_microbatches
     << "\n";
  for (size_t r = 0; r < s.ranks.size(); ++r) {
    os << "rank " << r << ":";
    const auto& list = s.ranks[r];
    for (size_t i = 0; i < list.size(); ++i) {
      const bool opens = list[i].is_transfer() && (i == 0 || list[i - 1].is_compute());
      const bool closes =
          list[i].is_transfer() && (i + 1 == list.size() || list[i + 1].is_compute());
      os << (opens ? " [" : " ") << format_action(list[i]) << (closes ? "]" : "");
    }
    os << "\n";
  }
  return os.str();
}

std::optional<TransferPeer> transfer_peer(const Action& a, int rank, int P, int V) {
  const bool first = is_first_virtual_stage(rank, a.chunk);
  const bool last = is_last_virtual_stage(rank, a.chunk, P, V);
  const int next_rank = (rank + 1) % P;
  const int prev_rank = (rank - 1 + P) % P;
  const int next_chunk = a.chunk + (rank == P - 1 ? 1 : 0);  // chunk of s+1 on next_rank
  const int prev_chunk = a.chunk - (rank == 0 ? 1 : 0);      // chunk of s-1 on prev_rank
  const int m = a.microbatch;
  switch (a.kind) {
    case ActionKind::kSendActivation:
      if (last) return std::nullopt;
      return TransferPeer{next_rank, {ActionKind::kRecvActivation, next_chunk, m}};
    case ActionKind::kRecvActivation:
      if (first) return std::nullopt;
      return TransferPeer{prev_rank, {ActionKind::kSendActivation, prev_chunk, m}};
    case ActionKind::kSendGradient:
      if (first) return std::nullopt;
      return TransferPeer{prev_rank, {ActionKind::kRecvGradient, prev_chunk, m}};
    case ActionKind::kRecvGradient:
      if (last) return std::nullopt;
      return TransferPeer{next_rank, {ActionKind::kSendGradient, next_chunk, m}};
    case ActionKind::kForward:
    case ActionKind::kBackward:
      return std::nullopt;
  }
  return std::nullopt;
}

namespace {

// The transfer that feeds a compute (nullopt where the input is local: data or loss).
std::optional<Action> input_transfer(const Action& c, int rank, int P, int V) {
  if (c.kind == ActionKind::kForward && !is_first_virtual_stage(rank, c.chunk)) {
    return Action{ActionKind::kRecvActivation, c.chunk, c.microbatch};
  }
  if (c.kind == ActionKind::kBackward && !is_last_virtual_stage(rank, c.chunk, P, V)) {
    return Action{ActionKind::kRecvGradient, c.chunk, c.microbatch};
  }
  return std::nullopt;
}

// The transfer that ships a compute's result onward.
std::optional<Action> output_transfer(const Action& c, int rank, int P, int V) {
  if (c.kind == ActionKind::kForward && !is_last_virtual_stage(rank, c.chunk, P, V)) {
    return Action{ActionKind::kSendActivation, c.chunk, c.microbatch};
  }
  if (c.kind == ActionKind::kBackward && !is_first_virtual_stage(rank, c.chunk)) {
    return Action{ActionKind::kSendGradient, c.chunk, c.microbatch};
  }
  return std::nullopt;
}

}  // namespace

PipelineSchedule place_transfers(std::string name, int P, int V, int M,
                                 const std::vector<ComputeSteps>& steps_per_rank,
                                 std::vector<int> max_in_flight) {
  SHARDLM_CHECK_EQ(static_cast<int>(steps_per_rank.size()), P);
  SHARDLM_CHECK_EQ(static_cast<int>(max_in_flight.size()), P);
  PipelineSchedule s;
  s.name = std::move(name);
  s.num_stages = P;
  s.num_chunks = V;
  s.num_microbatches = M;
  s.max_in_flight = std::move(max_in_flight);
  s.ranks.resize(P);
  for (int r = 0; r < P; ++r) {
    const ComputeSteps& steps = steps_per_rank[r];
    auto& out = s.ranks[r];
    auto receive_inputs = [&](const std::vector<Action>& step) {
      for (const Action& c : step) {
        if (auto in = input_transfer(c, r, P, V)) out.push_back(*in);
      }
    };
    if (!steps.empty()) receive_inputs(steps[0]);
    for (size_t i = 0; i < steps.size(); ++i) {
      for (const Action& c : steps[i]) {
        SHARDLM_CHECK(c.is_compute());
        out.push_back(c);
      }
      for (const Action& c : steps[i]) {
        if (auto o = output_transfer(c, r, P, V)) out.push_back(*o);
      }
      if (i + 1 < steps.size()) receive_inputs(steps[i + 1]);
    }
  }
  return s;
}

std::vector<ComputeSteps> single_compute_steps(
    const std::vector<std::vector<Action>>& compute_orders) {
  std::vector<ComputeSteps> out(compute_orders.size());
  for (size_t r = 0; r < compute_orders.size(); ++r) {
    for (const Action& c : compute_orders[r]) out[r].push_back({c});
  }
  return out;
}

void validate_schedule(const PipelineSchedule& s) {
  const int P = s.num_stages, V = s.num_chunks, M = s.num_microbatches;
  std::vector<std::string> problems;
  auto problem = [&](int r, size_t i, const std::string& what) {
    if (problems.size() < 20) {
      problems.push_back("rank " + std::to_string(r) + " action " + std::to_string(i) + ": " +
                         what);
    }
  };
  if (static_cast<int>(s.ranks.size()) != P) {
    problems.push_back("has " + std::to_string(s.ranks.size()) + " rank lists for P=" +
                       std::to_string(P));
  }
  if (static_cast<int>(s.max_in_flight.size()) != P) {
    problems.push_back("max_in_flight has " + std::to_string(s.max_in_flight.size()) +
                       " entries for P=" + std::to_string(P));
  }
  using Key = std::pair<int, int>;  // (chunk, mb)
  // Channel (activation?, from, to) -> identities in order, as the receiver names them.
  std::map<std::tuple<bool, int, int>, std::vector<Action>> sent, received;
  for (int r = 0; r < static_cast<int>(s.ranks.size()) && r < P; ++r) {
    std::set<Key> fwd, bwd, ra, rg, sa, sg;
    const auto& list = s.ranks[r];
    for (size_t i = 0; i < list.size(); ++i) {
      const Action& a = list[i];
      const std::string name = format_action(a);
      const Key k{a.chunk, a.microbatch};
      if (a.chunk < 0 || a.chunk >= V || a.microbatch < 0 || a.microbatch >= M) {
        problem(r, i, name + " is outside V=" + std::to_string(V) + ", M=" + std::to_string(M));
        continue;
      }
      const bool first = is_first_virtual_stage(r, a.chunk);
      const bool last = is_last_virtual_stage(r, a.chunk, P, V);
      switch (a.kind) {
        case ActionKind::kForward:
          if (!fwd.insert(k).second) problem(r, i, name + " repeats");
          if (!first && !ra.count(k)) problem(r, i, name + " runs before its input is received");
          break;
        case ActionKind::kBackward:
          if (!fwd.count(k)) problem(r, i, name + " runs before its forward");
          if (!bwd.insert(k).second) problem(r, i, name + " repeats");
          if (!last && !rg.count(k)) problem(r, i, name + " runs before its gradient is received");
          break;
        case ActionKind::kSendActivation:
          if (last) problem(r, i, name + " on the last virtual stage (nothing to send to)");
          if (!fwd.count(k)) problem(r, i, name + " before the forward that produces it");
          if (!sa.insert(k).second) problem(r, i, name + " repeats");
          break;
        case ActionKind::kRecvActivation:
          if (first) problem(r, i, name + " on the first virtual stage (nothing sends it)");
          if (fwd.count(k)) problem(r, i, name + " after the forward that needs it");
          if (!ra.insert(k).second) problem(r, i, name + " repeats");
          break;
        case ActionKind::kSendGradient:
          if (first) problem(r, i, name + " on the first virtual stage (nothing to send to)");
          if (!bwd.count(k)) problem(r, i, name + " before the backward that produces it");
          if (!sg.insert(k).second) problem(r, i, name + " repeats");
          break;
        case ActionKind::kRecvGradient:
          if (last) problem(r, i, name + " on the last virtual stage (nothing sends it)");
          if (bwd.count(k)) problem(r, i, name + " after the backward that needs it");
          if (!rg.insert(k).second) problem(r, i, name + " repeats");
          break;
      }
      if (a.is_transfer()) {
        if (auto peer = transfer_peer(a, r, P, V)) {
          if (a.is_send()) {
            sent[{a.is_activation_transfer(), r, peer->rank}].push_back(peer->action);
          } else {
            received[{a.is_activation_transfer(), peer->rank, r}].push_back(a);
          }
        }
      }
    }
    for (int c = 0; c < V; ++c) {
      for (int m = 0; m < M; ++m) {
        const Key k{c, m};
        const std::string cm = std::to_string(c) + "." + std::to_string(m);
        if (!fwd.count(k)) problem(r, list.size(), "F" + cm + " is missing");
        if (!bwd.count(k)) problem(r, list.size(), "B" + cm + " is missing");
        if (!is_last_virtual_stage(r, c, P, V) && !sa.count(k)) {
          problem(r, list.size(), "SA" + cm + " is missing");
        }
        if (!is_first_virtual_stage(r, c) && !sg.count(k)) {
          problem(r, list.size(), "SG" + cm + " is missing");
        }
      }
    }
  }
  std::set<std::tuple<bool, int, int>> channels;
  for (const auto& [ch, v] : sent) channels.insert(ch);
  for (const auto& [ch, v] : received) channels.insert(ch);
  for (const auto& ch : channels) {
    const auto& snd = sent[ch];
    const auto& rcv = received[ch];
    const std::string where = std::string(std::get<0>(ch) ? "activation" : "gradient") +
                              " channel rank " + std::to_string(std::get<1>(ch)) + " -> rank " +
                              std::to_string(std::get<2>(ch));
    if (snd.size() != rcv.size()) {
      problems.push_back(where + ": " + std::to_string(snd.size()) + " sends but " +
                         std::to_string(rcv.size()) + " receives");
      continue;
    }
    for (size_t k = 0; k < snd.size(); ++k) {
      if (!(snd[k] == rcv[k])) {
        problems.push_back(where + ": transfer " + std::to_string(k) + " is sent for " +
                           format_action(snd[k]) + " but received as " + format_action(rcv[k]) +
                           " (sends and receives must be in the same order)");
        break;
      }
    }
  }
  if (!problems.empty()) {
    std::string msg = "pipeline schedule '" + s.name + "' (P=" + std::to_string(P) + ", V=" +
                      std::to_string(V) + ", M=" + std::to_string(M) + ") is invalid:";
    for (const auto& p : problems) msg += "\n  " + p;
    throw Error(ErrorKind::kInternal, msg);
  }
}

std::vector<int> count_peak_in_flight(const PipelineSchedule& s) {
  std::vector<int> peak(s.ranks.size(), 0);
  for (size_t r = 0; r < s.ranks.size(); ++r) {
    int now = 0;
    for (const Action& a : s.ranks[r]) {
      if (a.kind == ActionKind::kForward) peak[r] = std::max(peak[r], ++now);
      if (a.kind == ActionKind::kBackward) --now;
    }
  }
  return peak;
}

}  // namespace shardlm::parallel
