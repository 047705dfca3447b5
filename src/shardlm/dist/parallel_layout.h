// ParallelLayout: Megatron's map from world ranks to parallel coordinates and process groups.
//
// Rank order "tp-cp-ep-dp-pp", tensor-parallel fastest, exactly as Megatron Core's
// RankGenerator with its default order:
//   dense layers:  rank = tp + TP·(cp + CP·(dp + DP·pp)),  DP = world / (TP·CP·PP)
//   expert layers: rank = etp + ETP·(ep + EP·(edp + EDP·pp)), EDP = world / (ETP·EP·PP)
// (EP does not enter the dense layout; ETP defaults to TP.) A group of kind K is the set of
// ranks that differ only in K's coordinates; member order is Megatron's (the fastest varying
// coordinate first), so group rank == position in the member list. The embedding group is
// {first, last} stage of each pipeline group ({first} when PP == 1); the model-parallel group is
// tp×pp. Example (Megatron's docstring, 16 ranks, TP=2, PP=4 → DP=2):
//   tp [0,1] [2,3] … [14,15];  pp [0,4,8,12] [1,5,9,13] …;  dp [0,2] [1,3] [4,6] …
//
// Validation throws Error(kInvalidConfig) naming the Megatron flags, the numbers and a fix.
// Model numbers come in as ModelDims (plain numbers) so dist/ stays below model/.
//
// Thread contract: immutable after create(); share freely. Value type.
//
//   ParallelLayout layout = ParallelLayout::create(16, {.tensor = 2, .pipeline = 4});
//   layout.validate_model({.num_attention_heads = 16, .ffn_hidden_size = 4096});
//   RankCoord c = layout.coord(5);                        // tp 1, dp 0, pp 1
//   std::vector<int> dp = layout.group_of(GroupKind::kDp, 5);   // {5, 7}
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace shardlm::dist {

// The parallel sizes, named after Megatron's flags.
struct ParallelSizes {
  int tensor = 1;         // --tensor-model-parallel-size
  int pipeline = 1;       // --pipeline-model-parallel-size
  int context = 1;        // --context-parallel-size
  int expert = 1;         // --expert-model-parallel-size
  int expert_tensor = 0;  // --expert-tensor-parallel-size (0: same as --tensor-model-parallel-size)
};

// Model numbers that must split evenly across the layout; 0 means "not given, skip the check".
struct ModelDims {
  int64_t num_layers = 0;           // --num-layers (divisible by PP)
  int64_t num_attention_heads = 0;  // --num-attention-heads (divisible by TP)
  int64_t num_query_groups = 0;     // --num-query-groups (divisible by TP, or dividing TP)
  int64_t ffn_hidden_size = 0;      // --ffn-hidden-size (divisible by TP)
  int64_t padded_vocab_size = 0;    // vocabulary after padding (divisible by TP)
  int64_t num_experts = 0;          // --num-experts (divisible by EP)
  int64_t seq_length = 0;           // --seq-length (by TP with SP, by 2·CP with CP)
  bool sequence_parallel = false;   // --sequence-parallel
};

enum class GroupKind {
  kTp,                 // tensor parallel
  kCp,                 // context parallel
  kDp,                 // data parallel (without CP)
  kPp,                 // pipeline
  kDpCp,               // data × context: gradient reduction group
  kTpCp,               // tensor × context
  kTpDpCp,             // tensor × data × context (e.g. amax / grad-norm reductions)
  kModelParallel,      // tensor × pipeline
  kEmbedding,          // first and last pipeline stage (tied embedding gradients)
  kPositionEmbedding,  // first pipeline stage
  kEp,                 // expert model parallel
  kExpertTp,           // expert tensor parallel
  kExpertDp,           // expert data parallel
  kExpertTpEp,         // expert tensor × expert model parallel
};
inline constexpr std::array<GroupKind, 14> kAllGroupKinds = {
    GroupKind::kTp,     GroupKind::kCp,        GroupKind::kDp,
    GroupKind::kPp,     GroupKind::kDpCp,      GroupKind::kTpCp,
    GroupKind::kTpDpCp, GroupKind::kModelParallel, GroupKind::kEmbedding,
    GroupKind::kPositionEmbedding, GroupKind::kEp, GroupKind::kExpertTp,
    GroupKind::kExpertDp, GroupKind::kExpertTpEp};
const char* group_kind_name(GroupKind kind);  // "tp", "dp_cp", "embedding", ...

// A rank's coordinate in every dimension.
struct RankCoord {
  int tp = 0, cp = 0, dp = 0, pp = 0;  // dense layers
  int etp = 0, ep = 0, edp = 0;        // expert layers
};

class ParallelLayout {
 public:
  // Validates the sizes against world_size; throws Error(kInvalidConfig).
  static ParallelLayout create(int world_size, const ParallelSizes& sizes);

  int world_size() const { return world_size_; }
  int tp() const { return tp_; }
  int cp() const { return cp_; }
  int pp() const { return pp_; }
  int dp() const { return dp_; }
  int ep() const { return ep_; }
  int etp() const { return etp_; }
  int edp() const { return edp_; }

  RankCoord coord(int rank) const;
  // Every group of a kind, in Megatron's creation order.
  const std::vector<std::vector<int>>& groups(GroupKind kind) const;
  // Members of rank's group of that kind; empty when rank belongs to none (embedding groups).
  const std::vector<int>& group_of(GroupKind kind, int rank) const;
  // Index of rank's group in groups(kind), or -1 when it belongs to none.
  int group_index(GroupKind kind, int rank) const;

  // Checks the model's numbers split evenly; throws Error(kInvalidConfig) with a fix.
  void validate_model(const ModelDims& dims) const;

  // "world 16 = TP 2 × CP 1 × PP 4 × DP 2 (experts: ETP 2 × EP 1 × EDP 8)"
  std::string describe() const;

 private:
  ParallelLayout() = default;
  void build_groups();

  int world_size_ = 1, tp_ = 1, cp_ = 1, pp_ = 1, dp_ = 1, ep_ = 1, etp_ = 1, edp_ = 1;
  std::array<std::vector<std::vector<int>>, kAllGroupKinds.size()> groups_;
  std::array<std::vector<int>, kAllGroupKinds.size()> index_of_rank_;  // [kind][rank] -> group
  std::vector<int> no_group_;  // what group_of returns for a rank outside every group
};

// Megatron Core's generate_masked_orthogonal_rank_groups: the groups of ranks that vary only
// in the dimensions where mask is true; `sizes` in rank order (fastest first).
std::vector<std::vector<int>> masked_orthogonal_rank_groups(int world_size,
                                                            const std::vector<int>& sizes,
                                                            const std::vector<bool>& mask);

}  // namespace shardlm::dist
