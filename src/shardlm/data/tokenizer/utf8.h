// UTF-8 decoding and encoding for tokenizers. decode_utf8_at never fails: a byte that does not
// start a valid, shortest-form sequence decodes as a one-byte "invalid" unit, so byte-level
// tokenizers can still encode (and round-trip) arbitrary bytes.
//
//   Utf8Unit u = decode_utf8_at(text, pos);   // u.code_point, u.length (1..4), u.valid
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace shardlm::data {

struct Utf8Unit {
  char32_t code_point;  // U+FFFD when !valid
  int length;           // bytes consumed, >= 1
  bool valid;
};

inline Utf8Unit decode_utf8_at(std::string_view s, size_t pos) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char b0 = byte(pos);
  if (b0 < 0x80) return {b0, 1, true};
  int length = 0;
  char32_t cp = 0;
  char32_t min_value = 0;
  if ((b0 & 0xE0) == 0xC0) {
    length = 2, cp = b0 & 0x1F, min_value = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    length = 3, cp = b0 & 0x0F, min_value = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    length = 4, cp = b0 & 0x07, min_value = 0x10000;
  } else {
    return {0xFFFD, 1, false};
  }
  if (pos + length > s.size()) return {0xFFFD, 1, false};
  for (int i = 1; i < length; ++i) {
    const unsigned char b = byte(pos + i);
    if ((b & 0xC0) != 0x80) return {0xFFFD, 1, false};
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min_value || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return {0xFFFD, 1, false};
  return {cp, length, true};
}

inline void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Returns the byte offset of the first invalid sequence, or npos when s is valid UTF-8.
inline size_t find_invalid_utf8(std::string_view s) {
  for (size_t pos = 0; pos < s.size();) {
    const Utf8Unit u = decode_utf8_at(s, pos);
    if (!u.valid) return pos;
    pos += u.length;
  }
  return std::string_view::npos;
}

}  // namespace shardlm::data
