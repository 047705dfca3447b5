// Pipeline executor: one rank's action list -> stage calls and batched transfers.
#include "shardlm/parallel/executor.h"

#include <algorithm>
#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include "shardlm/base/check.h"
#include "shardlm/base/error.h"

namespace shardlm::parallel {

namespace {

using Key = std::pair<int, int>;  // (chunk, microbatch)

class RankRun {
 public:
  RankRun(const PipelineSchedule& s, PipelineP2P& p2p, PipelineStage& stage)
      : s_(s), p2p_(p2p), stage_(stage), rank_(p2p.rank()) {}

  ExecutorStats run() {
    const auto& list = s_.ranks[rank_];
    size_t i = 0;
    while (i < list.size()) {
      if (list[i].is_transfer()) {
        size_t j = i;
        while (j < list.size() && list[j].is_transfer()) ++j;
        post(list, i, j);
        i = j;
      } else {
        list[i].kind == ActionKind::kForward ? forward(list[i]) : backward(list[i]);
        ++i;
      }
      reap_sends(/*wait=*/false);
    }
    reap_sends(/*wait=*/true);
    SHARDLM_CHECK(received_.empty());
    return stats_;
  }

 private:
  bool first(int chunk) const { return is_first_virtual_stage(rank_, chunk); }
  bool last(int chunk) const {
    return is_last_virtual_stage(rank_, chunk, s_.num_stages, s_.num_chunks);
  }

  // Boundary buffers are recycled within the step, never freed mid-step: cudaFree waits for
  // the whole device, including a posted NCCL send/recv kernel that waits for a peer which may
  // itself wait for this rank (a deadlock the thread communicator cannot show). They are freed
  // when the step's run ends, with every transfer complete.
  Tensor allocate(std::map<Key, OwnedTensor>& where, const Key& k, const BoundarySpec& spec) {
    OwnedTensor t;
    auto spare = std::find_if(spare_.begin(), spare_.end(), [&](const OwnedTensor& b) {
      const Tensor v = b.view();
      return v.dtype() == spec.dtype && v.shape() == spec.shape && v.device() == spec.device;
    });
    if (spare != spare_.end()) {
      t = std::move(*spare);
      spare_.erase(spare);
    } else {
      t = OwnedTensor::empty(spec.dtype, spec.shape, spec.device);
      ++stats_.buffers_allocated;
    }
    Tensor view = t.view();
    SHARDLM_CHECK(where.emplace(k, std::move(t)).second);
    count_buffers();
    return view;
  }

  void count_buffers() {
    const int n = static_cast<int>(inputs_.size() + outputs_.size() + output_grads_.size() +
                                   input_grads_.size());
    stats_.peak_buffers = std::max(stats_.peak_buffers, n);
  }

  void release(std::map<Key, OwnedTensor>& where, const Key& k) {
    auto it = where.find(k);
    if (it == where.end()) return;
    spare_.push_back(std::move(it->second));
    where.erase(it);
  }

  static Tensor find(const std::map<Key, OwnedTensor>& where, const Key& k, const Action& a) {
    auto it = where.find(k);
    if (it == where.end()) {
      throw Error(ErrorKind::kInternal, "pipeline executor: no buffer for " + format_action(a));
    }
    return it->second.view();
  }

  void post(const std::vector<Action>& list, size_t begin, size_t end) {
    std::vector<Transfer> transfers;
    std::vector<Action> sends, recvs;
    for (size_t i = begin; i < end; ++i) {
      const Action& a = list[i];
      const Key k{a.chunk, a.microbatch};
      Tensor t;
      switch (a.kind) {
        case ActionKind::kSendActivation: t = find(outputs_, k, a); break;
        case ActionKind::kSendGradient: t = find(input_grads_, k, a); break;
        case ActionKind::kRecvActivation:
          t = allocate(inputs_, k, stage_.input_spec(a.chunk));
          break;
        case ActionKind::kRecvGradient:
          t = allocate(output_grads_, k, stage_.output_spec(a.chunk));
          break;
        default: SHARDLM_CHECK(false);
      }
      transfers.push_back({a, t});
      (a.is_send() ? sends : recvs).push_back(a);
    }
    PostedBatch b = p2p_.post(transfers, s_.num_chunks);
    stats_.batches_posted += (b.activations ? 1 : 0) + (b.gradients ? 1 : 0);
    auto handle_of = [&](const Action& a) {
      return a.is_activation_transfer() ? b.activations : b.gradients;
    };
    for (const Action& a : recvs) received_[{a.kind, a.chunk, a.microbatch}] = handle_of(a);
    for (const Action& a : sends) pending_sends_.push_back({a, handle_of(a)});
  }

  // Waits for the batch that received `kind` (chunk, mb) and returns the buffer.
  void wait_received(ActionKind kind, const Action& a) {
    auto it = received_.find({kind, a.chunk, a.microbatch});
    if (it == received_.end()) {
      throw Error(ErrorKind::kInternal, "pipeline executor: rank " + std::to_string(rank_) +
                                            " runs " + format_action(a) +
                                            " before receiving its input (invalid schedule)");
    }
    it->second->wait();
    received_.erase(it);
  }

  void forward(const Action& a) {
    const Key k{a.chunk, a.microbatch};
    Tensor input, output;
    if (!first(a.chunk)) {
      wait_received(ActionKind::kRecvActivation, a);
      input = find(inputs_, k, a);
    }
    if (!last(a.chunk)) output = allocate(outputs_, k, stage_.output_spec(a.chunk));
    stage_.forward(a.chunk, a.microbatch, input, output);
    stats_.peak_in_flight = std::max(stats_.peak_in_flight, ++in_flight_);
  }

  void backward(const Action& a) {
    const Key k{a.chunk, a.microbatch};
    Tensor output_grad, input_grad;
    if (!last(a.chunk)) {
      wait_received(ActionKind::kRecvGradient, a);
      output_grad = find(output_grads_, k, a);
    }
    if (!first(a.chunk)) input_grad = allocate(input_grads_, k, stage_.input_spec(a.chunk));
    stage_.backward(a.chunk, a.microbatch, output_grad, input_grad);
    --in_flight_;
    release(inputs_, k);
    release(output_grads_, k);
  }

  // Frees the buffers of sends whose batch completed (all of them with wait).
  void reap_sends(bool wait) {
    for (auto it = pending_sends_.begin(); it != pending_sends_.end();) {
      if (wait) it->handle->wait();
      if (!wait && !it->handle->is_completed()) {
        ++it;
        continue;
      }
      it->handle->wait();  // completed: returns at once, rethrows a failure
      const Key k{it->action.chunk, it->action.microbatch};
      release(it->action.kind == ActionKind::kSendActivation ? outputs_ : input_grads_, k);
      it = pending_sends_.erase(it);
    }
  }

  struct PendingSend {
    Action action;
    std::shared_ptr<dist::CommHandle> handle;
  };

  const PipelineSchedule& s_;
  PipelineP2P& p2p_;
  PipelineStage& stage_;
  const int rank_;
  ExecutorStats stats_;
  int in_flight_ = 0;
  std::map<Key, OwnedTensor> inputs_, outputs_, output_grads_, input_grads_;
  std::vector<OwnedTensor> spare_;  // released boundary buffers, reused by allocate()
  std::map<std::tuple<ActionKind, int, int>, std::shared_ptr<dist::CommHandle>> received_;
  std::vector<PendingSend> pending_sends_;
};

}  // namespace

ExecutorStats run_pipeline_schedule(const PipelineSchedule& schedule, PipelineP2P& p2p,
                                    PipelineStage& stage) {
  if (schedule.num_stages != p2p.num_stages() ||
      static_cast<int>(schedule.ranks.size()) != schedule.num_stages) {
    throw Error(ErrorKind::kInvalidArgument,
                "run_pipeline_schedule: schedule '" + schedule.name + "' is for P=" +
                    std::to_string(schedule.num_stages) + " stages but the pipeline channel '" +
                    p2p.activations().name() + "' has " + std::to_string(p2p.num_stages()) +
                    " ranks");
  }
  RankRun run(schedule, p2p, stage);
  try {
    return run.run();
  } catch (const std::exception& e) {
    p2p.abort("pipeline rank " + std::to_string(p2p.rank()) + " failed: " + e.what());
    throw;
  }
}

}  // namespace shardlm::parallel
