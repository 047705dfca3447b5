#include "shardlm/data/tokenizer/byte_level_alphabet.h"

#include "shardlm/data/tokenizer/utf8.h"

namespace shardlm::data {

ByteLevelAlphabet::ByteLevelAlphabet() {
  byte_of_code_point_.fill(-1);
  const auto printable = [](int b) {
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  };
  int next_extra = 0;
  for (int b = 0; b < 256; ++b) {
    const char32_t cp = printable(b) ? static_cast<char32_t>(b) : 256 + next_extra++;
    code_points_[b] = cp;
    append_utf8(encoded_[b], cp);
    byte_of_code_point_[cp] = static_cast<int16_t>(b);
  }
}

std::optional<uint8_t> ByteLevelAlphabet::decode_char(char32_t cp) const {
  if (cp >= byte_of_code_point_.size() || byte_of_code_point_[cp] < 0) return std::nullopt;
  return static_cast<uint8_t>(byte_of_code_point_[cp]);
}

std::optional<std::string> ByteLevelAlphabet::decode(const std::string& byte_level_text) const {
  std::string out;
  out.reserve(byte_level_text.size());
  for (size_t pos = 0; pos < byte_level_text.size();) {
    const Utf8Unit u = decode_utf8_at(byte_level_text, pos);
    const std::optional<uint8_t> b = u.valid ? decode_char(u.code_point) : std::nullopt;
    if (!b) return std::nullopt;
    out.push_back(static_cast<char>(*b));
    pos += u.length;
  }
  return out;
}

}  // namespace shardlm::data
