// Test helpers for dist/: run N ranks as threads of a ThreadWorld and rethrow the root cause,
// deterministic per-rank test data, and byte-exact comparison.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <exception>
#include <functional>
#include <random>
#include <thread>
#include <vector>

#include "shardlm/base/error.h"
#include "shardlm/dist/thread_communicator.h"
#include "shardlm/tensor/tensor.h"

namespace shardlm::dist::testing {

using namespace std::chrono_literals;

// Runs fn(comm) on n threads; rethrows the first failure (root causes before timeouts).
inline void run_ranks(int n, const std::function<void(Communicator&)>& fn,
                      std::chrono::milliseconds timeout = 20s) {
  ThreadWorld world(n, {.timeout = timeout});
  rethrow_first_error(world.run(fn));
}

// Runs fn(r) for r in [0, n) on n threads of their own (no ThreadWorld: each rank builds its
// own communicator) and joins them; returns each rank's exception, null where fn returned.
inline std::vector<std::exception_ptr> run_threads_collect(int n,
                                                           const std::function<void(int)>& fn) {
  std::vector<std::exception_ptr> errors(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        fn(r);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  return errors;
}

// Deterministic value of element i on rank r (never all zero; distinct across ranks).
inline double test_value(int r, int64_t i, uint64_t seed) {
  std::mt19937_64 g(seed * 1000003u + static_cast<uint64_t>(r) * 7919u + static_cast<uint64_t>(i));
  return std::uniform_real_distribution<double>(-1.0, 1.0)(g) * (1.0 + r);
}

// Fills t (CPU) with test_value(r, i, seed) converted to its dtype (ints: scaled to +-1000).
inline void fill_test_values(const Tensor& t, int r, uint64_t seed) {
  for (int64_t i = 0; i < t.numel(); ++i) {
    const double v = test_value(r, i, seed);
    switch (t.dtype()) {
      case DType::kF64: t.data<double>()[i] = v; break;
      case DType::kF32: t.data<float>()[i] = static_cast<float>(v); break;
      case DType::kBF16:
        static_cast<uint16_t*>(t.raw())[i] = float_to_bf16_bits(static_cast<float>(v));
        break;
      case DType::kF16:
        static_cast<uint16_t*>(t.raw())[i] = float_to_fp16_bits(static_cast<float>(v));
        break;
      case DType::kI32: t.data<int32_t>()[i] = static_cast<int32_t>(v * 1000); break;
      case DType::kI64: t.data<int64_t>()[i] = static_cast<int64_t>(v * 1e12); break;
      default: FAIL() << "fill_test_values: dtype not supported";
    }
  }
}

inline bool bytes_equal(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// Expects fn to throw Error(kind) whose message contains every string of `parts`.
inline void expect_error(const std::function<void()>& fn, ErrorKind kind,
                         const std::vector<std::string>& parts) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    for (const auto& p : parts) {
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
          << "missing '" << p << "' in: " << e.what();
    }
    return;
  }
  ADD_FAILURE() << "expected an Error(" << error_kind_name(kind) << ")";
}

}  // namespace shardlm::dist::testing
