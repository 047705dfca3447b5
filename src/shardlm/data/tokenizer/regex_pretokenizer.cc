#include "shardlm/data/tokenizer/regex_pretokenizer.h"

#include "shardlm/data/tokenizer/unicode_categories.h"
#include "shardlm/data/tokenizer/utf8.h"

namespace shardlm::data {
namespace {

enum class CharClass : unsigned char { kLetter, kNumber, kSpace, kOther, kEnd };

struct Char {
  CharClass cls;
  char32_t cp;
  int length;
};

// Cursor-free view of the text that classifies the code point at a byte offset.
class Classifier {
 public:
  explicit Classifier(std::string_view text) : text_(text) {}

  Char at(size_t pos) const {
    if (pos >= text_.size()) return {CharClass::kEnd, 0, 0};
    const unsigned char b = static_cast<unsigned char>(text_[pos]);
    if (b < 0x80) return {ascii_class(b), b, 1};
    const Utf8Unit u = decode_utf8_at(text_, pos);
    if (!u.valid) return {CharClass::kOther, u.code_point, 1};
    CharClass cls = CharClass::kOther;
    if (is_unicode_letter(u.code_point)) {
      cls = CharClass::kLetter;
    } else if (is_unicode_number(u.code_point)) {
      cls = CharClass::kNumber;
    } else if (is_unicode_whitespace(u.code_point)) {
      cls = CharClass::kSpace;
    }
    return {cls, u.code_point, u.length};
  }

  // End of the run of characters of class `cls` starting at pos (at most max_chars of them).
  size_t run_end(size_t pos, CharClass cls, size_t max_chars = ~size_t{0}) const {
    size_t count = 0;
    while (count < max_chars) {
      const Char c = at(pos);
      if (c.cls != cls) break;
      pos += c.length;
      ++count;
    }
    return pos;
  }

  size_t size() const { return text_.size(); }
  char byte(size_t pos) const { return pos < text_.size() ? text_[pos] : '\0'; }

 private:
  static CharClass ascii_class(unsigned char b) {
    if ((b | 0x20) >= 'a' && (b | 0x20) <= 'z') return CharClass::kLetter;
    if (b >= '0' && b <= '9') return CharClass::kNumber;
    if (b == ' ' || (b >= 0x09 && b <= 0x0D)) return CharClass::kSpace;
    return CharClass::kOther;
  }

  std::string_view text_;
};

// Length of the contraction ('s 't 're 've 'm 'll 'd) at pos, or 0.
size_t contraction_length(const Classifier& t, size_t pos, bool ignore_case) {
  if (t.byte(pos) != '\'') return 0;
  const auto lower = [&](size_t i) {
    const char c = t.byte(i);
    return ignore_case && c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c;
  };
  const char a = lower(pos + 1);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  const char b = lower(pos + 2);
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

// \s+(?!\S)|\s+ at a whitespace character: the run, minus its last character when a
// non-space follows and the run is longer than one character.
size_t whitespace_match_end(const Classifier& t, size_t pos) {
  size_t end = pos;
  size_t last_start = pos;
  while (true) {
    const Char c = t.at(end);
    if (c.cls != CharClass::kSpace) break;
    last_start = end;
    end += c.length;
  }
  if (end == t.size() || last_start == pos) return end;
  return last_start;
}

size_t gpt2_match_end(const Classifier& t, size_t pos) {
  if (const size_t n = contraction_length(t, pos, /*ignore_case=*/false)) return pos + n;
  Char c = t.at(pos);
  size_t start = pos;
  if (c.cp == ' ') {
    const Char next = t.at(pos + 1);
    if (next.cls != CharClass::kSpace && next.cls != CharClass::kEnd) {
      start = pos + 1;
      c = next;
    }
  }
  if (c.cls == CharClass::kSpace) return whitespace_match_end(t, pos);
  return t.run_end(start, c.cls);  // letters, numbers or others
}

bool is_cr_or_lf(char32_t cp) { return cp == '\r' || cp == '\n'; }

size_t cl100k_match_end(const Classifier& t, size_t pos) {
  if (const size_t n = contraction_length(t, pos, /*ignore_case=*/true)) return pos + n;
  const Char c = t.at(pos);
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (c.cls == CharClass::kLetter) return t.run_end(pos, CharClass::kLetter);
  if (c.cls != CharClass::kNumber && !is_cr_or_lf(c.cp)) {
    if (t.at(pos + c.length).cls == CharClass::kLetter) {
      return t.run_end(pos + c.length, CharClass::kLetter);
    }
  }
  // \p{N}{1,3}
  if (c.cls == CharClass::kNumber) return t.run_end(pos, CharClass::kNumber, 3);
  //  ?[^\s\p{L}\p{N}]+[\r\n]*
  size_t other_start = std::string_view::npos;
  if (c.cls == CharClass::kOther) {
    other_start = pos;
  } else if (c.cp == ' ' && t.at(pos + 1).cls == CharClass::kOther) {
    other_start = pos + 1;
  }
  if (other_start != std::string_view::npos) {
    size_t end = t.run_end(other_start, CharClass::kOther);
    while (is_cr_or_lf(static_cast<unsigned char>(t.byte(end))) && end < t.size()) ++end;
    return end;
  }
  // c is whitespace here. \s*[\r\n]+ : up to just after the run's last CR/LF.
  size_t end = pos;
  size_t after_last_newline = 0;
  while (true) {
    const Char s = t.at(end);
    if (s.cls != CharClass::kSpace) break;
    end += s.length;
    if (is_cr_or_lf(s.cp)) after_last_newline = end;
  }
  if (after_last_newline != 0) return after_last_newline;
  return whitespace_match_end(t, pos);  // \s+(?!\S)|\s+
}

}  // namespace

void split_pretokens(PretokenizePattern pattern, std::string_view text,
                     std::vector<std::string_view>& pieces) {
  pieces.clear();
  const Classifier classifier(text);
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t end = pattern == PretokenizePattern::kGpt2 ? gpt2_match_end(classifier, pos)
                                                            : cl100k_match_end(classifier, pos);
    pieces.push_back(text.substr(pos, end - pos));
    pos = end;
  }
}

std::string_view pretokenize_pattern_regex(PretokenizePattern pattern) {
  switch (pattern) {
    case PretokenizePattern::kGpt2:
      return R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
    case PretokenizePattern::kCl100k:
      return R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  }
  return {};
}

std::optional<PretokenizePattern> find_pretokenize_pattern(std::string_view regex) {
  for (PretokenizePattern p : {PretokenizePattern::kGpt2, PretokenizePattern::kCl100k}) {
    if (regex == pretokenize_pattern_regex(p)) return p;
  }
  return std::nullopt;
}

}  // namespace shardlm::data
