// Parameter registry: every trainable tensor with its global identity (DESIGN §2.5, §8.9).
//
// A parameter is registered with its Megatron-style global name, global shape, how it is split
// across tensor/expert parallel ranks, whether weight decay applies, and how it is initialised.
// finalize() lays all parameters out in ONE flat value buffer and ONE flat gradient buffer (per
// dtype; §2.6) and initialises each element as a pure function of (seed, name, global index),
// so any shard can be initialised alone and equals the same slice of the unsharded model.
// Checkpoints, the optimizer, grad-norm and HF conversion read this registry, never indices.
//
// Mixed precision (Megatron's --bf16): finalize() may be given a compute dtype different from the
// master dtype. The registry then also owns a flat compute-value and a flat compute-grad buffer
// in the compute dtype; modules run every op on Parameter::compute_value / compute_grad, while the
// optimizer, grad clipping and checkpoints keep using the master value / grad (fp32). The
// compute values are refreshed by sync_compute_values() after init and checkpoint loads and
// after a distributed optimizer's parameter all-gather; optim::AdamW writes them itself in its
// step kernel (ops::adamw_step's compute_params). accumulate_compute_grads() runs after every
// micro-batch backward (master grad += fp32(compute grad), compute grad zeroed: one
// ops::accumulate_and_zero pass). Without a separate compute dtype compute_value/compute_grad
// ARE value/grad and both calls do nothing, so fp32/fp64 runs are bit-identical to before.
//
// Gradient-accumulation fusion (Megatron's default, --no-gradient-accumulation-fusion turns it
// off): a parameter registered with fuse_main_grad gets no compute gradient under mixed
// precision; its backward writes the fp32 master gradient itself
// (Parameter::take_fused_main_grad() says where and whether to assign or add). Fused are the
// Linear weights and the untied output layer (their weight-gradient GEMM,
// ops::linear_weight_grad) and the word embedding: the lookup's scatter-add
// (ops::embedding_backward / ops::vocab_parallel_embedding_backward into the master gradient,
// zeroed first on the step's first contribution) and, when tied, the output layer's GEMM. A
// token seen k times in a micro-batch is then summed in fp32, not rounded k times in bf16. The
// compute-gradient buffer holds only the other parameters (biases, norms, the position
// embedding: ~0.4% of a 1.3B GPT), and their folds are the only ones left.
//
// Sharded master weights (Megatron's distributed optimizer under mixed precision): the
// optimizer copies the master values of the shards it owns out of the registry and then calls
// release_master_values(); the registry frees its full master-value buffer, Parameter::value is
// undefined from then on, and the compute values (refreshed by the optimizer's all-gather) are
// the only full copy of the weights on the rank.
//
// Ownership: the registry owns the flat buffers; Parameter::value/grad are views into them.
// Not thread-safe; one registry per rank (model shard).
//
//   ParameterRegistry reg;
//   reg.add({"decoder.final_layernorm.weight", {C}, Split::none(), false, Init::ones()});
//   reg.finalize(ctx, DType::kF32, /*seed=*/1234);
//   Tensor w = reg.get("decoder.final_layernorm.weight").value;
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "shardlm/tensor/device_context.h"
#include "shardlm/tensor/shard_index_map.h"
#include "shardlm/tensor/tensor.h"

namespace shardlm::model {

// A run of consecutive global coordinates along the split axis that a rank holds.
struct SplitSegment {
  int64_t begin = 0;     // first global coordinate
  int64_t size = 0;      // number of coordinates
  // Another rank of the TP group holds the same run and owns it: this copy is not saved to
  // checkpoints nor counted in the gradient norm (replicated query groups, G < TP).
  bool replica = false;
};

// How a parameter's global tensor maps onto this rank's local shard.
//
// The split axis (global extent D) is viewed as [chunks, D / chunks]; every chunk is cut into
// tp_size contiguous blocks and rank r holds block r of each chunk, concatenated in chunk order.
//  - chunks = 1: one contiguous block per rank (column-parallel rows, row-parallel columns,
//    the vocab-parallel embedding's padded vocab rows, and Megatron's grouped fused QKV: its rows
//    are per query group [q heads | k | v], so G / TP whole groups per rank are contiguous).
//  - chunks = 2: SwiGLU's fc1 [gate (F) ; up (F)]: rank r holds [gate_r ; up_r], so its local
//    swiglu pairs matching gate and up rows (Megatron's per-rank fc1 layout).
// Explicit `runs` (Split::of_runs) replace the blocks: the rank holds exactly those runs of the
// split axis, concatenated in order; runs may overlap other ranks' runs (replicas). This is the
// fused QKV with fewer query groups than TP ranks: [its q heads | k_g | v_g].
// A parameter with tp_dim < 0 is replicated over TP.
struct Split {
  int tp_dim = -1;     // axis split across tensor-parallel ranks (-1: replicated over TP)
  int tp_rank = 0;     // this rank's index along that split
  int tp_size = 1;
  int chunks = 1;      // see above
  std::vector<SplitSegment> runs;  // explicit runs (empty: blocks of chunks, see above)
  static Split none() { return {}; }
  static Split along(int dim, int rank, int size, int chunks = 1) {
    return {dim, rank, size, chunks, {}};
  }
  static Split of_runs(int dim, int rank, int size, std::vector<SplitSegment> runs) {
    return {dim, rank, size, 1, std::move(runs)};
  }
  bool is_split() const { return tp_dim >= 0 && tp_size > 1; }
  // The rank's runs along the split axis (global extent `extent`) in local order: the explicit
  // runs, else one per chunk. One run [0, extent) when not split.
  std::vector<SplitSegment> segments(int64_t extent) const;
  // Global coordinate along the split axis of local coordinate `local` (global extent `extent`).
  int64_t global_coordinate(int64_t local, int64_t extent) const {
    if (!is_split()) return local;
    if (!runs.empty()) {
      for (const SplitSegment& r : runs) {
        if (local < r.size) return r.begin + local;
        local -= r.size;
      }
      return -1;  // out of range: callers pass local < local extent
    }
    const int64_t chunk = extent / chunks, block = chunk / tp_size;
    return (local / block) * chunk + tp_rank * block + local % block;
  }
};

struct Init {
  enum class Kind { kNormal, kOnes, kZeros };
  Kind kind = Kind::kZeros;
  double stddev = 0;
  static Init normal(double stddev) { return {Kind::kNormal, stddev}; }
  static Init ones() { return {Kind::kOnes, 0}; }
  static Init zeros() { return {Kind::kZeros, 0}; }
};

// Tied across pipeline stages (Megatron's shared embedding): with --pipeline-model-parallel-size
// > 1 and tied embeddings, the first stage holds the word embedding (kPrimary) and the last stage
// a copy of it as its output layer (kCopy). Both carry the same global name, hence the same
// initial values; their gradients are summed over the embedding group every step so they stay
// equal. Only the primary is counted in the gradient norm and written to checkpoints (the copy
// loads from the same name).
enum class PipelineTie { kNone, kPrimary, kCopy };

struct ParameterSpec {
  std::string name;       // global, Megatron-style
  Shape global_shape;
  Split split;
  bool weight_decay = true;  // false for biases and norm weights
  Init init;
  PipelineTie pipeline_tie = PipelineTie::kNone;
  // Its backward may write the master gradient directly (gradient-accumulation fusion, see
  // above): the Linear weights' weight-gradient GEMM, the word embedding's scatter-add.
  bool fuse_main_grad = false;
  // A mixture-of-experts expert's parameter (Megatron's allreduce=False). Under expert
  // parallelism (--expert-model-parallel-size > 1) only one EP rank holds it, and its gradient
  // is reduced (and the distributed optimizer shards it) over the expert-data-parallel group
  // instead of the data-parallel one (parallel/grad_buffer.h).
  bool expert = false;
};

struct Parameter {
  ParameterSpec spec;
  Shape local_shape;
  int64_t offset = 0;      // element offset in the flat buffers
  Tensor value;            // view into the flat value buffer
  Tensor grad;             // view into the flat gradient buffer
  // What the modules compute with: views into the compute buffers (mixed precision), else
  // the same views as value / grad.
  Tensor compute_value;
  Tensor compute_grad;     // undefined when main_grad_fused
  // Gradient-accumulation fusion is on for this parameter: its backward writes `grad` through
  // take_fused_main_grad() and there is no compute gradient.
  bool main_grad_fused = false;
  // The master gradient holds nothing of this step yet (ParameterRegistry::begin_step_grads):
  // the step's first contribution assigns instead of adding.
  bool main_grad_empty = false;
  // A fused parameter's master gradient for this micro-batch's weight-gradient GEMM, and
  // whether the GEMM adds to it (false: the step's first contribution, which assigns, as the
  // first fold does). Marks the master gradient as holding this step's values.
  struct FusedMainGrad {
    Tensor grad;
    bool accumulate;
  };
  FusedMainGrad take_fused_main_grad();
  // Global index (row-major in the global shape) of local element i.
  int64_t global_index(int64_t local_index) const;
  // The same mapping as arithmetic the CUDA init kernel can run (tensor/shard_index_map.h);
  // splits without explicit runs only.
  ShardIndexMap index_map() const;
  // Flat local element ranges [begin, end) that are replicas of another TP rank's elements
  // (SplitSegment::replica); empty for every split but replicated query groups.
  std::vector<std::pair<int64_t, int64_t>> replica_ranges() const;
};

class ParameterRegistry {
 public:
  // Registers a parameter; throws if the name is taken or the split does not divide the shape.
  void add(const ParameterSpec& spec);
  // Lays parameter i (registration order) out at element offsets[i] of flat buffers of `total`
  // elements, instead of back to back: the data-parallel gradient buffer's bucket layout
  // (parallel/grad_buffer.h: backward order, bucket padding). Gaps are padding and stay zero in
  // every flat buffer. Call after the last add() and before finalize(); throws kInternal on
  // overlapping or out-of-range placements.
  void set_flat_layout(const std::vector<int64_t>& offsets, int64_t total);
  // Gradient-accumulation fusion for the parameters registered with fuse_main_grad (on by
  // default); it takes effect only with a separate compute dtype. Call before finalize().
  void set_gradient_accumulation_fusion(bool on);
  // Elements of the compute-gradient buffer finalize() will allocate under mixed precision:
  // every parameter's but the fused ones (for memory plans, before finalize()).
  int64_t compute_grad_numel() const;
  // Allocates the flat buffers on ctx's device, sets views, initialises values where they
  // live (ops::init_normal: same bits on every backend), zeroes gradients. compute_dtype
  // (default: dtype) different from dtype adds the compute-value/compute-grad buffers (see
  // above); compute_value is filled.
  void finalize(DeviceContext& ctx, DType dtype, uint64_t seed);
  void finalize(DeviceContext& ctx, DType dtype, uint64_t seed, DType compute_dtype);
  bool finalized() const { return finalized_; }

  Parameter& get(const std::string& name);
  const Parameter& get(const std::string& name) const;
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  std::vector<Parameter>& parameters() { return params_; }
  const std::vector<Parameter>& parameters() const { return params_; }

  // The flat master values; undefined after release_master_values().
  const Tensor& flat_values() const { return values_.view(); }
  const Tensor& flat_grads() const { return grads_.view(); }
  // The flat compute-value buffer [total] in compute_dtype(); undefined without a compute copy.
  const Tensor& flat_compute_values() const { return compute_values_.view(); }
  int64_t numel() const { return total_; }
  DType dtype() const { return dtype_; }
  // The dtype modules compute in (== dtype() unless mixed precision).
  DType compute_dtype() const { return compute_dtype_; }
  bool has_compute_copy() const { return compute_values_.view().defined(); }
  // Frees the full master-value buffer (see above); only with a compute copy. Afterwards
  // Parameter::value and flat_values() are undefined and sync_compute_values() throws.
  void release_master_values();
  bool has_master_values() const { return values_.view().defined(); }
  // Bytes of the compute-value and compute-grad buffers (0 without a compute copy).
  size_t compute_copy_bytes() const;

  // Zeroes the master gradients (and the compute gradients when separate).
  void zero_grads(DeviceContext& ctx);
  // Start of a training step. Without a compute copy: zero_grads. With one, nothing is
  // written: the compute gradients are already zero (every fold zeroes them), and the master
  // gradients are only marked empty, so the step's first fold of each parameter assigns
  // instead of adding (saves a pass over the fp32 buffer and its zeroing: ~5 ms per 1.3B step).
  void begin_step_grads(DeviceContext& ctx);
  // After the step's last fold: zeroes the master gradient of any parameter no fold reached
  // (none in a normal step), so no gradient of an earlier step survives.
  void end_step_grads(DeviceContext& ctx);
  // Mixed precision: compute values = convert(master values). No-op without a compute copy.
  void sync_compute_values(DeviceContext& ctx);
  // Mixed precision: master grads += convert(compute grads) (= when begin_step_grads marked
  // them empty), then compute grads = 0 (ops::accumulate_and_zero, or copy + fill). No-op
  // without a compute copy.
  void accumulate_compute_grads(DeviceContext& ctx);
  // The same for one parameter (called from the backward grad-ready hook, so a bucket's
  // gradients can be reduced while backward continues). No-op without a compute copy.
  void accumulate_compute_grads(DeviceContext& ctx, Parameter& param);

 private:
  void set_all_main_grads_empty(bool empty);

  std::vector<Parameter> params_;
  std::map<std::string, size_t> index_;
  OwnedTensor values_;  // [total]
  OwnedTensor grads_;   // [total]
  OwnedTensor compute_values_;  // [total] in compute_dtype_ (mixed precision only)
  OwnedTensor compute_grads_;   // [total] in compute_dtype_ (mixed precision only)
  bool fusion_ = true;          // set_gradient_accumulation_fusion
  bool any_fused_ = false;      // some parameter has main_grad_fused
  DType dtype_ = DType::kF32;          // master dtype (kept after release_master_values)
  DType compute_dtype_ = DType::kF32;
  int64_t total_ = 0;
  bool finalized_ = false;
};

// Fills `out` (a local shard of `param`, on ctx's device) with its initial values. Public so
// tests can check that shards initialise equal to slices of the unsharded tensor.
void initialize_parameter(DeviceContext& ctx, const Parameter& param, uint64_t seed, Tensor out);
void initialize_parameter(const Parameter& param, uint64_t seed, Tensor out);  // host `out`

}  // namespace shardlm::model
