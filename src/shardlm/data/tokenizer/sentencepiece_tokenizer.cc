#include "shardlm/data/tokenizer/sentencepiece_tokenizer.h"

#include <sentencepiece_processor.h>

#include <map>

#include "shardlm/base/error.h"

namespace shardlm::data {
namespace {

enum class Flavor { kGpt, kLlama2, kMegatron };

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(const std::string& path, Flavor flavor, std::string type_name)
      : flavor_(flavor), type_name_(std::move(type_name)) {
    const auto status = processor_.Load(path);
    if (!status.ok()) {
      throw Error(ErrorKind::kIo,
                  "cannot load SentencePiece model '" + path + "': " + status.ToString());
    }
    vocab_size_ = processor_.GetPieceSize();
    if (flavor_ == Flavor::kMegatron) add_megatron_special_tokens();
  }

  void encode_append(std::string_view text, std::vector<int32_t>& ids) const override {
    if (flavor_ == Flavor::kLlama2) ids.push_back(processor_.bos_id());
    if (flavor_ != Flavor::kMegatron) return encode_plain(text, ids);
    // Megatron's SentencePieceTokenizer.tokenize: cut at the earliest special string (the first
    // one added wins a tie), encode the text before it, emit the special id, repeat.
    while (true) {
      size_t best_pos = std::string_view::npos;
      const SpecialToken* best = nullptr;
      for (const SpecialToken& special : special_tokens_) {
        const size_t pos = text.find(special.text);
        if (pos != std::string_view::npos && (best == nullptr || pos < best_pos)) {
          best_pos = pos;
          best = &special;
        }
      }
      if (best == nullptr) break;
      encode_plain(text.substr(0, best_pos), ids);
      ids.push_back(best->id);
      text.remove_prefix(best_pos + best->text.size());
    }
    encode_plain(text, ids);
  }

  std::string decode(std::span<const int32_t> ids) const override {
    std::string out;
    std::vector<int> run;
    const auto flush = [&] {
      std::string piece_text;
      processor_.Decode(run, &piece_text);
      out += piece_text;
      run.clear();
    };
    for (int32_t id : ids) {
      if (id >= processor_.GetPieceSize()) {
        flush();
        const auto it = added_text_.find(id);
        if (it == added_text_.end()) {
          throw Error(ErrorKind::kInvalidArgument, "token id " + std::to_string(id) +
                                                       " is outside the SentencePiece vocabulary");
        }
        out += it->second;
      } else {
        run.push_back(id);
      }
    }
    flush();
    return out;
  }

  int64_t vocab_size() const override { return vocab_size_; }
  std::optional<int32_t> eod_id() const override {
    if (flavor_ == Flavor::kMegatron) return eod_id_;
    if (processor_.eos_id() < 0) return std::nullopt;
    return processor_.eos_id();
  }
  std::string_view type_name() const override { return type_name_; }

 private:
  struct SpecialToken {
    std::string text;
    int32_t id;
  };

  void encode_plain(std::string_view text, std::vector<int32_t>& ids) const {
    std::vector<int> pieces;
    const auto status = processor_.Encode(text, &pieces);
    if (!status.ok()) {
      throw Error(ErrorKind::kCorruptData, "SentencePiece encode failed: " + status.ToString());
    }
    ids.insert(ids.end(), pieces.begin(), pieces.end());
  }

  // Megatron's _initalize: the special token gets the model's id when the piece exists,
  // else the next id after everything so far.
  void add_megatron_special_tokens() {
    const auto add = [&](const std::string& text) {
      int32_t id = processor_.PieceToId(text);
      const bool known = id != processor_.unk_id() || text == processor_.IdToPiece(id);
      if (!known) {
        const auto it = added_ids_.find(text);
        if (it != added_ids_.end()) {
          id = it->second;
        } else {
          id = static_cast<int32_t>(vocab_size_++);
          added_ids_[text] = id;
          added_text_[id] = text;
        }
      }
      for (const auto& s : special_tokens_) {
        if (s.text == text) return id;
      }
      special_tokens_.push_back({text, id});
      return id;
    };
    const auto piece_or = [&](int id, const std::string& fallback) {
      return id >= 0 && id < processor_.GetPieceSize() ? processor_.IdToPiece(id) : fallback;
    };
    add("<CLS>");
    add("<SEP>");
    eod_id_ = add("<EOD>");
    add("<MASK>");
    add(piece_or(processor_.pad_id(), "<PAD>"));
    add(piece_or(processor_.bos_id(), "<BOS>"));
    add(piece_or(processor_.eos_id(), "<EOS>"));
  }

  sentencepiece::SentencePieceProcessor processor_;
  Flavor flavor_;
  std::string type_name_;
  int64_t vocab_size_ = 0;
  int32_t eod_id_ = -1;
  std::vector<SpecialToken> special_tokens_;
  std::map<std::string, int32_t> added_ids_;
  std::map<int32_t, std::string> added_text_;
};

}  // namespace

bool sentencepiece_available() { return true; }

std::unique_ptr<Tokenizer> make_sentencepiece_tokenizer(const std::string& model_path,
                                                        const std::string& megatron_type) {
  Flavor flavor;
  if (megatron_type == "GPTSentencePieceTokenizer") {
    flavor = Flavor::kGpt;
  } else if (megatron_type == "Llama2Tokenizer") {
    flavor = Flavor::kLlama2;
  } else if (megatron_type == "SentencePieceTokenizer") {
    flavor = Flavor::kMegatron;
  } else {
    throw Error(ErrorKind::kInvalidConfig,
                "'" + megatron_type + "' is not a SentencePiece tokenizer type");
  }
  return std::make_unique<SentencePieceTokenizer>(model_path, flavor, megatron_type);
}

}  // namespace shardlm::data
