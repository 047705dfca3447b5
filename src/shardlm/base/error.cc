#include "shardlm/base/error.h"

namespace shardlm {

const char* error_kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kInvalidArgument: return "invalid argument";
    case ErrorKind::kInvalidConfig: return "invalid configuration";
    case ErrorKind::kIo: return "I/O error";
    case ErrorKind::kCorruptData: return "corrupt data";
    case ErrorKind::kOutOfMemory: return "out of memory";
    case ErrorKind::kUnsupported: return "unsupported";
    case ErrorKind::kTimeout: return "timeout";
    case ErrorKind::kInternal: return "internal error";
  }
  return "error";
}

}  // namespace shardlm
