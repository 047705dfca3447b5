// CUDA-event OpProfile: each outermost op gets a (start, stop) event pair recorded on the rank's
// stream; collect() synchronises once and reads every pair's elapsed time. Events are pooled and
// reused across collect() calls, so a profiled step records but never creates events after the
// first one.
#include <cuda_runtime.h>

#include <string>
#include <utility>
#include <vector>

#include "shardlm/base/error.h"
#include "shardlm/ops/cuda/cuda_context.h"
#include "shardlm/ops/op_profile.h"

namespace shardlm::ops::cuda {

namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw Error(ErrorKind::kInternal, std::string("op profile: ") + what + " failed: " +
                                          cudaGetErrorString(err));
}

class CudaOpProfile final : public OpProfile {
 public:
  explicit CudaOpProfile(DeviceContext& ctx)
      : OpProfile(ctx), stream_(reinterpret_cast<cudaStream_t>(cuda_state(ctx).stream())) {}

  ~CudaOpProfile() override {
    for (auto& [start, stop] : events_) {
      cudaEventDestroy(start);
      cudaEventDestroy(stop);
    }
  }

  void begin(const char* name) override {
    if (depth_++ != 0) return;
    if (used_ == events_.size()) {
      cudaEvent_t start = nullptr, stop = nullptr;
      check(cudaEventCreate(&start), "cudaEventCreate");
      check(cudaEventCreate(&stop), "cudaEventCreate");
      events_.emplace_back(start, stop);
    }
    check(cudaEventRecord(events_[used_].first, stream_), "cudaEventRecord");
    pending_names_.push_back(name);
  }

  void end(const char*) override {
    if (--depth_ != 0) return;
    check(cudaEventRecord(events_[used_].second, stream_), "cudaEventRecord");
    ++used_;
  }

  void collect() override {
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    for (size_t i = 0; i < used_; ++i) {
      float ms = 0;
      check(cudaEventElapsedTime(&ms, events_[i].first, events_[i].second),
            "cudaEventElapsedTime");
      add(pending_names_[i], ms);
    }
    used_ = 0;
    pending_names_.clear();
  }

 private:
  cudaStream_t stream_;
  std::vector<std::pair<cudaEvent_t, cudaEvent_t>> events_;
  std::vector<const char*> pending_names_;
  size_t used_ = 0;
};

}  // namespace

std::unique_ptr<OpProfile> create_cuda_op_profile(DeviceContext& ctx) {
  return std::make_unique<CudaOpProfile>(ctx);
}

}  // namespace shardlm::ops::cuda
