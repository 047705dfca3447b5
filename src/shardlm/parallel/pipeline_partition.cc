// PipelinePartition: Megatron's layer layout over (stage, chunk), validated with clear errors.
#include "shardlm/parallel/pipeline_partition.h"

#include <string>
#include <utility>

#include "shardlm/base/check.h"
#include "shardlm/base/error.h"

namespace shardlm::parallel {

namespace {

[[noreturn]] void invalid(const std::string& msg) {
  throw Error(ErrorKind::kInvalidConfig, msg);
}

std::string str(int64_t v) { return std::to_string(v); }

}  // namespace

PipelinePartition PipelinePartition::create(const PipelinePartitionConfig& c) {
  const int L = c.num_layers, P = c.pipeline_parallel_size;
  if (L < 1) invalid("--num-layers " + str(L) + " must be >= 1");
  if (P < 1) invalid("--pipeline-model-parallel-size " + str(P) + " must be >= 1");
  const bool uneven = c.first_stage_num_layers || c.last_stage_num_layers;
  if (c.num_layers_per_virtual_stage && c.num_virtual_stages_per_rank) {
    invalid("give only one of --num-layers-per-virtual-pipeline-stage (" +
            str(*c.num_layers_per_virtual_stage) + ") and --num-virtual-stages-per-pipeline-rank (" +
            str(*c.num_virtual_stages_per_rank) + ")");
  }
  if (c.num_layers_per_virtual_stage && uneven) {
    invalid("--num-layers-per-virtual-pipeline-stage cannot be combined with "
            "--decoder-first-pipeline-num-layers / --decoder-last-pipeline-num-layers (as in "
            "Megatron-LM); give the virtual degree with --num-virtual-stages-per-pipeline-rank");
  }
  if (P == 1 && (c.num_layers_per_virtual_stage || c.num_virtual_stages_per_rank || uneven)) {
    invalid("virtual pipeline stages and --decoder-first/last-pipeline-num-layers need "
            "--pipeline-model-parallel-size > 1 (got 1); drop them or raise the pipeline size");
  }
  for (auto [flag, v] : {std::pair{"--decoder-first-pipeline-num-layers", c.first_stage_num_layers},
                         std::pair{"--decoder-last-pipeline-num-layers", c.last_stage_num_layers}}) {
    if (v && *v < 1) invalid(std::string(flag) + " " + str(*v) + " must be >= 1");
  }

  int V = 1;
  if (c.num_virtual_stages_per_rank) {
    V = *c.num_virtual_stages_per_rank;
    if (V < 1) invalid("--num-virtual-stages-per-pipeline-rank " + str(V) + " must be >= 1");
  }

  PipelinePartition p;
  p.num_layers_ = L;
  p.num_stages_ = P;
  std::vector<int> per_chunk(P);  // layers of every chunk on rank r
  if (!uneven) {
    if (L % P != 0) {
      invalid("--num-layers " + str(L) + " is not divisible by --pipeline-model-parallel-size " +
              str(P) + "; choose a multiple of " + str(P) +
              " or set --decoder-first-pipeline-num-layers / --decoder-last-pipeline-num-layers");
    }
    const int per_stage = L / P;
    if (c.num_layers_per_virtual_stage) {
      const int n = *c.num_layers_per_virtual_stage;
      if (n < 1 || per_stage % n != 0) {
        invalid("--num-layers-per-virtual-pipeline-stage " + str(n) +
                " must divide the layers per pipeline stage (--num-layers " + str(L) + " / " +
                "--pipeline-model-parallel-size " + str(P) + " = " + str(per_stage) + ")");
      }
      V = per_stage / n;
    } else if (per_stage % V != 0) {
      invalid("--num-virtual-stages-per-pipeline-rank " + str(V) +
              " must divide the layers per pipeline stage (--num-layers " + str(L) + " / " +
              "--pipeline-model-parallel-size " + str(P) + " = " + str(per_stage) + ")");
    }
    for (int r = 0; r < P; ++r) per_chunk[r] = per_stage / V;
  } else {
    const int first = c.first_stage_num_layers.value_or(0);
    const int last = c.last_stage_num_layers.value_or(0);
    const int middle_stages =
        P - (c.first_stage_num_layers ? 1 : 0) - (c.last_stage_num_layers ? 1 : 0);
    const int middle_layers = L - first - last;
    const std::string numbers = "--num-layers " + str(L) + ", --pipeline-model-parallel-size " +
                                str(P) + ", first stage " +
                                (c.first_stage_num_layers ? str(first) : "unset") +
                                ", last stage " + (c.last_stage_num_layers ? str(last) : "unset");
    if (middle_layers < 0) {
      invalid("--decoder-first-pipeline-num-layers + --decoder-last-pipeline-num-layers exceed "
              "--num-layers (" + numbers + ")");
    }
    if (middle_stages == 0 && middle_layers != 0) {
      invalid("with two pipeline stages both set, first + last stage layers must equal "
              "--num-layers (" + numbers + "); " + str(middle_layers) + " layers have no stage");
    }
    int middle_per_stage = 0;
    if (middle_stages > 0) {
      if (middle_layers % middle_stages != 0 || middle_layers / middle_stages < 1) {
        invalid("the " + str(middle_layers) + " layers left for the " + str(middle_stages) +
                " middle pipeline stages do not split evenly into non-empty stages (" + numbers +
                "); adjust --decoder-first/last-pipeline-num-layers or --num-layers");
      }
      middle_per_stage = middle_layers / middle_stages;
    }
    for (auto [what, n] : {std::pair{"first stage (--decoder-first-pipeline-num-layers)", first},
                           std::pair{"last stage (--decoder-last-pipeline-num-layers)", last},
                           std::pair{"each middle stage", middle_per_stage}}) {
      if (n % V != 0) {
        invalid("the " + str(n) + " layers of the " + std::string(what) +
                " are not divisible by the " + str(V) +
                " virtual stages per rank (--num-virtual-stages-per-pipeline-rank) (" + numbers +
                ")");
      }
    }
    for (int r = 0; r < P; ++r) {
      const bool is_first = r == 0 && c.first_stage_num_layers;
      const bool is_last = r == P - 1 && c.last_stage_num_layers;
      per_chunk[r] = (is_first ? first : is_last ? last : middle_per_stage) / V;
    }
  }
  p.num_chunks_ = V;
  for (int r = 0; r < P; ++r) {
    if (per_chunk[r] < 1) {
      invalid("pipeline stage " + str(r) + " would hold no layers in each of its " + str(V) +
              " chunks (--num-layers " + str(L) + ", --pipeline-model-parallel-size " + str(P) +
              "); use fewer virtual stages or more layers");
    }
  }
  int next = 0;
  p.ranges_.resize(static_cast<size_t>(V) * P);
  for (int ch = 0; ch < V; ++ch) {
    for (int r = 0; r < P; ++r) {
      p.ranges_[ch * P + r] = {next, next + per_chunk[r]};
      next += per_chunk[r];
    }
  }
  SHARDLM_CHECK_EQ(next, L);
  return p;
}

LayerRange PipelinePartition::layers(int stage, int chunk) const {
  SHARDLM_CHECK(stage >= 0 && stage < num_stages_ && chunk >= 0 && chunk < num_chunks_);
  return ranges_[chunk * num_stages_ + stage];
}

int PipelinePartition::num_layers_on_stage(int stage) const {
  int n = 0;
  for (int c = 0; c < num_chunks_; ++c) n += layers(stage, c).size();
  return n;
}

PipelinePartition::Location PipelinePartition::locate(int layer) const {
  SHARDLM_CHECK(layer >= 0 && layer < num_layers_);
  for (size_t i = 0; i < ranges_.size(); ++i) {
    if (layer >= ranges_[i].begin && layer < ranges_[i].end) {
      return {static_cast<int>(i) % num_stages_, static_cast<int>(i) / num_stages_};
    }
  }
  SHARDLM_CHECK(false);
  return {};
}

int num_microbatches(int64_t global, int64_t micro, int64_t dp) {
  if (global < 1 || micro < 1 || dp < 1) {
    invalid("--global-batch-size " + str(global) + ", --micro-batch-size " + str(micro) +
            " and the data-parallel size " + str(dp) + " must all be >= 1");
  }
  if (global % (micro * dp) != 0) {
    invalid("--global-batch-size " + str(global) + " is not divisible by --micro-batch-size " +
            str(micro) + " x data-parallel size " + str(dp) + " (= " + str(micro * dp) +
            "); use a multiple of " + str(micro * dp));
  }
  return static_cast<int>(global / (micro * dp));
}

}  // namespace shardlm::parallel
