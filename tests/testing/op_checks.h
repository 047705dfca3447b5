// Test helpers for op tests: expecting a shardlm::Error of a given kind, and checking an
// analytic gradient against central finite differences over a whole tensor.
//
//   EXPECT_SHARDLM_ERROR(ops::fill(ctx, bad, 0), ErrorKind::kInvalidArgument, "fill:");
//   expect_gradient("dwte", wte.view(), loss, dwte.view());   // wte fp64, loss() -> double
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "shardlm/base/error.h"
#include "tests/testing/tensors.h"

// Expects `statement` to throw shardlm::Error of `expected_kind` whose message contains `substr`.
#define EXPECT_SHARDLM_ERROR(statement, expected_kind, substr)                        \
  do {                                                                                \
    bool shardlm_thrown_ = false;                                                     \
    try {                                                                             \
      statement;                                                                      \
    } catch (const ::shardlm::Error& e) {                                             \
      shardlm_thrown_ = true;                                                         \
      EXPECT_EQ(e.kind(), (expected_kind)) << "message: " << e.what();                \
      EXPECT_NE(std::string(e.what()).find(substr), std::string::npos)                \
          << "message \"" << e.what() << "\" lacks \"" << (substr) << "\"";           \
    }                                                                                 \
    EXPECT_TRUE(shardlm_thrown_) << #statement " did not throw shardlm::Error("       \
                                 << ::shardlm::error_kind_name(expected_kind) << ")"; \
  } while (0)

namespace shardlm::testing {

// Compares `analytic` (the op's gradient of loss() w.r.t. x) with central differences of
// loss() over every element of x (fp64; perturbed in place and restored).
inline void expect_gradient(const std::string& what, Tensor x, const std::function<double()>& loss,
                            const Tensor& analytic, double tol = 1e-7, double h = 1e-6) {
  const std::vector<double> fd = finite_difference(x, loss, h);
  const std::vector<double> an = to_vector(analytic);
  double norm = 0;
  for (double v : fd) norm += v * v;
  EXPECT_GT(norm, 0.0) << what << ": finite-difference gradient is all zero; the test is vacuous";
  EXPECT_LT(rel_error(an, fd), tol) << what << ": analytic vs finite-difference gradient";
}

}  // namespace shardlm::testing
