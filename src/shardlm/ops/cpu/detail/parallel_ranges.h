// parallel_ranges: run fn(begin, end) over [0, n) cut into contiguous ranges, one per hardware
// thread, when there is enough work (at least min_per_thread items per thread); else inline.
// For CPU ops whose items (rows, elements) are independent: every item is computed by the same
// code whatever the split, so results do not depend on the thread count.
#pragma once

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace shardlm::ops::cpu::detail {

template <typename Fn>
void parallel_ranges(int64_t n, int64_t min_per_thread, Fn&& fn) {
  const int64_t hw = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t threads = std::min(hw, n / std::max<int64_t>(1, min_per_thread));
  if (threads <= 1) return fn(int64_t{0}, n);
  const int64_t per = (n + threads - 1) / threads;
  std::vector<std::thread> workers;
  for (int64_t t = 1; t < threads; ++t) {
    const int64_t begin = t * per, end = std::min(n, (t + 1) * per);
    if (begin < end) workers.emplace_back([&fn, begin, end] { fn(begin, end); });
  }
  fn(int64_t{0}, std::min(n, per));  // the calling thread takes the first range
  for (std::thread& w : workers) w.join();
}

}  // namespace shardlm::ops::cpu::detail
