// SentencePiece tokenizers (a .model file through libsentencepiece), with the semantics of
// Megatron's three SentencePiece --tokenizer-type values:
//   GPTSentencePieceTokenizer  plain encode_as_ids; EOD = the model's eos id
//   Llama2Tokenizer            bos id + encode_as_ids; EOD = the model's eos id
//   SentencePieceTokenizer     Megatron adds <CLS> <SEP> <EOD> <MASK> (and <PAD>/<BOS>/<EOS>
//                              when the model lacks them) after the model's pieces; occurrences of
//                              these special strings (and of the model's pad/bos/eos pieces) in
//                              the text encode as their ids; EOD = the <EOD> id
// Built only when libsentencepiece is found (SHARDLM_WITH_SENTENCEPIECE); otherwise
// make_sentencepiece_tokenizer throws Error(kUnsupported). Immutable; thread-safe.
//
//   auto tok = make_sentencepiece_tokenizer("tokenizer.model", "Llama2Tokenizer");
#pragma once

#include <memory>
#include <string>

#include "shardlm/data/tokenizer/tokenizer.h"

namespace shardlm::data {

bool sentencepiece_available();

// megatron_type: one of the three names above.
std::unique_ptr<Tokenizer> make_sentencepiece_tokenizer(const std::string& model_path,
                                                        const std::string& megatron_type);

}  // namespace shardlm::data
