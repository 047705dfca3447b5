// NumpyRandomState: the parts of numpy's legacy numpy.random.RandomState(seed) that Megatron's
// GPTDataset uses, bit-exact: the MT19937 stream seeded with init_genrand(seed) (RandomState's
// seeding for an integer seed), random_interval (bounded draws by masking and rejection), and
// shuffle (Fisher-Yates from the last element down, as RandomState.shuffle on a 1-D array).
// One object is one stream: calls consume it in order, like the Python object. Not thread-safe.
//
//   NumpyRandomState rs(1234);
//   std::vector<int32_t> docs = {0, 1, 2, 3};
//   rs.shuffle(std::span(docs));   // same order as numpy.random.RandomState(1234).shuffle(docs)
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <utility>

namespace shardlm::data {

class NumpyRandomState {
 public:
  explicit NumpyRandomState(uint32_t seed) : engine_(seed) {}

  uint32_t next_uint32() { return static_cast<uint32_t>(engine_()); }
  uint64_t next_uint64() {
    const uint64_t high = next_uint32();
    return (high << 32) | next_uint32();
  }

  // A uniform value in [0, max] (numpy's random_interval).
  uint64_t random_interval(uint64_t max) {
    if (max == 0) return 0;
    uint64_t mask = max;
    mask |= mask >> 1;
    mask |= mask >> 2;
    mask |= mask >> 4;
    mask |= mask >> 8;
    mask |= mask >> 16;
    mask |= mask >> 32;
    uint64_t value;
    if (max <= 0xFFFFFFFFull) {
      while ((value = (next_uint32() & mask)) > max) {
      }
    } else {
      while ((value = (next_uint64() & mask)) > max) {
      }
    }
    return value;
  }

  template <typename T>
  void shuffle(std::span<T> values) {
    for (size_t i = values.size(); i-- > 1;) {
      const auto j = static_cast<size_t>(random_interval(i));
      std::swap(values[i], values[j]);
    }
  }

 private:
  // std::mt19937 is MT19937 with init_genrand seeding: the same stream as numpy's
  // RandomState(seed) for 0 <= seed < 2**32.
  std::mt19937 engine_;
};

}  // namespace shardlm::data
