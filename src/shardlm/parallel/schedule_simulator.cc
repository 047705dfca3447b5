// Schedule simulator: a fixpoint over all ranks' hosts and transfer streams. Every time it
// computes is a max of already-known times plus a duration, so the order in which ranks are
// visited does not change the result; no progress with work left is a deadlock.
#include "shardlm/parallel/schedule_simulator.h"

#include <algorithm>
#include <deque>
#include <map>
#include <memory>
#include <sstream>
#include <tuple>

#include "shardlm/base/check.h"

namespace shardlm::parallel {

namespace {

constexpr int kActivationChannel = 0;
constexpr int kGradientChannel = 1;

struct Batch;

struct Op {
  int rank = 0;
  size_t index = 0;  // in the rank's list
  Action action;
  Batch* batch = nullptr;
  bool done = false;
  int partner = -1;  // op id of the matched send/recv, once both are posted
};

struct Batch {
  std::vector<int> ops;  // op ids
  double post = 0.0;
  double start = 0.0;
  bool started = false;
  int remaining = 0;
  double done_at = 0.0;
};

struct Stream {
  std::deque<std::unique_ptr<Batch>> queue;
  double free_at = 0.0;  // completion of the previous batch
};

struct RankState {
  size_t pc = 0;
  double host = 0.0;
  double busy = 0.0;
  int in_flight = 0;
  int peak = 0;
  Stream streams[2];
  // (kind, chunk, mb) of a receive -> time its batch completed.
  std::map<std::tuple<ActionKind, int, int>, double> arrived;
};

using ChannelKey = std::tuple<int, int, int>;  // (channel, from, to)

struct Channel {
  std::vector<int> sends, recvs;  // op ids in post order
};

}  // namespace

SimulationResult simulate_schedule(const PipelineSchedule& s, const SimulationTiming& timing) {
  const int P = s.num_stages, V = s.num_chunks;
  SHARDLM_CHECK_EQ(static_cast<int>(s.ranks.size()), P);
  SimulationResult res;
  res.start.resize(P);
  res.end.resize(P);
  for (int r = 0; r < P; ++r) {
    res.start[r].assign(s.ranks[r].size(), -1.0);
    res.end[r].assign(s.ranks[r].size(), -1.0);
  }
  std::vector<RankState> ranks(P);
  std::vector<Op> ops;
  std::map<ChannelKey, Channel> channels;
  std::string mismatch;

  auto compute_time = [&](int r, const Action& a) {
    if (timing.compute_time) return timing.compute_time(r, a);
    return a.kind == ActionKind::kForward ? timing.forward : timing.backward;
  };

  // Pairs op `id` with its counterpart if the peer has posted it (FIFO per channel).
  auto try_match = [&](int id) {
    Op& op = ops[id];
    auto peer = transfer_peer(op.action, op.rank, P, V);
    SHARDLM_CHECK(peer.has_value());
    const int ch = op.action.is_activation_transfer() ? kActivationChannel : kGradientChannel;
    const bool send = op.action.is_send();
    Channel& c = channels[{ch, send ? op.rank : peer->rank, send ? peer->rank : op.rank}];
    (send ? c.sends : c.recvs).push_back(id);
    const size_t k = (send ? c.sends : c.recvs).size() - 1;
    const auto& other = send ? c.recvs : c.sends;
    if (k < other.size()) {
      Op& o = ops[other[k]];
      if (!(o.action == peer->action) && mismatch.empty()) {
        mismatch = "mismatch: rank " + std::to_string(op.rank) + " " + format_action(op.action) +
                   " is paired (FIFO on its channel) with rank " + std::to_string(o.rank) + " " +
                   format_action(o.action) + ", expected " + format_action(peer->action);
      }
      op.partner = other[k];
      o.partner = id;
    }
  };

  auto complete_pair = [&](int a, int b, double t) {
    for (int id : {a, b}) {
      ops[id].done = true;
      Batch* bt = ops[id].batch;
      bt->done_at = std::max(bt->done_at, t);
      --bt->remaining;
    }
  };

  for (bool progress = true; progress && mismatch.empty();) {
    progress = false;
    for (int r = 0; r < P; ++r) {
      RankState& st = ranks[r];
      const auto& list = s.ranks[r];
      while (st.pc < list.size()) {
        const Action& a = list[st.pc];
        if (a.is_transfer()) {
          std::unique_ptr<Batch> batches[2];
          size_t j = st.pc;
          for (; j < list.size() && list[j].is_transfer(); ++j) {
            const int ch = list[j].is_activation_transfer() ? kActivationChannel
                                                             : kGradientChannel;
            if (!batches[ch]) {
              batches[ch] = std::make_unique<Batch>();
              batches[ch]->post = st.host;
            }
            const int id = static_cast<int>(ops.size());
            ops.push_back({r, j, list[j], batches[ch].get()});
            batches[ch]->ops.push_back(id);
            batches[ch]->remaining++;
            res.start[r][j] = st.host;
            if (transfer_peer(list[j], r, P, V)) {
              try_match(id);
            } else {
              // A transfer without a peer (a malformed list): treat as never completing.
              if (mismatch.empty()) {
                mismatch = "mismatch: rank " + std::to_string(r) + " " +
                           format_action(list[j]) + " has no peer on this virtual stage";
              }
            }
          }
          for (int ch = 0; ch < 2; ++ch) {
            if (batches[ch]) st.streams[ch].queue.push_back(std::move(batches[ch]));
          }
          st.pc = j;
          progress = true;
          continue;
        }
        double ready = st.host;
        const bool needs_forward_input =
            a.kind == ActionKind::kForward && !is_first_virtual_stage(r, a.chunk);
        const bool needs_backward_input =
            a.kind == ActionKind::kBackward && !is_last_virtual_stage(r, a.chunk, P, V);
        if (needs_forward_input || needs_backward_input) {
          const ActionKind rk = needs_forward_input ? ActionKind::kRecvActivation
                                                    : ActionKind::kRecvGradient;
          auto it = st.arrived.find({rk, a.chunk, a.microbatch});
          if (it == st.arrived.end()) break;  // blocked on its input
          ready = std::max(ready, it->second);
        }
        const double d = compute_time(r, a);
        res.start[r][st.pc] = ready;
        res.end[r][st.pc] = ready + d;
        st.host = ready + d;
        st.busy += d;
        if (a.kind == ActionKind::kForward) st.peak = std::max(st.peak, ++st.in_flight);
        if (a.kind == ActionKind::kBackward) --st.in_flight;
        ++st.pc;
        progress = true;
      }
    }
    // Streams: start head batches, complete pairs whose both batches run, pop finished ones.
    for (int r = 0; r < P; ++r) {
      for (Stream& stream : ranks[r].streams) {
        while (!stream.queue.empty()) {
          Batch& b = *stream.queue.front();
          if (!b.started) {
            b.started = true;
            b.start = std::max(b.post, stream.free_at);
            b.done_at = b.start;
            progress = true;
          }
          for (int id : b.ops) {
            Op& op = ops[id];
            if (op.done || op.partner < 0) continue;
            Batch& pb = *ops[op.partner].batch;
            if (!pb.started) continue;
            complete_pair(id, op.partner, std::max(b.start, pb.start) + timing.transfer);
            progress = true;
          }
          if (b.remaining > 0) break;
          stream.free_at = b.done_at;
          for (int id : b.ops) {
            const Op& op = ops[id];
            res.end[r][op.index] = b.done_at;
            if (!op.action.is_send()) {
              ranks[r].arrived[{op.action.kind, op.action.chunk, op.action.microbatch}] =
                  b.done_at;
            }
          }
          stream.queue.pop_front();
          progress = true;
        }
      }
    }
  }

  res.busy.resize(P);
  res.finish.resize(P);
  res.peak_in_flight.resize(P);
  bool all_done = mismatch.empty();
  std::ostringstream stuck;
  for (int r = 0; r < P; ++r) {
    const RankState& st = ranks[r];
    res.busy[r] = st.busy;
    res.peak_in_flight[r] = st.peak;
    double fin = st.host;
    for (const Stream& stream : st.streams) fin = std::max(fin, stream.free_at);
    res.finish[r] = fin;
    res.makespan = std::max(res.makespan, fin);
    if (st.pc < s.ranks[r].size()) {
      all_done = false;
      const Action& a = s.ranks[r][st.pc];
      stuck << "\n  rank " << r << " host at action " << st.pc << " " << format_action(a)
            << ": waiting for its input transfer to complete";
    }
    static const char* kChannelName[2] = {"activation", "gradient"};
    for (int ch = 0; ch < 2; ++ch) {
      const Stream& stream = st.streams[ch];
      if (stream.queue.empty()) continue;
      all_done = false;
      const Batch& b = *stream.queue.front();
      stuck << "\n  rank " << r << " " << kChannelName[ch] << " stream head batch {";
      for (size_t i = 0; i < b.ops.size(); ++i) {
        stuck << (i ? " " : "") << format_action(ops[b.ops[i]].action);
      }
      stuck << "} (+" << stream.queue.size() - 1 << " queued) waiting for:";
      for (int id : b.ops) {
        const Op& op = ops[id];
        if (op.done) continue;
        auto peer = transfer_peer(op.action, r, P, V);
        stuck << " " << format_action(op.action) << " <-> rank " << (peer ? peer->rank : -1)
              << " " << (peer ? format_action(peer->action) : "?")
              << (op.partner < 0 ? " (not posted yet)" : " (queued behind other transfers)");
      }
    }
  }
  if (!mismatch.empty()) {
    res.error = mismatch;
  } else if (!all_done) {
    res.error = "deadlock: schedule '" + s.name + "' cannot make progress:" + stuck.str();
  }
  res.completed = all_done;
  const double b = res.busy.empty() ? 0.0 : *std::max_element(res.busy.begin(), res.busy.end());
  res.bubble_fraction = b > 0 ? (res.makespan - b) / b : 0.0;
  return res;
}

}  // namespace shardlm::parallel
