#include "shardlm/dist/parallel_layout.h"

#include <numeric>
#include <sstream>

#include "shardlm/base/check.h"
#include "shardlm/base/error.h"

namespace shardlm::dist {
namespace {

size_t kind_index(GroupKind kind) { return static_cast<size_t>(kind); }

// Indices along `shape` of `index` (first dimension fastest).
std::vector<int> decompose(int index, const std::vector<int>& shape) {
  std::vector<int> idx(shape.size());
  int stride = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    idx[i] = (index / stride) % shape[i];
    stride *= shape[i];
  }
  return idx;
}

// "{1, 2, 3, 4, 6, 12}": the sizes that would divide n, for fix suggestions.
std::string divisors(int64_t n) {
  std::ostringstream os;
  os << "{";
  bool first = true;
  for (int64_t d = 1; d <= n && d <= 1024; ++d) {
    if (n % d == 0) {
      os << (first ? "" : ", ") << d;
      first = false;
    }
  }
  os << "}";
  return os.str();
}

[[noreturn]] void invalid(const std::string& message) {
  throw Error(ErrorKind::kInvalidConfig, message);
}

void require_positive(const char* flag, int value) {
  if (value < 1) {
    invalid(std::string(flag) + " must be >= 1, got " + std::to_string(value));
  }
}

}  // namespace

const char* group_kind_name(GroupKind kind) {
  switch (kind) {
    case GroupKind::kTp: return "tp";
    case GroupKind::kCp: return "cp";
    case GroupKind::kDp: return "dp";
    case GroupKind::kPp: return "pp";
    case GroupKind::kDpCp: return "dp_cp";
    case GroupKind::kTpCp: return "tp_cp";
    case GroupKind::kTpDpCp: return "tp_dp_cp";
    case GroupKind::kModelParallel: return "model_parallel";
    case GroupKind::kEmbedding: return "embedding";
    case GroupKind::kPositionEmbedding: return "position_embedding";
    case GroupKind::kEp: return "ep";
    case GroupKind::kExpertTp: return "expert_tp";
    case GroupKind::kExpertDp: return "expert_dp";
    case GroupKind::kExpertTpEp: return "expert_tp_ep";
  }
  return "?";
}

std::vector<std::vector<int>> masked_orthogonal_rank_groups(int world_size,
                                                            const std::vector<int>& sizes,
                                                            const std::vector<bool>& mask) {
  SHARDLM_CHECK_EQ(sizes.size(), mask.size());
  std::vector<int> masked_shape, unmasked_shape, masked_stride, unmasked_stride;
  int stride = 1;
  for (size_t i = 0; i < sizes.size(); ++i) {
    (mask[i] ? masked_shape : unmasked_shape).push_back(sizes[i]);
    (mask[i] ? masked_stride : unmasked_stride).push_back(stride);
    stride *= sizes[i];
  }
  SHARDLM_CHECK_EQ(stride, world_size);
  int group_size = 1;
  for (int s : masked_shape) group_size *= s;
  const int num_groups = world_size / group_size;
  std::vector<std::vector<int>> groups(num_groups);
  for (int g = 0; g < num_groups; ++g) {
    const std::vector<int> gidx = decompose(g, unmasked_shape);
    int base = 0;
    for (size_t i = 0; i < gidx.size(); ++i) base += gidx[i] * unmasked_stride[i];
    groups[g].reserve(group_size);
    for (int k = 0; k < group_size; ++k) {
      const std::vector<int> kidx = decompose(k, masked_shape);
      int rank = base;
      for (size_t i = 0; i < kidx.size(); ++i) rank += kidx[i] * masked_stride[i];
      groups[g].push_back(rank);
    }
  }
  return groups;
}

ParallelLayout ParallelLayout::create(int world_size, const ParallelSizes& sizes) {
  if (world_size < 1) invalid("world size must be >= 1, got " + std::to_string(world_size));
  require_positive("--tensor-model-parallel-size", sizes.tensor);
  require_positive("--pipeline-model-parallel-size", sizes.pipeline);
  require_positive("--context-parallel-size", sizes.context);
  require_positive("--expert-model-parallel-size", sizes.expert);
  if (sizes.expert_tensor < 0) {
    invalid("--expert-tensor-parallel-size must be >= 1 (or unset), got " +
            std::to_string(sizes.expert_tensor));
  }
  ParallelLayout l;
  l.world_size_ = world_size;
  l.tp_ = sizes.tensor;
  l.pp_ = sizes.pipeline;
  l.cp_ = sizes.context;
  l.ep_ = sizes.expert;
  l.etp_ = sizes.expert_tensor > 0 ? sizes.expert_tensor : sizes.tensor;

  const int64_t model = int64_t{l.tp_} * l.cp_ * l.pp_;
  if (world_size % model != 0) {
    std::ostringstream os;
    os << "world size " << world_size << " is not divisible by --tensor-model-parallel-size "
       << l.tp_ << " x --context-parallel-size " << l.cp_ << " x --pipeline-model-parallel-size "
       << l.pp_ << " = " << model << " (the data-parallel size is world / " << model
       << " and must be a whole number). Fix: run on a multiple of " << model
       << " ranks, or choose sizes whose product divides " << world_size << " (one of "
       << divisors(world_size) << ").";
    invalid(os.str());
  }
  l.dp_ = static_cast<int>(world_size / model);

  const int64_t expert_model = int64_t{l.etp_} * l.ep_ * l.pp_;
  if (world_size % expert_model != 0) {
    std::ostringstream os;
    os << "world size " << world_size << " is not divisible by --expert-tensor-parallel-size "
       << l.etp_ << " x --expert-model-parallel-size " << l.ep_
       << " x --pipeline-model-parallel-size " << l.pp_ << " = " << expert_model
       << " (the expert data-parallel size is world / " << expert_model
       << "). Fix: choose --expert-model-parallel-size so that the product divides "
       << world_size << ".";
    invalid(os.str());
  }
  l.edp_ = static_cast<int>(world_size / expert_model);
  l.build_groups();
  return l;
}

void ParallelLayout::build_groups() {
  // Dense generator: order tp-cp-ep-dp-pp with ep = 1; expert generator: cp = 1.
  const std::vector<int> dense = {tp_, cp_, 1, dp_, pp_};
  const std::vector<int> expert = {etp_, 1, ep_, edp_, pp_};
  auto gen = [&](const std::vector<int>& sizes, std::initializer_list<int> dims) {
    std::vector<bool> mask(5, false);
    for (int d : dims) mask[d] = true;
    return masked_orthogonal_rank_groups(world_size_, sizes, mask);
  };
  constexpr int kT = 0, kC = 1, kE = 2, kD = 3, kP = 4;
  auto& g = groups_;
  g[kind_index(GroupKind::kTp)] = gen(dense, {kT});
  g[kind_index(GroupKind::kCp)] = gen(dense, {kC});
  g[kind_index(GroupKind::kDp)] = gen(dense, {kD});
  g[kind_index(GroupKind::kPp)] = gen(dense, {kP});
  g[kind_index(GroupKind::kDpCp)] = gen(dense, {kD, kC});
  g[kind_index(GroupKind::kTpCp)] = gen(dense, {kT, kC});
  g[kind_index(GroupKind::kTpDpCp)] = gen(dense, {kT, kD, kC});
  g[kind_index(GroupKind::kModelParallel)] = gen(dense, {kT, kP});
  g[kind_index(GroupKind::kEp)] = gen(expert, {kE});
  g[kind_index(GroupKind::kExpertTp)] = gen(expert, {kT});
  g[kind_index(GroupKind::kExpertDp)] = gen(expert, {kD});
  g[kind_index(GroupKind::kExpertTpEp)] = gen(expert, {kT, kE});
  auto& emb = g[kind_index(GroupKind::kEmbedding)];
  auto& pos = g[kind_index(GroupKind::kPositionEmbedding)];
  emb.clear();
  pos.clear();
  for (const auto& p : g[kind_index(GroupKind::kPp)]) {
    emb.push_back(p.size() == 1 ? std::vector<int>{p.front()}
                                : std::vector<int>{p.front(), p.back()});
    pos.push_back({p.front()});
  }
  for (GroupKind kind : kAllGroupKinds) {
    auto& index = index_of_rank_[kind_index(kind)];
    index.assign(world_size_, -1);
    const auto& groups = g[kind_index(kind)];
    for (size_t gi = 0; gi < groups.size(); ++gi) {
      for (int r : groups[gi]) {
        SHARDLM_CHECK_EQ(index[r], -1);  // groups of one kind are disjoint
        index[r] = static_cast<int>(gi);
      }
    }
  }
}

RankCoord ParallelLayout::coord(int rank) const {
  SHARDLM_REQUIRE(rank >= 0 && rank < world_size_, ErrorKind::kInvalidArgument,
                  "ParallelLayout::coord: rank " + std::to_string(rank) + " is outside [0, " +
                      std::to_string(world_size_) + ")");
  const std::vector<int> d = decompose(rank, {tp_, cp_, dp_, pp_});
  const std::vector<int> e = decompose(rank, {etp_, ep_, edp_, pp_});
  return RankCoord{d[0], d[1], d[2], d[3], e[0], e[1], e[2]};
}

const std::vector<std::vector<int>>& ParallelLayout::groups(GroupKind kind) const {
  return groups_[kind_index(kind)];
}

int ParallelLayout::group_index(GroupKind kind, int rank) const {
  SHARDLM_REQUIRE(rank >= 0 && rank < world_size_, ErrorKind::kInvalidArgument,
                  "ParallelLayout: rank " + std::to_string(rank) + " is outside [0, " +
                      std::to_string(world_size_) + ")");
  return index_of_rank_[kind_index(kind)][rank];
}

const std::vector<int>& ParallelLayout::group_of(GroupKind kind, int rank) const {
  const int gi = group_index(kind, rank);
  return gi < 0 ? no_group_ : groups_[kind_index(kind)][gi];
}

void ParallelLayout::validate_model(const ModelDims& m) const {
  auto by_tp = [&](const char* flag, int64_t value) {
    if (value > 0 && value % tp_ != 0) {
      std::ostringstream os;
      os << flag << " " << value << " is not divisible by --tensor-model-parallel-size " << tp_
         << " (every tensor-parallel rank holds an equal slice). Fix: use a tensor-parallel "
         << "size in " << divisors(value) << ", or change " << flag << ".";
      invalid(os.str());
    }
  };
  by_tp("--num-attention-heads", m.num_attention_heads);
  by_tp("--ffn-hidden-size", m.ffn_hidden_size);
  if (m.num_query_groups > 0 && m.num_query_groups % tp_ != 0 && tp_ % m.num_query_groups != 0) {
    std::ostringstream os;
    os << "--num-query-groups " << m.num_query_groups
       << " and --tensor-model-parallel-size " << tp_
       << " do not fit: the query groups are either split evenly (groups divisible by TP) or "
       << "replicated (TP divisible by groups). Fix: use a tensor-parallel size in "
       << divisors(m.num_query_groups) << " or a multiple of " << m.num_query_groups << ".";
    invalid(os.str());
  }
  if (m.num_query_groups > 0 && m.num_attention_heads > 0 &&
      m.num_attention_heads % m.num_query_groups != 0) {
    invalid("--num-attention-heads " + std::to_string(m.num_attention_heads) +
            " is not divisible by --num-query-groups " + std::to_string(m.num_query_groups) +
            ". Fix: choose --num-query-groups in " + divisors(m.num_attention_heads) + ".");
  }
  if (m.padded_vocab_size > 0 && m.padded_vocab_size % tp_ != 0) {
    std::ostringstream os;
    os << "the padded vocabulary size " << m.padded_vocab_size
       << " is not divisible by --tensor-model-parallel-size " << tp_
       << " (the vocab-parallel embedding gives each rank an equal slice). Fix: pad the "
       << "vocabulary to a multiple of --make-vocab-size-divisible-by x " << tp_
       << " (Megatron's default pads to a multiple of 128 x TP).";
    invalid(os.str());
  }
  if (m.num_layers > 0 && m.num_layers % pp_ != 0) {
    std::ostringstream os;
    os << "--num-layers " << m.num_layers << " is not divisible by "
       << "--pipeline-model-parallel-size " << pp_ << " (each stage holds an equal number of "
       << "layers). Fix: use a pipeline size in " << divisors(m.num_layers) << ".";
    invalid(os.str());
  }
  if (ep_ > 1 && m.num_experts <= 0) {
    invalid("--expert-model-parallel-size " + std::to_string(ep_) +
            " needs a mixture-of-experts model. Fix: set --num-experts (a multiple of " +
            std::to_string(ep_) + ") or use --expert-model-parallel-size 1.");
  }
  if (m.num_experts > 0 && m.num_experts % ep_ != 0) {
    invalid("--num-experts " + std::to_string(m.num_experts) +
            " is not divisible by --expert-model-parallel-size " + std::to_string(ep_) +
            ". Fix: use an expert-parallel size in " + divisors(m.num_experts) + ".");
  }
  if (m.seq_length > 0 && cp_ > 1 && m.seq_length % (2 * cp_) != 0) {
    invalid("--seq-length " + std::to_string(m.seq_length) + " is not divisible by 2 x " +
            "--context-parallel-size " + std::to_string(cp_) + " = " +
            std::to_string(2 * cp_) + " (context parallelism gives each rank two load-" +
            "balanced chunks). Fix: use a sequence length that is a multiple of " +
            std::to_string(2 * cp_) + ".");
  }
  // Sequence parallelism splits each rank's T / CP positions over the TP ranks.
  if (m.seq_length > 0 && m.sequence_parallel && tp_ > 1 && (m.seq_length / cp_) % tp_ != 0) {
    const std::string held =
        cp_ > 1 ? "--seq-length / --context-parallel-size = " + std::to_string(m.seq_length / cp_)
                : "--seq-length " + std::to_string(m.seq_length);
    invalid(held + " is not divisible by --tensor-model-parallel-size " + std::to_string(tp_) +
            ", which --sequence-parallel needs (the sequence is split across the TP ranks). "
            "Fix: use a sequence length that is a multiple of " +
            std::to_string(cp_ > 1 ? std::lcm(2 * cp_, tp_ * cp_) : tp_) +
            " or drop --sequence-parallel.");
  }
}

std::string ParallelLayout::describe() const {
  std::ostringstream os;
  os << "world " << world_size_ << " = TP " << tp_ << " x CP " << cp_ << " x PP " << pp_
     << " x DP " << dp_ << " (experts: ETP " << etp_ << " x EP " << ep_ << " x EDP " << edp_
     << ")";
  return os.str();
}

}  // namespace shardlm::dist
