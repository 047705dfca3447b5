// shardlm::Error — the one exception type for user and environment errors.
//
// Contract: thrown below main() for anything a user can fix (bad flag, bad shape, unreadable
// file, corrupt data, out of memory). The message says what is wrong, where, and how to fix it.
// The CLI catches it at the top and exits with code 2 (config/usage) or 1 (runtime).
// Internal invariants use SHARDLM_CHECK (check.h), which throws ErrorKind::kInternal.
//
//   throw Error(ErrorKind::kInvalidConfig, "--hidden-size 100 is not divisible by ...");
#pragma once

#include <stdexcept>
#include <string>

namespace shardlm {

enum class ErrorKind {
  kInvalidArgument,  // wrong shape/dtype/value passed to an API
  kInvalidConfig,    // flags or config file inconsistent (CLI exit code 2)
  kIo,               // file missing/unreadable/unwritable
  kCorruptData,      // file readable but its contents are wrong
  kOutOfMemory,      // allocation failed; message says needed vs available
  kUnsupported,      // valid request this build cannot do (e.g. CUDA op without CUDA)
  kTimeout,          // a collective or wait ran past its deadline
  kInternal,         // broken invariant: a bug in ShardLM
};

const char* error_kind_name(ErrorKind kind);

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message)
      : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

}  // namespace shardlm
