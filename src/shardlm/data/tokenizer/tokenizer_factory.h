// make_tokenizer: builds a Tokenizer from Megatron's tokenizer flags.
//
//   --tokenizer-type GPT2BPETokenizer        --vocab-file vocab.json --merge-file merges.txt
//   --tokenizer-type HuggingFaceTokenizer    --tokenizer-model DIR_OR_tokenizer.json
//   --tokenizer-type SentencePieceTokenizer | GPTSentencePieceTokenizer | Llama2Tokenizer
//                                            --tokenizer-model tokenizer.model
//   --tokenizer-type NullTokenizer           --vocab-size N
//   --tokenizer-type BertWordPieceLowerCase | BertWordPieceCase
//                                            --vocab-file vocab.txt [--vocab-extra-ids N]
// Missing or contradictory flags throw Error(kInvalidConfig) saying which flag to add.
//
//   TokenizerOptions o{.type = "GPT2BPETokenizer", .vocab_file = "v.json", .merge_file = "m.txt"};
//   std::unique_ptr<Tokenizer> tok = make_tokenizer(o);
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "shardlm/data/tokenizer/masked_lm_vocab.h"
#include "shardlm/data/tokenizer/tokenizer.h"

namespace shardlm::data {

struct TokenizerOptions {
  std::string type;
  std::string vocab_file;
  std::string merge_file;
  std::string tokenizer_model;
  std::optional<int64_t> vocab_size;  // NullTokenizer
  int vocab_extra_ids = 0;            // --vocab-extra-ids: BertWordPiece*'s <extra_id_i> (T5)
};

// The --tokenizer-type values this build supports.
std::vector<std::string> supported_tokenizer_types();

std::unique_ptr<Tokenizer> make_tokenizer(const TokenizerOptions& options);

// The masked-LM view (special ids, "##" pieces, T5's [BOS]/[EOS]/sentinels) of a BERT
// WordPiece tokenizer, sharing its ownership.
// Throws Error(kInvalidConfig) for tokenizers without [CLS]/[SEP]/[MASK] (every type but
// BertWordPieceLowerCase / BertWordPieceCase).
std::shared_ptr<const MaskedLmVocab> masked_lm_vocab_of(std::shared_ptr<const Tokenizer> tokenizer);

}  // namespace shardlm::data
