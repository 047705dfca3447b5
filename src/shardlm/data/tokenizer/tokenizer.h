// Tokenizer: text <-> token ids, the interface every tokenizer family implements (GPT-2 BPE,
// Hugging Face tokenizer.json, SentencePiece, Megatron's NullTokenizer). Build one with
// make_tokenizer() (tokenizer_factory.h) from Megatron's --tokenizer-type flags.
//
// Contract: a built tokenizer is immutable; encode/decode are const and safe to call from many
// threads at once. Ids equal those of the reference implementation that Megatron wraps (Hugging
// Face tokenizers / sentencepiece) for the same files.
//
//   std::unique_ptr<Tokenizer> tok = make_tokenizer(options);
//   std::vector<int32_t> ids = tok->encode("Hello world");    // GPT-2: {15496, 995}
//   std::string text = tok->decode(ids);                       // "Hello world"
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace shardlm::data {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Appends the ids of `text` to `ids`.
  virtual void encode_append(std::string_view text, std::vector<int32_t>& ids) const = 0;
  virtual std::string decode(std::span<const int32_t> ids) const = 0;

  // What Megatron's tokenizer reports as vocab_size (it picks the .bin token dtype:
  // uint16 when < 65,500, else int32).
  virtual int64_t vocab_size() const = 0;
  // End-of-document id that --append-eod appends; nullopt when the tokenizer has none.
  virtual std::optional<int32_t> eod_id() const = 0;
  // Megatron's --tokenizer-type name of this tokenizer.
  virtual std::string_view type_name() const = 0;

  std::vector<int32_t> encode(std::string_view text) const {
    std::vector<int32_t> ids;
    encode_append(text, ids);
    return ids;
  }
};

}  // namespace shardlm::data
