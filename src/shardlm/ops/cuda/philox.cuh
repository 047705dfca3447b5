// philox.cuh — device copies of the counter-based RNG in tensor/philox.h, so GPU dropout draws
// exactly the bits the CPU draws (same Philox4x32-10 rounds, same key derivation, same counter
// layout as shardlm::dropout_uniform). Keep in lockstep with tensor/philox.{h,cc}; the GPU
// dropout test compares masks bit for bit.
//
//   const DropoutStream s = make_dropout_stream(key, p);          // host
//   uint4 bits = philox4x32_device(s.counter_for_group(g), s.key); // device, positions 4g..4g+3
//   bool dropped = bits.x < s.drop_threshold;                      // == (dropout_uniform <= p)
#pragma once

#include <cmath>
#include <cstdint>

#include "shardlm/tensor/philox.h"

namespace shardlm::ops::cuda {

__host__ __device__ __forceinline__ uint64_t mix64_device(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The 10-round Philox4x32 bijection (identical to shardlm::philox4x32).
__host__ __device__ __forceinline__ uint4 philox4x32_device(uint4 ctr, uint32_t key0,
                                                            uint32_t key1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kM0) * ctr.x;
    const uint64_t p1 = static_cast<uint64_t>(kM1) * ctr.z;
    ctr = make_uint4(static_cast<uint32_t>(p1 >> 32) ^ ctr.y ^ key0, static_cast<uint32_t>(p1),
                     static_cast<uint32_t>(p0 >> 32) ^ ctr.w ^ key1, static_cast<uint32_t>(p0));
    key0 += kW0;
    key1 += kW1;
  }
  return ctr;
}

__host__ __device__ __forceinline__ uint32_t uint4_word(const uint4& v, unsigned int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// Everything a kernel needs to reproduce dropout_uniform(key, position) <= p.
struct DropoutStream {
  uint32_t key0 = 0, key1 = 0;   // Philox key derived from (seed, layer, site)
  uint32_t step = 0, microbatch = 0;
  // dropout_uniform = (bits + 1) * 2^-32 <= p  <=>  bits < floor(p * 2^32)  (exact in double).
  uint64_t drop_threshold = 0;

  // Positions 4g .. 4g+3 share one Philox block; word (position % 4) is theirs.
  __host__ __device__ __forceinline__ uint4 bits_for_group(uint64_t group) const {
    return philox4x32_device(make_uint4(static_cast<uint32_t>(group),
                                        static_cast<uint32_t>(group >> 32), step, microbatch),
                             key0, key1);
  }
  __host__ __device__ __forceinline__ bool dropped(uint32_t bits) const {
    return static_cast<uint64_t>(bits) < drop_threshold;
  }
};

inline DropoutStream make_dropout_stream(const DropoutKey& key, double p) {
  DropoutStream s;
  const uint64_t k = mix64_device(
      key.seed ^ mix64_device((static_cast<uint64_t>(key.layer) << 8) | key.site) ^ 0xD0D0u);
  s.key0 = static_cast<uint32_t>(k);
  s.key1 = static_cast<uint32_t>(k >> 32);
  s.step = key.step;
  s.microbatch = key.microbatch;
  const double scaled = std::floor(p * 4294967296.0);
  s.drop_threshold = scaled <= 0 ? 0 : static_cast<uint64_t>(scaled);
  return s;
}

}  // namespace shardlm::ops::cuda
