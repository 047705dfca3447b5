#include "shardlm/ckpt/format.h"

#include <cstdio>

namespace shardlm::ckpt {

std::string iteration_dir_name(int64_t iteration) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "iter_%07lld", static_cast<long long>(iteration));
  return buf;
}

std::string rank_file_name(int rank) {
  char buf[40];
  std::snprintf(buf, sizeof(buf), "rank_%05d.safetensors", rank);
  return buf;
}

std::string rank_part_name(int rank) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "rank_%05d.json", rank);
  return buf;
}

}  // namespace shardlm::ckpt
