#include "shardlm/data/tokenizer/tokenizer_factory.h"

#include "shardlm/base/error.h"
#include "shardlm/data/tokenizer/gpt2_bpe_tokenizer.h"
#include "shardlm/data/tokenizer/hf_tokenizer.h"
#include "shardlm/data/tokenizer/null_tokenizer.h"
#include "shardlm/data/tokenizer/sentencepiece_tokenizer.h"
#include "shardlm/data/tokenizer/wordpiece_tokenizer.h"

namespace shardlm::data {
namespace {

void require_flag(const std::string& value, const std::string& flag, const std::string& type) {
  if (value.empty()) {
    throw Error(ErrorKind::kInvalidConfig, "--tokenizer-type " + type + " needs " + flag);
  }
}

}  // namespace

std::vector<std::string> supported_tokenizer_types() {
  std::vector<std::string> types = {"GPT2BPETokenizer", "HuggingFaceTokenizer", "NullTokenizer",
                                    "BertWordPieceLowerCase", "BertWordPieceCase"};
  if (sentencepiece_available()) {
    types.insert(types.end(),
                 {"SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer"});
  }
  return types;
}

std::unique_ptr<Tokenizer> make_tokenizer(const TokenizerOptions& options) {
  const std::string& type = options.type;
  if (options.vocab_extra_ids < 0) {
    throw Error(ErrorKind::kInvalidConfig, "--vocab-extra-ids " +
                                               std::to_string(options.vocab_extra_ids) +
                                               " must be >= 0 (T5 uses 100)");
  }
  if (type == "GPT2BPETokenizer") {
    require_flag(options.vocab_file, "--vocab-file (GPT-2 vocab.json)", type);
    require_flag(options.merge_file, "--merge-file (GPT-2 merges.txt)", type);
    return Gpt2BpeTokenizer::from_files(options.vocab_file, options.merge_file);
  }
  if (type == "HuggingFaceTokenizer") {
    require_flag(options.tokenizer_model,
                 "--tokenizer-model (a tokenizer.json file or a folder holding one)", type);
    return HfTokenizer::from_path(options.tokenizer_model);
  }
  if (type == "SentencePieceTokenizer" || type == "GPTSentencePieceTokenizer" ||
      type == "Llama2Tokenizer") {
    require_flag(options.tokenizer_model, "--tokenizer-model (a SentencePiece .model file)", type);
    // Megatron's SentencePieceTokenizer appends <extra_id_i> (and more specials) to its
    // vocabulary; ours does not, so its ids and vocab_size would silently differ.
    if (options.vocab_extra_ids > 0) {
      throw Error(ErrorKind::kUnsupported,
                  "--vocab-extra-ids is supported with BertWordPieceLowerCase / "
                  "BertWordPieceCase only, not --tokenizer-type " + type);
    }
    return make_sentencepiece_tokenizer(options.tokenizer_model, type);
  }
  if (type == "BertWordPieceLowerCase" || type == "BertWordPieceCase") {
    require_flag(options.vocab_file, "--vocab-file (a BERT vocab.txt)", type);
    return WordPieceTokenizer::from_file(options.vocab_file, type == "BertWordPieceLowerCase",
                                         options.vocab_extra_ids);
  }
  if (type == "NullTokenizer") {
    if (!options.vocab_size) {
      throw Error(ErrorKind::kInvalidConfig, "--tokenizer-type NullTokenizer needs --vocab-size");
    }
    return std::make_unique<NullTokenizer>(*options.vocab_size);
  }
  std::string supported;
  for (const auto& t : supported_tokenizer_types()) supported += " " + t;
  throw Error(ErrorKind::kInvalidConfig,
              "--tokenizer-type '" + type + "' is not supported; choose one of:" + supported);
}

std::shared_ptr<const MaskedLmVocab> masked_lm_vocab_of(std::shared_ptr<const Tokenizer> tokenizer) {
  if (auto vocab = std::dynamic_pointer_cast<const WordPieceTokenizer>(tokenizer)) return vocab;
  throw Error(ErrorKind::kInvalidConfig,
              "BERT and T5 data need a tokenizer with [CLS], [SEP], [PAD] and [MASK] tokens; "
              "--tokenizer-type " +
                  std::string(tokenizer ? tokenizer->type_name() : "(none)") +
                  " has none (use BertWordPieceLowerCase or BertWordPieceCase with --vocab-file)");
}

}  // namespace shardlm::data
