#include "shardlm/data/tokenizer/null_tokenizer.h"

#include <charconv>

#include "shardlm/base/error.h"

namespace shardlm::data {

NullTokenizer::NullTokenizer(int64_t vocab_size_without_eod)
    : vocab_size_without_eod_(vocab_size_without_eod) {
  if (vocab_size_without_eod < 1 || vocab_size_without_eod >= INT32_MAX) {
    throw Error(ErrorKind::kInvalidConfig,
                "NullTokenizer needs --vocab-size in [1, 2^31 - 1), got " +
                    std::to_string(vocab_size_without_eod));
  }
}

void NullTokenizer::encode_append(std::string_view text, std::vector<int32_t>& ids) const {
  // Python: [int(x) for x in text.split(' ')]
  size_t pos = 0;
  while (true) {
    const size_t space = text.find(' ', pos);
    std::string_view word = text.substr(pos, space == std::string_view::npos ? space : space - pos);
    const auto is_space = [](char c) { return c == ' ' || (c >= '\t' && c <= '\r'); };
    while (!word.empty() && is_space(word.front())) word.remove_prefix(1);
    while (!word.empty() && is_space(word.back())) word.remove_suffix(1);
    if (!word.empty() && word.front() == '+') word.remove_prefix(1);
    int64_t value = 0;
    const auto [end, ec] = std::from_chars(word.data(), word.data() + word.size(), value);
    if (word.empty() || ec != std::errc() || end != word.data() + word.size() ||
        value < INT32_MIN || value > INT32_MAX) {
      throw Error(ErrorKind::kCorruptData,
                  "NullTokenizer: '" + std::string(word) +
                      "' is not a token id (input must be integers separated by single spaces)");
    }
    ids.push_back(static_cast<int32_t>(value));
    if (space == std::string_view::npos) break;
    pos = space + 1;
  }
}

std::string NullTokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) out.push_back(' ');
    out += std::to_string(ids[i]);
  }
  return out;
}

}  // namespace shardlm::data
