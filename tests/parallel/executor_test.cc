// Pipeline executor end to end: ranks as threads (ThreadWorld), a toy model of S = V·P dense
// layers y = tanh(W_s x) on a [R, D] activation per micro-batch with a squared-error loss on
// the last virtual stage. The pipelined run's losses and weight gradients must equal a serial
// run of the same layers within 1e-12 (fp64), for P ∈ {2, 4}, V ∈ {1, 2}, several M and every
// schedule that applies.
#include <gtest/gtest.h>

#include <cmath>
#include <mutex>
#include <random>
#include <vector>

#include "shardlm/parallel/executor.h"
#include "shardlm/parallel/p2p.h"
#include "shardlm/parallel/schedule_registry.h"
#include "tests/dist/rank_threads.h"

namespace shardlm::parallel {
namespace {

constexpr int kRows = 3;  // R: rows of the activation (a micro-batch of 3 tokens)
constexpr int kDim = 4;   // D

// The toy model: S layers of D×D weights, M micro-batches of inputs and targets.
struct ToyModel {
  int S, M;
  std::vector<std::vector<double>> W;        // [S][D·D], row-major W[i][j]
  std::vector<std::vector<double>> x, t;     // [M][R·D] inputs, targets

  ToyModel(int S_, int M_, uint64_t seed) : S(S_), M(M_) {
    std::mt19937_64 g(seed);
    std::normal_distribution<double> n(0.0, 1.0);
    W.assign(S, std::vector<double>(kDim * kDim));
    for (auto& w : W) {
      for (double& v : w) v = n(g) * 0.8 / std::sqrt(double(kDim));
    }
    x.assign(M, std::vector<double>(kRows * kDim));
    t.assign(M, std::vector<double>(kRows * kDim));
    for (int m = 0; m < M; ++m) {
      for (double& v : x[m]) v = n(g);
      for (double& v : t[m]) v = 0.5 * n(g);
    }
  }
};

// y = tanh(W x) per row.
void layer_forward(const std::vector<double>& W, const double* x, double* y) {
  for (int r = 0; r < kRows; ++r) {
    for (int i = 0; i < kDim; ++i) {
      double z = 0;
      for (int j = 0; j < kDim; ++j) z += W[i * kDim + j] * x[r * kDim + j];
      y[r * kDim + i] = std::tanh(z);
    }
  }
}

// dW += dzᵀ x, dx = dz W with dz = dy ⊙ (1 − y²); dx may be null.
void layer_backward(const std::vector<double>& W, const double* x, const double* y,
                    const double* dy, std::vector<double>& dW, double* dx) {
  for (int r = 0; r < kRows; ++r) {
    double dz[kDim];
    for (int i = 0; i < kDim; ++i) dz[i] = dy[r * kDim + i] * (1.0 - y[r * kDim + i] * y[r * kDim + i]);
    for (int i = 0; i < kDim; ++i) {
      for (int j = 0; j < kDim; ++j) dW[i * kDim + j] += dz[i] * x[r * kDim + j];
    }
    if (dx) {
      for (int j = 0; j < kDim; ++j) {
        double s = 0;
        for (int i = 0; i < kDim; ++i) s += W[i * kDim + j] * dz[i];
        dx[r * kDim + j] = s;
      }
    }
  }
}

double loss_and_grad(const double* y, const double* t, double* dy) {
  double l = 0;
  for (int k = 0; k < kRows * kDim; ++k) {
    const double d = y[k] - t[k];
    l += 0.5 * d * d;
    if (dy) dy[k] = d;
  }
  return l;
}

struct SerialResult {
  std::vector<double> losses;                 // [M]
  std::vector<std::vector<double>> grads;     // [S][D·D]
};

SerialResult run_serial(const ToyModel& model) {
  SerialResult out;
  out.losses.resize(model.M);
  out.grads.assign(model.S, std::vector<double>(kDim * kDim, 0.0));
  const int n = kRows * kDim;
  for (int m = 0; m < model.M; ++m) {
    std::vector<std::vector<double>> acts(model.S + 1, std::vector<double>(n));
    acts[0] = model.x[m];
    for (int s = 0; s < model.S; ++s) layer_forward(model.W[s], acts[s].data(), acts[s + 1].data());
    std::vector<double> dy(n), dx(n);
    out.losses[m] = loss_and_grad(acts[model.S].data(), model.t[m].data(), dy.data());
    for (int s = model.S - 1; s >= 0; --s) {
      layer_backward(model.W[s], acts[s].data(), acts[s + 1].data(), dy.data(), out.grads[s],
                     dx.data());
      dy = dx;
    }
  }
  return out;
}

// One rank's chunks of the toy model: chunk c is virtual stage s = c·P + rank.
class ToyStage final : public PipelineStage {
 public:
  ToyStage(const ToyModel& model, int rank, int P, int V)
      : model_(model), rank_(rank), P_(P), V_(V),
        grads_(V, std::vector<double>(kDim * kDim, 0.0)), losses_(model.M, 0.0) {}

  BoundarySpec input_spec(int) const override { return {DType::kF64, Shape{kRows, kDim}}; }
  BoundarySpec output_spec(int) const override { return {DType::kF64, Shape{kRows, kDim}}; }

  void forward(int c, int m, const Tensor& input, const Tensor& output) override {
    const int s = c * P_ + rank_;
    const bool first = s == 0, last = s == model_.S - 1;
    EXPECT_EQ(input.defined(), !first) << "s=" << s;
    EXPECT_EQ(output.defined(), !last) << "s=" << s;
    Saved& sv = saved_[{c, m}];
    // Keep a view of the input: the executor promises it lives until backward(c, m).
    sv.x = first ? model_.x[m].data() : input.data<double>();
    sv.y.resize(kRows * kDim);
    layer_forward(model_.W[s], sv.x, sv.y.data());
    if (last) {
      losses_[m] = loss_and_grad(sv.y.data(), model_.t[m].data(), nullptr);
    } else {
      std::copy(sv.y.begin(), sv.y.end(), output.data<double>());
    }
  }

  void backward(int c, int m, const Tensor& output_grad, const Tensor& input_grad) override {
    const int s = c * P_ + rank_;
    const bool first = s == 0, last = s == model_.S - 1;
    EXPECT_EQ(output_grad.defined(), !last) << "s=" << s;
    EXPECT_EQ(input_grad.defined(), !first) << "s=" << s;
    auto it = saved_.find({c, m});
    ASSERT_NE(it, saved_.end()) << "backward before forward";
    const Saved& sv = it->second;
    std::vector<double> dy(kRows * kDim);
    if (last) {
      loss_and_grad(sv.y.data(), model_.t[m].data(), dy.data());
    } else {
      std::copy(output_grad.data<double>(), output_grad.data<double>() + dy.size(), dy.begin());
    }
    layer_backward(model_.W[s], sv.x, sv.y.data(), dy.data(), grads_[c],
                   first ? nullptr : input_grad.data<double>());
    saved_.erase(it);
  }

  const std::vector<std::vector<double>>& grads() const { return grads_; }
  const std::vector<double>& losses() const { return losses_; }

 private:
  struct Saved {
    const double* x = nullptr;
    std::vector<double> y;
  };
  const ToyModel& model_;
  int rank_, P_, V_;
  std::vector<std::vector<double>> grads_;  // [V][D·D]
  std::vector<double> losses_;              // [M], set on the last virtual stage
  std::map<std::pair<int, int>, Saved> saved_;
};

double rel_err(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  if (std::isnan(num)) return INFINITY;
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}

void check_pipelined_equals_serial(const std::string& name, int P, int V, int M) {
  SCOPED_TRACE(name + " P=" + std::to_string(P) + " V=" + std::to_string(V) + " M=" +
               std::to_string(M));
  const ToyModel model(P * V, M, 1234 + 17 * P + 5 * V + M);
  const SerialResult ref = run_serial(model);
  const PipelineSchedule schedule = ScheduleRegistry::builtin().generate(name, {P, V, M});

  std::mutex mu;
  std::vector<std::vector<std::vector<double>>> grads(P);  // [rank][chunk][D·D]
  std::vector<double> losses;
  std::vector<ExecutorStats> stats(P);
  dist::testing::run_ranks(P, [&](dist::Communicator& world) {
    PipelineP2P p2p = PipelineP2P::create(world);
    ToyStage stage(model, world.rank(), P, V);
    ExecutorStats st = run_pipeline_schedule(schedule, p2p, stage);
    std::lock_guard lk(mu);
    grads[world.rank()] = stage.grads();
    stats[world.rank()] = st;
    if (world.rank() == P - 1) losses = stage.losses();
  });
  EXPECT_LE(rel_err(losses, ref.losses), 1e-12);
  for (int r = 0; r < P; ++r) {
    for (int c = 0; c < V; ++c) {
      EXPECT_LE(rel_err(grads[r][c], ref.grads[c * P + r]), 1e-12) << "rank " << r << " chunk " << c;
    }
    EXPECT_EQ(stats[r].peak_in_flight, schedule.max_in_flight[r]) << "rank " << r;
    // Buffers are recycled within the run (never freed mid-step): no more are allocated than
    // are ever alive at once (the toy stage's boundaries all have one shape).
    EXPECT_LE(stats[r].buffers_allocated, stats[r].peak_buffers) << "rank " << r;
    // Transfers go out as one batch per (run of transfer actions, channel), never one by one.
    int expected_batches = 0;
    const auto& list = schedule.ranks[r];
    for (size_t i = 0; i < list.size();) {
      if (list[i].is_compute()) {
        ++i;
        continue;
      }
      bool channel[2] = {false, false};
      for (; i < list.size() && list[i].is_transfer(); ++i) {
        channel[list[i].is_activation_transfer() ? 0 : 1] = true;
      }
      expected_batches += channel[0] + channel[1];
    }
    EXPECT_EQ(stats[r].batches_posted, expected_batches) << "rank " << r;
  }
}

TEST(PipelineExecutorTest, OneF1BMatchesSerial) {
  for (int P : {2, 4}) {
    for (int M : {1, 2, 3, 5, 8}) check_pipelined_equals_serial("1f1b", P, 1, M);
  }
}

TEST(PipelineExecutorTest, InterleavedMatchesSerial) {
  for (int P : {2, 4}) {
    for (int V : {1, 2}) {
      for (int M : {P, 2 * P, 3 * P}) check_pipelined_equals_serial("interleaved-1f1b", P, V, M);
    }
  }
}

TEST(PipelineExecutorTest, AllForwardAllBackwardMatchesSerial) {
  check_pipelined_equals_serial("all-forward-all-backward", 2, 1, 3);
  check_pipelined_equals_serial("all-forward-all-backward", 4, 2, 4);
}

// A stage that throws on one rank: every rank fails (the thrower with its error, the peers
// fast through the aborted channels) instead of hanging.
class FailingStage final : public PipelineStage {
 public:
  explicit FailingStage(bool fail) : fail_(fail) {}
  BoundarySpec input_spec(int) const override { return {DType::kF64, Shape{2}}; }
  BoundarySpec output_spec(int) const override { return {DType::kF64, Shape{2}}; }
  void forward(int, int m, const Tensor&, const Tensor& out) override {
    if (fail_ && m == 1) throw Error(ErrorKind::kInvalidArgument, "toy stage failed on mb 1");
    if (out.defined()) out.data<double>()[0] = out.data<double>()[1] = 1.0;
  }
  void backward(int, int, const Tensor&, const Tensor& in_grad) override {
    if (in_grad.defined()) in_grad.data<double>()[0] = in_grad.data<double>()[1] = 1.0;
  }

 private:
  bool fail_;
};

TEST(PipelineExecutorTest, StageFailureFailsEveryRankFast) {
  const auto schedule = generate_1f1b({.num_stages = 3, .num_chunks = 1, .num_microbatches = 4});
  dist::ThreadWorld world(3, {.timeout = std::chrono::seconds(20)});
  const auto t0 = std::chrono::steady_clock::now();
  auto errors = world.run([&](dist::Communicator& comm) {
    PipelineP2P p2p = PipelineP2P::create(comm);
    FailingStage stage(comm.rank() == 1);
    run_pipeline_schedule(schedule, p2p, stage);
  });
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(15));
  for (int r = 0; r < 3; ++r) EXPECT_TRUE(errors[r] != nullptr) << "rank " << r;
  try {
    std::rethrow_exception(errors[1]);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("toy stage failed on mb 1"), std::string::npos);
  }
}

TEST(PipelineExecutorTest, RejectsScheduleForOtherPipelineSize) {
  const auto schedule = generate_1f1b({.num_stages = 4, .num_chunks = 1, .num_microbatches = 4});
  dist::testing::run_ranks(2, [&](dist::Communicator& comm) {
    PipelineP2P p2p = PipelineP2P::create(comm);
    FailingStage stage(false);
    dist::testing::expect_error([&] { run_pipeline_schedule(schedule, p2p, stage); },
                                ErrorKind::kInvalidArgument, {"P=4", "has 2 ranks"});
  });
}

// connect(): every rank exchanges with both neighbours on both channels at once, so it
// completes for any pipeline size (a mismatched exchange would time out here), and the
// channels still carry a schedule afterwards.
TEST(PipelineExecutorTest, ConnectExchangesWithBothNeighboursOnBothChannels) {
  for (int P : {1, 2, 3, 4}) {
    SCOPED_TRACE("P=" + std::to_string(P));
    dist::testing::run_ranks(P, [&](dist::Communicator& comm) {
      PipelineP2P p2p = PipelineP2P::create(comm);
      DeviceContext cpu = DeviceContext::cpu();
      p2p.connect(cpu);
      p2p.connect(cpu);  // and again: the channels stay matched
      if (P > 1) {  // and a transfer afterwards gets the right data from the right peer
        const int r = comm.rank(), next = (r + 1) % P, prev = (r + P - 1) % P;
        OwnedTensor out = OwnedTensor::empty(DType::kF64, {1}), in = OwnedTensor::zeros(DType::kF64, {1});
        out.view().data<double>()[0] = r;
        const std::vector<dist::P2POp> ops{{dist::P2POp::Kind::kSend, out.view(), next},
                                           {dist::P2POp::Kind::kRecv, in.view(), prev}};
        p2p.activations().batch_send_recv(ops);
        EXPECT_EQ(in.view().data<double>()[0], prev);
      }
      comm.barrier();
    }, std::chrono::seconds(5));
  }
}

}  // namespace
}  // namespace shardlm::parallel
