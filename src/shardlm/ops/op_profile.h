// OpProfile: per-op time totals of everything a DeviceContext runs (the OpTimer the dispatcher
// reports to). On the CPU an op's time is host wall time; on a CUDA context each op is bracketed
// by a pair of CUDA events on the rank's stream, so the time is where the kernels actually ran
// (queued work is not charged to the host call that queued it). Nested ops are charged to the
// outermost one only.
//
// Used by `shardlm bench --profile-ops` for the per-kernel breakdown of a step. Timing adds a
// little overhead per op (two event records), so benchmark numbers are taken without it.
//
// Ownership: the profile installs itself on ctx at construction and removes itself at
// destruction; the DeviceContext must outlive it. One host thread at a time, like ctx.
//
//   auto profile = ops::OpProfile::create(ctx);
//   model.forward(...); model.backward(...);
//   profile->collect();                     // waits for the device, folds events into totals
//   std::cout << profile->format_table(step_ms);
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "shardlm/tensor/device_context.h"
#include "shardlm/tensor/op_timer.h"

namespace shardlm::ops {

struct OpProfileRow {
  std::string name;
  int64_t calls = 0;
  double total_ms = 0;
};

class OpProfile : public OpTimer {
 public:
  // CPU or CUDA implementation by ctx's device; installs itself as ctx's OpTimer.
  static std::unique_ptr<OpProfile> create(DeviceContext& ctx);
  ~OpProfile() override;
  OpProfile(const OpProfile&) = delete;
  OpProfile& operator=(const OpProfile&) = delete;

  // Waits for outstanding measurements (device sync on CUDA) and adds them to the totals.
  virtual void collect() = 0;
  // Rows sorted by total time, largest first (call collect() first).
  std::vector<OpProfileRow> rows() const;
  double total_ms() const;
  void reset() { totals_.clear(); }
  // A fixed-width table: op, calls, total ms, ms per `per` (e.g. per step), share of the op total
  // and, when wall_ms > 0, of that wall time.
  std::string format_table(double per, double wall_ms) const;

 protected:
  explicit OpProfile(DeviceContext& ctx);
  void add(const char* name, double ms);

  DeviceContext& ctx_;
  int depth_ = 0;  // nesting depth of begin()/end(): only the outermost op is timed

 private:
  std::map<std::string, OpProfileRow> totals_;
};

#ifdef SHARDLM_WITH_CUDA
namespace cuda {
// The CUDA-event implementation (ops/cuda/cuda_op_profile.cc).
std::unique_ptr<OpProfile> create_cuda_op_profile(DeviceContext& ctx);
}  // namespace cuda
#endif

}  // namespace shardlm::ops
