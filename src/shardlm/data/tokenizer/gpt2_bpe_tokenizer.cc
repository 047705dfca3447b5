#include "shardlm/data/tokenizer/gpt2_bpe_tokenizer.h"

#include "shardlm/base/error.h"
#include "shardlm/data/tokenizer/bpe_files.h"
#include "shardlm/data/tokenizer/regex_pretokenizer.h"

namespace shardlm::data {

std::unique_ptr<Gpt2BpeTokenizer> Gpt2BpeTokenizer::from_files(const std::string& vocab_path,
                                                               const std::string& merges_path) {
  TokenToIdMap vocab = read_vocab_json(vocab_path);
  const auto merges = read_merges_txt(merges_path);
  BpeModel model(std::move(vocab), merges, merges_path);
  const std::optional<int32_t> eot = model.token_to_id(kEndOfText);
  return std::make_unique<Gpt2BpeTokenizer>(std::move(model), eot);
}

Gpt2BpeTokenizer::Gpt2BpeTokenizer(BpeModel model, std::optional<int32_t> end_of_text_id)
    : model_(std::move(model)), end_of_text_id_(end_of_text_id) {
  for (int b = 0; b < 256; ++b) {
    const auto id = model_.token_to_id(alphabet_.encoded(static_cast<uint8_t>(b)));
    if (!id) {
      throw Error(ErrorKind::kCorruptData,
                  "GPT-2 vocabulary lacks the single-byte token for byte " + std::to_string(b) +
                      "; it is not a byte-level BPE vocabulary");
    }
    byte_token_id_[b] = *id;
  }
  token_bytes_.resize(model_.vocab_size());
  for (int64_t id = 0; id < model_.vocab_size(); ++id) {
    const std::string& token = model_.id_to_token(static_cast<int32_t>(id));
    if (end_of_text_id_ && id == *end_of_text_id_) {
      token_bytes_[id] = token;
    } else if (auto bytes = alphabet_.decode(token)) {
      token_bytes_[id] = std::move(*bytes);
    } else {
      token_bytes_[id] = token;  // not byte-level (an added token): decode as written
    }
  }
}

void Gpt2BpeTokenizer::encode_append(std::string_view text, std::vector<int32_t>& ids) const {
  if (!end_of_text_id_) return encode_ordinary_append(text, ids);
  while (!text.empty()) {
    const size_t special = text.find(kEndOfText);
    encode_ordinary_append(text.substr(0, special), ids);
    if (special == std::string_view::npos) break;
    ids.push_back(*end_of_text_id_);
    text.remove_prefix(special + kEndOfText.size());
  }
}

void Gpt2BpeTokenizer::encode_ordinary_append(std::string_view text,
                                              std::vector<int32_t>& ids) const {
  std::vector<std::string_view> pieces;
  split_pretokens(PretokenizePattern::kGpt2, text, pieces);
  std::vector<int32_t> symbols;
  for (std::string_view piece : pieces) {
    symbols.clear();
    for (char c : piece) symbols.push_back(byte_token_id_[static_cast<uint8_t>(c)]);
    model_.merge(symbols);
    ids.insert(ids.end(), symbols.begin(), symbols.end());
  }
}

std::string Gpt2BpeTokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  for (int32_t id : ids) {
    if (id < 0 || id >= static_cast<int64_t>(token_bytes_.size())) {
      throw Error(ErrorKind::kInvalidArgument, "token id " + std::to_string(id) +
                                                   " is outside the GPT-2 vocabulary [0, " +
                                                   std::to_string(token_bytes_.size()) + ")");
    }
    out += token_bytes_[id];
  }
  return out;
}

}  // namespace shardlm::data
