// numpy_sum: numpy's float64 np.add.reduce / ndarray.sum() over a contiguous 1-D array, bit-exact:
// sequential below 8 values, else pairwise summation with 8 accumulators in blocks of up to 128
// (numpy's pairwise_sum, PW_BLOCKSIZE). Megatron's datasets normalise weights and probabilities
// with it, so matching its rounding keeps draws at the same boundaries. Pure; thread-safe.
//
//   double total = numpy_sum(std::span<const double>(weights));
#pragma once

#include <cstddef>
#include <span>

namespace shardlm::data {

inline double numpy_sum(std::span<const double> a) {
  constexpr size_t kPairwiseBlock = 128;  // numpy's PW_BLOCKSIZE
  const size_t n = a.size();
  if (n < 8) {
    double res = 0.0;
    for (double v : a) res += v;
    return res;
  }
  if (n <= kPairwiseBlock) {
    double r[8];
    for (size_t j = 0; j < 8; ++j) r[j] = a[j];
    size_t i = 8;
    for (; i < n - (n % 8); i += 8) {
      for (size_t j = 0; j < 8; ++j) r[j] += a[i + j];
    }
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i];
    return res;
  }
  size_t half = n / 2;
  half -= half % 8;
  return numpy_sum(a.subspan(0, half)) + numpy_sum(a.subspan(half));
}

}  // namespace shardlm::data
