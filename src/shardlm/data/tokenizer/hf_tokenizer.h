// HfTokenizer: a Hugging Face tokenizer.json with a BPE model (Megatron's HuggingFaceTokenizer).
// Ids equal tokenizers.Tokenizer.from_file(path).encode(text).ids for the supported components:
//   added_tokens   matched in the raw text first (leftmost, longest); lstrip/rstrip honoured
//   normalizer     null, Prepend, Replace (string pattern), Sequence of those
//   pre_tokenizer  null, ByteLevel (use_regex = GPT-2 pattern, add_prefix_space), Split with the
//                  GPT-2 or cl100k/Llama-3 regex (Isolated, not inverted), Metaspace, Sequence
//   model          BPE with unk_token, fuse_unk, byte_fallback, ignore_merges
//   post_processor null, ByteLevel, TemplateProcessing (single sequence), Sequence
//   decoder        ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence
// Any other component, or an option of these that changes ids (dropout, continuing-subword
// prefix, single_word added tokens, ...), is refused with an Error(kUnsupported) naming it.
//
// encode_append adds the template's special tokens (add_special_tokens=True, as Megatron's
// HuggingFaceTokenizer.tokenize does); decode skips special tokens. EOD is the eos_token of a
// tokenizer_config.json beside the tokenizer.json, else the first of </s>, <|endoftext|>,
// <|end_of_text|>, <eos> that is an added token. Immutable; thread-safe.
//
//   auto tok = HfTokenizer::from_path("llama3/tokenizer.json");   // or the folder
//   tok->encode("Hello world");
#pragma once

#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>

#include "shardlm/data/tokenizer/tokenizer.h"

namespace shardlm::data {

class HfTokenizer final : public Tokenizer {
 public:
  // path: a tokenizer.json file, or a folder holding tokenizer.json (and optionally
  // tokenizer_config.json).
  static std::unique_ptr<HfTokenizer> from_path(const std::string& path);
  HfTokenizer(const nlohmann::json& tokenizer_json, const std::string& source,
              const std::string& eos_token);
  ~HfTokenizer() override;

  void encode_append(std::string_view text, std::vector<int32_t>& ids) const override;
  void encode_append(std::string_view text, std::vector<int32_t>& ids,
                     bool add_special_tokens) const;
  std::string decode(std::span<const int32_t> ids) const override;
  int64_t vocab_size() const override;
  std::optional<int32_t> eod_id() const override;
  std::string_view type_name() const override { return "HuggingFaceTokenizer"; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace shardlm::data
