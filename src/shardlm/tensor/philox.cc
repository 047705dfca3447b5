#include "shardlm/tensor/philox.h"

#include "shardlm/tensor/normal_math.h"

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
  // normal_math: the same bits as the CUDA init kernel (this file has -ffp-contract=off).
  return normal_math::box_muller(uniform_open0(out[0]), uniform_open0(out[1]));
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
