// PipelinePartition: which transformer layers each (pipeline stage, virtual chunk) holds, as
// Megatron-LM lays them out; and the number of micro-batches per step.
//
// Layout. With V chunks per rank the model is cut into V·P virtual stages; virtual stage
// s = c·P + r (chunk c of rank r) holds a contiguous run of layers, and the runs follow s.
//  - Even (default): every virtual stage holds L / (V·P) layers. V comes from
//    --num-layers-per-virtual-pipeline-stage n (V = L / P / n) or
//    --num-virtual-stages-per-pipeline-rank V.
//  - Uneven (--decoder-first-pipeline-num-layers Lf and/or --decoder-last-pipeline-num-layers
//    Ll): the first / last rank hold Lf / Ll layers, the P' middle ranks share the rest
//    equally; with V chunks every chunk c holds 1/V of each rank's layers, so chunk c covers
//    layers [c·L/V, (c+1)·L/V) with rank 0 taking Lf/V of them, each middle rank
//    (L−Lf−Ll)/(P'·V), rank P−1 taking Ll/V (Megatron Core's get_transformer_layer_offset).
// Embedding lives on virtual stage 0, final norm and output layer on the last virtual stage.
//
// Validation (kInvalidConfig, naming the flags, the numbers and a fix): layers not divisible,
// an empty stage or chunk, virtual stages or uneven stages with P == 1, both virtual flags,
// --num-layers-per-virtual-pipeline-stage together with uneven stages (Megatron: use
// --num-virtual-stages-per-pipeline-rank there), first + last layers exceeding --num-layers.
//
// Thread contract: immutable value after create(); share freely.
//
//   PipelinePartition p = PipelinePartition::create({.num_layers = 16,
//       .pipeline_parallel_size = 4, .num_layers_per_virtual_stage = 2});   // V = 2
//   LayerRange r = p.layers(/*stage=*/1, /*chunk=*/1);                      // [10, 12)
//   int M = num_microbatches(/*global=*/64, /*micro=*/2, /*dp=*/4);         // 8
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace shardlm::parallel {

struct PipelinePartitionConfig {
  int num_layers = 0;                                 // --num-layers
  int pipeline_parallel_size = 1;                     // --pipeline-model-parallel-size
  std::optional<int> num_layers_per_virtual_stage;    // --num-layers-per-virtual-pipeline-stage
  std::optional<int> num_virtual_stages_per_rank;     // --num-virtual-stages-per-pipeline-rank
  std::optional<int> first_stage_num_layers;          // --decoder-first-pipeline-num-layers
  std::optional<int> last_stage_num_layers;           // --decoder-last-pipeline-num-layers
};

struct LayerRange {
  int begin = 0;  // first global layer index
  int end = 0;    // one past the last
  int size() const { return end - begin; }
  friend bool operator==(const LayerRange&, const LayerRange&) = default;
};

class PipelinePartition {
 public:
  // Validates the config; throws Error(kInvalidConfig) on any invalid combination.
  static PipelinePartition create(const PipelinePartitionConfig& config);

  int num_layers() const { return num_layers_; }
  int num_stages() const { return num_stages_; }  // P
  int num_chunks() const { return num_chunks_; }  // V

  // Layers of chunk `chunk` on pipeline rank `stage`.
  LayerRange layers(int stage, int chunk) const;
  // All layers a rank holds, over its chunks.
  int num_layers_on_stage(int stage) const;
  // The (stage, chunk) that holds global layer `layer`.
  struct Location {
    int stage = 0;
    int chunk = 0;
  };
  Location locate(int layer) const;

  bool has_embedding(int stage, int chunk) const { return stage == 0 && chunk == 0; }
  bool has_output_layer(int stage, int chunk) const {
    return stage == num_stages_ - 1 && chunk == num_chunks_ - 1;
  }

 private:
  int num_layers_ = 0;
  int num_stages_ = 1;
  int num_chunks_ = 1;
  std::vector<LayerRange> ranges_;  // [V·P], index chunk·P + stage
};

// Megatron's micro-batches per step: global / (micro × data_parallel). Throws
// Error(kInvalidConfig) unless all are positive and the division is exact.
int num_microbatches(int64_t global_batch_size, int64_t micro_batch_size,
                     int64_t data_parallel_size);

}  // namespace shardlm::parallel
