#include "shardlm/dist/host_staged_communicator.h"

#include <functional>
#include <utility>

#include "shardlm/base/check.h"
#include "shardlm/ops/ops.h"

namespace shardlm::dist {
namespace {

// The pending host operation (or, deferred, the function that issues it), the host buffers it
// reads and writes, and the copies into them (before the issue) and back into the device
// tensors (once it is done).
class StagedWork final : public CommWork {
 public:
  using Copies = std::vector<std::pair<Tensor, Tensor>>;  // (destination, source)
  StagedWork(DeviceContext& device, std::function<CommHandle()> issue, Copies copy_in,
             std::vector<OwnedTensor> buffers, Copies copy_back)
      : device_(&device), issue_(std::move(issue)), copy_in_(std::move(copy_in)),
        buffers_(std::move(buffers)), copy_back_(std::move(copy_back)) {}
  StagedWork(DeviceContext& device, CommHandle host, std::vector<OwnedTensor> buffers,
             Copies copy_back)
      : device_(&device), host_(std::move(host)), buffers_(std::move(buffers)),
        copy_back_(std::move(copy_back)) {}

  void wait() override {
    if (issue_) {
      copy(copy_in_);
      host_ = std::exchange(issue_, nullptr)();
    }
    host_.wait();
    copy(copy_back_);
    buffers_.clear();
  }
  bool is_completed() override { return !issue_ && host_.is_completed(); }

 private:
  void copy(Copies& copies) {
    for (const auto& [dst, src] : copies) ops::copy(*device_, dst, src);
    copies.clear();
  }

  DeviceContext* device_;
  std::function<CommHandle()> issue_;  // set: deferred, not issued yet
  Copies copy_in_;
  CommHandle host_;
  std::vector<OwnedTensor> buffers_;
  Copies copy_back_;
};

}  // namespace

// Collects one operation's host stand-ins; finish() issues the host operation (or defers it)
// and returns the staged handle.
class HostStagedCommunicator::Staging {
 public:
  explicit Staging(const HostStagedCommunicator& comm) : comm_(comm) {}

  // The host tensor the host operation reads instead of t (t's contents, copied before the
  // operation is issued).
  Tensor input(const Tensor& t) {
    if (!comm_.staged(t)) return t;
    Tensor h = buffer(t);
    copy_in_.emplace_back(h, t);
    return h;
  }
  // The host tensor the host operation writes instead of t (copied into t at wait()).
  Tensor output(const Tensor& t) {
    if (!comm_.staged(t)) return t;
    Tensor h = buffer(t);
    copy_back_.emplace_back(t, h);
    return h;
  }
  // Read and written (in-place operations).
  Tensor in_out(const Tensor& t) {
    if (!comm_.staged(t)) return t;
    Tensor h = input(t);
    copy_back_.emplace_back(t, h);
    return h;
  }

  // `collective`: may be deferred to wait() (HostStagedOptions::defer_collectives).
  CommHandle finish(std::function<CommHandle()> issue, bool collective = true) {
    if (collective && comm_.options_.defer_collectives)
      return CommHandle(std::make_shared<StagedWork>(*comm_.device_, std::move(issue),
                                                     std::move(copy_in_), std::move(buffers_),
                                                     std::move(copy_back_)));
    for (const auto& [dst, src] : copy_in_) ops::copy(*comm_.device_, dst, src);
    CommHandle host = issue();
    if (buffers_.empty()) return host;
    return CommHandle(std::make_shared<StagedWork>(*comm_.device_, std::move(host),
                                                   std::move(buffers_), std::move(copy_back_)));
  }

 private:
  Tensor buffer(const Tensor& t) {
    buffers_.push_back(OwnedTensor::empty(t.dtype(), t.shape(), Device::cpu()));
    return buffers_.back().view();
  }

  const HostStagedCommunicator& comm_;
  std::vector<OwnedTensor> buffers_;
  StagedWork::Copies copy_in_, copy_back_;
};

HostStagedCommunicator::HostStagedCommunicator(DeviceContext& device,
                                               std::unique_ptr<Communicator> host,
                                               HostStagedOptions options)
    : device_(&device), host_(std::move(host)), options_(options) {
  SHARDLM_CHECK(host_ != nullptr);
}

bool HostStagedCommunicator::staged(const Tensor& t) const {
  return t.defined() && (!t.device().is_cpu() || options_.stage_host_tensors);
}

CommHandle HostStagedCommunicator::all_reduce_async(Tensor t, ReduceOp op) {
  Staging s(*this);
  const Tensor h = s.in_out(t);
  return s.finish([this, h, op] { return host_->all_reduce_async(h, op); });
}

CommHandle HostStagedCommunicator::reduce_scatter_async(Tensor out, const Tensor& in,
                                                        ReduceOp op) {
  Staging s(*this);
  const Tensor h_in = s.input(in);
  const Tensor h_out = s.output(out);
  return s.finish([this, h_out, h_in, op] { return host_->reduce_scatter_async(h_out, h_in, op); });
}

CommHandle HostStagedCommunicator::all_gather_async(Tensor out, const Tensor& in) {
  Staging s(*this);
  const Tensor h_in = s.input(in);
  const Tensor h_out = s.output(out);
  return s.finish([this, h_out, h_in] { return host_->all_gather_async(h_out, h_in); });
}

CommHandle HostStagedCommunicator::broadcast_async(Tensor t, int root) {
  Staging s(*this);
  const Tensor h = s.in_out(t);
  return s.finish([this, h, root] { return host_->broadcast_async(h, root); });
}

CommHandle HostStagedCommunicator::send_async(const Tensor& t, int peer) {
  Staging s(*this);
  const Tensor h = s.input(t);
  return s.finish([this, h, peer] { return host_->send_async(h, peer); }, /*collective=*/false);
}

CommHandle HostStagedCommunicator::recv_async(Tensor t, int peer) {
  Staging s(*this);
  const Tensor h = s.output(t);
  return s.finish([this, h, peer] { return host_->recv_async(h, peer); }, /*collective=*/false);
}

CommHandle HostStagedCommunicator::batch_send_recv_async(std::span<const P2POp> ops) {
  Staging s(*this);
  std::vector<P2POp> host_ops;
  host_ops.reserve(ops.size());
  for (const P2POp& op : ops)
    host_ops.push_back({op.kind,
                        op.kind == P2POp::Kind::kSend ? s.input(op.tensor) : s.output(op.tensor),
                        op.peer});
  return s.finish([this, host_ops] { return host_->batch_send_recv_async(host_ops); },
                  /*collective=*/false);
}

std::unique_ptr<Communicator> HostStagedCommunicator::split(int color, int key,
                                                            const std::string& name) {
  std::unique_ptr<Communicator> group = host_->split(color, key, name);
  if (!group) return nullptr;
  return std::make_unique<HostStagedCommunicator>(*device_, std::move(group), options_);
}

}  // namespace shardlm::dist
