// DeviceContext: everything one rank needs to run ops on its device — the device, and in CUDA
// builds its compute stream and library handles (created by the CUDA backend). No globals: a
// rank owns exactly one DeviceContext and passes it to every op.
//
//   DeviceContext ctx = DeviceContext::cpu();
//   ops::gelu_forward(ctx, out, in);
#pragma once

#include <memory>

#include "shardlm/tensor/device.h"
#include "shardlm/tensor/op_timer.h"

namespace shardlm {

// Backend-private state (CUDA stream, cuBLASLt handle, ...), defined by ops/cuda.
struct BackendState {
  virtual ~BackendState() = default;
};

class DeviceContext {
 public:
  static DeviceContext cpu() { return DeviceContext(Device::cpu()); }
  explicit DeviceContext(Device device) : device_(device) {}

  Device device() const { return device_; }
  BackendState* backend() const { return backend_.get(); }
  void set_backend(std::unique_ptr<BackendState> state) { backend_ = std::move(state); }

  // Optional per-op timing observer (non-owning; see op_timer.h). nullptr: no timing.
  OpTimer* op_timer() const { return op_timer_; }
  void set_op_timer(OpTimer* timer) { op_timer_ = timer; }

 private:
  Device device_;
  std::unique_ptr<BackendState> backend_;
  OpTimer* op_timer_ = nullptr;
};

}  // namespace shardlm
