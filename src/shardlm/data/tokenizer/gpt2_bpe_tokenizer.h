// Gpt2BpeTokenizer: GPT-2's byte-level BPE from Megatron's --vocab-file (vocab.json: token ->
// id) and --merge-file (merges.txt: "#version" line, then one "left right" merge per line in
// rank order). Megatron's GPT2BPETokenizer.
//
// encode: split "<|endoftext|>" out as the special token (as Hugging Face's GPT2TokenizerFast,
// which Megatron wraps, does), split the rest with GPT-2's pre-tokenisation regex, map each
// piece's bytes through the byte-level alphabet, and apply the merges. Any byte string encodes
// (invalid UTF-8 included) and decode(encode(s)) == s. Immutable; thread-safe.
//
//   auto tok = Gpt2BpeTokenizer::from_files("gpt2-vocab.json", "gpt2-merges.txt");
//   tok->encode("Hello world");   // {15496, 995}
#pragma once

#include <array>
#include <memory>
#include <string>

#include "shardlm/data/tokenizer/bpe_model.h"
#include "shardlm/data/tokenizer/byte_level_alphabet.h"
#include "shardlm/data/tokenizer/tokenizer.h"

namespace shardlm::data {

class Gpt2BpeTokenizer final : public Tokenizer {
 public:
  static constexpr std::string_view kEndOfText = "<|endoftext|>";

  // Throws Error(kIo) for unreadable files, Error(kCorruptData) for malformed ones.
  static std::unique_ptr<Gpt2BpeTokenizer> from_files(const std::string& vocab_path,
                                                      const std::string& merges_path);

  Gpt2BpeTokenizer(BpeModel model, std::optional<int32_t> end_of_text_id);

  void encode_append(std::string_view text, std::vector<int32_t>& ids) const override;
  std::string decode(std::span<const int32_t> ids) const override;
  int64_t vocab_size() const override { return model_.vocab_size(); }
  std::optional<int32_t> eod_id() const override { return end_of_text_id_; }
  std::string_view type_name() const override { return "GPT2BPETokenizer"; }

  // Encodes text that holds no special tokens.
  void encode_ordinary_append(std::string_view text, std::vector<int32_t>& ids) const;

 private:
  BpeModel model_;
  std::optional<int32_t> end_of_text_id_;
  ByteLevelAlphabet alphabet_;
  std::array<int32_t, 256> byte_token_id_{};  // id of each single-byte token
  std::vector<std::string> token_bytes_;      // id -> raw bytes it stands for
};

}  // namespace shardlm::data
