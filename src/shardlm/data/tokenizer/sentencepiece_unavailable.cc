// Stand-ins used when this build has no libsentencepiece (sentencepiece_tokenizer.cc is then
// left out of the build).
#include "shardlm/data/tokenizer/sentencepiece_tokenizer.h"

#ifndef SHARDLM_WITH_SENTENCEPIECE

#include "shardlm/base/error.h"

namespace shardlm::data {

bool sentencepiece_available() { return false; }

std::unique_ptr<Tokenizer> make_sentencepiece_tokenizer(const std::string& model_path,
                                                        const std::string& megatron_type) {
  throw Error(ErrorKind::kUnsupported,
              "--tokenizer-type " + megatron_type + " (" + model_path +
                  "): this build of ShardLM has no SentencePiece support; install "
                  "libsentencepiece-dev and rebuild");
}

}  // namespace shardlm::data

#endif
