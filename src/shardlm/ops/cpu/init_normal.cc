// init_normal on the CPU: every element is a pure function of its global index, so the shard is
// cut into contiguous ranges filled by all hardware threads (a 1.3B-parameter model would
// otherwise take minutes on one thread).
#include <algorithm>
#include <thread>
#include <vector>

#include "shardlm/ops/cpu/cpu_ops.h"

namespace shardlm::ops::cpu {

void init_normal(DeviceContext&, Tensor out, const PhiloxKey& key, double stddev,
                 const ShardIndexMap& map) {
  const int64_t n = out.numel();
  auto fill_range = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const uint64_t global = static_cast<uint64_t>(map.global_index(i));
      const double v = stddev * shardlm::init_normal(key, global);
      if (out.dtype() == DType::kF64)
        out.data<double>()[i] = v;
      else
        out.data<float>()[i] = static_cast<float>(v);
    }
  };
  constexpr int64_t kElementsPerThread = int64_t{1} << 20;
  const int64_t threads =
      std::min<int64_t>(std::max(1u, std::thread::hardware_concurrency()),
                        (n + kElementsPerThread - 1) / kElementsPerThread);
  if (threads <= 1) return fill_range(0, n);
  std::vector<std::thread> workers;
  const int64_t per = (n + threads - 1) / threads;
  for (int64_t t = 0; t < threads; ++t)
    workers.emplace_back(fill_range, t * per, std::min(n, (t + 1) * per));
  for (std::thread& w : workers) w.join();
}

}  // namespace shardlm::ops::cpu
