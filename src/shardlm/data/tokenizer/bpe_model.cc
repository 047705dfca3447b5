#include "shardlm/data/tokenizer/bpe_model.h"

#include <queue>

#include "shardlm/base/error.h"

namespace shardlm::data {
namespace {

// Words longer than this use the priority-queue merge.
constexpr size_t kScanMergeMaxSymbols = 48;

}  // namespace

BpeModel::BpeModel(TokenToIdMap vocab,
                   const std::vector<std::pair<std::string, std::string>>& merges,
                   const std::string& source)
    : token_to_id_(std::move(vocab)) {
  int32_t max_id = -1;
  for (const auto& [token, id] : token_to_id_) {
    if (id < 0) {
      throw Error(ErrorKind::kCorruptData,
                  source + ": token '" + token + "' has negative id " + std::to_string(id));
    }
    max_id = std::max(max_id, id);
  }
  id_to_token_.resize(static_cast<size_t>(max_id) + 1);
  for (const auto& [token, id] : token_to_id_) id_to_token_[id] = token;

  merges_.reserve(merges.size() * 2);
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [left, right] = merges[rank];
    const auto left_id = token_to_id(left);
    const auto right_id = token_to_id(right);
    const auto merged_id = token_to_id(left + right);
    if (!left_id || !right_id || !merged_id) {
      throw Error(ErrorKind::kCorruptData,
                  source + ": merge " + std::to_string(rank + 1) + " '" + left + " " + right +
                      "' uses a token that is not in the vocabulary; the vocab and merges "
                      "files do not belong together");
    }
    // A repeated pair keeps its first (lowest) rank, as in Hugging Face tokenizers.
    merges_.try_emplace(pair_key(*left_id, *right_id),
                        MergeRule{static_cast<int32_t>(rank), *merged_id});
  }
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  const auto it = token_to_id_.find(token);
  if (it == token_to_id_.end()) return std::nullopt;
  return it->second;
}

const std::string& BpeModel::id_to_token(int32_t id) const {
  static const std::string kEmpty;
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size()) return kEmpty;
  return id_to_token_[id];
}

const BpeModel::MergeRule* BpeModel::find_merge(int32_t left, int32_t right) const {
  const auto it = merges_.find(pair_key(left, right));
  return it == merges_.end() ? nullptr : &it->second;
}

void BpeModel::merge(std::vector<int32_t>& symbols) const {
  if (symbols.size() <= kScanMergeMaxSymbols) {
    merge_by_scan(symbols);
  } else {
    merge_by_heap(symbols);
  }
}

void BpeModel::merge_by_scan(std::vector<int32_t>& symbols) const {
  while (symbols.size() > 1) {
    int32_t best_rank = INT32_MAX;
    size_t best_pos = 0;
    int32_t best_id = -1;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      const MergeRule* rule = find_merge(symbols[i], symbols[i + 1]);
      if (rule != nullptr && rule->rank < best_rank) {
        best_rank = rule->rank;
        best_pos = i;
        best_id = rule->merged_id;
      }
    }
    if (best_id < 0) return;
    symbols[best_pos] = best_id;
    symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(best_pos) + 1);
  }
}

void BpeModel::merge_by_heap(std::vector<int32_t>& symbols) const {
  const int n = static_cast<int>(symbols.size());
  if (n < 2) return;
  // Doubly linked list over the original positions; a merged symbol keeps its left position.
  std::vector<int> prev(n), next(n);
  std::vector<bool> alive(n, true);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Candidate {
    int32_t rank;
    int pos;
    int32_t merged_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  const auto push_pair = [&](int left_pos) {
    const int right_pos = next[left_pos];
    if (right_pos < 0) return;
    if (const MergeRule* rule = find_merge(symbols[left_pos], symbols[right_pos])) {
      queue.push({rule->rank, left_pos, rule->merged_id});
    }
  };
  for (int i = 0; i + 1 < n; ++i) push_pair(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    if (!alive[top.pos] || next[top.pos] < 0) continue;
    const int right_pos = next[top.pos];
    const MergeRule* rule = find_merge(symbols[top.pos], symbols[right_pos]);
    if (rule == nullptr || rule->merged_id != top.merged_id) continue;  // stale entry
    symbols[top.pos] = top.merged_id;
    alive[right_pos] = false;
    next[top.pos] = next[right_pos];
    if (next[top.pos] >= 0) prev[next[top.pos]] = top.pos;
    if (prev[top.pos] >= 0) push_pair(prev[top.pos]);
    push_pair(top.pos);
  }
  size_t out = 0;
  for (int i = 0; i < n; ++i) {
    if (alive[i]) symbols[out++] = symbols[i];
  }
  symbols.resize(out);
}

}  // namespace shardlm::data
