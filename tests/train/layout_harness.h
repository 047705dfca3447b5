// Test harness shared by the layout-equivalence tests (TP x DP x PP): train one config on one
// rank and on a parallel layout (ranks as threads), gather every rank's parameter shards into
// global tensors by name (Parameter::global_index), and compare loss, grad norm, validation loss
// and final parameters. Every copy of an element (data-parallel replicas, TP-replicated
// parameters, the pipeline's tied-embedding copy) must agree bit for bit.
// With cfg.device "cuda" every rank thread drives its own DeviceContext on GPU 0 and talks
// through a HostStagedCommunicator (collectives deferred to wait()): the GPU code paths of any
// layout on one GPU.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "shardlm/dist/host_staged_communicator.h"
#include "shardlm/dist/thread_communicator.h"
#include "shardlm/ops/ops.h"
#include "shardlm/train/trainer.h"
#include "tests/testing/tensors.h"

namespace shardlm::train::layout_harness {

// The layout tests' model: tiny GPT, dropout on, 4 micro-batches of 2 per step on one rank
// (2 with DP 2, 1 with DP 4), 20 iterations of AdamW with warmup + cosine decay, clipping.
inline TrainConfig tiny_config(int64_t num_layers = 2) {
  TrainConfig c;
  c.model.num_layers = num_layers;
  c.model.hidden_size = 32;
  c.model.num_attention_heads = 4;
  c.model.seq_length = 16;
  c.model.vocab_size = 60;  // padded to 64 for TP 1, 2 and 4 alike (multiple of 16 x TP)
  c.model.make_vocab_size_divisible_by = 16;
  // No linear biases: the key bias's gradient is analytically zero (softmax is invariant to a
  // per-row shift of the scores, which is all q·b_k adds), so what backward computes for it is
  // rounding noise, and Adam's normalisation turns noise that differs by summation order into
  // ±lr steps: ~1e-4 relative apart after 20 steps in any two layouts, bias or no bug.
  c.model.add_bias_linear = false;
  c.model.hidden_dropout = 0.1;
  c.model.attention_dropout = 0.1;
  c.micro_batch_size = 2;
  c.global_batch_size = 8;
  c.train_iters = 20;
  c.optimizer.lr = 3e-3;
  c.optimizer.min_lr = 3e-4;
  c.optimizer.lr_decay_style = "cosine";
  c.optimizer.lr_warmup_iters = 3;
  c.optimizer.weight_decay = 0.1;
  c.optimizer.clip_grad = 1.0;
  c.data.mock_data = true;
  c.logging.log_interval = 10;
  c.logging.eval_interval = 10;
  c.logging.eval_iters = 1;
  c.device = "cpu";
  return c;
}

// cfg with `groups` query groups; llama: also RMSNorm, SwiGLU, RoPE and an untied output layer.
inline TrainConfig with_query_groups(TrainConfig c, int64_t groups, bool llama) {
  c.model.num_query_groups = groups;
  if (llama) {
    c.model.normalization = model::Normalization::kRMSNorm;
    c.model.swiglu = true;
    c.model.position_embedding = model::PositionEmbedding::kRope;
    c.model.untie_embeddings_and_output_weights = true;
  }
  return c;
}

struct RunResult {
  std::vector<double> losses, grad_norms;
  std::vector<double> evals;
  int buckets = 0, buckets_started_during_backward = 0;  // rank 0's last iteration
  std::map<std::string, std::vector<double>> params;  // global tensors, by name
};

// The values of t (host or device) as doubles.
inline std::vector<double> host_values(DeviceContext& device, const Tensor& t) {
  if (t.device().is_cpu()) return testing::to_vector(t);
  OwnedTensor host = OwnedTensor::empty(t.dtype(), t.shape(), Device::cpu());
  ops::copy(device, host.view(), t);
  return testing::to_vector(host.view());
}

inline RunResult single_rank(const TrainConfig& cfg) {
  std::ostringstream log;
  Trainer t(cfg, log);
  t.train();
  RunResult r;
  for (const auto& h : t.history()) r.losses.push_back(h.loss), r.grad_norms.push_back(h.grad_norm);
  for (const auto& e : t.evaluations()) r.evals.push_back(e.loss);
  for (const auto& p : t.parameters().parameters())
    r.params[p.spec.name] = host_values(t.device(), p.value.defined() ? p.value : p.compute_value);
  return r;
}

struct Layout {
  int tp = 1, dp = 1, pp = 1, cp = 1;
  int ep = 1;  // --expert-model-parallel-size: divides dp x cp (its ranks are data-parallel)
  bool sequence_parallel = false, distributed_optimizer = false, overlap_grad_reduce = false,
       overlap_param_gather = false;
  // Collectives issued only at wait() (HostStagedOptions::defer_collectives): a rank that
  // changes a buffer between issuing an operation and waiting for it gets different numbers.
  // Always on for GPU runs.
  bool defer_collectives = false;
  int64_t bucket_size = 0;
  // Pipeline shape (0 / "": unset).
  int layers_per_virtual_stage = 0, first_stage_layers = 0, last_stage_layers = 0;
  std::string schedule;
  std::string name() const {
    std::ostringstream os;
    os << "TP" << tp << " DP" << dp << (pp > 1 ? " PP" + std::to_string(pp) : "")
       << (cp > 1 ? " CP" + std::to_string(cp) : "") << (ep > 1 ? " EP" + std::to_string(ep) : "")
       << (layers_per_virtual_stage ? " layers/vstage " + std::to_string(layers_per_virtual_stage)
                                    : "")
       << (first_stage_layers ? " first " + std::to_string(first_stage_layers) : "")
       << (last_stage_layers ? " last " + std::to_string(last_stage_layers) : "")
       << (schedule.empty() ? "" : " " + schedule) << (sequence_parallel ? " SP" : "")
       << (distributed_optimizer ? " distopt" : "") << (overlap_grad_reduce ? " overlap-grad" : "")
       << (overlap_param_gather ? " overlap-param" : "")
       << (defer_collectives ? " deferred" : "")
       << (bucket_size ? " bucket " + std::to_string(bucket_size) : "");
    return os.str();
  }
  void apply(TrainConfig& cfg) const {
    cfg.parallel.tensor_model_parallel_size = tp;
    cfg.parallel.pipeline_model_parallel_size = pp;
    cfg.parallel.context_parallel_size = cp;
    cfg.parallel.expert_model_parallel_size = ep;
    cfg.parallel.sequence_parallel = sequence_parallel;
    cfg.parallel.use_distributed_optimizer = distributed_optimizer;
    cfg.parallel.overlap_grad_reduce = overlap_grad_reduce;
    cfg.parallel.overlap_param_gather = overlap_param_gather;
    cfg.parallel.ddp_bucket_size = bucket_size;
    cfg.parallel.num_layers_per_virtual_pipeline_stage = layers_per_virtual_stage;
    cfg.parallel.decoder_first_pipeline_num_layers = first_stage_layers;
    cfg.parallel.decoder_last_pipeline_num_layers = last_stage_layers;
    cfg.parallel.pipeline_schedule = schedule;
  }
};

// Trains cfg on the layout; `on_rank` (optional) runs on every rank's trainer after training.
inline RunResult run_layout(TrainConfig cfg, const Layout& l, std::string* log0 = nullptr,
                            const std::function<void(Trainer&)>& on_rank = {}) {
  using namespace std::chrono_literals;
  l.apply(cfg);
  const int n = l.tp * l.cp * l.dp * l.pp;
  const dist::ParallelLayout layout = dist::ParallelLayout::create(n, cfg.parallel_sizes());
  dist::ThreadWorld world(n, {.timeout = 60s});
  RunResult result;
  std::mutex mu;
  dist::rethrow_first_error(world.run([&](dist::Communicator& comm) {
    const int r = comm.rank();
    const bool gpu = cfg.device == "cuda";
    DeviceContext device = gpu ? DeviceContext(Device::cuda(0)) : DeviceContext::cpu();
    std::unique_ptr<dist::Communicator> world_group = comm.split(0, r, "world");
    if (gpu || l.defer_collectives)
      world_group = std::make_unique<dist::HostStagedCommunicator>(
          device, std::move(world_group), dist::HostStagedOptions{.defer_collectives = true});
    dist::RankContext rc = dist::RankContext::create(device, std::move(world_group), layout, r);
    std::ostringstream log;
    Trainer t(cfg, rc, log);
    t.train();
    if (on_rank) on_rank(t);
    std::lock_guard<std::mutex> lock(mu);
    if (r == 0) {
      for (const auto& h : t.history())
        result.losses.push_back(h.loss), result.grad_norms.push_back(h.grad_norm);
      for (const auto& e : t.evaluations()) result.evals.push_back(e.loss);
      if (log0) *log0 = log.str();
      result.buckets = t.grad_buffer().num_buckets();
      result.buckets_started_during_backward = t.grad_sync().started_during_backward();
    } else {
      EXPECT_TRUE(log.str().empty()) << "rank " << r << " logged";
    }
    // Every rank reports the same loss sequence (the pipeline's loss reaches every stage).
    if (r != 0 && !result.losses.empty() && t.history().size() == result.losses.size())
      for (size_t i = 0; i < result.losses.size(); ++i)
        EXPECT_EQ(t.history()[i].loss, result.losses[i]) << "rank " << r << " iteration " << i;
    // Scatter this rank's shard into the global tensor; every element must come out the same
    // from every rank that holds it.
    for (const auto& p : t.parameters().parameters()) {
      const int64_t global_n = p.spec.global_shape.numel();
      auto& full = result.params[p.spec.name];
      if (full.empty()) full.assign(static_cast<size_t>(global_n), std::nan(""));
      // Mixed precision with the distributed optimizer: the master weights are sharded, the
      // compute weights are the rank's full copy.
      const std::vector<double> local =
          host_values(device, p.value.defined() ? p.value : p.compute_value);
      for (int64_t k = 0; k < static_cast<int64_t>(local.size()); ++k) {
        double& slot = full[static_cast<size_t>(p.global_index(k))];
        if (std::isnan(slot))
          slot = local[k];
        else
          EXPECT_EQ(slot, local[k]) << p.spec.name << " element " << p.global_index(k)
                                    << " differs between copies (rank " << r << ")";
      }
    }
  }));
  return result;
}

struct Differences {
  double max_loss = 0, max_param = 0;
};

inline Differences expect_same_training(const RunResult& got, const RunResult& ref,
                                        const std::string& what, double loss_tol = 1e-5,
                                        double param_tol = 1e-5, double grad_norm_tol = 1e-4) {
  SCOPED_TRACE(what);
  Differences d;
  EXPECT_EQ(got.losses.size(), ref.losses.size());
  if (got.losses.size() != ref.losses.size()) return d;
  for (size_t i = 0; i < ref.losses.size(); ++i) {
    const double rel = std::abs(got.losses[i] - ref.losses[i]) / std::abs(ref.losses[i]);
    d.max_loss = std::max(d.max_loss, rel);
    EXPECT_LT(rel, loss_tol) << "iteration " << i + 1 << ": loss " << got.losses[i] << " vs "
                             << ref.losses[i];
    EXPECT_LT(std::abs(got.grad_norms[i] - ref.grad_norms[i]), grad_norm_tol * ref.grad_norms[i])
        << "iteration " << i + 1 << ": grad norm " << got.grad_norms[i] << " vs "
        << ref.grad_norms[i];
  }
  EXPECT_EQ(got.evals.size(), ref.evals.size());
  for (size_t i = 0; i < std::min(got.evals.size(), ref.evals.size()); ++i)
    EXPECT_LT(std::abs(got.evals[i] - ref.evals[i]), loss_tol * std::abs(ref.evals[i]));
  EXPECT_EQ(got.params.size(), ref.params.size());
  std::string worst_name;
  for (const auto& [name, values] : ref.params) {
    auto it = got.params.find(name);
    EXPECT_NE(it, got.params.end()) << name;
    if (it == got.params.end()) continue;
    const double err = testing::rel_error(it->second, values);  // NaN (unfilled) fails
    if (err > d.max_param) d.max_param = err, worst_name = name;
    EXPECT_LT(err, param_tol) << name;
  }
  std::cout << what << ": final loss " << got.losses.back() << " (reference "
            << ref.losses.back() << "), max loss rel diff " << d.max_loss
            << ", worst parameter error " << d.max_param << " (" << worst_name << ")\n";
  return d;
}

// What the trainer checks before building anything: validate() and validate_parallel(world).
inline std::function<void()> validation(const TrainConfig& c, int world) {
  return [c, world] {
    c.validate();
    c.validate_parallel(world);
  };
}

// The message of the Error(kInvalidConfig) that fn throws ("" and a failure otherwise).
inline std::string config_error(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

}  // namespace shardlm::train::layout_harness
