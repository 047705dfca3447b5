// Hand-written matchers for the pre-tokenisation regexes that real tokenizers use. Each splits
// text into the pieces the reference regex's find-all would return, with the same leftmost,
// greedy, backtracking semantics, but in one linear pass over code points:
//
//   kGpt2:   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//            (GPT-2, RoBERTa, GPT-J, Hugging Face ByteLevel with use_regex=true)
//   kCl100k: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//            ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//            (cl100k_base, Llama-3)
//
// Bytes that are not valid UTF-8 count as "other" characters (neither letter, number nor space),
// so any byte string splits into pieces that concatenate back to it. Pure; thread-safe.
//
//   std::vector<std::string_view> pieces;
//   split_pretokens(PretokenizePattern::kGpt2, "Hello world", pieces);  // "Hello", " world"
#pragma once

#include <optional>
#include <string_view>
#include <vector>

namespace shardlm::data {

enum class PretokenizePattern { kGpt2, kCl100k };

// Appends the pieces of text to `pieces` (which is cleared first).
void split_pretokens(PretokenizePattern pattern, std::string_view text,
                     std::vector<std::string_view>& pieces);

// The regex source string of a pattern, exactly as it appears in tokenizer.json files.
std::string_view pretokenize_pattern_regex(PretokenizePattern pattern);

// Recognises a tokenizer.json Split/regex pattern; nullopt when it is not one we implement.
std::optional<PretokenizePattern> find_pretokenize_pattern(std::string_view regex);

}  // namespace shardlm::data
