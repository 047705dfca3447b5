#include "shardlm/data/sentence_splitter.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <string>

#include "shardlm/data/tokenizer/utf8.h"

namespace shardlm::data {
namespace {

// Lower-cased words that end in '.' without ending a sentence (punkt learns such a list).
constexpr std::array<std::string_view, 40> kAbbreviations = {
    "mr",   "mrs",  "ms",   "dr",   "st",   "jr",   "sr",   "prof", "rev",  "hon",
    "gen",  "col",  "capt", "lt",   "sgt",  "maj",  "gov",  "sen",  "rep",  "mt",
    "vs",   "etc",  "e.g",  "i.e",  "cf",   "viz",  "no",   "nos",  "vol",  "pp",
    "fig",  "co",   "inc",  "ltd",  "corp", "dept", "approx", "esq", "messrs", "mme"};

bool is_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool is_closer(unsigned char c) { return c == '"' || c == '\'' || c == ')' || c == ']'; }

// Whether the text at pos can start a sentence.
bool starts_sentence(std::string_view text, size_t pos) {
  const Utf8Unit u = decode_utf8_at(text, pos);
  const char32_t cp = u.code_point;
  if ((cp >= 'A' && cp <= 'Z') || (cp >= '0' && cp <= '9')) return true;
  if (cp == '"' || cp == '\'' || cp == '(' || cp == '[' || cp == 0x201C || cp == 0x2018) return true;
  return (cp >= 0xC0 && cp <= 0xDE && cp != 0xD7) || (cp >= 0x391 && cp <= 0x3A9) ||
         (cp >= 0x410 && cp <= 0x42F);
}

// Whether the '.' at `dot` ends an abbreviation or an initial (the word before it).
bool ends_abbreviation(std::string_view text, size_t dot) {
  size_t begin = dot;
  while (begin > 0 && !is_space(static_cast<unsigned char>(text[begin - 1])) &&
         text[begin - 1] != '(' && text[begin - 1] != '"') {
    --begin;
  }
  std::string word(text.substr(begin, dot - begin));
  std::transform(word.begin(), word.end(), word.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (word.size() == 1 && std::isalpha(static_cast<unsigned char>(word[0]))) return true;
  return std::find(kAbbreviations.begin(), kAbbreviations.end(), word) != kAbbreviations.end();
}

}  // namespace

std::vector<std::string_view> split_sentences(std::string_view text, bool keep_newlines) {
  std::vector<std::string_view> sentences;
  size_t start = 0;
  const auto emit = [&](size_t end, size_t next) {
    std::string_view s = text.substr(start, (keep_newlines ? next : end) - start);
    size_t b = 0;
    while (b < s.size() && is_space(static_cast<unsigned char>(s[b]))) ++b;
    s.remove_prefix(b);
    if (!keep_newlines) {
      while (!s.empty() && is_space(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
    }
    bool blank = true;
    for (char c : s) blank = blank && is_space(static_cast<unsigned char>(c));
    if (!blank) sentences.push_back(s);
    start = next;
  };
  size_t i = 0;
  while (i < text.size()) {
    const char c = text[i];
    if (c == '\n') {
      // A paragraph break: a newline, optional spaces, and another newline.
      size_t j = i + 1;
      while (j < text.size() && (text[j] == ' ' || text[j] == '\t' || text[j] == '\r')) ++j;
      if (j < text.size() && text[j] == '\n') {
        while (j < text.size() && is_space(static_cast<unsigned char>(text[j]))) ++j;
        emit(i, j);
        i = j;
        continue;
      }
    } else if (c == '.' || c == '!' || c == '?') {
      size_t end = i + 1;
      while (end < text.size() && (text[end] == '.' || text[end] == '!' || text[end] == '?')) {
        ++end;
      }
      while (end < text.size() && is_closer(static_cast<unsigned char>(text[end]))) ++end;
      // Closing curly quotes (U+201D, U+2019) are 3 bytes each.
      while (end + 2 < text.size() && text.compare(end, 3, "\xE2\x80\x9D") == 0) end += 3;
      while (end + 2 < text.size() && text.compare(end, 3, "\xE2\x80\x99") == 0) end += 3;
      size_t next = end;
      while (next < text.size() && is_space(static_cast<unsigned char>(text[next]))) ++next;
      const bool abbreviation = c == '.' && end == i + 1 && ends_abbreviation(text, i);
      if (next > end && next < text.size() && !abbreviation && starts_sentence(text, next)) {
        emit(end, next);
        i = next;
        continue;
      }
      i = end;
      continue;
    }
    ++i;
  }
  emit(text.size(), text.size());
  return sentences;
}

}  // namespace shardlm::data
