// Always-on invariant checks. A failed check is a ShardLM bug, not a user error: it throws
// Error(kInternal) naming the file, line, condition and (for the binary forms) both values.
//
//   SHARDLM_CHECK(ptr != nullptr);
//   SHARDLM_CHECK_EQ(a.numel(), b.numel());
//   SHARDLM_REQUIRE(cond, ErrorKind::kInvalidArgument, "message " + detail);  // user-facing
#pragma once

#include <sstream>
#include <string>

#include "shardlm/base/error.h"

namespace shardlm::detail {

[[noreturn]] void check_failed(const char* file, int line, const std::string& what);

template <typename A, typename B>
[[noreturn]] void check_op_failed(const char* file, int line, const char* expr, const A& a,
                                  const B& b) {
  std::ostringstream os;
  os << expr << " (" << a << " vs " << b << ")";
  check_failed(file, line, os.str());
}

}  // namespace shardlm::detail

#define SHARDLM_CHECK(cond)                                                \
  do {                                                                     \
    if (!(cond)) ::shardlm::detail::check_failed(__FILE__, __LINE__, #cond); \
  } while (0)

#define SHARDLM_CHECK_OP(a, b, op)                                                         \
  do {                                                                                     \
    const auto& shardlm_a_ = (a);                                                          \
    const auto& shardlm_b_ = (b);                                                          \
    if (!(shardlm_a_ op shardlm_b_))                                                       \
      ::shardlm::detail::check_op_failed(__FILE__, __LINE__, #a " " #op " " #b, shardlm_a_, \
                                         shardlm_b_);                                      \
  } while (0)

#define SHARDLM_CHECK_EQ(a, b) SHARDLM_CHECK_OP(a, b, ==)
#define SHARDLM_CHECK_NE(a, b) SHARDLM_CHECK_OP(a, b, !=)
#define SHARDLM_CHECK_LT(a, b) SHARDLM_CHECK_OP(a, b, <)
#define SHARDLM_CHECK_LE(a, b) SHARDLM_CHECK_OP(a, b, <=)
#define SHARDLM_CHECK_GT(a, b) SHARDLM_CHECK_OP(a, b, >)
#define SHARDLM_CHECK_GE(a, b) SHARDLM_CHECK_OP(a, b, >=)

// A user-facing precondition: throws Error(kind, message) when cond is false.
#define SHARDLM_REQUIRE(cond, kind, message)                     \
  do {                                                           \
    if (!(cond)) throw ::shardlm::Error((kind), (message));      \
  } while (0)
