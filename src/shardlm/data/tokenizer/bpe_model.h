// BpeModel: a byte-pair-encoding vocabulary (token string <-> id) plus ranked merge rules, and
// the merge procedure that turns a word's initial symbols into its final tokens. Shared by the
// GPT-2 tokenizer (vocab.json + merges.txt) and Hugging Face tokenizer.json BPE models.
//
// Merge order is Hugging Face tokenizers' (and OpenAI's): repeatedly apply the adjacent pair
// with the lowest merge rank, leftmost first. Immutable after construction; thread-safe.
//
//   BpeModel model(std::move(vocab), merges, "gpt2-merges.txt");
//   std::vector<int32_t> symbols = {id_of("H"), id_of("e"), id_of("l"), id_of("l"), id_of("o")};
//   model.merge(symbols);                  // symbols == {id_of("Hello")}
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace shardlm::data {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using TokenToIdMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

class BpeModel {
 public:
  // merges: (left, right) token strings in rank order (rank 0 first). Every part and every
  // concatenation must be in the vocabulary, else Error(kCorruptData) naming `source`.
  BpeModel(TokenToIdMap vocab, const std::vector<std::pair<std::string, std::string>>& merges,
           const std::string& source);

  std::optional<int32_t> token_to_id(std::string_view token) const;
  // The token string of an id; empty for ids with no token (gaps in the vocabulary).
  const std::string& id_to_token(int32_t id) const;
  // max id + 1
  int64_t vocab_size() const { return static_cast<int64_t>(id_to_token_.size()); }
  size_t num_merges() const { return merges_.size(); }

  // Merges `symbols` (token ids) in place into the final tokens.
  void merge(std::vector<int32_t>& symbols) const;
  // The two merge implementations: linear scan (fast for short words) and a priority queue
  // (O(n log n) for long ones). Public so tests can check that they agree.
  void merge_by_scan(std::vector<int32_t>& symbols) const;
  void merge_by_heap(std::vector<int32_t>& symbols) const;

 private:
  struct MergeRule {
    int32_t rank;
    int32_t merged_id;
  };
  static uint64_t pair_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }
  const MergeRule* find_merge(int32_t left, int32_t right) const;

  TokenToIdMap token_to_id_;
  std::vector<std::string> id_to_token_;
  std::unordered_map<uint64_t, MergeRule> merges_;
};

}  // namespace shardlm::data
