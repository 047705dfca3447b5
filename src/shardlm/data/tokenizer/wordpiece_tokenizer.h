// WordPieceTokenizer: Megatron's BertWordPieceLowerCase / BertWordPieceCase (--vocab-file
// vocab.txt), i.e. _BertWordPieceTokenizer around the original BERT FullTokenizer
// (bert_tokenization.py), with the same ids:
//
//   vocab.txt   one token per line, id = line number; each line is strip()ped of white space;
//               a repeated token keeps its last id (a Python dict), vocab_size = distinct tokens.
//   Megatron then appends "[BOS]" and "[EOS]" (and <extra_id_0..> with --vocab-extra-ids) when
//   absent, each taking id len(vocab) (add_token), so vocab_size is usually lines + 2 +
//   extra ids (as Megatron's vocab_size: len(vocab) after those additions) and eod (= eos) is
//   the "[EOS]" id. The extra ids are T5's sentinels (sentinel_ids(), in order).
//   Basic      drop U+0000, U+FFFD and Cc/Cf controls; white space -> ' '; spaces around CJK
//              ideographs; split on white space; lower-case mode: Python str.lower(), NFD and
//              drop Mn marks; split every punctuation char (ASCII symbols and Unicode P*) off.
//   WordPiece  greedy longest match first, continuations prefixed "##"; a word longer than 200
//              code points (Megatron's max_input_chars_per_word) or with an unmatchable rest
//              becomes a single [UNK].
//   Decode     tokens joined by ' ', " ##" removed, then Megatron's clean_up_tokenization
//              (" ." -> "." etc.).
// Text in special-token form ("[MASK]") is not special: it splits like any text, as in Megatron.
// Final sigma is lower-cased with an approximation of Python's Final_Sigma context (letters stand
// for cased letters); everything else matches Python 3 with Unicode 14.0 tables.
//
// Immutable after construction; encode/decode are thread-safe. Also a MaskedLmVocab (the ids the
// BERT dataset needs). Errors: a missing file or a vocab without [UNK], [CLS], [SEP], [PAD] or
// [MASK] throws Error naming the file and the token.
//
//   auto tok = WordPieceTokenizer::from_file("vocab.txt", /*lower_case=*/true);
//   tok->encode("Héllo, world!");   // ids of "hello" "," "world" "!"
#pragma once

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "shardlm/data/tokenizer/masked_lm_vocab.h"
#include "shardlm/data/tokenizer/tokenizer.h"

namespace shardlm::data {

class WordPieceTokenizer final : public Tokenizer, public MaskedLmVocab {
 public:
  static std::unique_ptr<WordPieceTokenizer> from_file(const std::string& vocab_file,
                                                       bool lower_case, int vocab_extra_ids = 0);
  // `vocab_text` is a vocab.txt's contents; `source` names it in errors.
  static std::unique_ptr<WordPieceTokenizer> from_text(std::string_view vocab_text,
                                                       bool lower_case, int vocab_extra_ids = 0,
                                                       const std::string& source = "vocab");

  void encode_append(std::string_view text, std::vector<int32_t>& ids) const override;
  std::string decode(std::span<const int32_t> ids) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(token_to_id_.size()); }
  std::optional<int32_t> eod_id() const override { return eos_id_; }
  std::string_view type_name() const override {
    return lower_case_ ? "BertWordPieceLowerCase" : "BertWordPieceCase";
  }

  int32_t cls_id() const override { return cls_id_; }
  int32_t sep_id() const override { return sep_id_; }
  int32_t pad_id() const override { return pad_id_; }
  int32_t mask_id() const override { return mask_id_; }
  bool is_continuation(int32_t id) const override;
  std::span<const int32_t> random_token_ids() const override { return lookup_ids_; }
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }
  std::span<const int32_t> sentinel_ids() const override { return sentinel_ids_; }

  int32_t unk_id() const { return unk_id_; }
  // BasicTokenizer.tokenize: the words WordPiece then splits.
  std::vector<std::string> basic_tokenize(std::string_view text) const;
  // FullTokenizer.tokenize: the pieces ("un", "##aff", ...).
  std::vector<std::string> tokenize(std::string_view text) const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  const std::string& id_to_token(int32_t id) const;  // throws Error for unknown ids

 private:
  WordPieceTokenizer(bool lower_case, const std::string& source);
  void add_token(const std::string& token);
  int32_t required_id(const std::string& token, const std::string& source) const;
  void wordpiece_append(const std::u32string& word, std::vector<int32_t>& ids,
                        std::vector<std::string>* pieces) const;

  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  bool lower_case_;
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> token_to_id_;
  std::vector<std::string> id_to_token_;  // "" where no token has that id
  std::vector<bool> has_id_;
  std::vector<bool> continuation_;
  std::vector<int32_t> lookup_ids_;  // distinct ids in Python inv_vocab key order
  std::vector<int32_t> sentinel_ids_;  // <extra_id_0>, <extra_id_1>, ... (--vocab-extra-ids)
  size_t max_piece_chars_ = 1;       // longest token in code points (bounds the greedy search)
  int32_t unk_id_ = -1, cls_id_ = -1, sep_id_ = -1, pad_id_ = -1, mask_id_ = -1;
  int32_t bos_id_ = -1, eos_id_ = -1;
};

}  // namespace shardlm::data
