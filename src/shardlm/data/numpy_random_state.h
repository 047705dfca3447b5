// NumpyRandomState: the parts of numpy's legacy numpy.random.RandomState(seed) that Megatron's
// GPTDataset and BERT dataset use, bit-exact: the MT19937 stream seeded with init_genrand(seed)
// (RandomState's seeding for an integer seed), random_interval (bounded draws by masking and
// rejection), shuffle (Fisher-Yates from the last element down, as RandomState.shuffle on a 1-D
// array or a list), random_sample / random (53-bit doubles), randint (int64 dtype), choice
// with p (replace=True, size=None) and geometric (legacy_random_geometric, T5's span lengths).
// One object is one stream: calls consume it in order, like the Python object. Not thread-safe.
//
//   NumpyRandomState rs(1234);
//   std::vector<int32_t> docs = {0, 1, 2, 3};
//   rs.shuffle(std::span(docs));   // same order as numpy.random.RandomState(1234).shuffle(docs)
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <utility>
#include <vector>

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

  // RandomState.random_sample() (= random()): a double in [0, 1) from two 32-bit draws, the
  // first shifted right by 5 and the second by 6 (mt19937's next_double, 53 random bits).
  double random_sample() {
    const uint32_t a = next_uint32() >> 5;
    const uint32_t b = next_uint32() >> 6;
    return (a * 67108864.0 + b) / 9007199254740992.0;
  }

  // RandomState.randint(low, high) with the default int64 dtype: low + a masked-rejection
  // draw in [0, high - 1 - low] (random_bounded_uint64_fill with use_masked=True).
  int64_t randint(int64_t low, int64_t high) {
    return low + static_cast<int64_t>(random_interval(static_cast<uint64_t>(high - 1 - low)));
  }

  // RandomState.choice(len(p), p=p) for one sample: cdf = cumsum(p) / cdf[-1] (sequential
  // float64 sums), u = random_sample(), and the index is cdf.searchsorted(u, side='right'),
  // i.e. the number of cdf entries <= u. p must be non-empty (numpy validates p, drawing nothing).
  size_t choice(std::span<const double> p) {
    std::vector<double> cdf(p.size());
    double running = 0.0;
    for (size_t i = 0; i < p.size(); ++i) cdf[i] = running = (i == 0 ? p[0] : running + p[i]);
    const double last = cdf.back();
    for (double& c : cdf) c /= last;
    const double u = random_sample();
    return static_cast<size_t>(std::upper_bound(cdf.begin(), cdf.end(), u) - cdf.begin());
  }

  // RandomState.geometric(p) for one sample, 0 < p <= 1 (numpy's legacy_random_geometric, one
  // uniform either way): for p >= 1/3 a CDF search (X = 1, sum = prod = p; while U > sum:
  // prod *= 1 - p, sum += prod, X++), else the inversion ceil(log1p(-U) / log(1 - p)).
  // Older numpy releases inverted with log(1 - U) instead of log1p(-U); the two can differ only
  // where the quotient lies within rounding of an integer.
  int64_t geometric(double p) {
    const double u = random_sample();
    if (p >= 0.333333333333333333333333) {
      int64_t x = 1;
      double sum = p, prod = p;
      const double q = 1.0 - p;
      while (u > sum) {
        prod *= q;
        sum += prod;
        ++x;
      }
      return x;
    }
    return static_cast<int64_t>(std::ceil(std::log1p(-u) / std::log(1.0 - p)));
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
