// Unicode character classes for tokenizer pre-tokenisation: letters (\p{L}), numbers (\p{N})
// and white space (\s = the White_Space property). Pure functions of a code point; thread-safe.
//
//   if (is_unicode_letter(cp)) ...   // 'a', 'é', 'ж', '中' are letters; '1', '½' are numbers
#pragma once

namespace shardlm::data {

bool is_unicode_letter(char32_t cp);
bool is_unicode_number(char32_t cp);
bool is_unicode_whitespace(char32_t cp);

}  // namespace shardlm::data
