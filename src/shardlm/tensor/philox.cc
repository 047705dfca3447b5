#include "shardlm/tensor/philox.h"

#include <cmath>
#include <numbers>

namespace shardlm {

double init_normal(uint64_t seed, std::string_view name, uint64_t index) {
  return init_normal(init_normal_key(seed, name), index);
}

PhiloxKey init_normal_key(uint64_t seed, std::string_view name) {
  return key_from_u64(mix64(seed) ^ hash_name(name));
}

double init_normal(const PhiloxKey& key, uint64_t index) {
  const PhiloxCounter out =
      philox4x32({static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), 0, 0}, key);
  const double u1 = uniform_open0(out[0]);
  const double u2 = uniform_open0(out[1]);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

DropoutStream::DropoutStream(const DropoutKey& key)
    : key_(key_from_u64(
          mix64(key.seed ^ mix64((static_cast<uint64_t>(key.layer) << 8) | key.site) ^ 0xD0D0u))),
      step_(key.step),
      microbatch_(key.microbatch) {}

double dropout_uniform(const DropoutKey& key, uint64_t position) {
  return uniform_open0(DropoutStream(key).block(position / 4)[position % 4]);
}

}  // namespace shardlm
