// Counter-based Philox4x32-10 (Salmon et al., SC'11) and the keyed streams built on it.
//
// Every random number in ShardLM is a pure function of a key and a counter, so values never
// depend on how work is split across threads, ranks or shards:
//  - parameter init:  init_normal(seed, "decoder.layers.0.mlp.linear_fc1.weight", global_index)
//  - dropout masks:   DropoutKey{seed, step, microbatch, layer, site} + global element position
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

namespace shardlm {

using PhiloxCounter = std::array<uint32_t, 4>;
using PhiloxKey = std::array<uint32_t, 2>;

// The 10-round Philox4x32 bijection.
inline PhiloxCounter philox4x32(PhiloxCounter ctr, PhiloxKey key) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kM0) * ctr[0];
    const uint64_t p1 = static_cast<uint64_t>(kM1) * ctr[2];
    ctr = {static_cast<uint32_t>(p1 >> 32) ^ ctr[1] ^ key[0], static_cast<uint32_t>(p1),
           static_cast<uint32_t>(p0 >> 32) ^ ctr[3] ^ key[1], static_cast<uint32_t>(p0)};
    key[0] += kW0;
    key[1] += kW1;
  }
  return ctr;
}

// 64-bit mixing (splitmix64 finaliser) and FNV-1a string hash, used to derive keys.
inline uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
inline uint64_t hash_name(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}
inline PhiloxKey key_from_u64(uint64_t k) {
  return {static_cast<uint32_t>(k), static_cast<uint32_t>(k >> 32)};
}

// Uniform in (0, 1] from 32 random bits (never 0, so log() is safe).
inline double uniform_open0(uint32_t bits) { return (static_cast<double>(bits) + 1.0) * 0x1p-32; }

// Standard normal for element `index` of the stream named `name` under `seed` (Box-Muller on
// two 32-bit words of one Philox block; the other two words are unused on purpose so each
// element is independent of every other).
double init_normal(uint64_t seed, std::string_view name, uint64_t index);
// The same value with the per-parameter key derived once (init_normal_key(seed, name)), for
// loops over every element of a parameter.
PhiloxKey init_normal_key(uint64_t seed, std::string_view name);
double init_normal(const PhiloxKey& key, uint64_t index);

// Identity of one dropout application. `site` distinguishes the dropouts inside one layer.
struct DropoutKey {
  uint64_t seed = 0;
  uint32_t step = 0;
  uint32_t microbatch = 0;
  uint32_t layer = 0;
  uint32_t site = 0;
};

enum DropoutSite : uint32_t {
  kDropoutEmbedding = 1,
  kDropoutAttentionProbs = 2,
  kDropoutAttentionOutput = 3,
  kDropoutMlpOutput = 4,
  // T5: the decoder layers' cross-attention, and the encoder's embedding (its input tokens
  // differ from the decoder's, so it needs masks of its own).
  kDropoutCrossAttentionProbs = 5,
  kDropoutCrossAttentionOutput = 6,
  kDropoutEncoderEmbedding = 7,
};

// The Philox stream of one dropout application, with its key derived once. Element `position`
// uses word position % 4 of block position / 4, so a loop over positions in blocks of four
// needs one Philox call per four elements.
class DropoutStream {
 public:
  explicit DropoutStream(const DropoutKey& key);
  PhiloxCounter block(uint64_t block_index) const {
    return philox4x32({static_cast<uint32_t>(block_index), static_cast<uint32_t>(block_index >> 32),
                       step_, microbatch_},
                      key_);
  }
  static double to_uniform(uint32_t bits) { return uniform_open0(bits); }

 private:
  PhiloxKey key_;
  uint32_t step_, microbatch_;
};

// Sequential reader of a DropoutStream: caches the last Philox block, so walking positions in
// order costs one Philox call per four elements. Same values as dropout_uniform().
class DropoutUniformReader {
 public:
  explicit DropoutUniformReader(const DropoutKey& key) : stream_(key) {}
  double operator()(uint64_t position) {
    if (position / 4 != block_index_) {
      block_index_ = position / 4;
      words_ = stream_.block(block_index_);
    }
    return uniform_open0(words_[position % 4]);
  }

 private:
  DropoutStream stream_;
  uint64_t block_index_ = ~uint64_t{0};
  PhiloxCounter words_{};
};

// Uniform in (0, 1] for element `position` of the dropout stream `key`. Position is the
// element's global index, so every shard of a tensor draws the same value for the same element.
double dropout_uniform(const DropoutKey& key, uint64_t position);

}  // namespace shardlm
