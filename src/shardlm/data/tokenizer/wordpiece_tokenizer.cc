#include "shardlm/data/tokenizer/wordpiece_tokenizer.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "shardlm/base/error.h"
#include "shardlm/data/tokenizer/bert_unicode.h"
#include "shardlm/data/tokenizer/unicode_categories.h"
#include "shardlm/data/tokenizer/utf8.h"

namespace shardlm::data {
namespace {

// Megatron's WordpieceTokenizer(max_input_chars_per_word=200); Hugging Face's BertTokenizer
// uses 100, so the two differ on words of 101..200 characters.
constexpr size_t kMaxInputCharsPerWord = 200;
constexpr char32_t kCapitalSigma = 0x3A3, kSmallSigma = 0x3C3, kFinalSigma = 0x3C2;

// Python's str.isspace(): what str.strip() and str.split() treat as white space.
bool is_python_space(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::u32string decode_to_u32(std::string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const Utf8Unit u = decode_utf8_at(text, pos);
    out.push_back(u.code_point);  // invalid bytes decode as U+FFFD, which cleaning drops
    pos += u.length;
  }
  return out;
}

std::string encode_utf8(std::u32string_view cps) {
  std::string out;
  for (char32_t cp : cps) append_utf8(out, cp);
  return out;
}

std::string_view strip_python_space(std::string_view s) {
  const std::u32string cps = decode_to_u32(s);
  size_t first = 0, last = cps.size();
  while (first < last && is_python_space(cps[first])) ++first;
  while (last > first && is_python_space(cps[last - 1])) --last;
  size_t begin = 0;
  for (size_t i = 0; i < first; ++i) begin += decode_utf8_at(s, begin).length;
  size_t end = begin;
  for (size_t i = first; i < last; ++i) end += decode_utf8_at(s, end).length;
  return s.substr(begin, end - begin);
}

// Python's Final_Sigma context: a cased letter (skipping case-ignorables) before, none after.
// Approximation: letters stand for cased letters; marks and apostrophes/periods are ignorable.
bool is_case_ignorable(char32_t cp) {
  return is_nonspacing_mark(cp) || cp == '\'' || cp == '.' || cp == ':' || cp == 0xB7 ||
         cp == 0x2019 || cp == 0xAD;
}
bool is_final_sigma(const std::u32string& word, size_t i) {
  size_t j = i;
  while (j > 0 && is_case_ignorable(word[j - 1])) --j;
  if (j == 0 || !is_unicode_letter(word[j - 1])) return false;
  size_t k = i + 1;
  while (k < word.size() && is_case_ignorable(word[k])) ++k;
  return k == word.size() || !is_unicode_letter(word[k]);
}

std::u32string lower_strip_accents(const std::u32string& word) {
  std::u32string out;
  out.reserve(word.size());
  for (size_t i = 0; i < word.size(); ++i) {
    if (word[i] == kCapitalSigma) {
      out.push_back(is_final_sigma(word, i) ? kFinalSigma : kSmallSigma);
    } else {
      append_lower_stripped(word[i], out);
    }
  }
  return out;
}

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  for (size_t pos = 0; (pos = s.find(from, pos)) != std::string::npos; pos += to.size()) {
    s.replace(pos, from.size(), to);
  }
}

// The BasicTokenizer on code points: clean, isolate CJK, split on white space, lower-case and
// strip accents per word, split off punctuation.
std::vector<std::u32string> basic_words(std::string_view text, bool lower_case) {
  std::u32string cleaned;
  cleaned.reserve(text.size());
  for (char32_t cp : decode_to_u32(text)) {
    if (cp == 0 || cp == 0xFFFD || is_bert_control(cp)) continue;
    if (is_bert_whitespace(cp)) {
      cleaned.push_back(' ');
    } else if (is_bert_chinese_char(cp)) {
      cleaned.append({U' ', cp, U' '});
    } else {
      cleaned.push_back(cp);
    }
  }
  // After cleaning, the only characters Python's str.split() still splits on are ' ' and
  // U+2028/U+2029.
  const auto is_separator = [](char32_t cp) {
    return cp == ' ' || is_line_or_paragraph_separator(cp);
  };
  std::vector<std::u32string> words;
  size_t pos = 0;
  while (pos < cleaned.size()) {
    if (is_separator(cleaned[pos])) {
      ++pos;
      continue;
    }
    size_t end = pos;
    while (end < cleaned.size() && !is_separator(cleaned[end])) ++end;
    std::u32string word = cleaned.substr(pos, end - pos);
    pos = end;
    if (lower_case) word = lower_strip_accents(word);
    // _run_split_on_punc, then the final whitespace_tokenize(" ".join(...)).
    std::u32string current;
    for (char32_t cp : word) {
      if (is_bert_punctuation(cp) || is_separator(cp)) {
        if (!current.empty()) words.push_back(std::move(current));
        current.clear();
        if (!is_separator(cp)) words.push_back(std::u32string(1, cp));
      } else {
        current.push_back(cp);
      }
    }
    if (!current.empty()) words.push_back(std::move(current));
  }
  return words;
}

}  // namespace

WordPieceTokenizer::WordPieceTokenizer(bool lower_case, const std::string& /*source*/)
    : lower_case_(lower_case) {}

std::unique_ptr<WordPieceTokenizer> WordPieceTokenizer::from_file(const std::string& vocab_file,
                                                                  bool lower_case,
                                                                  int vocab_extra_ids) {
  std::ifstream in(vocab_file, std::ios::binary);
  if (!in) {
    throw Error(ErrorKind::kIo, "cannot open --vocab-file '" + vocab_file +
                                    "' (a BERT vocab.txt: one WordPiece token per line)");
  }
  std::ostringstream text;
  text << in.rdbuf();
  return from_text(text.str(), lower_case, vocab_extra_ids, vocab_file);
}

std::unique_ptr<WordPieceTokenizer> WordPieceTokenizer::from_text(std::string_view vocab_text,
                                                                  bool lower_case,
                                                                  int vocab_extra_ids,
                                                                  const std::string& source) {
  std::unique_ptr<WordPieceTokenizer> tok(new WordPieceTokenizer(lower_case, source));
  // Python's text mode reads lines ending in \n, \r\n or \r; each is strip()ped; the dict keeps
  // a repeated token's last id and its first position.
  std::vector<std::string> order;
  int32_t index = 0;
  size_t pos = 0;
  while (pos < vocab_text.size()) {
    size_t end = vocab_text.find_first_of("\r\n", pos);
    if (end == std::string_view::npos) end = vocab_text.size();
    const std::string_view line = vocab_text.substr(pos, end - pos);
    pos = end;
    if (pos < vocab_text.size()) {
      pos += (vocab_text[pos] == '\r' && pos + 1 < vocab_text.size() && vocab_text[pos + 1] == '\n')
                 ? 2
                 : 1;
    }
    if (find_invalid_utf8(line) != std::string_view::npos) {
      throw Error(ErrorKind::kCorruptData, source + ":" + std::to_string(index + 1) +
                                               ": not valid UTF-8 (vocab.txt must be UTF-8)");
    }
    std::string token(strip_python_space(line));
    const auto [it, inserted] = tok->token_to_id_.insert_or_assign(token, index);
    if (inserted) order.push_back(std::move(token));
    ++index;
  }
  tok->id_to_token_.assign(index, "");
  tok->has_id_.assign(index, false);
  for (const std::string& token : order) {
    const int32_t id = tok->token_to_id_.at(token);
    tok->id_to_token_[id] = token;
    tok->has_id_[id] = true;
    tok->lookup_ids_.push_back(id);
  }
  tok->unk_id_ = tok->required_id("[UNK]", source);
  tok->cls_id_ = tok->required_id("[CLS]", source);
  tok->sep_id_ = tok->required_id("[SEP]", source);
  tok->pad_id_ = tok->required_id("[PAD]", source);
  tok->mask_id_ = tok->required_id("[MASK]", source);
  // _BertWordPieceTokenizer.__init__ appends these when the vocab lacks them.
  tok->add_token("[BOS]");
  tok->bos_id_ = tok->token_to_id_.at("[BOS]");
  tok->add_token("[EOS]");
  tok->eos_id_ = tok->token_to_id_.at("[EOS]");
  // add_additional_special_tokens; additional_special_tokens_ids looks each one up, so a
  // sentinel the vocab file already holds keeps its id there.
  for (int i = 0; i < vocab_extra_ids; ++i) {
    const std::string sentinel = "<extra_id_" + std::to_string(i) + ">";
    tok->add_token(sentinel);
    tok->sentinel_ids_.push_back(tok->token_to_id_.at(sentinel));
  }
  tok->continuation_.assign(tok->id_to_token_.size(), false);
  for (size_t id = 0; id < tok->id_to_token_.size(); ++id) {
    const std::string& t = tok->id_to_token_[id];
    tok->continuation_[id] = tok->has_id_[id] && t.size() >= 2 && t[0] == '#' && t[1] == '#';
    tok->max_piece_chars_ = std::max(tok->max_piece_chars_, decode_to_u32(t).size());
  }
  return tok;
}

void WordPieceTokenizer::add_token(const std::string& token) {
  if (token_to_id_.count(token)) return;
  const auto id = static_cast<int32_t>(token_to_id_.size());
  if (id >= static_cast<int32_t>(id_to_token_.size())) {
    id_to_token_.resize(id + 1);
    has_id_.resize(id + 1, false);
  }
  if (!has_id_[id]) lookup_ids_.push_back(id);  // a new inv_vocab key goes last
  id_to_token_[id] = token;
  has_id_[id] = true;
  token_to_id_.emplace(token, id);
}

int32_t WordPieceTokenizer::required_id(const std::string& token, const std::string& source) const {
  const auto it = token_to_id_.find(token);
  if (it == token_to_id_.end()) {
    throw Error(ErrorKind::kInvalidConfig,
                "WordPiece vocab '" + source + "' has no " + token +
                    " token; BERT vocabularies need [PAD] [UNK] [CLS] [SEP] [MASK] (one per "
                    "line; scripts/make_wordpiece_vocab.py writes them)");
  }
  return it->second;
}

bool WordPieceTokenizer::is_continuation(int32_t id) const {
  return id >= 0 && id < static_cast<int32_t>(continuation_.size()) && continuation_[id];
}

std::optional<int32_t> WordPieceTokenizer::token_to_id(std::string_view token) const {
  const auto it = token_to_id_.find(token);
  if (it == token_to_id_.end()) return std::nullopt;
  return it->second;
}

const std::string& WordPieceTokenizer::id_to_token(int32_t id) const {
  if (id < 0 || id >= static_cast<int32_t>(id_to_token_.size()) || !has_id_[id]) {
    throw Error(ErrorKind::kInvalidArgument,
                "token id " + std::to_string(id) + " is not in the WordPiece vocabulary (size " +
                    std::to_string(vocab_size()) + ")");
  }
  return id_to_token_[id];
}

void WordPieceTokenizer::wordpiece_append(const std::u32string& word, std::vector<int32_t>& ids,
                                          std::vector<std::string>* pieces) const {
  const auto emit_unk = [&] {
    ids.push_back(unk_id_);
    if (pieces) pieces->push_back("[UNK]");
  };
  if (word.size() > kMaxInputCharsPerWord) return emit_unk();
  // UTF-8 of the word with the byte offset of every code point, so candidates are substrings.
  std::string utf8;
  std::vector<size_t> offset;
  for (char32_t cp : word) {
    offset.push_back(utf8.size());
    append_utf8(utf8, cp);
  }
  offset.push_back(utf8.size());
  const size_t first_id = ids.size();
  const size_t first_piece = pieces ? pieces->size() : 0;
  std::string key;
  for (size_t start = 0; start < word.size();) {
    size_t end = std::min(word.size(), start + max_piece_chars_);
    std::optional<int32_t> match;
    for (; end > start; --end) {
      key.assign(start > 0 ? "##" : "");
      key.append(utf8, offset[start], offset[end] - offset[start]);
      if ((match = token_to_id(key))) break;
    }
    if (!match) {
      ids.resize(first_id);
      if (pieces) pieces->resize(first_piece);
      return emit_unk();
    }
    ids.push_back(*match);
    if (pieces) pieces->push_back(key);
    start = end;
  }
}

void WordPieceTokenizer::encode_append(std::string_view text, std::vector<int32_t>& ids) const {
  for (const std::u32string& word : basic_words(text, lower_case_)) {
    wordpiece_append(word, ids, nullptr);
  }
}

std::vector<std::string> WordPieceTokenizer::basic_tokenize(std::string_view text) const {
  std::vector<std::string> out;
  for (const std::u32string& word : basic_words(text, lower_case_)) {
    out.push_back(encode_utf8(word));
  }
  return out;
}

std::vector<std::string> WordPieceTokenizer::tokenize(std::string_view text) const {
  std::vector<int32_t> ids;
  std::vector<std::string> pieces;
  for (const std::u32string& word : basic_words(text, lower_case_)) {
    wordpiece_append(word, ids, &pieces);
  }
  return pieces;
}

std::string WordPieceTokenizer::decode(std::span<const int32_t> ids) const {
  std::string text;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) text += ' ';
    text += id_to_token(ids[i]);
  }
  replace_all(text, " ##", "");
  text = std::string(strip_python_space(text));
  // FullTokenizer.convert_tokens_to_string(clean_up_tokenization_spaces=True), in its order.
  static constexpr std::pair<std::string_view, std::string_view> kCleanUps[] = {
      {" .", "."},   {" ?", "?"},     {" !", "!"},     {" ,", ","},     {" ' ", "'"},
      {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  for (const auto& [from, to] : kCleanUps) replace_all(text, from, to);
  return text;
}

}  // namespace shardlm::data
