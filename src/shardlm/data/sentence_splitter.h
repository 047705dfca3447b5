// split_sentences: the rule-based sentence splitter behind `shardlm preprocess
// --split-sentences`. Megatron's tools/preprocess_data.py uses NLTK's punkt (English); NLTK is
// not available to ShardLM, so this approximates punkt with fixed rules:
//
//   - a sentence ends after '.', '!' or '?' (plus any closing quotes/brackets) when white space
//     follows and the next text starts with an upper-case letter (ASCII, Latin-1, Greek,
//     Cyrillic), a digit, or an opening quote/bracket;
//   - but not after '.' ending a common abbreviation (Mr. Mrs. Ms. Dr. St. Jr. Prof. vs. etc.
//     e.g. i.e. No. ...) or a single-letter initial ("J. Smith");
//   - a blank line (paragraph break) always ends a sentence;
//   - sentences are trimmed of surrounding white space and empty ones dropped; with
//     keep_newlines the white space after a sentence stays attached to it (Megatron's
//     --keep-newlines), so newline tokens survive for tokenizers that encode them.
// Pure function; thread-safe. The views point into `text`.
//
//   split_sentences("Mr. Smith went home. He slept.")   // {"Mr. Smith went home.", "He slept."}
#pragma once

#include <string_view>
#include <vector>

namespace shardlm::data {

std::vector<std::string_view> split_sentences(std::string_view text, bool keep_newlines = false);

}  // namespace shardlm::data
