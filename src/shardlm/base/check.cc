#include "shardlm/base/check.h"

namespace shardlm::detail {

void check_failed(const char* file, int line, const std::string& what) {
  std::ostringstream os;
  os << "internal check failed at " << file << ":" << line << ": " << what
     << " (this is a ShardLM bug; please report it with the command line)";
  throw Error(ErrorKind::kInternal, os.str());
}

}  // namespace shardlm::detail
