#include "shardlm/data/tokenizer/hf_tokenizer.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "shardlm/base/error.h"
#include "shardlm/data/tokenizer/bpe_files.h"
#include "shardlm/data/tokenizer/bpe_model.h"
#include "shardlm/data/tokenizer/byte_level_alphabet.h"
#include "shardlm/data/tokenizer/regex_pretokenizer.h"
#include "shardlm/data/tokenizer/utf8.h"

namespace shardlm::data {
namespace {

using nlohmann::json;

struct NormalizerStep {
  enum Kind { kPrepend, kReplace } kind;
  std::string a, b;  // prepend: a; replace: a -> b
};

struct PreTokenizerStep {
  enum Kind { kSplit, kByteLevel, kMetaspace } kind;
  PretokenizePattern pattern = PretokenizePattern::kGpt2;
  bool use_regex = false;
  bool add_prefix_space = false;
  std::string replacement;     // Metaspace
  std::string prepend_scheme;  // Metaspace: always | first | never
  bool split = false;          // Metaspace
};

struct DecoderStep {
  enum Kind { kByteLevel, kReplace, kByteFallback, kFuse, kStrip, kMetaspace } kind;
  std::string a, b;
  int start = 0, stop = 0;
  bool add_prefix_space = true;
};

struct AddedToken {
  std::string content;
  int32_t id;
  bool special, lstrip, rstrip;
};

std::string type_of(const json& j) { return j.value("type", std::string("?")); }

[[noreturn]] void unsupported(const std::string& source, const std::string& what) {
  throw Error(ErrorKind::kUnsupported,
              source + ": " + what + " is not supported by ShardLM's tokenizer.json reader");
}

std::string string_pattern(const json& pattern, const std::string& source, const char* where) {
  if (pattern.contains("String")) return pattern["String"].get<std::string>();
  unsupported(source, std::string(where) + " with a Regex pattern");
}

bool is_space_byte(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

}  // namespace

struct HfTokenizer::Impl {
  std::string source;
  std::vector<NormalizerStep> normalizer;
  std::vector<PreTokenizerStep> pre_tokenizer;
  std::vector<DecoderStep> decoder;
  std::unique_ptr<BpeModel> model;
  std::optional<int32_t> unk_id;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
  std::vector<AddedToken> added;  // longest first
  std::map<int32_t, const AddedToken*> added_by_id;
  std::array<bool, 256> added_first_bytes{};  // bytes that can start an added token
  std::vector<int32_t> template_prefix, template_suffix;
  std::optional<int32_t> eos_id;
  int64_t vocab_size = 0;
  ByteLevelAlphabet alphabet;

  void parse_normalizer(const json& j) {
    if (j.is_null()) return;
    const std::string type = type_of(j);
    if (type == "Sequence") {
      for (const auto& n : j.at("normalizers")) parse_normalizer(n);
    } else if (type == "Prepend") {
      normalizer.push_back({NormalizerStep::kPrepend, j.at("prepend").get<std::string>(), ""});
    } else if (type == "Replace") {
      normalizer.push_back({NormalizerStep::kReplace,
                            string_pattern(j.at("pattern"), source, "Replace normalizer"),
                            j.at("content").get<std::string>()});
    } else {
      unsupported(source, "normalizer '" + type + "'");
    }
  }

  void parse_pre_tokenizer(const json& j) {
    if (j.is_null()) return;
    const std::string type = type_of(j);
    PreTokenizerStep step{};
    if (type == "Sequence") {
      for (const auto& p : j.at("pretokenizers")) parse_pre_tokenizer(p);
      return;
    } else if (type == "ByteLevel") {
      step.kind = PreTokenizerStep::kByteLevel;
      step.use_regex = j.value("use_regex", true);
      step.add_prefix_space = j.value("add_prefix_space", false);
    } else if (type == "Split") {
      const json& pattern = j.at("pattern");
      const std::string regex =
          pattern.contains("Regex") ? pattern["Regex"].get<std::string>() : std::string();
      const auto known = find_pretokenize_pattern(regex);
      if (!known) unsupported(source, "Split pre-tokenizer pattern '" + regex + "'");
      if (j.value("behavior", std::string()) != "Isolated" || j.value("invert", false)) {
        unsupported(source, "Split pre-tokenizer behavior other than Isolated");
      }
      step.kind = PreTokenizerStep::kSplit;
      step.pattern = *known;
    } else if (type == "Metaspace") {
      step.kind = PreTokenizerStep::kMetaspace;
      step.replacement = j.value("replacement", std::string("\xE2\x96\x81"));
      step.prepend_scheme = j.value(
          "prepend_scheme", std::string(j.value("add_prefix_space", true) ? "always" : "never"));
      step.split = j.value("split", true);
    } else {
      unsupported(source, "pre_tokenizer '" + type + "'");
    }
    pre_tokenizer.push_back(step);
  }

  void parse_model(const json& j) {
    if (type_of(j) != "BPE") unsupported(source, "model '" + type_of(j) + "' (only BPE)");
    if (!j.value("dropout", json()).is_null() && j["dropout"].get<double>() != 0.0) {
      unsupported(source, "BPE dropout");
    }
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      const json v = j.value(key, json());
      if (!v.is_null() && !v.get<std::string>().empty()) unsupported(source, std::string(key));
    }
    TokenToIdMap vocab;
    for (const auto& [token, id] : j.at("vocab").items()) vocab.emplace(token, id.get<int32_t>());
    std::vector<std::pair<std::string, std::string>> merges;
    for (const auto& m : j.at("merges")) {
      if (m.is_array()) {
        merges.emplace_back(m.at(0).get<std::string>(), m.at(1).get<std::string>());
      } else {
        const std::string s = m.get<std::string>();
        const size_t space = s.find(' ', 1);
        if (space == std::string::npos) {
          throw Error(ErrorKind::kCorruptData, source + ": merge '" + s + "' has no space");
        }
        merges.emplace_back(s.substr(0, space), s.substr(space + 1));
      }
    }
    model = std::make_unique<BpeModel>(std::move(vocab), merges, source);
    if (!j.value("unk_token", json()).is_null()) {
      unk_id = model->token_to_id(j["unk_token"].get<std::string>());
      if (!unk_id) throw Error(ErrorKind::kCorruptData, source + ": unk_token is not in the vocab");
    }
    fuse_unk = j.value("fuse_unk", false);
    byte_fallback = j.value("byte_fallback", false);
    ignore_merges = j.value("ignore_merges", false);
  }

  void parse_post_processor(const json& j) {
    if (j.is_null()) return;
    const std::string type = type_of(j);
    if (type == "Sequence") {
      for (const auto& p : j.at("processors")) parse_post_processor(p);
    } else if (type == "ByteLevel") {
      // offsets only
    } else if (type == "TemplateProcessing") {
      bool seen_sequence = false;
      for (const auto& piece : j.at("single")) {
        if (piece.contains("Sequence")) {
          seen_sequence = true;
          continue;
        }
        const std::string name = piece.at("SpecialToken").at("id").get<std::string>();
        const auto ids = j.at("special_tokens").at(name).at("ids").get<std::vector<int32_t>>();
        auto& target = seen_sequence ? template_suffix : template_prefix;
        target.insert(target.end(), ids.begin(), ids.end());
      }
    } else {
      unsupported(source, "post_processor '" + type + "'");
    }
  }

  void parse_decoder(const json& j) {
    if (j.is_null()) return;
    const std::string type = type_of(j);
    DecoderStep step{};
    if (type == "Sequence") {
      for (const auto& d : j.at("decoders")) parse_decoder(d);
      return;
    } else if (type == "ByteLevel") {
      step.kind = DecoderStep::kByteLevel;
    } else if (type == "Replace") {
      step.kind = DecoderStep::kReplace;
      step.a = string_pattern(j.at("pattern"), source, "Replace decoder");
      step.b = j.at("content").get<std::string>();
    } else if (type == "ByteFallback") {
      step.kind = DecoderStep::kByteFallback;
    } else if (type == "Fuse") {
      step.kind = DecoderStep::kFuse;
    } else if (type == "Strip") {
      step.kind = DecoderStep::kStrip;
      step.a = j.at("content").get<std::string>();
      step.start = j.value("start", 0);
      step.stop = j.value("stop", 0);
    } else if (type == "Metaspace") {
      step.kind = DecoderStep::kMetaspace;
      step.a = j.value("replacement", std::string("\xE2\x96\x81"));
      step.add_prefix_space = j.value("prepend_scheme", std::string("always")) != "never";
    } else {
      unsupported(source, "decoder '" + type + "'");
    }
    decoder.push_back(step);
  }

  void parse_added_tokens(const json& j) {
    for (const auto& t : j) {
      if (t.value("single_word", false)) unsupported(source, "single_word added tokens");
      added.push_back({t.at("content").get<std::string>(), t.at("id").get<int32_t>(),
                       t.value("special", false), t.value("lstrip", false),
                       t.value("rstrip", false)});
    }
    std::stable_sort(added.begin(), added.end(), [](const AddedToken& a, const AddedToken& b) {
      return a.content.size() > b.content.size();
    });
    for (const auto& t : added) {
      added_by_id[t.id] = &t;
      if (!t.content.empty()) added_first_bytes[static_cast<unsigned char>(t.content[0])] = true;
    }
  }

  std::string normalize(std::string_view text) const {
    std::string s(text);
    for (const auto& step : normalizer) {
      if (step.kind == NormalizerStep::kPrepend) {
        if (!s.empty()) s = step.a + s;
      } else if (!step.a.empty()) {
        std::string out;
        for (size_t pos = 0;;) {
          const size_t hit = s.find(step.a, pos);
          out.append(s, pos, hit == std::string::npos ? std::string::npos : hit - pos);
          if (hit == std::string::npos) break;
          out += step.b;
          pos = hit + step.a.size();
        }
        s = std::move(out);
      }
    }
    return s;
  }

  std::vector<std::string> pre_tokenize(std::string text, bool first_segment) const {
    std::vector<std::string> pieces = {std::move(text)};
    std::vector<std::string_view> views;
    for (const auto& step : pre_tokenizer) {
      std::vector<std::string> next;
      for (std::string& piece : pieces) {
        if (step.kind == PreTokenizerStep::kMetaspace) {
          std::string replaced;
          for (char c : piece) {
            if (c == ' ')
              replaced += step.replacement;
            else
              replaced.push_back(c);
          }
          const bool prepend =
              step.prepend_scheme == "always" || (step.prepend_scheme == "first" && first_segment);
          if (prepend && !replaced.starts_with(step.replacement)) {
            replaced = step.replacement + replaced;
          }
          if (!step.split) {
            next.push_back(std::move(replaced));
            continue;
          }
          // MergedWithNext: each piece starts at a replacement character.
          size_t start = 0;
          for (size_t pos = replaced.find(step.replacement, 1); pos != std::string::npos;
               pos = replaced.find(step.replacement, pos + 1)) {
            next.push_back(replaced.substr(start, pos - start));
            start = pos;
          }
          if (start < replaced.size()) next.push_back(replaced.substr(start));
          continue;
        }
        if (step.kind == PreTokenizerStep::kByteLevel && step.add_prefix_space &&
            !piece.starts_with(' ')) {
          piece.insert(piece.begin(), ' ');
        }
        const bool split = step.kind == PreTokenizerStep::kSplit || step.use_regex;
        if (split) {
          split_pretokens(
              step.kind == PreTokenizerStep::kSplit ? step.pattern : PretokenizePattern::kGpt2,
              piece, views);
        } else {
          views = {piece};
        }
        for (std::string_view v : views) {
          if (step.kind != PreTokenizerStep::kByteLevel) {
            next.emplace_back(v);
            continue;
          }
          std::string mapped;
          for (char c : v) mapped += alphabet.encoded(static_cast<uint8_t>(c));
          next.push_back(std::move(mapped));
        }
      }
      pieces = std::move(next);
    }
    return pieces;
  }

  void tokenize_word(std::string_view word, std::vector<int32_t>& ids) const {
    if (word.empty()) return;
    if (ignore_merges) {
      if (const auto id = model->token_to_id(word)) {
        ids.push_back(*id);
        return;
      }
    }
    std::vector<int32_t> symbols;
    bool last_was_unk = false;
    for (size_t pos = 0; pos < word.size();) {
      const int length = decode_utf8_at(word, pos).length;
      const std::string_view ch = word.substr(pos, length);
      pos += length;
      if (const auto id = model->token_to_id(ch)) {
        symbols.push_back(*id);
        last_was_unk = false;
        continue;
      }
      if (byte_fallback) {
        std::vector<int32_t> bytes;
        for (char c : ch) {
          char name[8];
          std::snprintf(name, sizeof(name), "<0x%02X>", static_cast<unsigned char>(c));
          if (const auto id = model->token_to_id(name)) bytes.push_back(*id);
        }
        if (bytes.size() == ch.size()) {
          symbols.insert(symbols.end(), bytes.begin(), bytes.end());
          last_was_unk = false;
          continue;
        }
      }
      if (unk_id) {
        if (!(fuse_unk && last_was_unk)) symbols.push_back(*unk_id);
        last_was_unk = true;
      }
    }
    model->merge(symbols);
    ids.insert(ids.end(), symbols.begin(), symbols.end());
  }

  void encode_segment(std::string_view text, bool first_segment, std::vector<int32_t>& ids) const {
    if (text.empty()) return;
    for (const std::string& word : pre_tokenize(normalize(text), first_segment)) {
      tokenize_word(word, ids);
    }
  }

  // Finds the leftmost (then longest) added token in text[from..).
  std::optional<std::pair<size_t, const AddedToken*>> find_added(std::string_view text,
                                                                 size_t from) const {
    for (size_t pos = from; pos < text.size(); ++pos) {
      if (!added_first_bytes[static_cast<unsigned char>(text[pos])]) continue;
      for (const AddedToken& t : added) {
        if (!t.content.empty() && text.compare(pos, t.content.size(), t.content) == 0) {
          return std::make_pair(pos, &t);
        }
      }
    }
    return std::nullopt;
  }

  void encode(std::string_view text, std::vector<int32_t>& ids, bool add_special) const {
    if (add_special) ids.insert(ids.end(), template_prefix.begin(), template_prefix.end());
    size_t pos = 0;
    bool first = true;
    while (pos <= text.size()) {
      const auto hit = added.empty() ? std::nullopt : find_added(text, pos);
      size_t segment_end = hit ? hit->first : text.size();
      size_t resume = hit ? hit->first + hit->second->content.size() : text.size() + 1;
      if (hit && hit->second->lstrip) {
        while (segment_end > pos && is_space_byte(text[segment_end - 1])) --segment_end;
      }
      encode_segment(text.substr(pos, segment_end - pos), first && pos == 0, ids);
      if (!hit) break;
      ids.push_back(hit->second->id);
      if (hit->second->rstrip) {
        while (resume < text.size() && is_space_byte(text[resume])) ++resume;
      }
      pos = resume;
      first = false;
    }
    if (add_special) ids.insert(ids.end(), template_suffix.begin(), template_suffix.end());
  }

  std::string decode(std::span<const int32_t> ids) const {
    std::vector<std::string> tokens;
    for (int32_t id : ids) {
      const auto it = added_by_id.find(id);
      if (it != added_by_id.end()) {
        if (!it->second->special) tokens.push_back(it->second->content);
        continue;
      }
      const std::string& token = model->id_to_token(id);
      if (token.empty()) {
        throw Error(ErrorKind::kInvalidArgument,
                    "token id " + std::to_string(id) + " is not in the vocabulary of " + source);
      }
      tokens.push_back(token);
    }
    for (const DecoderStep& step : decoder) apply_decoder(step, tokens);
    std::string out;
    for (const auto& t : tokens) out += t;
    return out;
  }

  void apply_decoder(const DecoderStep& step, std::vector<std::string>& tokens) const {
    switch (step.kind) {
      case DecoderStep::kByteLevel: {
        std::string joined;
        for (const auto& t : tokens) joined += t;
        std::string bytes;
        for (size_t pos = 0; pos < joined.size();) {
          const Utf8Unit u = decode_utf8_at(joined, pos);
          const auto b = u.valid ? alphabet.decode_char(u.code_point) : std::nullopt;
          if (b)
            bytes.push_back(static_cast<char>(*b));
          else
            bytes.append(joined, pos, u.length);
          pos += u.length;
        }
        tokens = {bytes};
        break;
      }
      case DecoderStep::kReplace:
        for (auto& t : tokens) {
          std::string out;
          for (size_t pos = 0;;) {
            const size_t hit = t.find(step.a, pos);
            out.append(t, pos, hit == std::string::npos ? std::string::npos : hit - pos);
            if (hit == std::string::npos) break;
            out += step.b;
            pos = hit + step.a.size();
          }
          t = std::move(out);
        }
        break;
      case DecoderStep::kByteFallback: {
        std::vector<std::string> out;
        std::string pending;
        const auto flush = [&] {
          if (pending.empty()) return;
          out.push_back(find_invalid_utf8(pending) == std::string::npos
                            ? pending
                            : std::string("\xEF\xBF\xBD"));
          pending.clear();
        };
        for (const auto& t : tokens) {
          unsigned value = 0;
          if (t.size() == 6 && t.starts_with("<0x") && t.back() == '>' &&
              std::sscanf(t.c_str(), "<0x%02X>", &value) == 1) {
            pending.push_back(static_cast<char>(value));
          } else {
            flush();
            out.push_back(t);
          }
        }
        flush();
        tokens = std::move(out);
        break;
      }
      case DecoderStep::kFuse: {
        std::string joined;
        for (const auto& t : tokens) joined += t;
        tokens = {joined};
        break;
      }
      case DecoderStep::kStrip:
        for (auto& t : tokens) {
          for (int i = 0; i < step.start && t.starts_with(step.a); ++i) t.erase(0, step.a.size());
          for (int i = 0; i < step.stop && t.ends_with(step.a); ++i) {
            t.erase(t.size() - step.a.size());
          }
        }
        break;
      case DecoderStep::kMetaspace:
        for (size_t i = 0; i < tokens.size(); ++i) {
          std::string out;
          for (size_t pos = 0;;) {
            const size_t hit = tokens[i].find(step.a, pos);
            out.append(tokens[i], pos, hit == std::string::npos ? std::string::npos : hit - pos);
            if (hit == std::string::npos) break;
            out += ' ';
            pos = hit + step.a.size();
          }
          if (i == 0 && step.add_prefix_space && out.starts_with(' ')) out.erase(0, 1);
          tokens[i] = std::move(out);
        }
        break;
    }
  }
};

std::unique_ptr<HfTokenizer> HfTokenizer::from_path(const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path file = fs::is_directory(path) ? fs::path(path) / "tokenizer.json" : fs::path(path);
  json tokenizer_json;
  try {
    tokenizer_json = json::parse(read_text_file(file.string()));
  } catch (const json::exception& e) {
    throw Error(ErrorKind::kCorruptData, file.string() + ": not valid JSON (" + e.what() + ")");
  }
  std::string eos_token;
  const fs::path config = file.parent_path() / "tokenizer_config.json";
  if (fs::exists(config)) {
    try {
      const json c = json::parse(read_text_file(config.string()));
      const json eos = c.value("eos_token", json());
      if (eos.is_string()) eos_token = eos.get<std::string>();
      if (eos.is_object()) eos_token = eos.value("content", std::string());
    } catch (const json::exception& e) {
      throw Error(ErrorKind::kCorruptData, config.string() + ": not valid JSON (" + e.what() + ")");
    }
  }
  return std::make_unique<HfTokenizer>(tokenizer_json, file.string(), eos_token);
}

HfTokenizer::HfTokenizer(const json& j, const std::string& source, const std::string& eos_token)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.source = source;
  try {
    if (!j.value("truncation", json()).is_null() || !j.value("padding", json()).is_null()) {
      unsupported(source, "truncation/padding settings");
    }
    m.parse_model(j.at("model"));
    m.parse_added_tokens(j.value("added_tokens", json::array()));
    m.parse_normalizer(j.value("normalizer", json()));
    m.parse_pre_tokenizer(j.value("pre_tokenizer", json()));
    m.parse_post_processor(j.value("post_processor", json()));
    m.parse_decoder(j.value("decoder", json()));
  } catch (const json::exception& e) {
    throw Error(ErrorKind::kCorruptData,
                source + ": not a tokenizer.json layout ShardLM understands (" + e.what() + ")");
  }
  m.vocab_size = m.model->vocab_size();
  for (const auto& t : m.added) m.vocab_size = std::max<int64_t>(m.vocab_size, t.id + 1);
  std::vector<std::string> candidates = {"</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>"};
  if (!eos_token.empty()) candidates = {eos_token};
  for (const auto& name : candidates) {
    for (const auto& t : m.added) {
      if (t.content == name && !m.eos_id) m.eos_id = t.id;
    }
    if (!m.eos_id && !eos_token.empty()) m.eos_id = m.model->token_to_id(name);
  }
}

HfTokenizer::~HfTokenizer() = default;

void HfTokenizer::encode_append(std::string_view text, std::vector<int32_t>& ids) const {
  impl_->encode(text, ids, /*add_special=*/true);
}

void HfTokenizer::encode_append(std::string_view text, std::vector<int32_t>& ids,
                                bool add_special_tokens) const {
  impl_->encode(text, ids, add_special_tokens);
}

std::string HfTokenizer::decode(std::span<const int32_t> ids) const { return impl_->decode(ids); }
int64_t HfTokenizer::vocab_size() const { return impl_->vocab_size; }
std::optional<int32_t> HfTokenizer::eod_id() const { return impl_->eos_id; }

}  // namespace shardlm::data
