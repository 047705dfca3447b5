// OpProfile: shared bookkeeping and the host-clock (CPU) implementation. See op_profile.h.
#include "shardlm/ops/op_profile.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

namespace shardlm::ops {

namespace {

// CPU ops run synchronously on the calling thread, so host wall time is the op's time.
class HostOpProfile final : public OpProfile {
 public:
  explicit HostOpProfile(DeviceContext& ctx) : OpProfile(ctx) {}

  void begin(const char*) override {
    if (depth_++ == 0) start_ = std::chrono::steady_clock::now();
  }
  void end(const char* name) override {
    if (--depth_ != 0) return;
    const auto elapsed = std::chrono::steady_clock::now() - start_;
    add(name, std::chrono::duration<double, std::milli>(elapsed).count());
  }
  void collect() override {}

 private:
  std::chrono::steady_clock::time_point start_;
};

}  // namespace

std::unique_ptr<OpProfile> OpProfile::create(DeviceContext& ctx) {
#ifdef SHARDLM_WITH_CUDA
  if (ctx.device().is_cuda()) return cuda::create_cuda_op_profile(ctx);
#endif
  return std::unique_ptr<OpProfile>(new HostOpProfile(ctx));
}

OpProfile::OpProfile(DeviceContext& ctx) : ctx_(ctx) { ctx_.set_op_timer(this); }

OpProfile::~OpProfile() {
  if (ctx_.op_timer() == this) ctx_.set_op_timer(nullptr);
}

void OpProfile::add(const char* name, double ms) {
  OpProfileRow& row = totals_[name];
  if (row.name.empty()) row.name = name;
  row.calls += 1;
  row.total_ms += ms;
}

std::vector<OpProfileRow> OpProfile::rows() const {
  std::vector<OpProfileRow> out;
  out.reserve(totals_.size());
  for (const auto& [name, row] : totals_) out.push_back(row);
  std::sort(out.begin(), out.end(),
            [](const OpProfileRow& a, const OpProfileRow& b) { return a.total_ms > b.total_ms; });
  return out;
}

double OpProfile::total_ms() const {
  double sum = 0;
  for (const auto& [name, row] : totals_) sum += row.total_ms;
  return sum;
}

std::string OpProfile::format_table(double per, double wall_ms) const {
  const double total = total_ms();
  std::string out;
  char line[256];
  std::snprintf(line, sizeof(line), "%-24s %8s %12s %12s %8s %8s\n", "op", "calls", "total ms",
                "ms/step", "% ops", "% wall");
  out += line;
  for (const OpProfileRow& row : rows()) {
    std::snprintf(line, sizeof(line), "%-24s %8lld %12.3f %12.3f %7.1f%% %7.1f%%\n",
                  row.name.c_str(), static_cast<long long>(row.calls), row.total_ms,
                  per > 0 ? row.total_ms / per : 0.0, total > 0 ? 100.0 * row.total_ms / total : 0.0,
                  wall_ms > 0 ? 100.0 * row.total_ms / wall_ms : 0.0);
    out += line;
  }
  std::snprintf(line, sizeof(line), "%-24s %8s %12.3f %12.3f %7.1f%% %7.1f%%\n", "all ops", "",
                total, per > 0 ? total / per : 0.0, 100.0, wall_ms > 0 ? 100.0 * total / wall_ms : 0.0);
  out += line;
  return out;
}

}  // namespace shardlm::ops
