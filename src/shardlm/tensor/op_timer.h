// OpTimer: an optional observer of every op a DeviceContext runs, for per-op time breakdowns
// (`shardlm bench --profile-ops`). The op dispatcher calls begin(name) before routing an op to
// its backend and end(name) after; ops/op_profile.h implements it (host clock on the CPU, CUDA
// events on the rank's stream on the GPU, so queued kernels are timed where they run).
//
// Ownership: the DeviceContext holds a non-owning pointer; whoever installs the timer keeps it
// alive and uninstalls it (set_op_timer(nullptr)) before destroying it. Thread contract: as the
// DeviceContext, one host thread at a time.
#pragma once

namespace shardlm {

class OpTimer {
 public:
  virtual ~OpTimer() = default;
  // `name` is a string literal (the op's name); it outlives the timer.
  virtual void begin(const char* name) = 0;
  virtual void end(const char* name) = 0;
};

}  // namespace shardlm
