// NullTokenizer: Megatron's --tokenizer-type NullTokenizer, for text that already is token ids
// separated by single spaces ("15496 995"). vocab_size = --vocab-size + 1; the EOD id is
// --vocab-size. Immutable; thread-safe.
//
//   NullTokenizer tok(50257);
//   tok.encode("15496 995");   // {15496, 995};  tok.eod_id() == 50257
#pragma once

#include "shardlm/data/tokenizer/tokenizer.h"

namespace shardlm::data {

class NullTokenizer final : public Tokenizer {
 public:
  explicit NullTokenizer(int64_t vocab_size_without_eod);

  // Throws Error(kCorruptData) for a word that is not an integer (Python's int() accepts
  // surrounding white space, so does this).
  void encode_append(std::string_view text, std::vector<int32_t>& ids) const override;
  std::string decode(std::span<const int32_t> ids) const override;
  int64_t vocab_size() const override { return vocab_size_without_eod_ + 1; }
  std::optional<int32_t> eod_id() const override {
    return static_cast<int32_t>(vocab_size_without_eod_);
  }
  std::string_view type_name() const override { return "NullTokenizer"; }

 private:
  int64_t vocab_size_without_eod_;
};

}  // namespace shardlm::data
