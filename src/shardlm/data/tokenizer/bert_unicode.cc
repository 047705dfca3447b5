#include "shardlm/data/tokenizer/bert_unicode.h"

#include <algorithm>

namespace shardlm::data {
namespace {

using detail::CodePointRange;
using detail::kBertUnicodeTables;

bool in_ranges(std::span<const CodePointRange> ranges, char32_t cp) {
  const auto it = std::upper_bound(ranges.begin(), ranges.end(), cp,
                                   [](char32_t c, const CodePointRange& r) { return c < r.first; });
  return it != ranges.begin() && cp <= std::prev(it)->last;
}

// Hangul syllables decompose algorithmically (Unicode 3.12): L V [T] conjoining jamo.
constexpr char32_t kHangulFirst = 0xAC00, kHangulLast = 0xD7A3;
constexpr char32_t kLeadBase = 0x1100, kVowelBase = 0x1161, kTrailBase = 0x11A7;
constexpr char32_t kVowelCount = 21, kTrailCount = 28;

}  // namespace

bool is_bert_punctuation(char32_t cp) {
  if ((cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) ||
      (cp >= 123 && cp <= 126)) {
    return true;
  }
  return in_ranges(kBertUnicodeTables.punctuation, cp);
}

bool is_bert_control(char32_t cp) {
  if (cp == '\t' || cp == '\n' || cp == '\r') return false;
  return in_ranges(kBertUnicodeTables.control, cp);
}

bool is_bert_whitespace(char32_t cp) {
  if (cp == ' ' || cp == '\t' || cp == '\n' || cp == '\r') return true;
  return in_ranges(kBertUnicodeTables.space_separator, cp);
}

bool is_bert_chinese_char(char32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
         (cp >= 0x20000 && cp <= 0x2A6DF) || (cp >= 0x2A700 && cp <= 0x2B73F) ||
         (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

bool is_nonspacing_mark(char32_t cp) { return in_ranges(kBertUnicodeTables.nonspacing_mark, cp); }

bool is_line_or_paragraph_separator(char32_t cp) { return cp == 0x2028 || cp == 0x2029; }

void append_lower_stripped(char32_t cp, std::u32string& out) {
  if (cp >= kHangulFirst && cp <= kHangulLast) {
    const char32_t index = cp - kHangulFirst;
    out.push_back(kLeadBase + index / (kVowelCount * kTrailCount));
    out.push_back(kVowelBase + (index % (kVowelCount * kTrailCount)) / kTrailCount);
    if (index % kTrailCount != 0) out.push_back(kTrailBase + index % kTrailCount);
    return;
  }
  if (is_nonspacing_mark(cp)) return;
  const auto& fold = kBertUnicodeTables.fold;
  const auto it = std::lower_bound(fold.begin(), fold.end(), cp,
                                   [](const detail::FoldEntry& e, char32_t c) { return e.cp < c; });
  if (it != fold.end() && it->cp == cp) {
    out.append(it->out, it->length);
  } else {
    out.push_back(cp);
  }
}

}  // namespace shardlm::data
