// MaskedLmVocab: what a masked-language-model dataset (BERT, T5) needs to know about a
// vocabulary, beyond encoding text: the special ids it inserts ([CLS], [SEP], [PAD], [MASK]; T5's
// [BOS], [EOS] and sentinels <extra_id_0>, <extra_id_1>, ...), which ids are "##" continuation
// pieces (whole-word masking groups a word's pieces), and the ids the 10% "random token"
// replacement draws from (Megatron's token_lookup = list(inv_vocab.keys())).
//
// Implemented by WordPieceTokenizer (BertWordPieceLowerCase / BertWordPieceCase) and by
// FixedMaskedLmVocab (synthetic vocabularies for tests and mock data). Immutable; thread-safe.
//
//   std::shared_ptr<const MaskedLmVocab> vocab = masked_lm_vocab_of(tokenizer);  // factory.h
//   if (vocab->is_continuation(id)) ...   // id's piece starts with "##"
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "shardlm/base/check.h"

namespace shardlm::data {

class MaskedLmVocab {
 public:
  virtual ~MaskedLmVocab() = default;
  virtual int32_t cls_id() const = 0;
  virtual int32_t sep_id() const = 0;
  virtual int32_t pad_id() const = 0;
  virtual int32_t mask_id() const = 0;
  // True when id's token starts with "##" (it continues the previous piece's word).
  virtual bool is_continuation(int32_t id) const = 0;
  // Ids the random replacement picks from, uniformly by position (Megatron's token_lookup).
  virtual std::span<const int32_t> random_token_ids() const = 0;
  // T5: the decoder's first input and last label; -1 where the vocabulary has none.
  virtual int32_t bos_id() const = 0;
  virtual int32_t eos_id() const = 0;
  // T5's sentinels in order (Megatron's additional_special_tokens_ids, from --vocab-extra-ids):
  // the i-th masked span is replaced by sentinel_ids()[i]. Empty without extra ids.
  virtual std::span<const int32_t> sentinel_ids() const = 0;
};

// A vocabulary given by its special ids and the set of continuation ids; random tokens are
// 0..size-1 in order.
class FixedMaskedLmVocab final : public MaskedLmVocab {
 public:
  struct Ids {
    int32_t cls = 0, sep = 0, pad = 0, mask = 0;
    int32_t bos = -1, eos = -1;  // T5 only
  };
  FixedMaskedLmVocab(int32_t size, Ids ids, std::vector<bool> continuation,
                     std::vector<int32_t> sentinels = {})
      : ids_(ids), continuation_(std::move(continuation)), sentinels_(std::move(sentinels)) {
    SHARDLM_CHECK(static_cast<int32_t>(continuation_.size()) == size);
    for (int32_t id = 0; id < size; ++id) random_ids_.push_back(id);
    for (int32_t id : sentinels_) SHARDLM_CHECK(id >= 0 && id < size);
  }
  int32_t cls_id() const override { return ids_.cls; }
  int32_t sep_id() const override { return ids_.sep; }
  int32_t pad_id() const override { return ids_.pad; }
  int32_t mask_id() const override { return ids_.mask; }
  bool is_continuation(int32_t id) const override {
    return id >= 0 && id < static_cast<int32_t>(continuation_.size()) && continuation_[id];
  }
  std::span<const int32_t> random_token_ids() const override { return random_ids_; }
  int32_t bos_id() const override { return ids_.bos; }
  int32_t eos_id() const override { return ids_.eos; }
  std::span<const int32_t> sentinel_ids() const override { return sentinels_; }

 private:
  Ids ids_;
  std::vector<bool> continuation_;
  std::vector<int32_t> sentinels_;
  std::vector<int32_t> random_ids_;
};

}  // namespace shardlm::data
