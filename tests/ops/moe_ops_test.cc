// Tests of the mixture-of-experts ops on the CPU: the top-k router (both pre_softmax modes, k in
// {1, 2, 4}) against an fp64 reference written here, ties broken toward the lower expert, the
// router and aux-loss backwards against finite differences, the score sums, the three row
// gathers against references, the dispatch / combine composition of ops.h (forward and its
// backward by finite differences), zero-sized calls, and the errors for bad arguments.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "shardlm/ops/ops.h"
#include "tests/testing/op_checks.h"
#include "tests/testing/tensors.h"

namespace shardlm {
namespace {

using testing::clone;
using testing::convert;
using testing::dot;
using testing::from_vector;
using testing::random_ints;
using testing::random_tensor;
using testing::rel_error;
using testing::to_vector;

// ---- references (fp64) -------------------------------------------------------------------------

struct Routing {
  std::vector<double> indices;  // [N, k]
  std::vector<double> probs;    // [N, k]
};

// Per row: experts by descending logit, ties to the lower expert; probs as ops.h states.
Routing reference_router(const std::vector<double>& logits, int64_t N, int64_t E, int64_t k,
                         bool pre_softmax) {
  Routing r;
  for (int64_t n = 0; n < N; ++n) {
    const double* x = logits.data() + n * E;
    std::vector<int64_t> order(E);
    std::iota(order.begin(), order.end(), int64_t{0});
    std::stable_sort(order.begin(), order.end(), [x](int64_t a, int64_t b) { return x[a] > x[b]; });
    // Softmax over the selected k (top-k) or all E (pre-softmax), each from its largest logit.
    const int64_t over = pre_softmax ? E : k;
    double sum = 0;
    for (int64_t i = 0; i < over; ++i) sum += std::exp(x[order[i]] - x[order[0]]);
    for (int64_t i = 0; i < k; ++i) {
      r.indices.push_back(static_cast<double>(order[i]));
      r.probs.push_back(std::exp(x[order[i]] - x[order[0]]) / sum);
    }
  }
  return r;
}

std::vector<double> softmax_row(const double* x, int64_t E) {
  const double m = *std::max_element(x, x + E);
  std::vector<double> p(E);
  double sum = 0;
  for (int64_t e = 0; e < E; ++e) sum += p[e] = std::exp(x[e] - m);
  for (double& v : p) v /= sum;
  return p;
}

// sum_i dprobs[n, i] * probs[n, i] for the given indices: probs as the router's formula makes
// them from the logits (top-k: softmax over the listed logits; pre-softmax: over all E).
double router_loss(const std::vector<double>& logits, const std::vector<double>& indices,
                   const std::vector<double>& dprobs, int64_t N, int64_t E, int64_t k,
                   bool pre_softmax) {
  double loss = 0;
  for (int64_t n = 0; n < N; ++n) {
    const double* x = logits.data() + n * E;
    const std::vector<double> p = softmax_row(x, E);
    double listed = 0;
    for (int64_t i = 0; i < k; ++i) listed += std::exp(x[static_cast<int64_t>(indices[n * k + i])]);
    for (int64_t i = 0; i < k; ++i) {
      const auto e = static_cast<int64_t>(indices[n * k + i]);
      loss += dprobs[n * k + i] * (pre_softmax ? p[e] : std::exp(x[e]) / listed);
    }
  }
  return loss;
}

// out[n, :] = sum_i (weights ? weights[n, i] : 1) * in[slots[n, i], :].
std::vector<double> reference_gather_sum(const Tensor& in, const Tensor& slots,
                                         const Tensor* weights) {
  const std::vector<double> x = to_vector(in), s = to_vector(slots);
  const std::vector<double> w = weights ? to_vector(*weights) : std::vector<double>(s.size(), 1.0);
  const int64_t N = slots.size(0), k = slots.size(1), H = in.size(1);
  std::vector<double> out(N * H, 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < k; ++i)
      for (int64_t h = 0; h < H; ++h)
        out[n * H + h] += w[n * k + i] * x[static_cast<int64_t>(s[n * k + i]) * H + h];
  return out;
}

// Logits [N, E] whose rows are shuffled, well separated values (no ties, no near-ties): steps
// of 0.37 with a jitter of ~0.01.
OwnedTensor separated_logits(DType dtype, int64_t N, int64_t E, uint64_t seed) {
  const std::vector<double> rank = to_vector(testing::random_permutations(N, E, seed));
  const std::vector<double> jitter = to_vector(random_tensor(DType::kF64, {N, E}, seed + 1));
  std::vector<double> values(N * E);
  for (int64_t i = 0; i < N * E; ++i) values[i] = 0.37 * rank[i] - 1.1 + 0.01 * jitter[i];
  return from_vector(dtype, {N, E}, values);
}

// ---- router ----------------------------------------------------------------------------------

TEST(MoeRouter, ForwardMatchesReference) {
  DeviceContext ctx = DeviceContext::cpu();
  constexpr int64_t N = 9;
  for (const int64_t E : {8, 13}) {
    for (const DType dt : {DType::kF64, DType::kF32}) {
      const OwnedTensor logits = convert(random_tensor(DType::kF64, {N, E}, 100 + E), dt);
      for (const bool pre : {false, true}) {
        for (const int64_t k : {1, 2, 4}) {
          SCOPED_TRACE(std::string(dtype_name(dt)) + " E=" + std::to_string(E) +
                       " k=" + std::to_string(k) + (pre ? " pre-softmax" : " top-k"));
          OwnedTensor probs = random_tensor(dt, {N, k}, 1);  // assigned: prior values ignored
          OwnedTensor indices = random_ints({N, k}, 3, 2);
          ops::moe_topk_router_forward(ctx, probs, indices, logits, k, pre);
          const Routing want = reference_router(to_vector(logits), N, E, k, pre);
          EXPECT_EQ(to_vector(indices), want.indices);
          EXPECT_LT(rel_error(to_vector(probs), want.probs), dt == DType::kF64 ? 1e-15 : 1e-7);
          // fp32 probabilities for fp64 logits: the same values, rounded once.
          if (dt == DType::kF64) {
            OwnedTensor probs32 = OwnedTensor::zeros(DType::kF32, {N, k});
            ops::moe_topk_router_forward(ctx, probs32, indices, logits, k, pre);
            EXPECT_EQ(to_vector(probs32), to_vector(convert(probs, DType::kF32)));
          }
        }
      }
    }
  }
}

TEST(MoeRouter, TiesGoToTheLowerExpert) {
  DeviceContext ctx = DeviceContext::cpu();
  constexpr int64_t N = 3, E = 6, k = 4;
  const std::vector<double> values = {0.5,  2.0,  -1.0, 2.0,  2.0,  0.5,   // three tied maxima
                                      0.25, 0.25, 0.25, 0.25, 0.25, 0.25,  // all tied
                                      3.0,  1.0,  3.0,  1.0,  -2.0, 3.0};
  const std::vector<double> expected = {1, 3, 4, 0, 0, 1, 2, 3, 0, 2, 5, 1};
  const OwnedTensor logits = from_vector(DType::kF64, {N, E}, values);
  for (const bool pre : {false, true}) {
    SCOPED_TRACE(pre ? "pre-softmax" : "top-k");
    OwnedTensor probs = OwnedTensor::zeros(DType::kF64, {N, k});
    OwnedTensor indices = OwnedTensor::zeros(DType::kI32, {N, k});
    ops::moe_topk_router_forward(ctx, probs, indices, logits, k, pre);
    EXPECT_EQ(to_vector(indices), expected);
    EXPECT_LT(rel_error(to_vector(probs), reference_router(values, N, E, k, pre).probs), 1e-15);
    const std::vector<double> p = to_vector(probs);
    EXPECT_EQ(p[0], p[1]);  // equal logits, equal probabilities
    EXPECT_EQ(p[1], p[2]);
    EXPECT_EQ(p[4], p[7]);
    // Smaller k takes a prefix of the same order.
    for (const int64_t small : {1, 2}) {
      OwnedTensor probs_s = OwnedTensor::zeros(DType::kF64, {N, small});
      OwnedTensor indices_s = OwnedTensor::zeros(DType::kI32, {N, small});
      ops::moe_topk_router_forward(ctx, probs_s, indices_s, logits, small, pre);
      const std::vector<double> got = to_vector(indices_s);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t i = 0; i < small; ++i) EXPECT_EQ(got[n * small + i], expected[n * k + i]);
    }
  }
}

TEST(MoeRouter, BackwardMatchesFiniteDifferences) {
  DeviceContext ctx = DeviceContext::cpu();
  constexpr int64_t N = 5, E = 7;
  OwnedTensor logits = separated_logits(DType::kF64, N, E, 200);
  for (const bool pre : {false, true}) {
    for (const int64_t k : {1, 2, 4}) {
      SCOPED_TRACE(std::string(pre ? "pre-softmax" : "top-k") + " k=" + std::to_string(k));
      const OwnedTensor dprobs = random_tensor(DType::kF64, {N, k}, 201 + k);
      OwnedTensor probs = OwnedTensor::zeros(DType::kF64, {N, k});
      OwnedTensor indices = OwnedTensor::zeros(DType::kI32, {N, k});
      ops::moe_topk_router_forward(ctx, probs, indices, logits, k, pre);
      const std::vector<double> chosen = to_vector(indices);
      auto loss = [&] {
        ops::moe_topk_router_forward(ctx, probs, indices, logits, k, pre);
        EXPECT_EQ(to_vector(indices), chosen) << "a perturbation changed the selection";
        return dot(probs, dprobs);
      };
      OwnedTensor dlogits = random_tensor(DType::kF64, {N, E}, 202);  // assigned, not added to
      ops::moe_topk_router_backward(ctx, dlogits, dprobs, logits, indices, pre);
      if (!pre && k == 1) {  // probs == 1 whatever the logits: the gradient is exactly zero
        for (double v : to_vector(dlogits)) EXPECT_EQ(v, 0.0);
        continue;
      }
      testing::expect_gradient("dlogits", logits.view(), loss, dlogits);
      // Top-k: nothing flows to experts that were not selected.
      if (!pre) {
        const std::vector<double> g = to_vector(dlogits);
        for (int64_t n = 0; n < N; ++n)
          for (int64_t e = 0; e < E; ++e) {
            const auto first = chosen.begin() + n * k;
            if (std::find(first, first + k, static_cast<double>(e)) == first + k)
              EXPECT_EQ(g[n * E + e], 0.0) << n << ", " << e;
          }
      }
    }
  }
}

TEST(MoeRouter, BackwardOfGivenIndicesCountsRepeats) {
  // The gradient of the probabilities' formula for the indices passed, an expert listed twice
  // counting twice (indices forward would not produce, so the definition is tested directly).
  DeviceContext ctx = DeviceContext::cpu();
  constexpr int64_t N = 2, E = 5, k = 3;
  OwnedTensor logits = random_tensor(DType::kF64, {N, E}, 210);
  const std::vector<double> idx = {2, 2, 4, 0, 3, 0};
  const OwnedTensor indices = from_vector(DType::kI32, {N, k}, idx);
  const OwnedTensor dprobs = random_tensor(DType::kF64, {N, k}, 211);
  for (const bool pre : {false, true}) {
    SCOPED_TRACE(pre ? "pre-softmax" : "top-k");
    auto loss = [&] {
      return router_loss(to_vector(logits), idx, to_vector(dprobs), N, E, k, pre);
    };
    OwnedTensor dlogits = OwnedTensor::zeros(DType::kF64, {N, E});
    ops::moe_topk_router_backward(ctx, dlogits, dprobs, logits, indices, pre);
    testing::expect_gradient("dlogits", logits.view(), loss, dlogits);
  }
}

TEST(MoeRouter, Fp32BackwardMatchesFp64) {
  DeviceContext ctx = DeviceContext::cpu();
  constexpr int64_t N = 6, E = 9, k = 2;
  const OwnedTensor logits = separated_logits(DType::kF64, N, E, 220);
  const OwnedTensor logits32 = convert(logits, DType::kF32);
  const OwnedTensor dprobs = random_tensor(DType::kF32, {N, k}, 221);
  for (const bool pre : {false, true}) {
    OwnedTensor probs = OwnedTensor::zeros(DType::kF32, {N, k});
    OwnedTensor indices = OwnedTensor::zeros(DType::kI32, {N, k});
    ops::moe_topk_router_forward(ctx, probs, indices, logits32, k, pre);
    OwnedTensor d64 = OwnedTensor::zeros(DType::kF64, {N, E});
    OwnedTensor d32 = OwnedTensor::zeros(DType::kF32, {N, E});
    ops::moe_topk_router_backward(ctx, d64, convert(dprobs, DType::kF64),
                                  convert(logits32, DType::kF64), indices, pre);
    ops::moe_topk_router_backward(ctx, d32, dprobs, logits32, indices, pre);
    EXPECT_LT(rel_error(to_vector(d32), to_vector(d64)), 1e-7) << (pre ? "pre" : "top-k");
  }
}

// ---- auxiliary load-balancing loss -----------------------------------------------------------

TEST(MoeAuxLoss, ScoreSumsMatchReference) {
  DeviceContext ctx = DeviceContext::cpu();
  constexpr int64_t N = 11, E = 6;
  const OwnedTensor logits = random_tensor(DType::kF64, {N, E}, 300);
  const std::vector<double> x = to_vector(logits);
  std::vector<double> want(E, 0.0);
  for (int64_t n = 0; n < N; ++n) {
    const std::vector<double> p = softmax_row(x.data() + n * E, E);
    for (int64_t e = 0; e < E; ++e) want[e] += p[e];
  }
  OwnedTensor sums = random_tensor(DType::kF64, {E}, 301);  // assigned
  ops::moe_router_score_sums(ctx, sums, logits);
  EXPECT_LT(rel_error(to_vector(sums), want), 1e-15);
  OwnedTensor sums32 = random_tensor(DType::kF32, {E}, 302);
  ops::moe_router_score_sums(ctx, sums32, convert(logits, DType::kF32));
  EXPECT_LT(rel_error(to_vector(sums32), want), 1e-6);
}

TEST(MoeAuxLoss, BackwardMatchesFiniteDifferencesAndAccumulates) {
  DeviceContext ctx = DeviceContext::cpu();
  constexpr int64_t N = 6, E = 5;
  OwnedTensor logits = random_tensor(DType::kF64, {N, E}, 310);
  const OwnedTensor weights = random_tensor(DType::kF64, {E}, 311);
  OwnedTensor sums = OwnedTensor::zeros(DType::kF64, {E});
  auto loss = [&] {
    ops::moe_router_score_sums(ctx, sums, logits);
    return dot(sums, weights);
  };
  OwnedTensor grad = OwnedTensor::zeros(DType::kF64, {N, E});
  ops::moe_aux_loss_backward(ctx, grad, logits, weights);
  testing::expect_gradient("dlogits", logits.view(), loss, grad);

  const OwnedTensor prior = random_tensor(DType::kF64, {N, E}, 312);
  OwnedTensor acc = clone(prior);
  ops::moe_aux_loss_backward(ctx, acc, logits, weights);
  std::vector<double> want = to_vector(prior);
  const std::vector<double> g = to_vector(grad);
  for (size_t i = 0; i < want.size(); ++i) want[i] += g[i];
  EXPECT_LT(rel_error(to_vector(acc), want), 1e-15);

  // fp32 logits and weights agree with fp64.
  OwnedTensor acc32 = convert(prior, DType::kF32);
  ops::moe_aux_loss_backward(ctx, acc32, convert(logits, DType::kF32),
                             convert(weights, DType::kF32));
  EXPECT_LT(rel_error(to_vector(acc32), want), 1e-6);
}

// The router z-loss: logsumexp per row against the definition, the backward by finite
// differences of scale * sum_n lse_n^2, accumulated onto what dlogits held; fp32 agrees.
TEST(MoeZLoss, LogsumexpAndBackwardMatchReferenceAndFiniteDifferences) {
  DeviceContext ctx = DeviceContext::cpu();
  constexpr int64_t N = 6, E = 5;
  constexpr double kScale = 0.3;
  OwnedTensor logits = random_tensor(DType::kF64, {N, E}, 320, 3.0);
  OwnedTensor lse = OwnedTensor::zeros(DType::kF64, {N});
  ops::moe_router_logsumexp(ctx, lse, logits);
  const std::vector<double> x = to_vector(logits);
  for (int64_t n = 0; n < N; ++n) {
    double s = 0;
    for (int64_t e = 0; e < E; ++e) s += std::exp(x[n * E + e]);
    EXPECT_NEAR(to_vector(lse)[n], std::log(s), 1e-13);
  }
  auto loss = [&] {
    ops::moe_router_logsumexp(ctx, lse, logits);
    double total = 0;
    for (double l : to_vector(lse)) total += kScale * l * l;
    return total;
  };
  const OwnedTensor prior = random_tensor(DType::kF64, {N, E}, 321);
  OwnedTensor grad = OwnedTensor::zeros(DType::kF64, {N, E});
  ops::moe_z_loss_backward(ctx, grad, logits, kScale);
  testing::expect_gradient("dlogits", logits.view(), loss, grad);
  OwnedTensor acc = clone(prior);
  ops::moe_z_loss_backward(ctx, acc, logits, kScale);
  std::vector<double> want = to_vector(prior);
  for (size_t i = 0; i < want.size(); ++i) want[i] += to_vector(grad)[i];
  EXPECT_LT(rel_error(to_vector(acc), want), 1e-15);
  OwnedTensor acc32 = convert(prior, DType::kF32);
  ops::moe_z_loss_backward(ctx, acc32, convert(logits, DType::kF32), kScale);
  EXPECT_LT(rel_error(to_vector(acc32), want), 1e-6);
  OwnedTensor lse32 = OwnedTensor::zeros(DType::kF32, {N});
  ops::moe_router_logsumexp(ctx, lse32, convert(logits, DType::kF32));
  EXPECT_LT(rel_error(to_vector(lse32), to_vector(lse)), 1e-6);
}

// ---- token dispatch / combine ----------------------------------------------------------------

TEST(MoeGather, GatherRowsMatchesReference) {
  DeviceContext ctx = DeviceContext::cpu();
  constexpr int64_t N = 6, M = 10, H = 5;
  const OwnedTensor index = random_ints({M}, N, 400);  // rows repeat
  for (const DType dt : {DType::kF64, DType::kF32}) {
    SCOPED_TRACE(dtype_name(dt));
    const OwnedTensor in = random_tensor(dt, {N, H}, 401);
    const OwnedTensor scale =
        random_tensor(dt == DType::kF64 ? DType::kF64 : DType::kF32, {M}, 402);
    const std::vector<double> x = to_vector(in), s = to_vector(scale), idx = to_vector(index);
    for (const bool scaled : {false, true}) {
      OwnedTensor out = random_tensor(dt, {M, H}, 403);  // assigned
      ops::gather_rows(ctx, out, in, index, scaled ? scale.view() : Tensor());
      const std::vector<double> got = to_vector(out);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t h = 0; h < H; ++h) {
          const double v = x[static_cast<int64_t>(idx[m]) * H + h];
          // One rounding of the exact product: fp32 gives float(v) * float(s) bit for bit.
          const double want =
              !scaled ? v
              : dt == DType::kF32
                  ? static_cast<double>(static_cast<float>(v) * static_cast<float>(s[m]))
                  : v * s[m];
          ASSERT_EQ(got[m * H + h], want) << m << ", " << h << (scaled ? " scaled" : "");
        }
    }
  }
}

TEST(MoeGather, GatherSumRowsMatchesReference) {
  DeviceContext ctx = DeviceContext::cpu();
  constexpr int64_t N = 7, M = 9, H = 6;
  for (const int64_t k : {1, 2, 4}) {
    const OwnedTensor slots = random_ints({N, k}, M, 410 + k);
    for (const DType dt : {DType::kF64, DType::kF32}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " k=" + std::to_string(k));
      const OwnedTensor in = random_tensor(dt, {M, H}, 420);
      const OwnedTensor weights = random_tensor(dt, {N, k}, 421);
      for (const bool weighted : {false, true}) {
        OwnedTensor out = random_tensor(dt, {N, H}, 422);  // assigned
        ops::gather_sum_rows(ctx, out, in, slots, weighted ? weights.view() : Tensor());
        EXPECT_LT(rel_error(to_vector(out),
                            reference_gather_sum(in, slots, weighted ? &weights.view() : nullptr)),
                  dt == DType::kF64 ? 1e-15 : 1e-7)
            << (weighted ? "weighted" : "unweighted");
      }
    }
  }
}

TEST(MoeGather, GatheredRowDotIsTheWeightGradient) {
  DeviceContext ctx = DeviceContext::cpu();
  constexpr int64_t N = 5, M = 8, H = 7;
  for (const int64_t k : {1, 2, 4}) {
    SCOPED_TRACE("k=" + std::to_string(k));
    const OwnedTensor slots = random_ints({N, k}, M, 430 + k);
    const OwnedTensor in = random_tensor(DType::kF64, {M, H}, 431);
    const OwnedTensor dout = random_tensor(DType::kF64, {N, H}, 432);
    OwnedTensor weights = random_tensor(DType::kF64, {N, k}, 433);
    OwnedTensor dweights = random_tensor(DType::kF64, {N, k}, 434);  // assigned
    ops::gathered_row_dot(ctx, dweights, dout, in, slots);
    // Reference: the row dot products.
    const std::vector<double> x = to_vector(in), d = to_vector(dout), s = to_vector(slots);
    std::vector<double> want(N * k, 0.0);
    for (int64_t q = 0; q < N * k; ++q)
      for (int64_t h = 0; h < H; ++h)
        want[q] += d[(q / k) * H + h] * x[static_cast<int64_t>(s[q]) * H + h];
    EXPECT_LT(rel_error(to_vector(dweights), want), 1e-15);
    // ... which are the gradient of dot(gather_sum_rows(in, slots, weights), dout).
    OwnedTensor out = OwnedTensor::zeros(DType::kF64, {N, H});
    auto loss = [&] {
      ops::gather_sum_rows(ctx, out, in, slots, weights);
      return dot(out, dout);
    };
    testing::expect_gradient("dweights", weights.view(), loss, dweights);
    // fp32 activations, fp32 dweights.
    OwnedTensor dweights32 = OwnedTensor::zeros(DType::kF32, {N, k});
    ops::gathered_row_dot(ctx, dweights32, convert(dout, DType::kF32), convert(in, DType::kF32),
                          slots);
    EXPECT_LT(rel_error(to_vector(dweights32), want), 1e-6);
  }
}

// The composition ops.h documents: permute, experts, combine, and the backward of each step.
TEST(MoeGather, DispatchAndCombineComposeWithTheirBackwards) {
  DeviceContext ctx = DeviceContext::cpu();
  constexpr int64_t N = 6, E = 4, k = 2, H = 5, M = N * k;
  const OwnedTensor logits = separated_logits(DType::kF64, N, E, 500);
  OwnedTensor probs = OwnedTensor::zeros(DType::kF64, {N, k});
  OwnedTensor indices = OwnedTensor::zeros(DType::kI32, {N, k});
  ops::moe_topk_router_forward(ctx, probs, indices, logits, k, false);
  // Order the (token, choice) pairs by expert, then token.
  const std::vector<double> idx = to_vector(indices), p = to_vector(probs);
  std::vector<int64_t> pairs(M);
  std::iota(pairs.begin(), pairs.end(), int64_t{0});
  std::stable_sort(pairs.begin(), pairs.end(),
                   [&](int64_t a, int64_t b) { return idx[a] < idx[b]; });
  std::vector<double> token_of(M), weight_of(M), slots(M), expert_of(M);
  for (int64_t m = 0; m < M; ++m) {
    token_of[m] = static_cast<double>(pairs[m] / k);
    weight_of[m] = p[pairs[m]];
    expert_of[m] = idx[pairs[m]];
    slots[pairs[m]] = static_cast<double>(m);
  }
  const OwnedTensor token_t = from_vector(DType::kI32, {M}, token_of);
  const OwnedTensor slots_t = from_vector(DType::kI32, {N, k}, slots);
  const OwnedTensor weight_t = from_vector(DType::kF64, {M}, weight_of);

  // Forward: expert e multiplies its rows by (e + 1); y[n] = sum_i p[n, i] (e_i + 1) x[n].
  OwnedTensor x = random_tensor(DType::kF64, {N, H}, 501);
  OwnedTensor x_perm = OwnedTensor::zeros(DType::kF64, {M, H});
  ops::gather_rows(ctx, x_perm, x, token_t, Tensor());
  OwnedTensor expert_out = clone(x_perm);
  double* eo = expert_out.view().data<double>();
  for (int64_t m = 0; m < M; ++m)
    for (int64_t h = 0; h < H; ++h) eo[m * H + h] *= expert_of[m] + 1;
  OwnedTensor y = OwnedTensor::zeros(DType::kF64, {N, H});
  ops::gather_sum_rows(ctx, y, expert_out, slots_t, probs);
  const std::vector<double> xv = to_vector(x);
  std::vector<double> want(N * H, 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < k; ++i)
      for (int64_t h = 0; h < H; ++h)
        want[n * H + h] += p[n * k + i] * (idx[n * k + i] + 1) * xv[n * H + h];
  EXPECT_LT(rel_error(to_vector(y), want), 1e-15);

  // Combine backward: d_expert_out and dprobs of dot(y, dy).
  const OwnedTensor dy = random_tensor(DType::kF64, {N, H}, 502);
  auto combine_loss = [&] {
    ops::gather_sum_rows(ctx, y, expert_out, slots_t, probs);
    return dot(y, dy);
  };
  OwnedTensor d_expert_out = OwnedTensor::zeros(DType::kF64, {M, H});
  ops::gather_rows(ctx, d_expert_out, dy, token_t, weight_t);
  testing::expect_gradient("d_expert_out", expert_out.view(), combine_loss, d_expert_out);
  OwnedTensor dprobs = OwnedTensor::zeros(DType::kF64, {N, k});
  ops::gathered_row_dot(ctx, dprobs, dy, expert_out, slots_t);
  testing::expect_gradient("dprobs", probs.view(), combine_loss, dprobs);

  // Permute backward: dx of dot(x_perm, d_x_perm).
  const OwnedTensor d_x_perm = random_tensor(DType::kF64, {M, H}, 503);
  auto permute_loss = [&] {
    ops::gather_rows(ctx, x_perm, x, token_t, Tensor());
    return dot(x_perm, d_x_perm);
  };
  OwnedTensor dx = OwnedTensor::zeros(DType::kF64, {N, H});
  ops::gather_sum_rows(ctx, dx, d_x_perm, slots_t, Tensor());
  testing::expect_gradient("dx", x.view(), permute_loss, dx);
}

// ---- edge cases and errors -------------------------------------------------------------------

TEST(MoeOps, ZeroRowsAreNoOps) {
  DeviceContext ctx = DeviceContext::cpu();
  constexpr int64_t E = 4, k = 2, H = 3;
  const OwnedTensor logits = OwnedTensor::zeros(DType::kF32, {0, E});
  OwnedTensor probs = OwnedTensor::zeros(DType::kF32, {0, k});
  OwnedTensor indices = OwnedTensor::zeros(DType::kI32, {0, k});
  ops::moe_topk_router_forward(ctx, probs, indices, logits, k, true);
  OwnedTensor dlogits = OwnedTensor::zeros(DType::kF32, {0, E});
  ops::moe_topk_router_backward(ctx, dlogits, probs, logits, indices, false);
  OwnedTensor sums = random_tensor(DType::kF32, {E}, 600);
  ops::moe_router_score_sums(ctx, sums, logits);
  EXPECT_EQ(to_vector(sums), std::vector<double>(E, 0.0));  // the empty sum, still assigned
  ops::moe_aux_loss_backward(ctx, dlogits, logits, sums);

  const OwnedTensor in = random_tensor(DType::kF32, {5, H}, 601);
  OwnedTensor none = OwnedTensor::zeros(DType::kF32, {0, H});
  ops::gather_rows(ctx, none, in, OwnedTensor::zeros(DType::kI32, {0}), Tensor());
  ops::gather_sum_rows(ctx, none, in, OwnedTensor::zeros(DType::kI32, {0, k}), Tensor());
  OwnedTensor no_weights = OwnedTensor::zeros(DType::kF32, {0, k});
  ops::gathered_row_dot(ctx, no_weights, none, in, OwnedTensor::zeros(DType::kI32, {0, k}));
  // No rows to gather from, none asked for.
  OwnedTensor out = OwnedTensor::zeros(DType::kF32, {0, H});
  ops::gather_rows(ctx, out, none, OwnedTensor::zeros(DType::kI32, {0}), Tensor());
}

TEST(MoeOps, RouterRejectsBadArguments) {
  DeviceContext ctx = DeviceContext::cpu();
  constexpr int64_t N = 5, E = 8, k = 2;
  const OwnedTensor logits = random_tensor(DType::kF32, {N, E}, 700);
  OwnedTensor probs = OwnedTensor::zeros(DType::kF32, {N, k});
  OwnedTensor indices = OwnedTensor::zeros(DType::kI32, {N, k});
  const char* fwd = "moe_topk_router_forward: ";
  for (const int64_t bad_k : {0, 9}) {
    EXPECT_SHARDLM_ERROR(ops::moe_topk_router_forward(ctx, probs, indices, logits, bad_k, false),
                         ErrorKind::kInvalidArgument,
                         std::string(fwd) + "k = " + std::to_string(bad_k) +
                             " experts per token must be in [1, E] = [1, 8]");
  }
  OwnedTensor probs3 = OwnedTensor::zeros(DType::kF32, {N, 3});
  EXPECT_SHARDLM_ERROR(ops::moe_topk_router_forward(ctx, probs3, indices, logits, k, false),
                       ErrorKind::kInvalidArgument, "probs has shape [5, 3], expected [5, 2]");
  OwnedTensor probs64 = OwnedTensor::zeros(DType::kF64, {N, k});
  EXPECT_SHARDLM_ERROR(
      ops::moe_topk_router_forward(ctx, probs64, indices, logits, k, false),
      ErrorKind::kInvalidArgument,
      "probs is fp64 for fp32 logits; it must be fp32 (fp64 only with fp64 logits)");
  OwnedTensor float_indices = OwnedTensor::zeros(DType::kF32, {N, k});
  EXPECT_SHARDLM_ERROR(ops::moe_topk_router_forward(ctx, probs, float_indices, logits, k, false),
                       ErrorKind::kInvalidArgument, "indices must be int32, got fp32");
  const OwnedTensor logits3 = random_tensor(DType::kF32, {1, N, E}, 701);
  EXPECT_SHARDLM_ERROR(ops::moe_topk_router_forward(ctx, probs, indices, logits3, k, false),
                       ErrorKind::kInvalidArgument, "logits must be [N, E] with E >= 1 experts");
  EXPECT_SHARDLM_ERROR(
      ops::moe_topk_router_forward(ctx, probs, indices, convert(logits, DType::kBF16), k, false),
      ErrorKind::kUnsupported, "bf16");

  // Backward: shapes, dtypes, and index values (data: checked by the backend, nothing written).
  const OwnedTensor dprobs = random_tensor(DType::kF32, {N, k}, 702);
  OwnedTensor dlogits = random_tensor(DType::kF32, {N, E}, 703);
  const std::vector<double> before = to_vector(dlogits);
  const char* bwd = "moe_topk_router_backward: ";
  indices.view().data<int32_t>()[2] = static_cast<int32_t>(E);
  EXPECT_SHARDLM_ERROR(
      ops::moe_topk_router_backward(ctx, dlogits, dprobs, logits, indices, true),
      ErrorKind::kInvalidArgument,
      std::string(bwd) + "indices[1, 0] = 8 is outside [0, 8), the experts of logits");
  EXPECT_EQ(to_vector(dlogits), before);
  indices.view().data<int32_t>()[2] = 0;
  OwnedTensor dlogits64 = OwnedTensor::zeros(DType::kF64, {N, E});
  EXPECT_SHARDLM_ERROR(ops::moe_topk_router_backward(ctx, dlogits64, dprobs, logits, indices, true),
                       ErrorKind::kInvalidArgument, "dlogits is fp64 but logits is fp32");
  OwnedTensor short_indices = OwnedTensor::zeros(DType::kI32, {N - 1, k});
  EXPECT_SHARDLM_ERROR(
      ops::moe_topk_router_backward(ctx, dlogits, dprobs, logits, short_indices, true),
      ErrorKind::kInvalidArgument, "indices must be [N, k] with N = 5 rows like logits [5, 8]");
  const OwnedTensor dprobs3 = random_tensor(DType::kF32, {N, 3}, 704);
  EXPECT_SHARDLM_ERROR(ops::moe_topk_router_backward(ctx, dlogits, dprobs3, logits, indices, true),
                       ErrorKind::kInvalidArgument, "dprobs has shape [5, 3], expected [5, 2]");

  // Aux loss.
  OwnedTensor sums = OwnedTensor::zeros(DType::kF32, {E + 1});
  EXPECT_SHARDLM_ERROR(ops::moe_router_score_sums(ctx, sums, logits), ErrorKind::kInvalidArgument,
                       "moe_router_score_sums: sums has shape [9], expected [8]");
  const OwnedTensor weights16 = OwnedTensor::zeros(DType::kF16, {E});
  EXPECT_SHARDLM_ERROR(ops::moe_aux_loss_backward(ctx, dlogits, logits, weights16),
                       ErrorKind::kInvalidArgument, "moe_aux_loss_backward: weights is fp16");
  OwnedTensor dlogits_t = OwnedTensor::zeros(DType::kF32, {E, N});
  EXPECT_SHARDLM_ERROR(
      ops::moe_aux_loss_backward(ctx, dlogits_t, logits, OwnedTensor::zeros(DType::kF32, {E})),
      ErrorKind::kInvalidArgument, "dlogits has shape [8, 5], expected [5, 8]");
}

TEST(MoeOps, GathersRejectBadArguments) {
  DeviceContext ctx = DeviceContext::cpu();
  constexpr int64_t N = 6, M = 4, H = 3, k = 2;
  const OwnedTensor in = random_tensor(DType::kF32, {N, H}, 710);
  OwnedTensor index = random_ints({M}, N, 711);
  OwnedTensor out = random_tensor(DType::kF32, {M, H}, 712);
  const std::vector<double> before = to_vector(out);
  for (const int32_t bad : {static_cast<int32_t>(N), -1}) {
    index.view().data<int32_t>()[3] = bad;
    EXPECT_SHARDLM_ERROR(ops::gather_rows(ctx, out, in, index, Tensor()),
                         ErrorKind::kInvalidArgument,
                         "gather_rows: index[3] = " + std::to_string(bad) +
                             " is outside [0, 6), the rows of in [6, 3]");
    EXPECT_EQ(to_vector(out), before);  // refused before writing
  }
  index.view().data<int32_t>()[3] = 0;
  EXPECT_SHARDLM_ERROR(
      ops::gather_rows(ctx, out, in, index, OwnedTensor::zeros(DType::kF32, {M + 1})),
      ErrorKind::kInvalidArgument, "scale has shape [5], expected [4]");
  EXPECT_SHARDLM_ERROR(ops::gather_rows(ctx, out, in, index, OwnedTensor::zeros(DType::kF64, {M})),
                       ErrorKind::kInvalidArgument, "scale is fp64 for fp32 in");
  OwnedTensor wide = OwnedTensor::zeros(DType::kF32, {M, H + 1});
  EXPECT_SHARDLM_ERROR(ops::gather_rows(ctx, wide, in, index, Tensor()),
                       ErrorKind::kInvalidArgument, "out has shape [4, 4], expected [4, 3]");
  OwnedTensor table = random_tensor(DType::kF32, {N, H}, 713);
  Tensor overlap = table.view().slice(0, M);  // rows 0..M-1 of the table gathered from itself
  EXPECT_SHARDLM_ERROR(ops::gather_rows(ctx, overlap, table, index, Tensor()),
                       ErrorKind::kInvalidArgument, "gather_rows: out overlaps in");
  EXPECT_SHARDLM_ERROR(
      ops::gather_rows(ctx, out, in, OwnedTensor::zeros(DType::kI32, {M, 1}), Tensor()),
      ErrorKind::kInvalidArgument, "index must be [M]");

  OwnedTensor slots = random_ints({M, k}, N, 714);
  OwnedTensor sum_out = OwnedTensor::zeros(DType::kF32, {M, H});
  slots.view().data<int32_t>()[5] = static_cast<int32_t>(N);
  EXPECT_SHARDLM_ERROR(ops::gather_sum_rows(ctx, sum_out, in, slots, Tensor()),
                       ErrorKind::kInvalidArgument,
                       "gather_sum_rows: slots[2, 1] = 6 is outside [0, 6), the rows of in [6, 3]");
  OwnedTensor dweights = OwnedTensor::zeros(DType::kF32, {M, k});
  EXPECT_SHARDLM_ERROR(ops::gathered_row_dot(ctx, dweights, sum_out, in, slots),
                       ErrorKind::kInvalidArgument, "gathered_row_dot: slots[2, 1] = 6");
  slots.view().data<int32_t>()[5] = 0;
  EXPECT_SHARDLM_ERROR(
      ops::gather_sum_rows(ctx, sum_out, in, slots, OwnedTensor::zeros(DType::kF32, {k, M})),
      ErrorKind::kInvalidArgument, "weights has shape [2, 4], expected [4, 2]");
  EXPECT_SHARDLM_ERROR(
      ops::gather_sum_rows(ctx, sum_out, in, OwnedTensor::zeros(DType::kF32, {M, k}), Tensor()),
      ErrorKind::kInvalidArgument, "slots must be int32");
  EXPECT_SHARDLM_ERROR(
      ops::gather_sum_rows(ctx, sum_out, convert(in, DType::kF64), slots, Tensor()),
      ErrorKind::kInvalidArgument, "out is fp32 but in is fp64");
  OwnedTensor dweights64 = OwnedTensor::zeros(DType::kF64, {M, k});
  EXPECT_SHARDLM_ERROR(
      ops::gathered_row_dot(ctx, dweights64, sum_out, in, slots), ErrorKind::kInvalidArgument,
      "dweights is fp64 for fp32 dout; it must be fp32 (fp64 only with fp64 dout)");
  OwnedTensor long_dout = OwnedTensor::zeros(DType::kF32, {M + 1, H});
  EXPECT_SHARDLM_ERROR(ops::gathered_row_dot(ctx, dweights, long_dout, in, slots),
                       ErrorKind::kInvalidArgument, "dout has shape [5, 3], expected [4, 3]");
}

}  // namespace
}  // namespace shardlm
