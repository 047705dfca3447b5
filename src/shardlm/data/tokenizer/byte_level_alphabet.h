// GPT-2's byte-to-unicode alphabet: every byte 0..255 maps to one printable code point, so a
// byte string becomes a unicode string without spaces or control characters (a leading space
// shows as 'Ġ' = U+0120). Printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') map to
// themselves; the other 68 bytes map, in byte order, to U+0100, U+0101, ...
//
//   const ByteLevelAlphabet& a = ...;  a.encoded(' ') == "Ġ";  a.decode_char(0x120) == ' '
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>

namespace shardlm::data {

class ByteLevelAlphabet {
 public:
  ByteLevelAlphabet();

  char32_t code_point(uint8_t byte) const { return code_points_[byte]; }
  // UTF-8 of code_point(byte).
  const std::string& encoded(uint8_t byte) const { return encoded_[byte]; }
  // The byte a code point stands for; nullopt when it is not in the alphabet.
  std::optional<uint8_t> decode_char(char32_t cp) const;
  // Maps a byte-level unicode string back to raw bytes; nullopt if a character is not in the
  // alphabet.
  std::optional<std::string> decode(const std::string& byte_level_text) const;

 private:
  std::array<char32_t, 256> code_points_{};
  std::array<std::string, 256> encoded_;
  std::array<int16_t, 324> byte_of_code_point_{};  // code points used are all < 324
};

}  // namespace shardlm::data
